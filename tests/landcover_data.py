"""Tiny label-only datasets for the land-cover generator tests (32x32, WorldCover codes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terrasynth.classes import WORLDCOVER
from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance


def blob_map(rng: np.random.Generator, size: int, background: int, blobs: list[int]) -> np.ndarray:
    """A map of ``background`` with a few axis-aligned rectangles of the ``blobs`` codes."""
    m = np.full((size, size), background, np.uint8)
    for code in blobs:
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        m[y : y + h, x : x + w] = code
    return m


def make_tiny_dataset(out: Path, n: int = 24, size: int = 32, seed: int = 0) -> Path:
    """Two kinds of maps with very different compositions: forest with a town, or built-up with water."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(
        name="tiny-landcover", kind="real", scheme=WORLDCOVER, tile_size=size, gsd=10.0, has_images=False,
        provenance=provenance("test", config_hash=f"tiny-{n}-{size}-{seed}"),
    )  # fmt: skip
    with DatasetWriter(out, info) as w:
        for i in range(n):
            m = blob_map(rng, size, 10, [50, 30]) if i % 2 == 0 else blob_map(rng, size, 50, [80, 80])
            w.write(f"t{i:03d}", "val" if i >= n - 4 else "train", m)
        w.finalize()
    return out
