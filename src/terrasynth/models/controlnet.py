"""ControlNet (Zhang et al. 2023) on a latent-diffusion base: land-cover map -> aerial RGB.

A trainable copy of the base UNet's encoder (diffusers :class:`ControlNetModel`) reads the
one-hot land-cover map through a small conditioning embedding whose stride equals the
autoencoder's factor ``f``; its zero-initialised output convolutions add residuals to
the frozen base UNet's skip connections and middle block.

Guidance. Classifier-free guidance is applied to the *condition*:
``pred = uncond + g * (cond - uncond)``. What "unconditional" means is a choice
(``unconditional``):

* ``"base"`` (default): the frozen base alone, i.e. no ControlNet residuals. The base was
  trained unconditionally, so it is a true unconditional model and needs no condition
  dropout in ControlNet training.
* ``"zero_condition"``: the ControlNet fed an all-zero map (what an all-nodata mask
  encodes); train with ``condition_dropout > 0`` so that the ControlNet learns it.

The conditional and unconditional halves run as one batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import ControlNetModel

from terrasynth.classes import ClassScheme, one_hot
from terrasynth.errors import UserError
from terrasynth.models.diffusion import make_scheduler, sample_latents
from terrasynth.models.generator import GENERATOR_FILE
from terrasynth.models.latent_base import LatentBase, is_hub_id, load_base

Unconditional = Literal["base", "zero_condition"]
CONTROLNET_DIR = "controlnet"

# Conditioning-embedding widths by autoencoder factor: one stride-2 stage per halving
# (diffusers' default (16, 32, 96, 256) is the f=8 case).
EMBEDDING_CHANNELS: dict[int, tuple[int, ...]] = {1: (16,), 2: (16, 32), 4: (16, 32, 64), 8: (16, 32, 96, 256)}


def build_controlnet(
    base: LatentBase, num_classes: int, embedding_channels: tuple[int, ...] | list[int] | None = None
) -> ControlNetModel:
    """A fresh ControlNet copied from the base UNet, taking a (B, K, H, W) one-hot map."""
    f = base.factor
    channels = tuple(embedding_channels) if embedding_channels else EMBEDDING_CHANNELS.get(f)
    if channels is None or 2 ** (len(channels) - 1) != f:
        raise UserError(
            f"conditioning_embedding_out_channels={channels} downsamples by {2 ** (len(channels or [0]) - 1)}, "
            f"but the base's autoencoder factor is {f}; give {int(torch.log2(torch.tensor(f))) + 1} entries"
        )
    return ControlNetModel.from_unet(
        base.unet, conditioning_channels=num_classes, conditioning_embedding_out_channels=channels
    )


def controlled_unet(
    unet: torch.nn.Module, controlnet: torch.nn.Module, latents: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
    cond: torch.Tensor, conditioning_scale: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """The base ``unet``'s output for ``latents`` (B, C, h, w) at ``t`` with ``controlnet``'s residuals for ``cond``."""
    down, mid = controlnet(latents, t, encoder_hidden_states=ctx, controlnet_cond=cond,
                           conditioning_scale=conditioning_scale, return_dict=False)  # fmt: skip
    return unet(latents, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample  # fmt: skip


class ControlNetGenerator:
    """Land-cover masks -> RGB with a frozen latent base and a trained ControlNet."""

    family = "controlnet"

    def __init__(
        self, base: LatentBase, controlnet: ControlNetModel, scheme: ClassScheme, *,
        scheduler: str = "DPMSolverMultistepScheduler", steps: int = 20, guidance_scale: float = 2.0,
        conditioning_scale: float = 1.0, unconditional: Unconditional = "base", batch_size: int = 64,
        run: str | None = None, checkpoint: str | None = None,
    ):  # fmt: skip
        self.base, self.controlnet, self.scheme = base, controlnet.eval(), scheme
        self.scheduler_name, self.scheduler = scheduler, make_scheduler(scheduler, base.noise_scheduler.config)
        self.steps, self.guidance_scale, self.conditioning_scale = steps, guidance_scale, conditioning_scale
        self.unconditional, self.batch_size, self.run, self.checkpoint = unconditional, batch_size, run, checkpoint

    @property
    def device(self) -> torch.device:
        return self.base.unet.device

    def condition(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, H, W) training indices (255 = nodata) -> (B, K, H, W) one-hot; nodata is all zero."""
        return one_hot(masks, self.scheme.num_classes)

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, conditioning_scale: float = 1.0
    ) -> torch.Tensor:
        """Base UNet output for ``latents`` (B, C, h, w) at ``t``, steered by ``cond`` (B, K, H, W).

        ``cond=None`` gives the base alone (no ControlNet residuals).
        """
        ctx = self.base.contexts(latents.shape[0])
        if cond is None:
            return self.base.unet(latents, t, encoder_hidden_states=ctx).sample
        return controlled_unet(self.base.unet, self.controlnet, latents, t, ctx, cond, conditioning_scale)

    def _guided(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g, s = self.guidance_scale, self.conditioning_scale
        if g == 1.0:
            return self.predict(latents, t, cond, s)
        b = latents.shape[0]
        x2 = torch.cat([latents, latents])
        ctx = self.base.contexts(2 * b)
        if self.unconditional == "zero_condition":
            both = torch.cat([cond, torch.zeros_like(cond)])
            out = controlled_unet(self.base.unet, self.controlnet, x2, t, ctx, both, s)
        else:  # the base alone: zero residuals for the unconditional half
            down, mid = self.controlnet(
                latents, t, encoder_hidden_states=ctx[:b], controlnet_cond=cond, conditioning_scale=s, return_dict=False
            )
            down, mid = [torch.cat([r, torch.zeros_like(r)]) for r in down], torch.cat([mid, torch.zeros_like(mid)])
            out = self.base.unet(x2, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                                 mid_block_additional_residual=mid).sample  # fmt: skip
        c, u = out.chunk(2)
        return u + g * (c - u)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, K, H, W) one-hot -> (B, 3, H, W) in [0, 1]. Noise is drawn on CPU from ``generator``."""
        f = self.base.factor
        b, _, h, w = cond.shape
        if h % f or w % f:
            raise UserError(f"mask size {h}x{w} is not a multiple of the autoencoder factor {f}; use tiles of {f}k px")
        cond, shape = cond.to(self.device), (b, self.base.unet.config.in_channels, h // f, w // f)
        latents = sample_latents(lambda x, t: self._guided(x, t, cond), self.scheduler, shape, steps=self.steps,
                                 generator=generator, device=self.device, step_on_cpu=True)  # fmt: skip
        return self.base.decode(latents).float().cpu()

    def generate(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``masks`` (B, H, W) int64 -> images (B, 3, H, W) float in [0, 1]; deterministic given ``generator``."""
        out = [
            self.sample(self.condition(masks[i : i + self.batch_size]), generator)
            for i in range(0, masks.shape[0], self.batch_size)
        ]
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family, "run": self.run, "checkpoint": self.checkpoint, "base": self.base.path,
            "base_source": self.base.source, "scheduler": self.scheduler_name, "steps": self.steps,
            "guidance_scale": self.guidance_scale, "conditioning_scale": self.conditioning_scale,
            "unconditional": self.unconditional,
        }  # fmt: skip


def load_generator(run: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> ControlNetGenerator:
    """Load a ``terrasynth controlnet train`` run. ``overrides`` replace sampling settings
    (``steps``, ``guidance_scale``, ``conditioning_scale``, ``scheduler``, ``batch_size``)."""
    run = Path(run)
    meta = json.loads((run / GENERATOR_FILE).read_text())
    base_path = meta["base"]  # a directory, or a Hub id resolved through the Hub cache
    if not (Path(base_path).is_dir() or is_hub_id(base_path)):
        raise UserError(f"{run / GENERATOR_FILE}: base model {base_path} not found; restore it or retrain with --base")
    base = load_base(base_path, prompt=meta.get("prompt", "aerial photograph")).to(device)
    controlnet = ControlNetModel.from_pretrained(run / CONTROLNET_DIR).to(device)
    controlnet.requires_grad_(False)
    sampling = {**meta.get("sampling", {}), **overrides}
    return ControlNetGenerator(
        base, controlnet, ClassScheme.from_dict(meta["scheme"], where=str(run / GENERATOR_FILE)),
        unconditional=meta.get("unconditional", "base"), run=str(run.resolve()),
        checkpoint=str((run / CONTROLNET_DIR).resolve()), **sampling,
    )  # fmt: skip
