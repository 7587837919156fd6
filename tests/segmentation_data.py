"""Tiny paired datasets for the segmentation tests, written with DatasetWriter (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terrasynth.classes import ClassInfo, ClassScheme
from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance

# Three classes plus nodata: small enough to learn in a few steps, with an ignore code.
TINY = ClassScheme(
    name="tiny",
    nodata=0,
    classes=(
        ClassInfo(1, "water", (0, 0, 255)),
        ClassInfo(2, "forest", (0, 128, 0)),
        ClassInfo(3, "urban", (255, 0, 0)),
    ),
)


def make_dataset(
    root: Path,
    *,
    n: int = 8,
    size: int = 32,
    scheme: ClassScheme = TINY,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "train", "train", "test"),
    name: str = "tiny",
) -> Path:
    """Blocky label maps and images whose colour follows the class (plus noise); some nodata pixels."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name=name, kind="real", scheme=scheme, tile_size=size,
                       provenance=provenance("tests", config_hash=f"{name}-{seed}-{n}", seed=seed))  # fmt: skip
    codes = np.array(scheme.codes, dtype=np.uint8)
    palette = np.array(scheme.colours, dtype=np.float32)
    with DatasetWriter(root, info) as w:
        for i in range(n):
            blocks = rng.integers(0, len(codes), (4, 4))
            idx = np.kron(blocks, np.ones((size // 4, size // 4), dtype=np.int64))
            label = codes[idx]
            label[:2, :3] = scheme.nodata if scheme.nodata is not None else label[:2, :3]
            img = palette[idx] * 0.7 + rng.normal(0, 20, (size, size, 3))
            w.write(f"t{i:03d}", splits[i % len(splits)], label, np.clip(img, 0, 255).astype(np.uint8),
                    source=f"scene{i // 2}")  # fmt: skip
        w.finalize()
    return root
