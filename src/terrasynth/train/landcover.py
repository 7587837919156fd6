"""Training and sampling of the land-cover generator (categorical autoencoder + latent diffusion).

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
from terrasynth.config import Seed, StrictModel, config_hash, read_yaml, save_resolved
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.io import atomic_path, ensure_dir, write_json_atomic
from terrasynth.models.autoencoder import (
    autoencoder_loss,
    build_autoencoder,
    downsampling_factor,
    encode,
    reconstruction_metrics,
)
from terrasynth.models.latent_diffusion import (
    SAMPLERS,
    LandcoverLDM,
    LatentNorm,
    PredictionType,
    SamplerName,
    build_denoiser,
    p_losses,
    training_scheduler,
)

log = logging.getLogger(__name__)


# ---- configuration ------------------------------------------------------------------------


class AutoencoderConfig(StrictModel):
    latent_channels: int = Field(4, ge=1)
    block_out_channels: list[int] = [32, 64, 128]  # f = 2 ** (levels - 1)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    mid_attention: bool = False
    kl_weight: float = Field(1e-4, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(100_000, ge=1)
    share: float = Field(0.3, gt=0, lt=1)  # of max_minutes

    @model_validator(mode="after")
    def _groups(self):
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        return self


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


class SamplingConfig(StrictModel):
    sampler: SamplerName = "dpmsolver++"
    steps: int = Field(25, ge=1)
    guidance: float = Field(2.0, ge=0)  # classifier-free guidance when a composition is requested
    weights: Literal["raw", "ema"] = "raw"


class LandcoverConfig(StrictModel):
    seed: Seed = 0
    max_minutes: float | None = Field(15.0, gt=0)  # total for autoencoder + diffusion; None = steps only
    splits: list[str] = ["train"]
    val_split: str = "val"  # autoencoder metrics; falls back to the training maps when absent
    checkpoint_every_s: float = Field(120.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()


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


def dihedral_t(x: torch.Tensor, r: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (..., H, W)."""
    if r >= 4:
        x = x.flip(-1)
    return torch.rot90(x, r % 4, (-2, -1)) if r % 4 else x


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
            default_sampler=s.sampler, default_steps=s.steps, default_guidance=s.guidance,
            train_compositions=batch_compositions(masks, scheme.num_classes) if cfg.diffusion.composition_control else None,
        )  # fmt: skip
        model.save_pretrained(out / "model")
        ema_unet = build_unet_like(unet)
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
                "latent_norm": {"mean": norm.mean, "std": norm.std},
                "samples_per_step": {"autoencoder": cfg.autoencoder.batch_size, "diffusion": cfg.diffusion.batch_size},
            },
        )
    acc.end_training()
    return out


def build_unet_like(unet):
    return type(unet).from_config(unet.config)


def _train_autoencoder(cfg: LandcoverConfig, acc: Accelerator, masks, k: int, size: int, out: Path, budget):
    a = cfg.autoencoder
    vae = build_autoencoder(
        k, latent_channels=a.latent_channels, block_out_channels=tuple(a.block_out_channels),
        layers_per_block=a.layers_per_block, norm_num_groups=a.norm_num_groups, mid_attention=a.mid_attention,
        sample_size=size,
    )  # fmt: skip
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


# ---- sampling -----------------------------------------------------------------------------


def load_landcover(run: Path, weights: Literal["raw", "ema"] | None = None, device: str = "cpu") -> LandcoverLDM:
    """The trained generator of a run directory (``weights`` None: the run's sampling.weights)."""
    run = Path(run)
    mdir = run / "model"
    if not (mdir / "landcover_ldm.json").exists():
        raise UserError(f"{run}: no trained land-cover model (model/landcover_ldm.json); run 'terrasynth landcover train' first")
    cfg = LandcoverConfig.model_validate(read_yaml(run / "config.yaml"))
    model = LandcoverLDM.from_pretrained(mdir, device=device)
    if (weights or cfg.sampling.weights) == "ema":
        model.unet = type(model.unet).from_pretrained(mdir / "unet_ema").to(device).eval()
    return model


def parse_composition(text: str, codes: list[int], where: str = "--composition") -> dict[int, float]:
    """``"50:0.3,80:0.2"`` -> {50: 0.3, 80: 0.2}; codes must be in the scheme, shares sum to <= 1."""
    out: dict[int, float] = {}
    try:
        for part in text.split(","):
            c, v = part.split(":")
            out[int(c)] = float(v)
    except ValueError as exc:
        raise UserError(f"{where} {text!r}: expected CODE:SHARE pairs like 50:0.3,80:0.2") from exc
    bad = sorted(set(out) - set(codes))
    if bad:
        raise UserError(f"{where} {text!r}: class codes {bad} are not in the scheme (known: {codes})")
    if any(v < 0 for v in out.values()) or sum(out.values()) > 1 + 1e-6:
        raise UserError(f"{where} {text!r}: shares must be >= 0 and sum to at most 1")
    return out


def generate_maps(
    model: LandcoverLDM,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    composition: dict[int, float] | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    skip=lambda b: False,
    on_batch=None,
    progress: bool = True,
) -> tuple[np.ndarray, float]:
    """``n`` maps as (n, H, W) uint8 class codes and the seconds per map.

    Batch ``b`` is drawn from ``torch.Generator().manual_seed(seed * 1_000_003 + b)`` so any
    batch can be redone alone (``skip(b)`` True skips it, e.g. when already written).
    """
    if composition is not None and not model.conditional:
        raise UserError("this land-cover model was trained without composition control; retrain with "
                        "--set diffusion.composition_control=true or drop --composition")  # fmt: skip
    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r} is unknown; choose one of {sorted(SAMPLERS)}")
    cond = model.composition_vector(composition) if composition else None
    maps = []
    secs, made = 0.0, 0
    nb = (n + batch_size - 1) // batch_size
    for b in tqdm(range(nb), desc="sample maps", unit="batch", disable=not progress):
        m = min(batch_size, n - b * batch_size)
        if skip(b):
            maps.append(None)
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        t0 = time.perf_counter()
        idx = model.generate(m, g, composition=cond, guidance=guidance, sampler=sampler, steps=steps)
        secs += time.perf_counter() - t0
        made += m
        codes = model.scheme.to_codes(idx.cpu().numpy())
        maps.append(codes)
        if on_batch:
            on_batch(b, codes)
    full = [x for x in maps if x is not None]
    return (np.concatenate(full) if full else np.zeros((0,), np.uint8)), (secs / made if made else float("nan"))


def sample_landcover(
    run: Path,
    n: int,
    out: Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    composition: dict[int, float] | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    split: str = "train",
    overwrite: bool = False,
) -> Dataset:
    """Write ``n`` generated maps as a label-only dataset (``kind: synthetic``) at ``out``.

    Rerunning the same command resumes: finished batches are skipped.
    """
    run = Path(run)
    if n < 1:
        raise UserError(f"--n {n}: ask for at least one map")
    model = load_landcover(run)
    params = {
        "run": str(run.resolve()), "n": n, "seed": seed, "batch_size": batch_size,
        "composition": {str(k): v for k, v in (composition or {}).items()} or None,
        "guidance": guidance, "sampler": sampler or model.default_sampler, "steps": steps or model.default_steps,
        "split": split, "checkpoint": _checkpoint_id(run),
    }  # fmt: skip
    gen_info = {"family": "landcover-ldm", "run": str(run.resolve()), "checkpoint": params["checkpoint"],
                "sampler": params["sampler"], "steps": params["steps"]}  # fmt: skip
    info = DatasetInfo(
        name=f"landcover-synthetic-{run.name}", kind="synthetic", scheme=model.scheme,
        tile_size=model.latent_shape[-1] * downsampling_factor(model.vae), gsd=_run_gsd(run), has_images=False,
        provenance=provenance(f"landcover-ldm:{run.resolve()}", config_hash=config_hash(params), seed=seed,
                              generator=gen_info, sampling=params),
    )  # fmt: skip
    from terrasynth import budget

    budget.check_budget(
        f"landcover sample --n {n:,}", memory=n * budget.RECORD_BYTES,
        disk=budget.tiles_disk_bytes(n, info.tile_size, images=False), out=out, fix="ask for fewer maps with --n",
    )  # fmt: skip
    with DatasetWriter(out, info, overwrite=overwrite) as w:
        ids = [f"s{seed}_{i:06d}" for i in range(n)]

        def done(b: int) -> bool:
            return all(w.has(t) for t in ids[b * batch_size : (b + 1) * batch_size])

        def write(b: int, codes: np.ndarray) -> None:
            for j, m in enumerate(codes):
                w.write(ids[b * batch_size + j], split, m, source=f"landcover-ldm:{run.name}")

        _, s_per_map = generate_maps(
            model, n, seed=seed, batch_size=batch_size, composition=composition, guidance=guidance,
            sampler=sampler, steps=steps, skip=done, on_batch=write,
        )  # fmt: skip
        if np.isfinite(s_per_map):
            info.extra["seconds_per_map"] = s_per_map
        return w.finalize()


def _checkpoint_id(run: Path) -> str:
    """A short content hash of the exported weights, so provenance pins the exact model."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((run / "model").rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _run_gsd(run: Path) -> float | None:
    meta = run / "data.json"
    if meta.exists():
        import json

        return json.loads(meta.read_text()).get("gsd")
    return None
