"""KL autoencoders (diffusers :class:`~diffusers.AutoencoderKL`), one builder for both uses.

* Land-cover maps: a categorical autoencoder, one-hot (B, K, H, W) -> latent (B, C, H/f, W/f) -> logits.
* Aerial images (the ControlNet base): RGB (B, 3, H, W) in [-1, 1], trained with :class:`VAELoss`.

The categorical one is :class:`~diffusers.AutoencoderKL` with ``in_channels = out_channels = K``:
the decoder's output is read as per-pixel class logits and trained with cross-entropy
(the "Another Earth" paper's loss), nodata pixels ignored, plus an optional small KL term
that keeps the latent space smooth enough for diffusion. Using the diffusers class gives
``save_pretrained``/``from_pretrained`` and the paper-scale configurations for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from pydantic import Field, model_validator

from terrasynth.classes import IGNORE_INDEX, one_hot
from terrasynth.config import StrictModel


class AutoencoderArch(StrictModel):
    """Architecture of a KL autoencoder; training configs add their own fields and defaults."""

    latent_channels: int = Field(4, ge=1)
    block_out_channels: list[int] = [32, 64, 128]  # f = 2 ** (levels - 1)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int | None = Field(16, ge=1)  # None: min(32, narrowest level)
    mid_attention: bool = False  # self-attention in the middle block

    @model_validator(mode="after")
    def _groups(self):
        if self.norm_num_groups and any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        return self

    def build(self, in_channels: int, sample_size: int = 32) -> AutoencoderKL:
        return build_autoencoder(
            in_channels, latent_channels=self.latent_channels, block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block, mid_attention=self.mid_attention, sample_size=sample_size,
            norm_num_groups=self.norm_num_groups or min(32, min(self.block_out_channels)),
        )  # fmt: skip


def build_autoencoder(
    in_channels: int, *, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 64, 128),
    layers_per_block: int = 1, norm_num_groups: int = 16, mid_attention: bool = False, sample_size: int = 32,
) -> AutoencoderKL:  # fmt: skip
    """A KL autoencoder on ``in_channels`` (K one-hot classes, or 3 for RGB) whose downsampling
    factor is ``2 ** (len(block_out_channels) - 1)``."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
        mid_block_add_attention=mid_attention, sample_size=sample_size,
    )  # fmt: skip


def downsampling_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae: AutoencoderKL, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) training indices (255 = nodata) -> posterior means (B, C, H/f, W/f)."""
    return vae.encode(one_hot(mask, vae.config.in_channels)).latent_dist.mode()


def decode_logits(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, K, h*f, w*f) class logits."""
    return vae.decode(z).sample


def decode_indices(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, H, W) int64 training indices (argmax; never nodata)."""
    return decode_logits(vae, z).argmax(1)


def autoencoder_loss(
    vae: AutoencoderKL, mask: torch.Tensor, kl_weight: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Cross-entropy reconstruction (nodata ignored) + ``kl_weight`` * KL to N(0, I).

    ``mask`` (B, H, W) int64. Returns (loss, logged terms, logits (B, K, H, W)).
    """
    post = vae.encode(one_hot(mask, vae.config.in_channels)).latent_dist
    logits = decode_logits(vae, post.sample())
    if (mask != IGNORE_INDEX).any():
        ce = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX)
    else:  # an all-nodata batch teaches nothing but must not produce NaN
        ce = logits.sum() * 0.0
    kl = post.kl().mean() / (post.mean[0].numel())  # per latent element, so the weight is size-independent
    loss = ce + kl_weight * kl
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}, logits


class VAELoss(torch.nn.Module):
    """Reconstruction (L1) + ``kl_weight`` * KL of an image AutoencoderKL, images (B, 3, H, W) in [0, 1]."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def reconstruct(self, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input in [-1, 1], reconstruction of a posterior sample, KL per input element)."""
        x = images * 2 - 1
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
        return x, self.vae.decode(z).sample, post.kl().mean() / x[0].numel()

    def forward(self, images: torch.Tensor, gen: torch.Generator, parts: bool = False):
        """The loss; ``parts=True``: ``reconstruct``'s (input, reconstruction, KL), through the (DDP) wrapper."""
        x, rec, kl = self.reconstruct(images, gen)
        return (x, rec, kl) if parts else F.l1_loss(rec, x) + self.kl_weight * kl
