"""Training of the land-cover generator (categorical autoencoder + latent diffusion).

Sampling a finished run is :mod:`terrasynth.inference.landcover`.

A run directory::

    config.yaml               resolved config
    checkpoints/*.pt          training state (atomic; a rerun resumes from them)
    autoencoder_metrics.json  reconstruction pixel accuracy and per-class IoU (validation split)
    model/                    LandcoverLDM.save_pretrained: autoencoder/, unet/ (+ unet_ema/)
    metrics.json              steps, wall times, losses
    logs/                     TensorBoard

Training runs in two phases, each bounded by steps and by its share of ``max_minutes``:
the autoencoder, then the diffusion model on the normalised latents of all training maps
(and their 8 dihedral transforms). Multi-GPU: ``accelerate launch -m terrasynth landcover train ...``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator

from terrasynth.accel import make_accelerator
from diffusers.training_utils import EMAModel
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from terrasynth.classes import IGNORE_INDEX
from terrasynth.config import StrictModel, config_hash, read_yaml, save_resolved
from terrasynth.data.dataset import Dataset
from terrasynth.data.torchdata import dihedral_t
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import reconstruction_metrics
from terrasynth.io import atomic_path, ensure_dir, write_json_atomic
from terrasynth.models.autoencoder import AutoencoderArch, autoencoder_loss, encode
from terrasynth.models.diffusion import LatentNorm, PredictionType, SamplingConfig, training_scheduler
from terrasynth.models.latent_diffusion import LandcoverLDM, build_denoiser, p_losses

log = logging.getLogger(__name__)


# ---- configuration ------------------------------------------------------------------------


class AutoencoderConfig(AutoencoderArch):
    """The categorical autoencoder: its architecture and how it trains."""

    kl_weight: float = Field(1e-4, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(100_000, ge=1)
    share: float = Field(0.3, gt=0, lt=1)  # of max_minutes


class DiffusionConfig(StrictModel):
    block_out_channels: list[int] = [64, 128, 128]
    layers_per_block: int = Field(2, ge=1)
    attention: list[bool] = [False, False, True]  # per level; keep it at 16x16 latents or smaller
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    prediction_type: PredictionType = "v_prediction"
    snr_gamma: float | None = Field(None, gt=0)  # min-SNR-gamma weighting; None = plain MSE
    num_train_timesteps: int = Field(1000, ge=10)
    lr: float = Field(2e-4, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(100_000, ge=1)
    ema_decay: float = Field(0.999, gt=0, lt=1)
    dihedral_augment: bool = True
    composition_control: bool = False
    condition_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _shape(self):
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention needs one flag per level of block_out_channels {self.block_out_channels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        return self


class LandcoverSamplingConfig(SamplingConfig):
    weights: Literal["raw", "ema"] = "raw"


class LandcoverConfig(StrictModel):
    seed: int = 0
    max_minutes: float | None = Field(15.0, gt=0)  # total for autoencoder + diffusion; None = steps only
    splits: list[str] = ["train"]
    val_split: str = "val"  # autoencoder metrics; falls back to the training maps when absent
    checkpoint_every_s: float = Field(120.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: LandcoverSamplingConfig = LandcoverSamplingConfig()


# ---- helpers ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_masks(ds: Dataset, splits: list[str]) -> torch.Tensor:
    """(N, H, W) uint8 training indices (255 = nodata) of the given splits."""
    recs = ds.split(*splits)
    if not recs:
        raise UserError(f"{ds.root}: no tiles in split(s) {splits}; available: {sorted({r.split for r in ds.records})}")
    return torch.from_numpy(np.stack([ds.scheme.to_indices(ds.read_label(r)) for r in recs]))


def batch_compositions(masks: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W) indices -> (B, K) class fractions of the valid pixels."""
    valid = masks != IGNORE_INDEX
    oh = torch.nn.functional.one_hot(masks.long().clamp(max=k - 1), k) * valid.unsqueeze(-1)
    counts = oh.flatten(1, 2).sum(1).float()
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def lr_factor(schedule: str, step: int, warmup: int, progress: float) -> float:
    """Linear warm-up, then constant or cosine decay to zero over ``progress`` in [0, 1]."""
    w = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return w * (0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if schedule == "cosine" else 1.0)


def save_checkpoint(path: Path, state: dict) -> None:
    ensure_dir(path.parent)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class _Objective(torch.nn.Module):
    """Wraps a loss in ``forward`` so Accelerate/DDP synchronises gradients through it."""

    def __init__(self, net: torch.nn.Module, fn, **kw):
        super().__init__()
        self.net, self.fn, self.kw = net, fn, kw

    def forward(self, *args, **kwargs):
        return self.fn(self.net, *args, **self.kw, **kwargs)


class _Phase:
    """A time- and step-bounded training loop with periodic atomic checkpoints."""

    def __init__(self, name: str, acc: Accelerator, ckpt: Path, max_steps: int, budget_s: float | None, every_s: float):
        self.name, self.acc, self.ckpt = name, acc, ckpt
        self.max_steps, self.budget_s, self.every_s = max_steps, budget_s, every_s
        self.step, self.elapsed = 0, 0.0
        self.losses: list[float] = []

    def progress(self) -> float:
        p = self.step / self.max_steps
        if self.budget_s:
            p = max(p, self.elapsed / self.budget_s)
        return p

    def should_stop(self) -> bool:
        stop = torch.tensor(float(self.progress() >= 1.0), device=self.acc.device)
        return bool(self.acc.reduce(stop, "max") > 0)  # every process stops at the same step


# ---- training -----------------------------------------------------------------------------


def train_landcover(cfg: LandcoverConfig, data: Path, out: Path, *, resume: bool = True) -> Path:
    """Train autoencoder then latent diffusion on the label maps of ``data``; returns ``out``.

    Rerunning with the same config resumes from ``out/checkpoints``; ``resume=False``
    starts over. The finished model is ``out/model`` (:meth:`LandcoverLDM.from_pretrained`).
    """
    data, out = Path(data), Path(out)
    ds = Dataset.open(data)
    scheme, size = ds.scheme, ds.info.tile_size
    f = 2 ** (len(cfg.autoencoder.block_out_channels) - 1)
    need = f * 2 ** (len(cfg.diffusion.block_out_channels) - 1)
    if size % need:
        raise UserError(
            f"{data}: tile size {size} is not divisible by {need} (autoencoder f={f} x UNet levels); "
            "change autoencoder/diffusion block_out_channels or the tile size"
        )
    ensure_dir(out)
    h = config_hash(cfg, str(data.resolve()))
    if (out / "config.yaml").exists() and resume:
        old = config_hash(LandcoverConfig.model_validate(read_yaml(out / "config.yaml")), str(data.resolve()))
        if old != h:
            raise UserError(f"{out}: holds a run with another config or data; choose a new --out or pass --no-resume")
    if not resume:
        for p in (out / "checkpoints").glob("*.pt"):
            p.unlink()
    save_resolved(cfg, out)
    write_json_atomic(out / "data.json", {"path": str(data.resolve()), "name": ds.info.name, "gsd": ds.info.gsd,
                                          "tile_size": size, "splits": cfg.splits})
    seed_everything(cfg.seed)
    acc = make_accelerator(
        mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out / "logs")
    )
    acc.init_trackers("landcover")
    masks = load_masks(ds, cfg.splits)
    val = ds.split(cfg.val_split)
    val_masks = load_masks(ds, [cfg.val_split]) if val else masks[:256]
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    t_start = time.perf_counter()

    vae, ae_phase = _train_autoencoder(cfg, acc, masks, scheme.num_classes, size, out, budget)
    ae_metrics = reconstruction_metrics(vae, val_masks.long().split(64), scheme.num_classes)
    ae_metrics["iou_by_code"] = {str(c): v for c, v in zip(scheme.codes, ae_metrics["iou"])}
    if acc.is_main_process:
        write_json_atomic(out / "autoencoder_metrics.json", {**ae_metrics, "steps": ae_phase.step})
    log.info("autoencoder: pixel accuracy %.4f after %d steps", ae_metrics["pixel_accuracy"], ae_phase.step)

    t0 = time.perf_counter()
    z, comp = _encode_all(vae, masks, scheme.num_classes, cfg.diffusion.dihedral_augment)
    norm = LatentNorm.fit(z)
    z = norm.normalize(z)
    encode_s = time.perf_counter() - t0
    dbudget = None if budget is None else max(1.0, budget - ae_phase.elapsed - encode_s)
    unet, ema, d_phase, losses = _train_diffusion(cfg, acc, z, comp, out, dbudget)

    freqs = batch_compositions(masks, scheme.num_classes).mean(0).tolist()
    if acc.is_main_process:
        s = cfg.sampling
        model = LandcoverLDM(
            vae, unet, dict(training_scheduler(cfg.diffusion.prediction_type, cfg.diffusion.num_train_timesteps).config),
            norm, scheme, class_frequencies=freqs,
            default_sampler=s.scheduler, default_steps=s.steps, default_guidance=s.guidance_scale,
            train_compositions=batch_compositions(masks, scheme.num_classes) if cfg.diffusion.composition_control else None,
        )  # fmt: skip
        model.save_pretrained(out / "model")
        ema_unet = type(unet).from_config(unet.config)
        ema.copy_to(ema_unet.parameters())
        ema_unet.save_pretrained(out / "model" / "unet_ema")
        write_json_atomic(
            out / "metrics.json",
            {
                "autoencoder": {"steps": ae_phase.step, "seconds": ae_phase.elapsed, "loss_curve": ae_phase.losses,
                                **ae_metrics},
                "diffusion": {"steps": d_phase.step, "seconds": d_phase.elapsed, "loss_curve": losses},
                "encode_seconds": encode_s,
                "wall_seconds_this_invocation": time.perf_counter() - t_start,
                "latent_norm": {"mean": norm.shift.tolist(), "std": norm.std.tolist()},
                "samples_per_step": {"autoencoder": cfg.autoencoder.batch_size, "diffusion": cfg.diffusion.batch_size},
            },
        )
    acc.end_training()
    return out


def _train_autoencoder(cfg: LandcoverConfig, acc: Accelerator, masks, k: int, size: int, out: Path, budget):
    a = cfg.autoencoder
    vae = a.build(k, sample_size=size)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr, weight_decay=0.0)
    ckpt = out / "checkpoints" / "autoencoder.pt"
    phase = _Phase("autoencoder", acc, ckpt, a.max_steps, budget * a.share if budget else None, cfg.checkpoint_every_s)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + acc.process_index)
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        phase.step, phase.elapsed, phase.losses = st["step"], st["elapsed"], st.get("losses", [])
        gen.set_state(st["gen"])
    objective, opt = acc.prepare(_Objective(vae, autoencoder_loss, kl_weight=a.kl_weight), opt)

    def state():
        return {"model": acc.unwrap_model(objective).net.state_dict(), "opt": opt.state_dict(),
                "step": phase.step, "elapsed": phase.elapsed, "gen": gen.get_state(), "losses": phase.losses}  # fmt: skip

    _loop(phase, acc, objective, opt, a.lr, "cosine", 0, state,
          lambda: (dihedral_t(masks[torch.randint(0, len(masks), (a.batch_size,), generator=gen)],
                              int(torch.randint(0, 8, (1,), generator=gen))).long().to(acc.device),), {})  # fmt: skip
    return acc.unwrap_model(objective).net.eval(), phase


@torch.no_grad()
def _encode_all(vae, masks: torch.Tensor, k: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means (N*V, C, h, w) of all maps (V = 8 dihedral variants or 1) and their (N*V, K) compositions."""
    zs, comps = [], []
    variants = range(8) if augment else range(1)
    for r in tqdm(variants, desc="encode latents", unit="variant"):
        for chunk in masks.split(128):
            m = dihedral_t(chunk, r).long()
            zs.append(encode(vae, m.to(vae.device)).cpu())
            comps.append(batch_compositions(m, k))
    return torch.cat(zs), torch.cat(comps)


def _train_diffusion(cfg: LandcoverConfig, acc: Accelerator, z: torch.Tensor, comp: torch.Tensor, out: Path, budget):
    d = cfg.diffusion
    unet = build_denoiser(
        z.shape[1], z.shape[-1], block_out_channels=tuple(d.block_out_channels), layers_per_block=d.layers_per_block,
        attention=tuple(d.attention), attention_head_dim=d.attention_head_dim, norm_num_groups=d.norm_num_groups,
        composition_classes=comp.shape[1] if d.composition_control else None,
    )  # fmt: skip
    sched = training_scheduler(d.prediction_type, d.num_train_timesteps)
    opt = torch.optim.AdamW(unet.parameters(), lr=d.lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=d.ema_decay, use_ema_warmup=True, power=2 / 3)
    ckpt = out / "checkpoints" / "diffusion.pt"
    phase = _Phase("diffusion", acc, ckpt, d.max_steps, budget, cfg.checkpoint_every_s)
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + acc.process_index)
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        ema.load_state_dict(st["ema"])
        phase.step, phase.elapsed, phase.losses = st["step"], st["elapsed"], st.get("losses", [])
        gen.set_state(st["gen"])
    objective, opt = acc.prepare(_Objective(unet, p_losses, scheduler=sched, snr_gamma=d.snr_gamma), opt)
    ema.to(acc.device)  # the shadow weights live beside the model (GPU after prepare)

    def state():
        return {"model": acc.unwrap_model(objective).net.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "step": phase.step, "elapsed": phase.elapsed, "gen": gen.get_state(), "losses": phase.losses}  # fmt: skip

    def batch():
        i = torch.randint(0, len(z), (d.batch_size,), generator=gen)
        cond = None
        if d.composition_control:
            keep = (torch.rand(d.batch_size, 1, generator=gen) >= d.condition_dropout).float()
            cond = (comp[i] * keep).to(acc.device)  # all-zero = the unconditional "null" condition
        return (z[i].to(acc.device), cond)

    _loop(phase, acc, objective, opt, d.lr, d.lr_schedule, d.warmup_steps, state, batch,
          {"generator": gen}, after_step=lambda: ema.step(acc.unwrap_model(objective).net.parameters()))  # fmt: skip
    return acc.unwrap_model(objective).net.eval(), ema, phase, phase.losses


def _loop(phase: _Phase, acc, objective, opt, base_lr, schedule, warmup, state, batch, kwargs, after_step=None):
    """Steps until the phase's step or time bound; records the smoothed loss at step 1, every 50 steps
    and at the end in ``phase.losses`` (kept across resumes)."""
    losses = phase.losses
    if phase.progress() >= 1.0:
        return losses
    objective.train()
    bar = tqdm(total=phase.max_steps if not phase.budget_s else None, initial=phase.step, desc=phase.name,
               unit="step", disable=not acc.is_local_main_process)  # fmt: skip
    t_last = time.perf_counter()
    last_ckpt = t_last
    ema_loss = None
    while not phase.should_stop():
        for g in opt.param_groups:
            g["lr"] = base_lr * lr_factor(schedule, phase.step, warmup, phase.progress())
        out = objective(*batch(), **kwargs)
        loss = out[0] if isinstance(out, tuple) else out
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        if after_step:
            after_step()
        phase.step += 1
        now = time.perf_counter()
        phase.elapsed += now - t_last
        t_last = now
        lv = float(loss.detach())
        ema_loss = lv if ema_loss is None else 0.95 * ema_loss + 0.05 * lv
        if phase.step % 50 == 0 or phase.step == 1:
            losses.append(ema_loss)
            acc.log({f"{phase.name}/loss": lv, f"{phase.name}/lr": opt.param_groups[0]["lr"]}, step=phase.step)
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}", min=f"{phase.elapsed / 60:.1f}")
        if now - last_ckpt > phase.every_s and acc.is_main_process:
            save_checkpoint(phase.ckpt, state())
            last_ckpt = now
    bar.close()
    if ema_loss is not None and (not losses or losses[-1] != ema_loss):
        losses.append(ema_loss)
    if acc.is_main_process:
        save_checkpoint(phase.ckpt, state())
    return losses
