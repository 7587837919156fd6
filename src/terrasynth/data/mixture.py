"""Weighted mixtures of datasets, batch by batch (e.g. 25% real + 75% synthetic in every batch).

:class:`MixtureBatchSampler` decides, for training step ``t``, which tiles of which
dataset form the batch and which of the eight dihedral augmentations each gets. Every
batch is a pure function of ``(seed, t)``: a run resumed at step ``t`` sees exactly the
batches an uninterrupted run would, whatever the number of DataLoader workers.

- Composition: dataset ``i`` gets ``round(w_i * B)`` slots, with the rounding error
  carried to the next batch (error diffusion), so over ``T`` batches it has contributed
  ``w_i * T * B`` tiles to within one and each batch deviates from ``w_i * B`` by less
  than one tile.
- Within a dataset: epochs of a seeded permutation (each tile once per epoch).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from terrasynth.data.torchdata import TileDataset, paired_augment

# One element of a batch: (dataset index, tile index within it, augmentation seed or -1).
Slot = tuple[int, int, int]


def batch_quotas(weights: Sequence[float], batch_size: int, carry: list[float]) -> list[int]:
    """Slots per dataset for one batch; ``carry`` (per-dataset deficit) is updated in place."""
    want = [c + w * batch_size for c, w in zip(carry, weights)]
    q = [max(0, math.floor(x)) for x in want]
    while sum(q) > batch_size:  # only reachable with very small weights: take from the least owed
        i = min((i for i in range(len(q)) if q[i] > 0), key=lambda i: want[i] - q[i])
        q[i] -= 1
    while sum(q) < batch_size:  # hand remaining slots to the most owed
        i = max(range(len(q)), key=lambda i: (want[i] - q[i], -i))
        q[i] += 1
    for i in range(len(q)):
        carry[i] = want[i] - q[i]
    return q


class MixtureBatchSampler(Sampler[list[Slot]]):
    """Yields batches of :data:`Slot` for steps ``start_step .. stop_step - 1``.

    ``sizes`` are the datasets' lengths, ``weights`` their shares (normalised here).
    ``rank``/``world`` shard steps across processes: process ``r`` takes global batch
    ``t * world + r`` so the processes never share a batch.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        seed: int,
        *,
        start_step: int = 0,
        stop_step: int | None = None,
        augment: bool = True,
        rank: int = 0,
        world: int = 1,
    ):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("sizes and weights must be non-empty and of equal length")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        if any(n <= 0 < w for n, w in zip(sizes, weights)):
            raise ValueError(f"every dataset with a positive weight needs tiles, got sizes {list(sizes)}")
        total = float(sum(weights))
        self.sizes = list(sizes)
        self.weights = [w / total for w in weights]
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.stop_step = stop_step
        self.augment = augment
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an open-ended MixtureBatchSampler has no length")
        return max(0, self.stop_step - self.start_step)

    def _perm(self, i: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i * 7_919 + epoch)
        return torch.randperm(self.sizes[i], generator=g).tolist()

    def __iter__(self) -> Iterator[list[Slot]]:
        k = len(self.sizes)
        carry = [0.0] * k
        drawn = [0] * k  # tiles taken from each dataset so far
        perms: dict[int, tuple[int, list[int]]] = {}
        b = 0  # global batch counter
        step = self.start_step
        while self.stop_step is None or step < self.stop_step:
            q = batch_quotas(self.weights, self.batch_size, carry)
            mine = b == step * self.world + self.rank
            if mine:
                g = torch.Generator().manual_seed(self.seed * 7_777_777 + 1 + b)
                aug = torch.randint(0, 2**31 - 1, (self.batch_size,), generator=g).tolist()
                batch: list[Slot] = []
                for i in range(k):
                    for j in range(q[i]):
                        n = drawn[i] + j
                        epoch, pos = divmod(n, self.sizes[i])
                        if perms.get(i, (None,))[0] != epoch:
                            perms[i] = (epoch, self._perm(i, epoch))
                        batch.append((i, perms[i][1][pos], aug[len(batch)] if self.augment else -1))
                yield batch
                step += 1
            # Fast-forward (before start_step, or other ranks' batches) is arithmetic only.
            for i in range(k):
                drawn[i] += q[i]
            b += 1


class MixtureDataset(TorchDataset):
    """Indexes several :class:`TileDataset`s by :data:`Slot`; applies the slot's paired augmentation."""

    def __init__(self, parts: Sequence[TileDataset]):
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, slot: Slot) -> dict:
        i, j, aug = slot
        item = self.parts[i][j]
        if aug >= 0:
            gen = torch.Generator().manual_seed(aug)
            item["image"], item["mask"] = paired_augment(item["image"], item["mask"], gen)
            item["image"], item["mask"] = item["image"].contiguous(), item["mask"].contiguous()
        item["source"] = i
        return item
