"""Sample grids of image generators for eyes and docs: mask | real | generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from terrasynth.data.dataset import Dataset
from terrasynth.data.preview import grid, save_png
from terrasynth.models.generator import ImageGenerator, load_generator


def preview_grid(
    run: str | Path, data: str | Path, out: str | Path, *, split: str = "test", n: int = 8, seed: int = 0
) -> Path:
    """One row per tile of ``split`` (the most varied ones): label colours, real image, two generated images."""
    gen_model = load_generator(run)
    ds = Dataset.open(data)
    recs = ds.split(split) or ds.records
    # The tiles with the most classes (>= 2% of pixels) show the most about a generator; spread
    # the choice over the split so neighbouring tiles of one source do not fill the grid.
    recs = recs[:: max(1, len(recs) // (4 * n))]
    recs = sorted(recs, key=lambda r: -sum(v >= 0.02 * max(1, sum(r.counts.values())) for v in r.counts.values()))[:n]
    codes = [ds.read_label(r) for r in recs]
    masks = torch.from_numpy(np.stack([ds.scheme.to_indices(c) for c in codes]).astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    draws = [gen_model.generate(masks, g) for _ in range(2)]
    rows = []
    for i, (rec, c) in enumerate(zip(recs, codes)):
        row = [ds.scheme.colourize(c)]
        if rec.image:
            row.append(ds.read_image(rec))
        row += [_u8(d[i]) for d in draws]
        rows.append(row)
    return save_png(out, grid(rows, scale=max(1, 128 // ds.info.tile_size)))


def training_preview(gen: ImageGenerator, tiles, path: Path, seed: int, n: int = 6) -> None:
    """mask | real | generated, one row per tile of ``tiles`` (items with ``mask`` and ``image``)."""
    idx = list(range(0, len(tiles), max(1, len(tiles) // n)))[:n]
    items = [tiles[i] for i in idx]
    masks = torch.stack([it["mask"] for it in items])
    fake = gen.generate(masks, torch.Generator().manual_seed(seed))
    scheme = gen.scheme
    rows = []
    for it, f in zip(items, fake):
        codes = scheme.to_codes(it["mask"].numpy().astype("uint8"))
        rows.append([scheme.colourize(codes), _u8(it["image"]), _u8(f)])
    save_png(path, grid(rows, scale=max(1, 128 // masks.shape[-1])))


def _u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
