"""The one training runner: every model family trains through :class:`Runner`.

A family supplies its networks and optimisers (prepared through the runner) and a step,
``training_step(step, gen)``. The runner owns everything else, the same way for every
family (PyTorch Lightning's Trainer / LightningModule split):

- budgets: ``max_steps`` and ``max_minutes`` (wall time over all resumes), whichever ends
  first; ``target_minutes`` sizes ``max_steps`` from a short speed probe before training
  (the probe's steps are undone, so the sized run is the run a config with those steps
  gives), and the chosen steps are recorded so a rerun is deterministic;
- the learning-rate schedule (:func:`lr_factor`) over *progress*, the larger of
  ``step / max_steps`` and ``elapsed / budget``, so it anneals inside whichever budget ends
  the run, with a warm-up of at most ``WARMUP_MAX_SHARE`` of the steps that will run;
- EMA (diffusers' ``EMAModel``), mixed precision (Accelerate autocast), gradient clipping;
- per-step randomness: one ``torch.Generator`` seeded by (seed, stage, step, rank), so a run
  resumed at step ``s`` draws what the uninterrupted run drew;
- checkpoints: ``accelerator.save_state`` into ``checkpoints/<stage>/step-XXXXXXXX`` (written
  to a temporary folder, then renamed; the newest ``keep_checkpoints`` kept while the run
  trains, only the final one once it has finished), resume from
  the newest readable one (saying from which step), and the refusal, in one message, to
  resume a run whose fingerprint (config, data) changed;
- progress (tqdm), TensorBoard scalars under ``tb/<stage>``.

A step that returns a loss tensor is optimised by the runner (one optimiser: backward,
clip, step). A step that returns a dict of floats has made its own updates through
:meth:`Runner.backward` (a GAN's D and G updates); the runner still owns the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from terrasynth.errors import UserError
from terrasynth.io import ensure_dir

log = logging.getLogger(__name__)

Schedule = Literal["cosine", "constant", "onecycle"]
EMAWarmup = Literal["power", "linear", "none"]
# Config keys that may change between an interrupted run and its continuation.
BUDGET_KEYS = frozenset({"max_steps", "max_minutes", "target_minutes", "checkpoint_every", "keep_checkpoints",
                         "num_workers", "threads"})  # fmt: skip
_CKPT = re.compile(r"^step-(\d{8})$")
FEW_STEPS = 100  # a run the wall-time budget stops before this many steps (or its warm-up) is flagged
# The LR warm-up never takes more than this share of the steps that will run: a speed probe that sizes
# a 300-step cap with 100 warm-up steps down to 78 steps must not leave the whole run in its warm-up.
WARMUP_MAX_SHARE = 0.1


@dataclass
class RunSpec:
    """How one stage trains; built by each family's builder from its config section."""

    stage: str
    max_steps: int
    max_minutes: float | None = None
    target_minutes: float | None = None
    lr_schedule: Schedule = "cosine"
    warmup_steps: int = 0
    ema_decay: float | None = None
    ema_warmup: EMAWarmup = "power"
    grad_clip: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 10
    probe_steps: int = 6
    probe_in_target: bool = True  # the probe's seconds are taken from target_minutes


@dataclass
class RunResult:
    steps: int
    max_steps: int
    elapsed_s: float
    loss: float
    resumed_from: int | None
    losses: list[float] = field(default_factory=list)
    probe: dict[str, float] | None = None


def step_generator(seed: int, stage: str, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for every random draw of one training step."""
    h = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def effective_warmup(warmup: int, max_steps: int) -> int:
    """The warm-up steps of a run of ``max_steps``: ``warmup``, at most ``WARMUP_MAX_SHARE`` of the run."""
    return min(warmup, max(1, math.ceil(WARMUP_MAX_SHARE * max_steps))) if warmup else 0


def lr_factor(schedule: Schedule, step: int, warmup: int, progress: float) -> float:
    """The multiplier of the base LR at ``step`` with ``progress`` in [0, 1] of the budget.

    cosine: linear warm-up, then half a cosine to zero; constant: warm-up, then 1;
    onecycle: from 1/25 up to 1 over the first 30% of progress, then cosine to zero.
    """
    p = min(max(progress, 0.0), 1.0)
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return warm
    if schedule == "onecycle":
        if p < 0.3:
            return 0.04 + 0.96 * p / 0.3
        return 0.5 * (1 + math.cos(math.pi * (p - 0.3) / 0.7))
    return warm * 0.5 * (1 + math.cos(math.pi * p))


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch global RNGs (model initialisation draws on them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(config: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    """What must not change for a run to be resumed: the config without its budget keys, and inputs."""

    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in BUDGET_KEYS}
        return d

    return json.loads(json.dumps({"config": strip(config), **inputs}, sort_keys=True, default=str))


def first_difference(old: Any, new: Any, path: str = "") -> str:
    """The first key path where two fingerprints differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                sub = f"{path}.{k}" if path else str(k)
                return first_difference(old.get(k), new.get(k), sub)
    return f"{path.removeprefix('config.') or 'setting'} ({old!r} vs {new!r})"


class _State:
    """The runner's own counters, checkpointed (as JSON) as the first custom object."""

    def __init__(self) -> None:
        self.step, self.elapsed, self.max_steps, self.done = 0, 0.0, 0, False
        self.fingerprint: dict[str, Any] | None = None
        self.losses: list[float] = []
        self.probe: dict[str, float] | None = None


def _saved_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint a checkpoint was written with (the runner's state is its first custom object)."""
    try:
        return json.loads(torch.load(path / "custom_checkpoint_0.pkl", weights_only=False)["json"])["fingerprint"]
    except Exception:  # noqa: BLE001 - a damaged checkpoint: loading it will say so
        return None


class _JSON:
    """Plain-JSON state (``get()`` / ``put(d)``) as an Accelerate custom checkpoint object."""

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], None]) -> None:
        self.get, self.put = get, put

    def state_dict(self) -> dict[str, Any]:
        return {"json": json.dumps(self.get())}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.put(json.loads(sd["json"]))


class Runner:
    """Trains one stage of a run directory; see the module docstring."""

    def __init__(self, spec: RunSpec, accelerator: Accelerator, run_dir: str | os.PathLike, fingerprint: dict[str, Any],
                 *, resume: bool = True, progress: bool = True) -> None:  # fmt: skip
        self.spec, self.acc, self.run_dir = spec, accelerator, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints" / spec.stage
        self.resume, self.progress = resume, progress
        self.state = _State()
        self.state.fingerprint = fingerprint
        self.state.max_steps = spec.max_steps
        self.models: list[torch.nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.ema: EMAModel | None = None
        self._ema_params: list[torch.nn.Parameter] = []
        self._registered = False
        self.tb: Any = None  # the stage's SummaryWriter during fit (main process), for the family's own logs

    # ---- set-up ---------------------------------------------------------------------

    def prepare(self, *objs: Any) -> Any:
        """``accelerator.prepare`` for the family's modules and optimisers (their base LRs are kept)."""
        out = self.acc.prepare(*objs)
        out_t = out if isinstance(out, tuple) else (out,)
        for o in out_t:
            if isinstance(o, torch.optim.Optimizer):
                for g in o.param_groups:
                    g.setdefault("base_lr", g["lr"])
                self.optimizers.append(o)
            elif isinstance(o, torch.nn.Module):
                self.models.append(o)
        return out

    def track_ema(self, parameters: Iterable[torch.nn.Parameter]) -> EMAModel:
        """Keep an EMA of ``parameters`` (``spec.ema_decay``), stepped after every training step."""
        if self.spec.ema_decay is None:
            raise ValueError("track_ema needs RunSpec.ema_decay")
        self._ema_params = list(parameters)
        w = self.spec.ema_warmup
        decay = self.spec.ema_decay
        # diffusers' EMAModel: "power" = 1 - (1 + n)^(-2/3); "linear" = (1 + n) / (10 + n); both capped
        # at ``decay``. "none" = a fixed decay (min_decay = decay).
        self.ema = EMAModel(self._ema_params, decay=decay, use_ema_warmup=w == "power", power=2 / 3,
                            min_decay=decay if w == "none" else 0.0)  # fmt: skip
        self.ema.to(self.acc.device)
        return self.ema

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.acc.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def generator(self, step: int) -> torch.Generator:
        return step_generator(self.spec.seed, self.spec.stage, step, self.acc.process_index)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def max_steps(self) -> int:
        return self.state.max_steps

    # ---- checkpoints ----------------------------------------------------------------

    def _register(self, family: Any) -> None:
        if self._registered:
            return
        self.acc.register_for_checkpointing(_JSON(lambda: self.state.__dict__, self.state.__dict__.update))
        if self.ema is not None:
            self.acc.register_for_checkpointing(self.ema)
        if hasattr(family, "state_dict") and hasattr(family, "load_state_dict"):  # scores, best checkpoint, ...
            self.acc.register_for_checkpointing(_JSON(family.state_dict, family.load_state_dict))
        self._registered = True

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.iterdir() if p.is_dir() and _CKPT.match(p.name))

    def save_checkpoint(self) -> Path:
        """Write the full training state atomically; keep the newest ``keep_checkpoints``."""
        final = self.ckpt_dir / f"step-{self.state.step:08d}"
        tmp = self.ckpt_dir / f".step-{self.state.step:08d}.tmp"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ensure_dir(self.ckpt_dir)
            shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an interrupted save
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=False)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.spec.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def _prune_finished(self) -> None:
        """A finished run keeps only its final checkpoint (enough to extend the budget later).

        The older ones guard an unfinished run against a damaged newest save; once the final
        state is written (atomically) they only take disk: a scarce-label experiment of 50
        segmenter runs kept 20 GB of them.
        """
        if self.acc.is_main_process:
            for old in self.checkpoints()[:-1]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def _load_latest(self) -> int | None:
        """Load the newest readable checkpoint; returns its step (None: none readable)."""
        found, fp = self.checkpoints(), self.state.fingerprint
        for path in reversed(found):
            self._refuse_if_changed(_saved_fingerprint(path), fp)  # before loading: another model may not load
            try:
                self.acc.load_state(str(path), load_kwargs={"weights_only": False})
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: fall back to the one before
                log.warning("%s: checkpoint unreadable (%s: %s); trying an older one", path, type(exc).__name__, exc)
                continue
            if path is not found[-1]:
                log.warning("%s: resuming from step %d, the newest readable checkpoint", self.ckpt_dir, self.state.step)
            return self.state.step
        if found:
            log.warning("%s: no readable checkpoint among %d; starting over from step 0", self.ckpt_dir, len(found))
        return None

    def _refuse_if_changed(self, saved: dict[str, Any] | None, fp: dict[str, Any] | None) -> None:
        """The one message for a run that cannot be resumed: its fingerprint changed."""
        if saved is not None and saved != fp:
            raise UserError(
                f"{self.run_dir}: holds a {self.spec.stage} run made with a different {first_difference(saved, fp)}; "
                "rerun with the original settings to resume it, or pass --restart to start over, or choose a new --out"
            )

    def _clear(self) -> None:
        """``--restart``: remove this stage's checkpoints (only the runner's own step-* folders)."""
        if self.acc.is_main_process:
            for p in self.checkpoints():
                shutil.rmtree(p)
            for p in self.ckpt_dir.glob(".step-*.tmp"):
                shutil.rmtree(p, ignore_errors=True)
        self.acc.wait_for_everyone()

    # ---- the loop -------------------------------------------------------------------

    def _snapshot(self, family: Any) -> dict[str, Any]:
        return {
            "models": [copy.deepcopy(self.unwrap(m).state_dict()) for m in self.models],
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
            "ema": copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None,
            "family": copy.deepcopy(family.state_dict()) if hasattr(family, "state_dict") else None,
            "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state()),
        }

    def _restore(self, family: Any, snap: dict[str, Any]) -> None:
        for m, sd in zip(self.models, snap["models"]):
            self.unwrap(m).load_state_dict(sd)
        for o, sd in zip(self.optimizers, snap["optimizers"]):
            o.load_state_dict(sd)
        if self.ema is not None:
            self.ema.load_state_dict(snap["ema"])
        if snap["family"] is not None:
            family.load_state_dict(snap["family"])
        random.setstate(snap["rng"][0])
        np.random.set_state(snap["rng"][1])
        torch.set_rng_state(snap["rng"][2])

    def _probe(self, family: Any) -> None:
        """Time a few real steps, undo them, and size ``max_steps`` to ``target_minutes``."""
        s = self.spec
        snap = self._snapshot(family)
        n = max(2, s.probe_steps)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            self._one_step(family, i, probe=True)
            times.append(time.perf_counter() - t0)
        self._restore(family, snap)
        per_step = float(np.median(times[1:]))  # the first step pays one-off costs
        if self.acc.num_processes > 1:
            t = torch.tensor(per_step, device=self.acc.device)
            per_step = float(self.acc.reduce(t, "max"))
        # The probe's steps are part of the target, so the stage takes about its target, probe included.
        # Counted at the measured speed: the first step's one-off costs are paid by any run, probed or not.
        # A family whose probed steps are shared by several runs (segmenters) does not count them.
        spent = n * per_step if s.probe_in_target else 0.0
        steps = max(1, min(s.max_steps, int(max(0.0, s.target_minutes * 60 - spent) / per_step)))
        self.state.max_steps = steps
        self.state.probe = {"seconds_per_step": per_step, "target_minutes": s.target_minutes, "steps": steps,
                            "probe_seconds": spent}  # fmt: skip
        log.info("%s: %.3f s/step measured over %d probe steps (%.1f s of the target); %d steps fit the "
                 "%.1f-minute target", s.stage, per_step, n - 1, spent, steps, s.target_minutes)  # fmt: skip
        if self.progress and self.acc.is_local_main_process:
            tqdm.write(f"{s.stage}: {per_step:.3f} s/step -> {steps} steps for {s.target_minutes:g} min")

    def _progress(self) -> float:
        p = self.state.step / self.state.max_steps
        if self.spec.max_minutes:
            p = max(p, self.state.elapsed / (self.spec.max_minutes * 60))
        return p

    def _should_stop(self) -> bool:
        stop = torch.tensor(float(self._progress() >= 1.0), device=self.acc.device)
        return bool(self.acc.reduce(stop, "max") > 0)  # every process stops at the same step

    def _one_step(self, family: Any, step: int, probe: bool = False) -> tuple[float, dict[str, float]]:
        s = self.spec
        warmup = effective_warmup(s.warmup_steps, self.state.max_steps)
        factor = lr_factor(s.lr_schedule, step, warmup, 0.0 if probe else self._progress())
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * factor
        gen = self.generator(step)
        out = family.training_step(step, gen)
        if isinstance(out, torch.Tensor):
            (opt,) = self.optimizers  # automatic optimisation needs exactly one optimiser
            opt.zero_grad(set_to_none=True)
            self.acc.backward(out)
            if s.grad_clip:
                self.acc.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], s.grad_clip)
            opt.step()
            logs = {"loss": float(out.detach())}
        else:
            logs = dict(out)
        if self.ema is not None:
            self.ema.step(self._ema_params)
        loss = logs.get("loss", next(iter(logs.values()), float("nan")))
        if not math.isfinite(loss):
            raise RuntimeError(f"{s.stage}: non-finite loss at step {step}: {logs}; lower the learning rate")
        return loss, logs

    def fit(self, family: Any) -> RunResult:
        """Train ``family`` to the budget, resuming from this stage's checkpoints; see the module docstring.

        Hooks the family may define: ``on_start(step)`` (after resume and the speed probe, before
        the first step of this call, with ``runner.max_steps`` the steps that will run; e.g. writing
        the resolved config with the probe's choice), ``after_step(step, logs)`` (after every step;
        e.g. validation),
        ``on_checkpoint(step)`` (before each checkpoint is written), ``on_end(step)`` (after the
        last step, before the final checkpoint), ``state_dict()``/``load_state_dict(d)`` (JSON-able
        state kept in checkpoints).
        """
        s = self.spec
        fp = self.state.fingerprint
        self._register(family)
        if not self.resume:
            self._clear()
        elif self.acc.is_main_process:
            for p in self.ckpt_dir.glob(".step-*.tmp"):  # what a kill during a save left behind
                shutil.rmtree(p, ignore_errors=True)
        resumed = self._load_latest() if self.checkpoints() else None
        if resumed is None:
            self.state.step, self.state.elapsed, self.state.done, self.state.losses = 0, 0.0, False, []
            self.state.max_steps = s.max_steps
            if s.target_minutes and s.max_steps > s.probe_steps:  # a run that short is its own probe
                self._probe(family)
        else:
            self._refuse_if_changed(self.state.fingerprint, fp)
            if s.max_steps != self.state.max_steps and not (s.target_minutes and self.state.probe):
                self.state.max_steps = s.max_steps  # a budget extended (or cut) on resume
            log.info("%s: resuming %s at step %d (%.1f min trained)", s.stage, self.run_dir, resumed,
                     self.state.elapsed / 60)  # fmt: skip
        if self.state.done and self._progress() >= 1.0:
            return self._result(resumed)  # finished: a rerun does nothing
        self.state.done = False

        main = self.acc.is_main_process
        tb = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tb" / s.stage), purge_step=self.state.step or None)
        self.tb = tb
        if hasattr(family, "on_start"):
            family.on_start(self.state.step)
        for m in self.models:
            m.train()
        bar = tqdm(total=self.state.max_steps, initial=self.state.step, desc=s.stage, unit="step",
                   disable=not (self.progress and self.acc.is_local_main_process))  # fmt: skip
        smooth: float | None = None
        t_last = time.perf_counter()
        try:
            while not self._should_stop():
                step = self.state.step
                loss, logs = self._one_step(family, step)
                self.state.step += 1
                now = time.perf_counter()
                self.state.elapsed += now - t_last
                t_last = now
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                if self.state.step % 50 == 0 or self.state.step == 1:
                    self.state.losses.append(smooth)
                bar.update(1)
                if self.state.step % s.log_every == 0 or self.state.step == 1:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
                    if tb is not None:
                        for k, v in logs.items():
                            tb.add_scalar(f"train/{k}", v, self.state.step)
                        tb.add_scalar("train/lr", self.optimizers[0].param_groups[0]["lr"], self.state.step)
                if hasattr(family, "after_step"):
                    family.after_step(self.state.step, logs)
                if self.state.step % s.checkpoint_every == 0:
                    self._checkpoint(family)
                    t_last = time.perf_counter()  # checkpoint writing is not training time
        finally:
            bar.close()
        few = max(effective_warmup(s.warmup_steps, self.state.max_steps), FEW_STEPS)
        if self.state.step < min(self.state.max_steps, few) and self.state.elapsed > 0:
            log.warning("%s: the wall-time budget (%.1f min) ended after %d steps (%.1f s/step), before %d: "
                        "the model is barely trained; give it more minutes (max_minutes), fixed max_steps "
                        "or smaller models", s.stage, self.state.elapsed / 60, self.state.step,
                        self.state.elapsed / max(self.state.step, 1), few)  # fmt: skip
        if smooth is not None and (not self.state.losses or self.state.losses[-1] != smooth):
            self.state.losses.append(smooth)
        if hasattr(family, "on_end"):
            family.on_end(self.state.step)
        self.state.done = True
        self._checkpoint(family)  # the final state, marked done
        self._prune_finished()
        if tb is not None:
            tb.close()
        return self._result(resumed)

    def _checkpoint(self, family: Any) -> None:
        if hasattr(family, "on_checkpoint"):
            family.on_checkpoint(self.state.step)
        self.save_checkpoint()

    def _result(self, resumed: int | None) -> RunResult:
        return RunResult(
            steps=self.state.step, max_steps=self.state.max_steps, elapsed_s=self.state.elapsed,
            loss=self.state.losses[-1] if self.state.losses else float("nan"), resumed_from=resumed,
            losses=list(self.state.losses), probe=self.state.probe,
        )  # fmt: skip


def ema_copy(runner: Runner, module: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``module`` holding the runner's EMA weights (buffers copied as they are)."""
    src = runner.unwrap(module)
    net = copy.deepcopy(src).eval()
    if runner.ema is not None:
        tracked = {id(p) for p in runner._ema_params}
        runner.ema.copy_to([q for p, q in zip(src.parameters(), net.parameters()) if id(p) in tracked])
    return net.requires_grad_(False)
