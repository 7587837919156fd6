"""A stand-in image generator family for subprocess tests of ``synthesize``.

Class colour plus seeded noise: a real (if simple) generator, deterministic given the
``torch.Generator``, so synthesis mechanics (batching, seeding, resume, errors) are tested
without training a model. Registered as family ``colournoise`` by ``reliability_runner``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from terrasynth.classes import load_scheme


class ColourNoiseGenerator:
    def __init__(self, run: Path):
        self.run = run
        self.scheme = load_scheme(json.loads((run / "generator.json").read_text()).get("scheme", "worldcover"))

    def generate(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, H, W) int64 indices -> (B, 3, H, W) float in [0, 1]."""
        s = self.scheme
        pal = torch.from_numpy(s.palette[s.index_to_code_lut].astype(np.float32) / 255)
        img = pal[masks].permute(0, 3, 1, 2)
        return (img + 0.1 * torch.randn(img.shape, generator=generator)).clamp(0, 1)

    def describe(self) -> dict:
        return {"family": "colournoise", "run": str(self.run), "checkpoint": "none"}


def load_generator(run, device="cpu") -> ColourNoiseGenerator:
    return ColourNoiseGenerator(Path(run))


def make_run(path: Path, scheme: str = "worldcover") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "generator.json").write_text(json.dumps({"family": "colournoise", "scheme": scheme}))
    return path
