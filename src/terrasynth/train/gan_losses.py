"""GAN losses of SPADE: hinge adversarial loss, discriminator feature matching, the mode-seeking
diversity term, and an optional VGG-19 perceptual loss (only with user-supplied local weights;
nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from terrasynth.errors import UserError


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def multiscale(fn, outputs: list[list[torch.Tensor]], *more: list[list[torch.Tensor]]) -> torch.Tensor:
    """Average ``fn`` over the discriminator scales, applied to each scale's logits (last feature)."""
    return sum(fn(*(o[i][-1] for o in (outputs, *more))) for i in range(len(outputs))) / len(outputs)


def feature_matching_loss(fake_feats: list[list[torch.Tensor]], real_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between D's intermediate features on fake and real (real detached), averaged over scales."""
    loss = fake_feats[0][0].new_zeros(())
    for fk, rl in zip(fake_feats, real_feats):
        for f, r in zip(fk[:-1], rl[:-1]):
            loss = loss + F.l1_loss(f, r.detach())
    return loss / len(fake_feats)


def mode_seeking_loss(
    fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al., CVPR 2019), in the form of its code (HelenMao/MSGAN,
    ``loss_lz = 1 / (lz + eps)``, eps 1e-5): ``1 / (mean|G(m,z1) - G(m,z2)| / mean|z1 - z2| + eps)``.

    ``fake1``, ``fake2`` (B, 3, H, W): one batch of masks painted with noise ``z1``, ``z2`` (B, D).
    Minimising it pushes two noise codes apart in image space; its gradient fades as 1/lz**2, so it
    stops pushing once the images differ (unlike DSGAN's clipped -min(lz, tau), same idea).
    """
    lz = (fake1 - fake2).abs().mean() / (z1 - z2).abs().mean()
    return 1 / (lz + eps)


class VGGLoss(nn.Module):
    """Perceptual loss on VGG-19 relu1_1..relu5_1 with the reference weights (1/32 .. 1).

    ``weights`` is a local torchvision ``vgg19`` state dict file (``.pth`` or
    ``.safetensors``); images are (B, 3, H, W) in [-1, 1].
    """

    SLICES = (2, 7, 12, 21, 30)
    LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import vgg19

        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"{path}: VGG-19 weights not found; pass a local torchvision vgg19 state dict or set loss.vgg=0"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        net = vgg19(weights=None)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0][:80]
            raise UserError(f"{path}: not a torchvision vgg19 state dict ({msg}); pass the right file") from exc
        self.features = net.features[: self.SLICES[-1]].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = ((fake + 1) / 2 - self.mean) / self.std
        y = ((real + 1) / 2 - self.mean) / self.std
        loss, start = fake.new_zeros(()), 0
        for end, w in zip(self.SLICES, self.LAYER_WEIGHTS):
            block = self.features[start:end]
            x, y = block(x), block(y)
            loss = loss + w * F.l1_loss(x, y.detach())
            start = end
        return loss
