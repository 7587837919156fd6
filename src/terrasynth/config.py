"""Configuration: pydantic v2 models with ``extra="forbid"``, YAML files and ``--set`` overrides.

Precedence, lowest first: model defaults < YAML file (``--config``) < command-line flags <
``--set key.sub=value``. The resolved config is written next to every output
(``config.yaml``) and its hash is recorded in provenance, so an output says exactly what
made it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from terrasynth.errors import UserError
from terrasynth.io import write_text_atomic
from terrasynth.yamlio import load_yaml


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)

# numpy and torch refuse negative seeds deep inside (a traceback); a config says so up front.
Seed = Annotated[int, Field(ge=0, description="random seed, a whole number >= 0")]
# "auto": bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), bf16 or fp16 on CUDA.
MixedPrecision = Literal["no", "bf16", "fp16", "auto"]


class TrainBudget(StrictModel):
    """The budget vocabulary every training config shares (read by the runner's builders).

    ``max_steps`` and ``max_minutes`` bound a run, whichever ends first, and the LR schedule
    anneals inside that budget. ``target_minutes`` asks for a speed probe at the start of the
    run that sizes ``max_steps`` to fit that many minutes on this machine (the chosen steps are
    written to the run's resolved config). ``checkpoint_every`` counts steps.
    """

    max_steps: int = Field(100_000, ge=1, description="step budget")
    max_minutes: float | None = Field(None, gt=0, description="wall-time cap over all resumes")
    target_minutes: float | None = Field(None, gt=0, description="size max_steps by a speed probe to fit this")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass an existing YAML file to --config")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file; pass a YAML config") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}; fix the file")
    return data


YAML11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.steps=100", "seed=3"]`` into a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set {item!r}: empty key; use e.g. --set train.steps=100")
        try:
            # YAML 1.1 reads yes/no/on/off as booleans; on a command line they are words
            # (e.g. --set mixed_precision=no). Booleans are true/false.
            value = raw.strip() if raw.strip().lower() in YAML11_BOOL_WORDS else (yaml.safe_load(raw) if raw.strip() else "")
        except yaml.YAMLError:
            value = raw
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise UserError(f"--set {item!r}: {p} is set both as a value and as a section")
        cur[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(model: type[M], path: str | Path | None = None, flags: dict[str, Any] | None = None,
                sets: Iterable[str] = ()) -> M:  # fmt: skip
    """Build a validated ``model`` from a YAML file, CLI flags (None values ignored) and ``--set``s."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    if flags:
        data = deep_merge(data, _drop_none(flags))
    overrides = parse_sets(sets)
    data = deep_merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Name where the offending key came from: a --set beats the file it overrides.
        loc = [p for p in exc.errors()[0]["loc"] if not isinstance(p, int)]
        source = "--set" if _holds(overrides, loc) else (str(path) if path else "command line")
        raise UserError(format_validation_error(exc, model, source)) from exc


def _holds(tree: dict[str, Any], loc: list[Any]) -> bool:
    """Whether the nested dict ``tree`` holds the key path ``loc`` (or a parent of it)."""
    cur: Any = tree
    for part in loc:
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return bool(loc)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (the parent of the offending key)."""
    cur: Any = model
    for part in loc:
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        cur = _model_of(field.annotation)
        if cur is None:
            return []
    return sorted(getattr(cur, "model_fields", {}))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per the CLI contract: the first problem, naming key, file and fix."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in err["loc"])
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        return f"{source}: unknown key '{key}'; allowed keys here: {', '.join(allowed)}{more}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'; add it to the config or pass it on the command line{more}"
    value = err.get("input")
    return f"{source}: {key} = {value!r} is invalid: {err['msg']}; fix this value{more}"


def config_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def config_hash(cfg: BaseModel | dict[str, Any], *extra: Any) -> str:
    """A short, stable hash of a resolved config (and any extra inputs, e.g. input hashes)."""
    data = config_dict(cfg) if isinstance(cfg, BaseModel) else cfg
    blob = json.dumps([data, *extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_resolved(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to an output, atomically."""
    path = Path(out_dir) / name
    write_text_atomic(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
    return path
