"""The pieces every latent-diffusion family (land cover, ControlNet) shares, each once: noising process and
target, the scheduler registry, the sampling loop, latent normalisation and the sampling settings."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers import EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from pydantic import AliasChoices, Field, field_validator

from terrasynth.config import StrictModel
from terrasynth.errors import UserError

PredictionType = Literal["epsilon", "v_prediction"]

# name -> (scheduler class, overrides on top of the training scheduler's config). clip_sample
# must be off: DDIM/DDPM inherit clip_sample=True otherwise, which clips latents to [-1, 1].
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {"clip_sample": False}),
}


def _diffusers_scheduler(name: str) -> type[SchedulerMixin] | None:
    cls = getattr(diffusers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, SchedulerMixin) else None


def make_scheduler(name: str, train_config: Any) -> SchedulerMixin:
    """A sampler sharing the training noise schedule ``train_config``: a :data:`SCHEDULERS` name or any
    diffusers scheduler class name (its defaults, clipping and thresholding off; ControlNet runs use these)."""
    if name in SCHEDULERS:
        cls, over = SCHEDULERS[name]
        return cls.from_config({**dict(train_config), **over})
    cls = _diffusers_scheduler(name)
    if cls is None:
        raise UserError(
            f"scheduler {name!r} is not a diffusers scheduler; use one of {sorted(SCHEDULERS)} or a diffusers "
            "scheduler class name such as DPMSolverMultistepScheduler, DDIMScheduler, UniPCMultistepScheduler"
        )
    # DDIM & co. inherit clip_sample=True from a DDPM config, which clips *latents* to [-1, 1].
    params = inspect.signature(cls.__init__).parameters
    return cls.from_config(train_config, **{k: False for k in ("clip_sample", "thresholding") if k in params})


def training_scheduler(
    prediction_type: str = "v_prediction", num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"
) -> DDPMScheduler:
    """The forward (noising) process; no clipping (latents are not in [-1, 1])."""
    kw = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type)
    return DDPMScheduler(**kw, clip_sample=False)


def diffusion_target(sched: DDPMScheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses for clean latents ``z0`` noised with ``noise`` at ``t``: velocity or noise."""
    if sched.config.prediction_type == "v_prediction":
        return sched.get_velocity(z0, noise, t)
    if sched.config.prediction_type == "epsilon":
        return noise
    raise UserError(f"prediction_type={sched.config.prediction_type!r} is not supported; use v_prediction or epsilon")


@torch.no_grad()
def sample_latents(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: SchedulerMixin,
    shape: tuple[int, int, int, int], *, steps: int, generator: torch.Generator, device: torch.device | str,
    step_on_cpu: bool = False,
) -> torch.Tensor:  # fmt: skip
    """The reverse process from N(0, I) noise drawn on CPU from ``generator``: latents ``shape`` (B, C, h, w).

    ``predict(x, t)`` is the (guided) network output for scaled latents ``x`` at timestep ``t``. ``step_on_cpu``
    steps on CPU tensors, as ControlNet always has (its numbers on GPU stay as they were)."""
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        pred = predict(scheduler.scale_model_input(x, t), t)
        if step_on_cpu:
            x = scheduler.step(pred.cpu(), t, x.cpu(), **kwargs).prev_sample.to(device)
        else:
            x = scheduler.step(pred, t, x, **kwargs).prev_sample
    return x


@dataclass
class LatentNorm:
    """Per-channel affine normalisation of autoencoder latents (B, C, h, w) to about unit variance.

    ``z_norm = (z - shift) / std``, or ``(z - shift) * scale`` when built with ``scale`` (diffusers'
    ``scaling_factor`` convention). The two forms round differently, and a saved model keeps
    the one it was trained with. ``shift``, ``std`` and ``scale`` are float32 (C,) tensors.
    """

    shift: torch.Tensor
    std: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    @classmethod
    def fit(cls, z: torch.Tensor) -> "LatentNorm":
        """From encoded latents (N, C, h, w)."""
        return cls(z.mean(dim=(0, 2, 3)), std=z.std(dim=(0, 2, 3)).clamp_min(1e-6))

    @staticmethod
    def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device).view(1, -1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        z = z - self._view(self.shift, z)
        return z / self._view(self.std, z) if self.std is not None else z * self._view(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        z = z * self._view(self.std, z) if self.std is not None else z / self._view(self.scale, z)
        return z + self._view(self.shift, z)


class SamplingConfig(StrictModel):
    """Default sampling of a generator (``sampling:`` of a training config). Land-cover configs spelled
    ``scheduler`` and ``guidance_scale`` as ``sampler`` and ``guidance``: both are still read."""

    scheduler: str = Field("dpmsolver++", validation_alias=AliasChoices("scheduler", "sampler"))
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(2.0, ge=0, validation_alias=AliasChoices("guidance_scale", "guidance"))

    @field_validator("scheduler")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SCHEDULERS and _diffusers_scheduler(name) is None:
            raise ValueError(f"not a scheduler; use one of {sorted(SCHEDULERS)} or a diffusers scheduler class name")
        return name
