"""The per-pixel colour baseline: each pixel gets the class whose mean training colour is nearest.

It has no notion of texture or context, so it shows how much of a segmentation score
is explained by colour alone: a segmenter must beat it to have learnt anything spatial.
"""

from __future__ import annotations

import torch

from terrasynth.classes import IGNORE_INDEX


class NearestClassColour:
    """Fits the mean RGB of every class; predicts the nearest mean (Euclidean, RGB in [0, 1])."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sums = torch.zeros(num_classes, 3, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def fit_batch(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """``images`` (B, 3, H, W) in [0, 1], ``masks`` (B, H, W) training indices (255 ignored)."""
        px = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
        m = masks.reshape(-1)
        valid = m != IGNORE_INDEX
        self.sums.index_add_(0, m[valid], px[valid])
        self.counts += torch.bincount(m[valid], minlength=self.num_classes).double()

    @property
    def means(self) -> torch.Tensor:
        """(K, 3); classes never seen get +inf so they are never predicted."""
        means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
        means[self.counts == 0] = float("inf")
        return means

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W) int64 training indices."""
        b, _, h, w = images.shape
        px = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
        d = torch.cdist(px, self.means.nan_to_num(posinf=1e6))
        return d.argmin(1).reshape(b, h, w)
