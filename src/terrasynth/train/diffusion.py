"""Training the ControlNet generator: a latent-diffusion base (autoencoder + unconditional
UNet) and a ControlNet on top of it.

``train_controlnet_base`` writes a base-model directory (see
:mod:`terrasynth.models.latent_base`); ``train_controlnet`` trains a ControlNet on any
base (that directory or a local Stable-Diffusion checkpoint) and writes a generator run
that ``terrasynth synthesize --generator RUN`` loads. Both run under Accelerate
(``accelerate launch -m terrasynth controlnet ...`` for several GPUs), keep EMA weights,
checkpoint atomically and resume on rerun.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from terrasynth.accel import make_accelerator
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from pydantic import Field
from torch.utils.data import ConcatDataset

from terrasynth.config import Seed, StrictModel, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, provenance
from terrasynth.data.torchdata import TileDataset, one_hot, paired_augment
from terrasynth.errors import UserError
from terrasynth.io import ensure_dir, write_json_atomic
from terrasynth.models.controlnet import CONTROLNET_DIR, ControlNetGenerator, Unconditional, build_controlnet
from terrasynth.models.generator import write_generator_file
from terrasynth.models.latent_base import is_pretrained_base, is_trained_base, load_base, save_trained_base
from terrasynth.train.loop import LoopSettings, MixedPrecision, fit

# ---- configs --------------------------------------------------------------------------


class AutoencoderConfig(StrictModel):
    """KL autoencoder. ``len(block_out_channels) - 1`` halvings: three entries give f=4."""

    pretrained: str | None = None  # a local diffusers AutoencoderKL directory to use instead
    block_out_channels: list[int] = [64, 128, 128]
    layers_per_block: int = 1
    latent_channels: int = 4
    kl_weight: float = Field(1e-6, ge=0)
    steps: int = Field(3000, ge=0)  # 0 with ``pretrained`` or ``init_from``: keep it frozen
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)


class LatentUNetConfig(StrictModel):
    """The base denoiser, a diffusers UNet2DConditionModel on latents with a learned constant context."""

    block_out_channels: list[int] = [64, 128, 192]
    cross_attention: list[bool] = [False, True, True]  # per level; keep attention at <= 8x8 on CPU
    layers_per_block: int = 2
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    context_tokens: int = 4
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    steps: int = Field(6000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)


class ControlNetBaseConfig(StrictModel):
    seed: Seed = 0
    splits: list[str] = ["train", "val"]  # imagery to learn from; labels are not used
    augment: bool = True
    max_minutes: float | None = None  # total, shared between autoencoder and UNet
    vae_share: float = Field(0.4, gt=0, lt=1)  # of max_minutes for the autoencoder
    warmup_steps: int = Field(100, ge=0)
    vae: AutoencoderConfig = AutoencoderConfig()
    unet: LatentUNetConfig = LatentUNetConfig()
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False


class SamplingConfig(StrictModel):
    scheduler: str = "DPMSolverMultistepScheduler"  # any diffusers scheduler class name
    steps: int = Field(20, ge=1)
    guidance_scale: float = 2.0
    conditioning_scale: float = 1.0
    batch_size: int = Field(64, ge=1)


class ControlNetConfig(StrictModel):
    seed: Seed = 0
    splits: list[str] = ["train"]
    augment: bool = True
    prompt: str = "aerial photograph"  # context for Stable-Diffusion-layout bases
    conditioning_embedding_out_channels: list[int] | None = None  # None: by the base's factor
    unconditional: Unconditional = "base"
    condition_dropout: float = Field(0.0, ge=0, lt=1)  # use ~0.1 with unconditional=zero_condition
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    max_minutes: float | None = None
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    sampling: SamplingConfig = SamplingConfig()


class ControlNetRunConfig(StrictModel):
    """Both stages in one file (``configs/controlnet-*.yaml``): ``base:`` and ``controlnet:``."""

    base: ControlNetBaseConfig = ControlNetBaseConfig()
    controlnet: ControlNetConfig = ControlNetConfig()


# ---- helpers --------------------------------------------------------------------------


class ContextUNet(torch.nn.Module):
    """The base UNet and its learned constant context (1, L, D) as one trainable module."""

    def __init__(self, unet: UNet2DConditionModel, context: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.context = torch.nn.Parameter(context.clone())

    def forward(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, encoder_hidden_states=self.context.expand(latents.shape[0], -1, -1)).sample


class VAELoss(torch.nn.Module):
    """Reconstruction (L1) + ``kl_weight`` * KL of an AutoencoderKL, images (B, 3, H, W) in [0, 1]."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = images * 2 - 1
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
        rec = self.vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + self.kl_weight * kl


def open_tiles(data: Path | Sequence[Path], splits: list[str], require_masks: bool = False) -> ConcatDataset:
    paths = [Path(data)] if isinstance(data, (str, Path)) else [Path(p) for p in data]
    sets = []
    for p in paths:
        ds = Dataset.open(p)
        recs = ds.split(*splits)
        if not recs:
            raise UserError(f"{p}: no tiles in split(s) {splits}; available: {sorted({r.split for r in ds.records})}")
        sets.append(TileDataset(ds, records=recs, cache=True))
    sizes = {s.ds.info.tile_size for s in sets}
    if len(sizes) > 1:
        raise UserError(f"datasets {[str(p) for p in paths]} have different tile sizes {sorted(sizes)}; use one size")
    return ConcatDataset(sets)


def batch(tiles: ConcatDataset, n: int, gen: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random items: images (n, 3, H, W), masks (n, H, W)."""
    idx = torch.randint(len(tiles), (n,), generator=gen).tolist()
    imgs, masks = [], []
    for i in idx:
        it = tiles[i]
        img, mask = it["image"], it["mask"]
        if augment:
            img, mask = paired_augment(img, mask, gen)
        imgs.append(img)
        masks.append(mask)
    return torch.stack(imgs), torch.stack(masks)


def diffusion_target(sched: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if sched.config.prediction_type == "v_prediction":
        return sched.get_velocity(latents, noise, t)
    if sched.config.prediction_type == "epsilon":
        return noise
    raise UserError(f"prediction_type={sched.config.prediction_type!r} is not supported; use v_prediction or epsilon")


def noisy(sched: DDPMScheduler, latents: torch.Tensor, gen: torch.Generator):
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    return sched.add_noise(latents, noise, t), t, diffusion_target(sched, latents, noise, t)


def _prepare_out(cfg: StrictModel, out: Path, source: str, data: object) -> None:
    ensure_dir(out)
    save_resolved(cfg, out)
    prov = provenance(source, config_hash=config_hash(cfg), seed=cfg.seed, data=[str(p) for p in _paths(data)])
    write_json_atomic(out / "provenance.json", prov)


def _paths(data: object) -> list[Path]:
    return [Path(data)] if isinstance(data, (str, Path)) else [Path(p) for p in data]  # type: ignore[union-attr]


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
    )


def build_latent_unet(cfg: LatentUNetConfig, latent_channels: int, sample_size: int) -> UNet2DConditionModel:
    if len(cfg.cross_attention) != len(cfg.block_out_channels):
        raise UserError(
            f"unet.cross_attention has {len(cfg.cross_attention)} entries but block_out_channels has "
            f"{len(cfg.block_out_channels)}; give one per level"
        )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
    )


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, tiles: ConcatDataset, n: int = 512, bs: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of posterior samples over up to ``n`` tiles."""
    step = max(1, len(tiles) // n)
    idx = list(range(0, len(tiles), step))[:n]
    zs = []
    for i in range(0, len(idx), bs):
        x = torch.stack([tiles[j]["image"] for j in idx[i : i + bs]]).to(vae.device)
        post = vae.encode(x * 2 - 1).latent_dist
        # Samples, not means: training encodes samples, and their spread is what the UNet sees.
        zs.append(post.sample(generator=torch.Generator(device=x.device).manual_seed(i)).cpu())
    z = torch.cat(zs).transpose(0, 1).flatten(1)
    return z.mean(1), z.std(1).clamp_min(1e-4)


def _accelerator(mixed_precision: str) -> Accelerator:
    return make_accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def _budget(max_minutes: float | None, t_start: float) -> float | None:
    if max_minutes is None:
        return None
    return max(0.0, max_minutes - (time.monotonic() - t_start) / 60)


# ---- base -----------------------------------------------------------------------------


def train_controlnet_base(
    cfg: ControlNetBaseConfig,
    data: Path | Sequence[Path],
    out: Path,
    *,
    init_from: Path | None = None,
    resume: bool = True,
) -> Path:
    """Train the autoencoder, then the unconditional latent UNet, on all imagery of ``data``.

    ``init_from``: a previous base run whose autoencoder, UNet and context are the start
    (fine-tuning to a new region). Returns ``out``, a base directory for ``train_controlnet``.
    """
    out = Path(out)
    _seed_everything(cfg.seed)
    tiles = open_tiles(data, cfg.splits)
    size = tiles.datasets[0].ds.info.tile_size
    if init_from is not None and not (is_trained_base(Path(init_from)) or is_pretrained_base(Path(init_from))):
        load_base(init_from)  # raises the one-line error now, not after the autoencoder has trained
    _prepare_out(cfg, out, "controlnet-base", data)
    acc = _accelerator(cfg.mixed_precision)
    t_start = time.monotonic()
    vae_minutes = cfg.max_minutes * cfg.vae_share if cfg.max_minutes else None
    summary: dict = {}

    # Stage 1: autoencoder.
    if init_from is not None:
        vae = AutoencoderKL.from_pretrained(Path(init_from) / "vae")
    elif cfg.vae.pretrained:
        if not Path(cfg.vae.pretrained).is_dir():
            raise UserError(f"vae.pretrained={cfg.vae.pretrained!r}: directory not found; pass a local AutoencoderKL")
        vae = AutoencoderKL.from_pretrained(cfg.vae.pretrained)
    else:
        vae = build_autoencoder(cfg.vae)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % factor:
        raise UserError(f"{_paths(data)[0]}: tile size {size} is not a multiple of the autoencoder factor {factor}")
    if cfg.vae.steps > 0:
        vae.train()
        if cfg.gradient_checkpointing:
            vae.enable_gradient_checkpointing()

        def vae_loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
            imgs, _ = batch(tiles, cfg.vae.batch_size, gen, cfg.augment)
            return model(imgs.to(acc.device), gen)

        settings = LoopSettings(
            steps=cfg.vae.steps, lr=cfg.vae.lr, max_minutes=vae_minutes, ema_decay=cfg.ema_decay,
            checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, warmup_steps=cfg.warmup_steps,
        )  # fmt: skip
        summary["vae"] = fit("vae", VAELoss(vae, cfg.vae.kl_weight), vae_loss, settings, acc, out / "checkpoints",
                             resume=resume, log_dir=out / "tb")  # fmt: skip
    vae = acc.unwrap_model(vae).to(acc.device).eval().requires_grad_(False)
    prev = load_base(init_from) if init_from is not None else None
    if prev is not None and cfg.vae.steps == 0:
        # Same autoencoder: keep the latent normalisation the UNet was trained with.
        mean, std = prev.shift, 1 / prev.scale
    else:
        mean, std = latent_stats(vae, tiles)
    shift, scale = mean.to(acc.device), (1 / std).to(acc.device)

    # Stage 2: unconditional latent UNet with a learned constant context.
    if prev is not None:
        unet, context, sched = prev.unet, prev.context, prev.noise_scheduler
        unet.requires_grad_(True)
    else:
        unet = build_latent_unet(cfg.unet, vae.config.latent_channels, size // factor)
        context = torch.randn(1, cfg.unet.context_tokens, cfg.unet.cross_attention_dim) * 0.02
        sched = DDPMScheduler(
            num_train_timesteps=cfg.unet.num_train_timesteps,
            beta_schedule=cfg.unet.beta_schedule,
            prediction_type=cfg.unet.prediction_type,
            clip_sample=False,
        )
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    model = ContextUNet(unet.train(), context)

    def unet_loss(m: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        imgs, _ = batch(tiles, cfg.unet.batch_size, gen, cfg.augment)
        with torch.no_grad():
            z = vae.encode(imgs.to(acc.device) * 2 - 1).latent_dist
            z = z.mean + z.std * torch.randn(z.mean.shape, generator=gen).to(acc.device)
            z = (z - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        x, t, target = noisy(sched, z, gen)
        return F.mse_loss(m(x, t).float(), target.float())

    if cfg.unet.steps > 0:
        settings = LoopSettings(
            steps=cfg.unet.steps, lr=cfg.unet.lr, max_minutes=_budget(cfg.max_minutes, t_start),
            ema_decay=cfg.ema_decay, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
            warmup_steps=cfg.warmup_steps,
        )  # fmt: skip
        summary["unet"] = fit("unet", model, unet_loss, settings, acc, out / "checkpoints", resume=resume,
                              log_dir=out / "tb")  # fmt: skip
    if acc.is_main_process:
        save_trained_base(out, vae, model.unet.eval(), sched, model.context.detach(), mean, std)
        write_json_atomic(out / "train_summary.json", summary)
    acc.wait_for_everyone()
    return out


# ---- ControlNet -----------------------------------------------------------------------


def train_controlnet(
    cfg: ControlNetConfig,
    data: Path,
    base: Path | str,
    out: Path,
    *,
    init_from: Path | None = None,
    resume: bool = True,
) -> Path:
    """Train a ControlNet (base frozen) on the image/mask pairs of ``data``; write a generator run.

    ``base``: a train-base run or a local Stable-Diffusion-layout checkpoint.
    ``init_from``: a previous ControlNet run to continue from (fine-tuning to a new region).
    """
    out = Path(out)
    _seed_everything(cfg.seed)
    tiles = open_tiles(data, cfg.splits)
    scheme = tiles.datasets[0].scheme
    k = scheme.num_classes
    acc = _accelerator(cfg.mixed_precision)
    lb = load_base(base, prompt=cfg.prompt).to(acc.device)
    size = tiles.datasets[0].ds.info.tile_size
    if size % lb.factor:
        raise UserError(f"{data}: tile size {size} is not a multiple of the base autoencoder factor {lb.factor}")
    _prepare_out(cfg, out, "controlnet", data)  # after the inputs are checked: a bad --base leaves no run dir
    if init_from is not None:
        controlnet = ControlNetModel.from_pretrained(Path(init_from) / CONTROLNET_DIR)
        if controlnet.config.conditioning_channels != k:
            raise UserError(
                f"{init_from}: ControlNet takes {controlnet.config.conditioning_channels} classes but {data} has {k}; "
                "remap the labels to the same scheme (terrasynth data remap) or train without --init-from"
            )
    else:
        controlnet = build_controlnet(lb, k, cfg.conditioning_embedding_out_channels)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        lb.unet.enable_gradient_checkpointing()
    unet, sched = lb.unet, lb.noise_scheduler

    def loss_fn(m: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        imgs, masks = batch(tiles, cfg.batch_size, gen, cfg.augment)
        cond = one_hot(masks, k).to(acc.device)
        if cfg.condition_dropout > 0:
            keep = (torch.rand(cond.shape[0], generator=gen) >= cfg.condition_dropout).float().to(acc.device)
            cond = cond * keep.view(-1, 1, 1, 1)
        with torch.no_grad():
            z = lb.encode(imgs.to(acc.device), generator=None)
        x, t, target = noisy(sched, z, gen)
        ctx = lb.contexts(x.shape[0])
        down, mid = m(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        pred = unet(
            x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        return F.mse_loss(pred.float(), target.float())

    settings = LoopSettings(
        steps=cfg.steps, lr=cfg.lr, max_minutes=cfg.max_minutes, ema_decay=cfg.ema_decay,
        checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, warmup_steps=cfg.warmup_steps,
    )  # fmt: skip
    summary = fit("controlnet", controlnet, loss_fn, settings, acc, out / "checkpoints", resume=resume,
                  log_dir=out / "tb")  # fmt: skip
    controlnet = acc.unwrap_model(controlnet).eval()
    if acc.is_main_process:
        controlnet.save_pretrained(out / CONTROLNET_DIR)
        write_json_atomic(out / "train_summary.json", {"controlnet": summary})
        write_generator_file(
            out, "controlnet",
            base=lb.path, prompt=cfg.prompt, scheme=scheme.to_dict(), unconditional=cfg.unconditional,
            sampling=cfg.sampling.model_dump(), tile_size=size,
        )  # fmt: skip
        _preview(ControlNetGenerator(lb, controlnet, scheme, unconditional=cfg.unconditional,
                                     **cfg.sampling.model_dump()), tiles, out / "preview.png", cfg.seed)  # fmt: skip
    acc.wait_for_everyone()
    return out


def _preview(gen: ControlNetGenerator, tiles: ConcatDataset, path: Path, seed: int, n: int = 6) -> None:
    """mask | real | generated, one row per tile."""
    from terrasynth.data.preview import grid, save_png

    idx = list(range(0, len(tiles), max(1, len(tiles) // n)))[:n]
    items = [tiles[i] for i in idx]
    masks = torch.stack([it["mask"] for it in items])
    fake = gen.generate(masks, torch.Generator().manual_seed(seed))
    scheme = gen.scheme
    rows = []
    for it, f in zip(items, fake):
        codes = scheme.to_codes(it["mask"].numpy().astype("uint8"))
        rows.append([scheme.colourize(codes), _u8(it["image"]), _u8(f)])
    save_png(path, grid(rows, scale=max(1, 128 // masks.shape[-1])))


def _u8(img: torch.Tensor):
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


__all__ = [
    "AutoencoderConfig",
    "ControlNetBaseConfig",
    "ControlNetConfig",
    "ControlNetRunConfig",
    "LatentUNetConfig",
    "SamplingConfig",
    "train_controlnet",
    "train_controlnet_base",
]
