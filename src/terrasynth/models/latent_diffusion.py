"""Latent diffusion for land-cover maps: a diffusers UNet on normalised autoencoder latents.

Three pieces kept apart, as in diffusers: the network (:func:`build_denoiser`: a
``UNet2DModel``, or a ``UNet2DConditionModel`` whose ``class_embed_type="projection"``
embeds a K-vector of class fractions when composition control is on), the noise process
used for training (:func:`p_losses` on :func:`~terrasynth.models.diffusion.training_scheduler`)
and the samplers (:data:`~terrasynth.models.diffusion.SCHEDULERS`, chosen by name with a step
count). :class:`LandcoverLDM` bundles them with the autoencoder and the per-channel latent
normalisation, and saves/loads with ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from terrasynth.classes import ClassScheme
from terrasynth.io import write_json_atomic
from terrasynth.models.autoencoder import decode_indices, downsampling_factor
from terrasynth.models.composition import CompositionPrior
from terrasynth.models.diffusion import LatentNorm, diffusion_target, make_scheduler, sample_latents

Denoiser = UNet2DModel | UNet2DConditionModel


def build_denoiser(
    latent_channels: int, sample_size: int, *, block_out_channels: tuple[int, ...] = (64, 128, 128),
    layers_per_block: int = 2, attention: tuple[bool, ...] = (False, False, True), attention_head_dim: int = 8,
    norm_num_groups: int = 32, composition_classes: int | None = None, out_channels: int | None = None,
) -> Denoiser:  # fmt: skip
    """A UNet on (B, C, h, w) latents (``out_channels`` out, default C); ``attention[i]`` puts
    self-attention in level ``i``.

    With ``composition_classes = K`` the UNet takes ``class_labels`` (B, K) of class
    fractions, projected into the timestep embedding (all zeros = unconditional).
    """
    if len(attention) != len(block_out_channels):
        raise ValueError(f"attention {attention} needs one flag per level of {block_out_channels}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    common = dict(
        sample_size=sample_size, in_channels=latent_channels, out_channels=out_channels or latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block, down_block_types=down,
        up_block_types=up, norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim,
    )  # fmt: skip
    if composition_classes is None:
        return UNet2DModel(**common)
    return UNet2DConditionModel(
        **common,
        mid_block_type="UNetMidBlock2D",  # self-attention only: there is no text to cross-attend to
        cross_attention_dim=block_out_channels[-1],  # unused (no cross-attention blocks), but required
        class_embed_type="projection",
        projection_class_embeddings_input_dim=composition_classes,
    )


def denoise(unet: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """The network's prediction for noisy latents ``x`` (B, C, h, w) at timesteps ``t`` (B,)."""
    if isinstance(unet, UNet2DConditionModel):
        if cond is None:
            cond = x.new_zeros(x.shape[0], unet.config.projection_class_embeddings_input_dim)
        return unet(x, t, encoder_hidden_states=None, class_labels=cond).sample
    return unet(x, t).sample


def p_losses(unet: Denoiser, z0: torch.Tensor, cond: torch.Tensor | None = None, *, scheduler: DDPMScheduler,
             snr_gamma: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Denoising loss on clean normalised latents ``z0`` (B, C, h, w).

    The target follows ``scheduler.config.prediction_type`` (noise or velocity);
    ``snr_gamma`` applies min-SNR-gamma weighting (Hang et al. 2023), else plain MSE.
    """
    b = z0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(z0.device)
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    xt = scheduler.add_noise(z0, noise, t)
    target = diffusion_target(scheduler, z0, noise, t)
    per_sample = F.mse_loss(denoise(unet, xt, t, cond), target, reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    ac = scheduler.alphas_cumprod.to(z0.device)[t]
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
    return (weight * per_sample).mean()


MODEL_FILE = "landcover_ldm.json"


class LandcoverLDM(CompositionPrior):
    """Autoencoder + denoiser + noise schedule + latent normalisation: a land-cover map generator.

    ``generate`` returns (B, H, W) training indices of ``scheme``. ``class_frequencies`` are
    the training pixel shares, used to complete a partly specified composition
    (:class:`~terrasynth.models.composition.CompositionPrior`).
    """

    family = "landcover-ldm"

    def __init__(
        self, vae: AutoencoderKL, unet: Denoiser, train_scheduler_config: dict[str, Any], norm: LatentNorm,
        scheme: ClassScheme, *, class_frequencies: list[float] | None = None, default_sampler: str = "dpmsolver++",
        default_steps: int = 25, default_guidance: float = 1.0, train_compositions: torch.Tensor | None = None,
    ):  # fmt: skip
        self.vae, self.unet, self.norm = vae, unet, norm
        self.train_scheduler_config = dict(train_scheduler_config)
        self.default_sampler, self.default_steps, self.default_guidance = default_sampler, default_steps, default_guidance
        self._init_prior(scheme, class_frequencies, train_compositions)

    @property
    def conditional(self) -> bool:
        return isinstance(self.unet, UNet2DConditionModel)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    @property
    def tile_size(self) -> int:
        return self.latent_shape[-1] * downsampling_factor(self.vae)

    def check_sampler(self, name: str) -> None:
        make_scheduler(name, self.train_scheduler_config)  # an unknown name fails now, not after a batch

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator, *, composition: torch.Tensor | None = None,
        guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``n`` maps (n, H, W) int64 training indices.

        ``composition`` (K,) fractions, or None: then a conditional model draws each map's
        composition from the training maps' and samples without guidance.
        """
        sched = make_scheduler(sampler or self.default_sampler, self.train_scheduler_config)
        cond, g = self.conditions(n, composition, generator, guidance, self.default_guidance)
        device = next(self.unet.parameters()).device

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tt = torch.full((n,), int(t), device=device, dtype=torch.long)
            if cond is None or g == 1.0:
                return denoise(self.unet, x, tt, cond)
            # Classifier-free guidance: conditional and unconditional (all-zero condition) as one batch.
            both = denoise(self.unet, torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, torch.zeros_like(cond)]))
            c, u = both.chunk(2)
            return u + g * (c - u)

        z = sample_latents(predict, sched, (n, *self.latent_shape), steps=steps or self.default_steps,
                           generator=generator, device=device)  # fmt: skip
        return decode_indices(self.vae, self.norm.denormalize(z))

    def eval(self) -> "LandcoverLDM":
        self.vae.eval()
        self.unet.eval()
        return self

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.vae.save_pretrained(path / "autoencoder")
        self.unet.save_pretrained(path / "unet")
        write_json_atomic(
            path / MODEL_FILE,
            {
                "unet_class": type(self.unet).__name__, "train_scheduler": self.train_scheduler_config,
                "latent_norm": {"mean": self.norm.shift.tolist(), "std": self.norm.std.tolist()},
                "scheme": self.scheme.to_dict(), "class_frequencies": self.class_frequencies,
                "default_sampler": self.default_sampler, "default_steps": self.default_steps,
                "default_guidance": self.default_guidance,
            },  # fmt: skip
        )
        self.save_compositions(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "LandcoverLDM":
        path = Path(path)
        meta = json.loads((path / MODEL_FILE).read_text())
        unet_cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}[meta["unet_class"]]
        return cls(
            AutoencoderKL.from_pretrained(path / "autoencoder").to(device),
            unet_cls.from_pretrained(path / "unet").to(device),
            meta["train_scheduler"],
            LatentNorm(torch.tensor(meta["latent_norm"]["mean"]), std=torch.tensor(meta["latent_norm"]["std"])),
            ClassScheme.from_dict(meta["scheme"], where=str(path / MODEL_FILE)),
            **{k: meta[k] for k in ("class_frequencies", "default_sampler", "default_steps", "default_guidance")},
            train_compositions=cls.load_compositions(path),
        ).eval()
