"""A latent-diffusion *base model*: autoencoder + denoising UNet + a fixed context.

Two sources, one interface (:class:`LatentBase`):

* a run of ``terrasynth controlnet train-base`` (trained here): ``vae/``, ``unet/``,
  ``scheduler/`` (diffusers ``save_pretrained`` layouts), ``context.safetensors`` (the
  learned constant cross-attention context, (1, L, D)) and ``latents.json`` (per-channel
  latent mean/std used to normalise latents to unit variance);
* any Stable-Diffusion-layout directory on local disk (``vae/``, ``unet/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), or a Hugging Face Hub id of one
  (``org/name``, resolved by diffusers' and transformers' own ``from_pretrained``: the Hub
  cache, ``HF_HOME``, ``HF_HUB_OFFLINE``): the context is the CLIP encoding of a prompt such
  as ``"aerial photograph"``, computed once, and latents are normalised with the VAE's
  ``shift_factor``/``scaling_factor``.

Latent normalisation is always ``z_norm = (z - shift) * scale`` with per-channel
``shift``/``scale`` of shape (C,) (:class:`~terrasynth.models.diffusion.LatentNorm`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from terrasynth.errors import UserError
from terrasynth.io import load_weights, save_weights, write_json_atomic
from terrasynth.models.autoencoder import downsampling_factor
from terrasynth.models.diffusion import LatentNorm

BASE_FILE = "base.json"
CONTEXT_FILE = "context.safetensors"
LATENTS_FILE = "latents.json"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name, as the Hub spells repository ids


@dataclass
class LatentBase:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    context: torch.Tensor  # (1, L, D) cross-attention context shared by every sample
    norm: LatentNorm  # (z - shift) * scale, per channel
    source: str  # "trained" or "pretrained"
    path: str  # resolved local directory, or the Hub id it was loaded from

    @property
    def factor(self) -> int:
        """Spatial downsampling of the autoencoder (4 for three blocks, 8 for SD)."""
        return downsampling_factor(self.vae)

    def to(self, device: torch.device | str) -> "LatentBase":
        self.vae.to(device)
        self.unet.to(device)
        self.context = self.context.to(device)
        return self

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised latents (B, C, H/f, W/f)."""
        z = self.vae.encode(images * 2 - 1).latent_dist.sample(generator=generator)
        return self.norm.normalize(z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> (B, 3, h*f, w*f) in [0, 1]."""
        z = self.norm.denormalize(latents)
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1)

    def contexts(self, batch: int) -> torch.Tensor:
        return self.context.expand(batch, -1, -1)


def is_trained_base(path: Path) -> bool:
    return (path / BASE_FILE).is_file()


def is_pretrained_base(path: Path) -> bool:
    return all((path / d).is_dir() for d in ("vae", "unet", "text_encoder", "tokenizer"))


def is_hub_id(path: str | Path) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub repository id."""
    return bool(HUB_ID.fullmatch(str(path))) and not Path(path).exists()


def save_trained_base(out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler,
                      context: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:  # fmt: skip
    """Write a trained base in its directory layout; ``base.json`` last marks it complete."""
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    noise_scheduler.save_pretrained(out / "scheduler")
    save_weights(out / CONTEXT_FILE, {"context": context})
    write_json_atomic(out / LATENTS_FILE, {"mean": mean.tolist(), "std": std.tolist()})
    write_json_atomic(out / BASE_FILE, {"kind": "trained", "factor": downsampling_factor(vae)})


def encode_prompt(path: str | Path, prompt: str) -> torch.Tensor:
    """CLIP text encoding of ``prompt`` with the checkpoint's own encoder (a directory or Hub id): (1, L, D)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(path), subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder").eval()
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return enc(ids.input_ids)[0]


def load_base(path: str | Path, prompt: str = "aerial photograph") -> LatentBase:
    """Load a base model from a train-base run, a local Stable-Diffusion-layout directory or its Hub id."""
    layout = "a local Stable-Diffusion-layout directory (vae/, unet/, text_encoder/, tokenizer/, scheduler/)"
    if is_hub_id(path):
        try:
            with warnings.catch_warnings():  # diffusers passes the Hub client an argument it has deprecated
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                return _load_pretrained(str(path), prompt)
        except OSError as exc:  # diffusers and transformers raise EnvironmentError for every Hub failure
            raise UserError(f"--base {path}: cannot load this Hugging Face Hub id ({exc.__class__.__name__}: no internet "
                            "and not in the Hub cache?); download it where there is internet (huggingface-cli download "
                            f"{path} --local-dir DIR) and pass --base DIR, {layout[2:]}") from exc  # fmt: skip
    path = Path(path)
    if not is_trained_base(path):
        if not is_pretrained_base(path):
            raise UserError(f"{path}: not a base model; pass the --out of 'terrasynth controlnet train-base', {layout}, "
                            "or a Hugging Face Hub id of one (org/name)")  # fmt: skip
        return _load_pretrained(str(path.resolve()), prompt)
    vae, unet, sched = _modules(str(path))
    stats = json.loads((path / LATENTS_FILE).read_text())
    std = torch.tensor(stats["std"], dtype=torch.float32)
    norm = LatentNorm(torch.tensor(stats["mean"], dtype=torch.float32), scale=1.0 / std)
    return _frozen(vae, unet, sched, load_weights(path / CONTEXT_FILE)["context"], norm, "trained", str(path.resolve()))


def _modules(where: str) -> tuple[AutoencoderKL, UNet2DConditionModel, DDPMScheduler]:
    """The base's autoencoder, UNet and noise scheduler from a directory or a Hub id (diffusers' ``from_pretrained``)."""
    return (AutoencoderKL.from_pretrained(where, subfolder="vae"), UNet2DConditionModel.from_pretrained(where, subfolder="unet"),
            DDPMScheduler.from_pretrained(where, subfolder="scheduler"))  # fmt: skip


def _load_pretrained(where: str, prompt: str) -> LatentBase:
    """A Stable-Diffusion-layout base: CLIP context of ``prompt``, latents scaled by the VAE's factors."""
    vae, unet, sched = _modules(where)
    c = vae.config.latent_channels
    norm = LatentNorm(torch.full((c,), float(getattr(vae.config, "shift_factor", None) or 0.0)),
                      scale=torch.full((c,), float(vae.config.scaling_factor)))  # fmt: skip
    return _frozen(vae, unet, sched, encode_prompt(where, prompt), norm, "pretrained", where)


def _frozen(vae: AutoencoderKL, unet: UNet2DConditionModel, *rest) -> LatentBase:
    vae.requires_grad_(False).eval()
    unet.requires_grad_(False).eval()
    return LatentBase(vae, unet, *rest)


class ContextUNet(torch.nn.Module):
    """The base UNet and its learned constant context (1, L, D) as one trainable module."""

    def __init__(self, unet: UNet2DConditionModel, context: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.context = torch.nn.Parameter(context.clone())

    def forward(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, encoder_hidden_states=self.context.expand(latents.shape[0], -1, -1)).sample


def build_latent_unet(
    latent_channels: int, sample_size: int, *, block_out_channels: tuple[int, ...], cross_attention: tuple[bool, ...],
    layers_per_block: int, cross_attention_dim: int, attention_head_dim: int,
) -> UNet2DConditionModel:  # fmt: skip
    """The base denoiser on (B, C, h, w) latents; ``cross_attention[i]`` attends to the context in level ``i``."""
    if len(cross_attention) != len(block_out_channels):
        n, m = len(cross_attention), len(block_out_channels)
        raise UserError(f"unet.cross_attention has {n} entries but block_out_channels has {m}; give one per level")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels, down_block_types=down,
        up_block_types=up, block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, min(block_out_channels)),
    )  # fmt: skip
