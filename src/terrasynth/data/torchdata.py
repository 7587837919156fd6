"""PyTorch access to terrasynth datasets, with paired augmentations."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from terrasynth.classes import ClassScheme
from terrasynth.data.dataset import Dataset, TileRecord
from terrasynth.errors import UserError


def dihedral_t(x: torch.Tensor, r: int) -> torch.Tensor:
    """Transform ``r`` (0..7) of the 8 flips/rotations of (..., H, W): a horizontal flip when r >= 4, then r % 4
    quarter turns. Pixels stay exact (no interpolation), so class codes are never mixed."""
    if r >= 4:
        x = x.flip(-1)
    return torch.rot90(x, r % 4, (-2, -1)) if r % 4 else x


def paired_augment(image: torch.Tensor | None, mask: torch.Tensor | None, gen: torch.Generator | None = None):
    """A random :func:`dihedral_t` applied identically to ``image`` (C, H, W) and ``mask`` (H, W); either may be None."""
    r = torch.randint(0, 8, (1,), generator=gen).item()
    return tuple(dihedral_t(x, r) if x is not None else None for x in (image, mask))


def random_pairs(get: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]], n: int, batch_size: int,
                 gen: torch.Generator, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``batch_size`` random items ``get(i)`` (image (C, H, W), mask (H, W) or None) of ``n``, stacked; each
    pair given the same random :func:`dihedral_t` when ``augment``. Draws from ``gen`` only, the same
    draws with or without masks."""
    pairs = [get(i) for i in torch.randint(0, n, (batch_size,), generator=gen).tolist()]
    if augment:
        pairs = [paired_augment(img, mask, gen) for img, mask in pairs]
    masks = None if pairs[0][1] is None else torch.stack([p[1] for p in pairs])
    return torch.stack([p[0] for p in pairs]), masks


class TileDataset(TorchDataset):
    """Reads a terrasynth dataset for training.

    Items are dicts: ``image`` float32 (3, H, W) in [0, 1] (absent for label-only
    datasets), ``mask`` int64 (H, W) of training indices with nodata as 255 (absent with
    ``labels=False``: images alone, no label file is opened), and ``id``.
    ``cache=True`` keeps all tiles in memory after first read (small CPU datasets).
    """

    def __init__(
        self, data: Dataset | str | os.PathLike, splits: Sequence[str] | str | None = ("train",), *,
        augment: bool = False, require_images: bool = True, cache: bool = True,
        records: Sequence[TileRecord] | None = None, labels: bool = True,
    ):  # fmt: skip
        self.ds = data if isinstance(data, Dataset) else Dataset.open(data)
        if isinstance(splits, str):
            splits = (splits,)
        self.records = list(records) if records is not None else self.ds.split(*(splits or ()))
        if not self.records:
            raise UserError(f"{self.ds.root}: no tiles in split(s) {list(splits or ['all'])}; "
                            f"available: {sorted({r.split for r in self.ds.records})}")  # fmt: skip
        self.with_images = self.ds.info.has_images
        if require_images and not self.with_images:
            raise UserError(f"{self.ds.root}: label-only dataset, but images are needed here; pass a paired dataset")
        if not labels and not self.with_images:
            raise UserError(f"{self.ds.root}: label-only dataset, but its images were asked for without labels")
        self.augment = augment
        self.cache = cache
        self.labels = labels
        self._cache: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}

    @property
    def scheme(self) -> ClassScheme:
        return self.ds.scheme

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if i in self._cache:
            return self._cache[i]
        rec = self.records[i]
        idx = self.scheme.to_indices(self.ds.read_label(rec)) if self.labels else None
        img = self.ds.read_image(rec) if (self.with_images and rec.image) else None
        if self.cache:
            self._cache[i] = (img, idx)
        return img, idx

    def __getitem__(self, i: int) -> dict:
        img, idx = self._load(i)
        mask = torch.from_numpy(idx.astype(np.int64)) if idx is not None else None
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255) if img is not None else None
        if self.augment:
            image, mask = paired_augment(image, mask)
        item: dict = {"id": self.records[i].id}
        for key, x in (("mask", mask), ("image", image)):
            if x is not None:
                item[key] = x.contiguous()
        return item

