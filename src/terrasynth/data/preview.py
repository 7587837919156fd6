"""Preview grids: label colours beside images, for eyes and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from terrasynth.data.dataset import Dataset, TileRecord
from terrasynth.io import atomic_path


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile (H, W, 3) uint8 panels into one image on white, one row of ``rows`` per line.

    Smaller panels sit top-left in their cell; short rows are filled with white cells.
    """
    h = max(p.shape[0] for r in rows for p in r)
    w = max(p.shape[1] for r in rows for p in r)
    ncol = max(len(r) for r in rows)
    cells = torch.full((len(rows) * ncol, 3, h, w), 255, dtype=torch.uint8)
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            cells[i * ncol + j, :, : p.shape[0], : p.shape[1]] = torch.from_numpy(p.transpose(2, 0, 1).copy())
    if len(cells) == 1:  # make_grid returns a lone image without its border
        cells = torch.nn.functional.pad(cells, (pad, pad, pad, pad), value=255)
    out = np.ascontiguousarray(make_grid(cells, nrow=ncol, padding=pad, pad_value=255).permute(1, 2, 0).numpy())
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path


def dataset_preview(ds: Dataset, path: str | Path, n: int = 8, records: Sequence[TileRecord] | None = None) -> Path:
    """A PNG with ``n`` tiles: one row per tile, label colours | image (when present)."""
    recs = list(records) if records is not None else ds.records[:: max(1, len(ds.records) // n)][:n]
    rows = []
    for rec in recs:
        row = [ds.scheme.colourize(ds.read_label(rec))]
        if rec.image:
            row.append(ds.read_image(rec))
        rows.append(row)
    # Rows of pairs read better side by side: fold into up to 4 pairs per line.
    lines = [[p for r in rows[k : k + 4] for p in r] for k in range(0, len(rows), 4)]
    return save_png(path, grid(lines, scale=max(1, 128 // ds.info.tile_size)))
