"""SPADE: semantic image synthesis with spatially-adaptive normalisation (Park et al., CVPR 2019).

A land-cover map (one-hot, K channels) paints an RGB image. The generator starts from the
label map pooled to a small latent grid and upsamples it (nearest) through residual
blocks whose normalisation is modulated, pixel by pixel, by the label map (``SPADE``).

Optional 3D noise (OASIS, Schönfeld et al., ICLR 2021): a per-image noise vector is
broadcast over the image and concatenated to the label map wherever the label map is
read, so one mask can give many images. Without it SPADE is deterministic: identical
masks give identical images.

``load_generator(run)`` reads a run written by ``terrasynth spade train`` and returns an
:class:`~terrasynth.models.generator.ImageGenerator`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from terrasynth.classes import ClassScheme, one_hot
from terrasynth.errors import UserError

Norm = Literal["instance", "batch"]
Noise = Literal["none", "3d"]
Upsample = Literal["nearest", "bilinear"]


def maybe_sn(module: nn.Module, use: bool) -> nn.Module:
    return _sn(module) if use else module


class SPADE(nn.Module):
    """Parameter-free normalisation, then a per-pixel affine predicted from the label map.

    ``x`` (B, C, H, W), ``seg`` (B, L, H', W') -> (B, C, H, W); ``seg`` is resized (nearest)
    to ``x``'s size so class boundaries stay sharp.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3, norm: Norm = "instance"):
        super().__init__()
        self.param_free_norm = (
            nn.InstanceNorm2d(norm_nc, affine=False) if norm == "instance" else nn.BatchNorm2d(norm_nc, affine=False)
        )
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """Residual block: (SPADE, LeakyReLU, conv) x 2, with a learned 1x1 shortcut when channels change.

    ``x`` (B, fin, H, W), ``seg`` (B, L, H', W') -> (B, fout, H, W).
    """

    def __init__(
        self, fin: int, fout: int, label_nc: int, *, hidden: int = 128, norm: Norm = "instance", spectral: bool = True
    ):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = maybe_sn(nn.Conv2d(fin, fmiddle, 3, padding=1), spectral)
        self.conv_1 = maybe_sn(nn.Conv2d(fmiddle, fout, 3, padding=1), spectral)
        self.norm_0 = SPADE(fin, label_nc, hidden, norm=norm)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden, norm=norm)
        if self.learned_shortcut:
            self.conv_s = maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)
            self.norm_s = SPADE(fin, label_nc, hidden, norm=norm)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEGenerator(nn.Module):
    """Label map (one-hot) -> RGB in [-1, 1]; fully convolutional.

    The label map (plus 3D noise, when on) is pooled to ``H / 2**num_up`` and a conv lifts
    it to ``ngf * 2**num_up`` channels (capped at ``16 * ngf``); ``num_middle`` blocks work
    at that size, then each of ``num_up`` stages upsamples x2 (nearest) and halves the
    channels (down to ``ngf``). Masks must have sides divisible by ``2**num_up``.
    """

    def __init__(
        self, num_classes: int, *, ngf: int = 32, num_up: int = 4, num_middle: int = 1, hidden: int = 64,
        norm: Norm = "instance", spectral: bool = True, noise: Noise = "none", noise_dim: int = 32,
        upsample: Upsample = "nearest",
    ):  # fmt: skip
        super().__init__()
        self.num_classes, self.num_up, self.noise, self.upsample = num_classes, num_up, noise, upsample
        self.noise_dim = noise_dim if noise == "3d" else 0
        label_nc = num_classes + self.noise_dim
        chans = [min(ngf * 2 ** (num_up - i), 16 * ngf) for i in range(num_up + 1)]  # top (small) .. bottom (full res)
        self.fc = nn.Conv2d(label_nc, chans[0], 3, padding=1)
        block = dict(hidden=hidden, norm=norm, spectral=spectral)
        self.middle = nn.ModuleList([SPADEResBlock(chans[0], chans[0], label_nc, **block) for _ in range(num_middle)])
        self.up = nn.ModuleList([SPADEResBlock(chans[i], chans[i + 1], label_nc, **block) for i in range(num_up)])
        self.conv_img = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def sample_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor | None:
        """(B, noise_dim) standard normal, or None when the generator takes no noise."""
        if self.noise_dim == 0:
            return None
        z = torch.randn(batch, self.noise_dim, generator=generator, device=generator.device if generator else None)
        return z.to(device) if device is not None else z

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``seg`` (B, K, H, W) one-hot float, ``z`` (B, noise_dim) or None -> (B, 3, H, W) in [-1, 1]."""
        b, _, h, w = seg.shape
        step = 2**self.num_up
        if h % step or w % step:
            raise ValueError(f"mask size {h}x{w} must be divisible by {step} (2**num_up)")
        if self.noise_dim:
            if z is None:
                raise ValueError("this generator takes 3D noise: pass z (B, noise_dim)")
            seg = torch.cat([seg, z[:, :, None, None].expand(b, self.noise_dim, h, w)], 1)
        x = self.fc(F.interpolate(seg, size=(h // step, w // step), mode="nearest"))
        for blk in self.middle:
            x = blk(x, seg)
        for blk in self.up:
            x = blk(F.interpolate(x, scale_factor=2, mode=self.upsample), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def num_up_for(tile_size: int, latent_size: int) -> int:
    """Upsampling stages that take a ``latent_size`` grid to ``tile_size``."""
    n = math.log2(tile_size / latent_size)
    if n != int(n) or n < 1:
        raise UserError(f"tile size {tile_size} / latent size {latent_size} must be a power of two >= 2; "
                        "fix model.latent_size (e.g. 4)")  # fmt: skip
    return int(n)


# ---- inference: the ImageGenerator for ``terrasynth synthesize`` --------------------------


class SpadeImageGenerator:
    """Wraps a trained :class:`SPADEGenerator` behind the ``ImageGenerator`` protocol."""

    def __init__(self, net: SPADEGenerator, scheme: ClassScheme, *, run: Path, checkpoint: str, device="cpu"):
        self.net, self.scheme, self.run, self.checkpoint = net.to(device).eval(), scheme, run, checkpoint
        self.device = torch.device(device)

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``masks`` (B, H, W) int64 indices, 255 = nodata -> (B, 3, H, W) float in [0, 1].

        Noise is drawn from ``generator`` (on CPU), so the same generator state gives the
        same images. Nodata pixels get an all-zero label vector, as in training.
        """
        seg = one_hot(masks.to(self.device), self.scheme.num_classes)
        z = self.net.sample_noise(masks.shape[0], generator, device=self.device)
        return self.net(seg, z).add(1).div(2).clamp(0, 1).float().cpu()

    def describe(self) -> dict[str, Any]:
        return {"family": "spade", "run": str(self.run), "checkpoint": self.checkpoint}


def load_generator(run: str | Path, device: str | torch.device = "cpu") -> SpadeImageGenerator:
    """Read ``generator.json`` of a SPADE run and the checkpoint it names (the selected one)."""
    from terrasynth.io import load_weights

    run = Path(run)
    meta_path = run / "generator.json"
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta.get("checkpoint"), str) or not isinstance(meta.get("generator_kwargs"), dict):
        raise UserError(f"{meta_path}: 'checkpoint' must be a file name and 'generator_kwargs' a mapping; "
                        "rerun 'terrasynth spade train' or restore the run directory")  # fmt: skip
    ckpt = run / meta["checkpoint"]
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: checkpoint named in {meta_path} is missing; rerun 'terrasynth spade train'")
    net = SPADEGenerator(**meta["generator_kwargs"])
    net.load_state_dict(load_weights(ckpt, "rerun 'terrasynth spade train' to resume, or restore the run"))
    scheme = ClassScheme.from_dict(meta["scheme"], where=str(meta_path))
    return SpadeImageGenerator(net, scheme, run=run, checkpoint=meta["checkpoint"], device=device)
