"""Discriminators for the SPADE family.

- :class:`MultiscalePatchGAN` (pix2pixHD / SPADE): PatchGANs on the image concatenated
  with the label map, at full and downsampled resolutions; returns every layer's
  features so the generator can be trained with feature matching.
- :class:`OASISDiscriminator` (OASIS, Schönfeld et al., ICLR 2021): a U-Net that
  *segments* its input into K real classes plus one "fake" class, giving per-pixel,
  class-aware feedback; :func:`labelmix` regularises it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from terrasynth.classes import IGNORE_INDEX
from terrasynth.models.spade import maybe_sn

Downsample = Literal["stride", "pool"]


def _down_conv(fin: int, fout: int, down: Downsample) -> list[nn.Module]:
    """x2 downsampling conv: 4x4 stride 2 (pix2pix), or 3x3 stride 1 then 2x2 average pooling ("pool"),
    whose gradient to the input does not alternate between even and odd pixels."""
    return [nn.Conv2d(fin, fout, 4, 2, 1)] if down == "stride" else [nn.Conv2d(fin, fout, 3, 1, 1), nn.AvgPool2d(2)]


class PatchGAN(nn.Module):
    """70x70-style PatchGAN: ``x`` (B, C, H, W) -> list of features, the last (B, 1, H', W') logits."""

    def __init__(
        self, in_channels: int, ndf: int = 32, n_layers: int = 3, spectral: bool = True, down: Downsample = "stride"
    ):
        super().__init__()
        layers = [nn.Sequential(*_down_conv(in_channels, ndf, down), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            convs = [nn.Conv2d(nf_prev, nf, 4, 1, 1)] if n == n_layers - 1 else _down_conv(nf_prev, nf, down)
            convs[0] = maybe_sn(convs[0], spectral)
            layers.append(nn.Sequential(*convs, nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, 4, 1, 1)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscalePatchGAN(nn.Module):
    """``num_d`` PatchGANs on 1x, 1/2x, ... of (image, one-hot labels).

    ``forward(image (B,3,H,W), seg (B,K,H,W))`` -> per scale, the list of layer features
    (last = logits).
    """

    def __init__(self, num_classes: int, *, ndf: int = 32, n_layers: int = 3, num_d: int = 2, spectral: bool = True,
                 down: Downsample = "stride"):  # fmt: skip
        super().__init__()
        self.nets = nn.ModuleList([PatchGAN(3 + num_classes, ndf, n_layers, spectral, down) for _ in range(num_d)])

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> list[list[torch.Tensor]]:
        x = torch.cat([image, seg], 1)
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


class _ResBlockD(nn.Module):
    """OASIS discriminator block: pre-activation residual conv pair, optional down/up sampling."""

    def __init__(self, fin: int, fout: int, *, down: bool = False, up: bool = False, spectral: bool = True):
        super().__init__()
        self.down, self.up = down, up
        self.conv1 = maybe_sn(nn.Conv2d(fin, fout, 3, padding=1), spectral)
        self.conv2 = maybe_sn(nn.Conv2d(fout, fout, 3, padding=1), spectral)
        self.shortcut = maybe_sn(nn.Conv2d(fin, fout, 1), spectral) if fin != fout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        dx = self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))
        out = self.shortcut(x) + dx
        return F.avg_pool2d(out, 2) if self.down else out


class OASISDiscriminator(nn.Module):
    """U-Net segmenter with K+1 outputs: classes 0..K-1 = "real, class k", class K = "fake".

    ``forward(image (B, 3, H, W))`` -> logits (B, K+1, H, W). It never sees the label map:
    it must recognise the classes in the image, so a fake image is only "real" where it
    looks like the class the mask asked for. ``depth`` downsamplings (H divisible by 2**depth).
    """

    def __init__(self, num_classes: int, *, ndf: int = 32, depth: int = 3, spectral: bool = True):
        super().__init__()
        chans = [ndf * min(2**i, 8) for i in range(depth + 1)]
        self.stem = maybe_sn(nn.Conv2d(3, chans[0], 3, padding=1), spectral)
        self.downs = nn.ModuleList(
            [_ResBlockD(chans[i], chans[i + 1], down=True, spectral=spectral) for i in range(depth)]
        )
        # Decoder: upsample, then merge the skip of the same size (concatenation).
        self.ups = nn.ModuleList(
            [_ResBlockD(chans[i + 1] + (chans[i + 1] if i < depth - 1 else 0), chans[i], up=True, spectral=spectral)
             for i in reversed(range(depth))]
        )  # fmt: skip
        self.head = nn.Conv2d(chans[0] * 2, num_classes + 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        skips = [x]
        for blk in self.downs:
            x = blk(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        for i, blk in enumerate(self.ups):
            x = blk(x if i == 0 else torch.cat([x, skips.pop()], 1))
        return self.head(F.leaky_relu(torch.cat([x, skips.pop()], 1), 0.2))


def oasis_class_weights(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights of the batch, (K,), as in OASIS (rare classes count more)."""
    valid = masks[masks != IGNORE_INDEX]
    counts = torch.bincount(valid, minlength=num_classes).float()
    total = counts.sum().clamp(min=1)
    return torch.where(counts > 0, total / (counts * num_classes).clamp(min=1), torch.zeros_like(counts))


def oasis_loss(logits: torch.Tensor, masks: torch.Tensor, *, real: bool, weights: torch.Tensor) -> torch.Tensor:
    """OASIS (K+1)-class cross-entropy.

    ``real=True``: every labelled pixel should be its own class (used for real images in D
    and for fake images in G); ``real=False``: every pixel should be "fake" (index K).
    """
    k = logits.shape[1] - 1
    if real:
        w = torch.cat([weights, weights.new_ones(1)])
        return F.cross_entropy(logits, masks, weight=w, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, torch.full_like(masks, k))


def labelmix(
    real: torch.Tensor, fake: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix real and fake images along class regions: each class of each image is taken
    wholly from the real or the fake image at random.

    Returns the mixed images (B, 3, H, W) and the binary map (B, 1, H, W), 1 = real.
    """
    b = masks.shape[0]
    coin = torch.randint(0, 2, (b, 256), generator=generator).to(masks.device)
    m = torch.gather(coin, 1, masks.flatten(1)).view_as(masks).unsqueeze(1).float()
    return m * real + (1 - m) * fake, m


def labelmix_loss(d_mixed: torch.Tensor, d_real: torch.Tensor, d_fake: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """D's output on the mix should be the same mix of its outputs (consistency, MSE on logits)."""
    return F.mse_loss(d_mixed, m * d_real + (1 - m) * d_fake)
