"""A quick "judge" segmenter for selecting GAN checkpoints.

GAN training drifts: a checkpoint from minute 3 can beat the one from minute 8. So during
training we score snapshots on validation masks with a cheap proxy of the quality target:
a small UNet trained for a few hundred steps on the *real* training tiles reads the
generated validation images; the score is its mIoU on them divided by its mIoU on the real
validation images (segmentation consistency, 1.0 = as readable as real imagery).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex
from tqdm.auto import tqdm

from terrasynth.classes import IGNORE_INDEX
from terrasynth.data.torchdata import paired_augment


def build_judge(num_classes: int, encoder: str = "resnet18") -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes)


def train_judge(
    judge: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train ``judge`` on real tiles: ``images`` (N, 3, H, W) uint8, ``masks`` (N, H, W) uint8 (255 nodata)."""
    judge.to(device).train()
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    for step in tqdm(range(steps), desc="judge", unit="step", leave=False):
        gen = torch.Generator().manual_seed(seed * 7919 + step)
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        pairs = [paired_augment(images[i].float() / 255, masks[i].long(), gen) for i in idx.tolist()]
        x = torch.stack([p[0] for p in pairs]).to(device)
        y = torch.stack([p[1] for p in pairs]).to(device)
        loss = F.cross_entropy(judge(x * 2 - 1), y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


@torch.no_grad()
def judge_miou(
    judge: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int, batch_size: int = 32
) -> float:
    """Macro mIoU over the classes present in ``masks``; ``images`` (N, 3, H, W) float in [0, 1]."""
    judge.eval()
    dev = next(judge.parameters()).device
    metric = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX).to(dev)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev).float() * 2 - 1
        metric.update(judge(x).argmax(1), masks[i : i + batch_size].to(dev).long())
    iou = metric.compute()
    present = torch.bincount(masks[masks != IGNORE_INDEX].long().flatten(), minlength=num_classes)[:num_classes] > 0
    return float(iou[present.to(iou.device)].mean()) if present.any() else 0.0
