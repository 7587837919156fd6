"""A quick "judge" segmenter for selecting GAN checkpoints.

GAN training drifts: a checkpoint from minute 3 can beat the one from minute 8. So during
training we score snapshots on validation masks with a cheap proxy of the quality target:
a small UNet trained for a few hundred steps on the *real* training tiles reads the
generated validation images; the score is its mIoU on them divided by its mIoU on the real
validation images (segmentation consistency, 1.0 = as readable as real imagery).

The judge trains as its own stage (``judge``) of the run directory on the training runner,
so it resumes, refuses changed settings and restarts like every other stage.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from terrasynth.accel import make_accelerator
from terrasynth.classes import IGNORE_INDEX
from terrasynth.data.torchdata import random_pairs
from terrasynth.evaluate.segmentation import SegmentationMetrics
from terrasynth.train.runner import RunSpec, Runner


def build_judge(num_classes: int, encoder: str = "resnet18") -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes)


class JudgeTraining:
    """The judge as a runner family: cross-entropy on augmented real tiles, Adam at a constant 1e-3."""

    def __init__(self, runner: Runner, judge: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                 batch_size: int = 8):  # fmt: skip
        self.images, self.masks, self.batch_size, self.device = images, masks, batch_size, runner.acc.device
        self.net, self.opt = runner.prepare(judge, torch.optim.Adam(judge.parameters(), lr=1e-3))

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        x, y = random_pairs(lambda i: (self.images[i].float() / 255, self.masks[i].long()), len(self.images),
                            self.batch_size, gen)  # fmt: skip
        x, y = x.to(self.device), y.to(self.device)  # (B, 3, H, W) in [0, 1], (B, H, W)
        return F.cross_entropy(self.net(x * 2 - 1), y, ignore_index=IGNORE_INDEX)


def train_judge(judge: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, steps: int, seed: int,
                run_dir: str | os.PathLike, fingerprint: dict[str, Any], resume: bool = True,
                progress: bool = True) -> nn.Module:  # fmt: skip
    """Train ``judge`` on real tiles as stage ``judge`` of ``run_dir``: ``images`` (N, 3, H, W) uint8,
    ``masks`` (N, H, W) uint8 (255 nodata). Builds its own fp32 accelerator, so call it before the
    accelerator of the model it judges (Accelerate's state is process-wide)."""
    spec = RunSpec("judge", max_steps=steps, lr_schedule="constant", checkpoint_every=100, keep_checkpoints=1,
                   seed=seed)  # fmt: skip
    runner = Runner(spec, make_accelerator(mixed_precision="no"), run_dir, fingerprint, resume=resume,
                    progress=progress)  # fmt: skip
    family = JudgeTraining(runner, judge, images, masks)
    runner.fit(family)
    return runner.unwrap(family.net).eval()


@torch.no_grad()
def judge_miou(
    judge: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int, batch_size: int = 32
) -> float:
    """Macro mIoU over the classes present in ``masks`` (N, H, W) of the judge's reading of ``images``
    (N, 3, H, W) float in [0, 1]; NaN when ``masks`` has no valid pixel."""
    judge.eval()
    dev = next(judge.parameters()).device
    metrics = SegmentationMetrics(num_classes, dev)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev).float() * 2 - 1
        metrics.update(judge(x).argmax(1), masks[i : i + batch_size].to(dev).long())
    return metrics.compute()["macro_miou"]
