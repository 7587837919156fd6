"""Train/val/test assignment of split units (source images, spatial blocks, world regions)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from terrasynth.config import StrictModel
from terrasynth.data.dataset import SPLITS


class SplitRatios(StrictModel):
    """Fractions of split units per split; they must sum to 1."""

    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.0, ge=0.0, le=1.0)
    test: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test = {total:g}; they must sum to 1")
        return self


def split_counts_for(n: int, ratios: SplitRatios) -> dict[str, int]:
    """Exact unit counts per split (largest remainder), summing to ``n``.

    Any split with a positive ratio gets at least one unit when ``n`` allows, so a
    20 % test split of 3 images is not silently empty.
    """
    fr = np.array([ratios.train, ratios.val, ratios.test])
    raw = fr * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in range(3):  # guarantee non-empty positive splits by borrowing from the largest
        if fr[k] > 0 and counts[k] == 0 and n >= int((fr > 0).sum()):
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    return dict(zip(SPLITS, counts.tolist()))


def assign_splits(n: int, ratios: SplitRatios, seed: int) -> list[str]:
    """Split name for each of ``n`` units: a seeded shuffle cut at exact counts."""
    counts = split_counts_for(n, ratios)
    labels = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for pos, unit in enumerate(order):
        out[int(unit)] = labels[pos]
    return out
