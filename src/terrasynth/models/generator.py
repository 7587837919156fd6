"""The interface every image generator (land cover -> RGB) offers to ``terrasynth synthesize``.

A generator *run directory* holds ``generator.json``::

    {"family": "spade", ...}     # family decides which loader reads the run

and whatever weights the family saves. ``load_generator(run)`` returns an object with
``generate(masks, generator) -> images``; the synthesis stage does the rest (batching,
seeding, sharding across processes, writing a paired dataset).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from terrasynth.classes import ClassScheme
from terrasynth.errors import UserError

GENERATOR_FILE = "generator.json"

# family -> "module:function" that loads a run directory. Plain dict literal: a new family
# adds one line here.
GENERATOR_FAMILIES: dict[str, str] = {
    "spade": "terrasynth.models.spade:load_generator",
    "controlnet": "terrasynth.models.controlnet:load_generator",
}


@runtime_checkable
class ImageGenerator(Protocol):
    scheme: ClassScheme

    def generate(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``masks`` (B, H, W) int64 training indices (255 = nodata) -> images (B, 3, H, W) float in [0, 1].

        Must be deterministic given ``generator``'s state on CPU.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance: at least ``family``, ``run`` and ``checkpoint``."""
        ...


def write_generator_file(run: str | Path, family: str, **extra: Any) -> None:
    from terrasynth.io import write_json_atomic

    if family not in GENERATOR_FAMILIES:
        raise ValueError(f"unknown generator family {family!r}")
    write_json_atomic(Path(run) / GENERATOR_FILE, {"family": family, **extra})


def load_generator(run: str | Path, device: str | torch.device = "cpu", **sampling: Any) -> ImageGenerator:
    """The generator of ``run``; ``sampling`` overrides its saved sampling settings (ControlNet:
    ``steps``, ``guidance_scale``, ``conditioning_scale``, ``scheduler``)."""
    run = Path(run)
    f = run / GENERATOR_FILE
    if not f.is_file():
        raise UserError(f"{run}: not a generator run (no {GENERATOR_FILE}); pass the --out of "
                        "'terrasynth spade train' or 'terrasynth controlnet train'")  # fmt: skip
    try:
        family = json.loads(f.read_text()).get("family")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise UserError(f"{f}: not a valid generator JSON object ({exc}); retrain or restore the run directory") from exc
    if family not in GENERATOR_FAMILIES:
        raise UserError(f"{f}: unknown generator family {family!r}; known: {sorted(GENERATOR_FAMILIES)}")
    if sampling and family != "controlnet":
        raise UserError(f"{run}: sampling options {sorted(sampling)} apply to ControlNet runs; this is a {family} "
                        "generator, which samples in one pass (leave out --steps/--guidance)")  # fmt: skip
    mod, fn = GENERATOR_FAMILIES[family].split(":")
    return getattr(importlib.import_module(mod), fn)(run, device=device, **sampling)
