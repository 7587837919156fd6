"""Training of the land-cover generator: categorical autoencoder + latent diffusion (``generator: latent``,
the paper's), or masked discrete diffusion on the label grid (``generator: discrete``).

Sampling a finished run is :mod:`terrasynth.inference.landcover`.

A run directory::

    config.yaml               resolved config (a speed probe's chosen max_steps written in)
    checkpoints/<stage>/      training state of each stage (the runner's; a rerun resumes from it)
    autoencoder_metrics.json  reconstruction pixel accuracy and per-class IoU (validation split)
    model/                    LandcoverLDM.save_pretrained: autoencoder/, unet/ (+ unet_ema/)
                              or LandcoverMDM.save_pretrained: unet/ (+ unet_ema/)
    metrics.json              steps, wall times, losses
    tb/<stage>/               TensorBoard

Training runs as two stages of the one training runner (:mod:`terrasynth.train.runner`),
"autoencoder" then "diffusion" (on the normalised latents of all training maps and their 8
dihedral transforms). The autoencoder gets ``autoencoder.share`` of ``max_minutes`` (and of
``target_minutes``), the diffusion model what is left after the autoencoder and the encoding.
The discrete generator trains as one stage, "discrete", with the whole budget.
Multi-GPU: ``accelerate launch -m terrasynth landcover train ...``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from terrasynth.accel import make_accelerator, resolve_precision
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from terrasynth.classes import IGNORE_INDEX
from terrasynth.config import MixedPrecision, Seed, StrictModel, config_dict, save_resolved
from terrasynth.data.dataset import Dataset
from terrasynth.data.torchdata import dihedral_t
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import reconstruction_metrics
from terrasynth.io import ensure_dir, write_json_atomic
from terrasynth.models.autoencoder import AutoencoderArch, autoencoder_loss, encode
from terrasynth.models.diffusion import LatentNorm, PredictionType, SamplingConfig, training_scheduler
from terrasynth.models.latent_diffusion import LandcoverLDM, build_denoiser, p_losses
from terrasynth.models.masked_diffusion import LandcoverMDM, Reveal, Sampler, build_label_denoiser, masked_losses
from terrasynth.train.runner import RunResult, RunSpec, Runner, ema_copy, fingerprint, seed_everything

log = logging.getLogger(__name__)


# ---- configuration ------------------------------------------------------------------------


class AutoencoderConfig(AutoencoderArch):
    """The categorical autoencoder: its architecture and how it trains."""

    kl_weight: float = Field(1e-4, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(100_000, ge=1)
    share: float = Field(0.3, gt=0, lt=1)  # of max_minutes and of target_minutes


class _UNetStageConfig(StrictModel):
    """A diffusers UNet and how it trains: what the latent and the discrete generators share."""

    block_out_channels: list[int] = [64, 128, 128]
    layers_per_block: int = Field(2, ge=1)
    attention: list[bool] = [False, False, True]  # per level; keep it at 16x16 or smaller
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(100_000, ge=1)
    ema_decay: float = Field(0.999, gt=0, lt=1)
    dihedral_augment: bool = True
    condition_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _shape(self):
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention needs one flag per level of block_out_channels {self.block_out_channels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        return self

    def unet_kwargs(self) -> dict:
        return {"block_out_channels": tuple(self.block_out_channels), "layers_per_block": self.layers_per_block,
                "attention": tuple(self.attention), "attention_head_dim": self.attention_head_dim,
                "norm_num_groups": self.norm_num_groups}  # fmt: skip


class DiffusionConfig(_UNetStageConfig):
    prediction_type: PredictionType = "v_prediction"
    snr_gamma: float | None = Field(None, gt=0)  # min-SNR-gamma weighting; None = plain MSE
    num_train_timesteps: int = Field(1000, ge=10)
    composition_control: bool = False


class DiscreteConfig(_UNetStageConfig):
    """Masked discrete diffusion on the label grid (:mod:`terrasynth.models.masked_diffusion`); always
    conditioned on composition. Its UNet runs on maps folded by ``patch`` (space-to-depth)."""

    block_out_channels: list[int] = [32, 64, 128]
    layers_per_block: int = Field(1, ge=1)
    patch: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0)
    sampler: Sampler = "matched"
    steps: int = Field(24, ge=1)
    guidance: float = Field(1.0, ge=0)  # classifier-free guidance for a requested composition
    # Sampling: measured on WorldCover and DRCOG val maps (docs/benchmarks.md, "Idle 15 minutes: the masked
    # discrete generator"); the unbiased chain is temperature 1.0 with reveal random.
    temperature: float = Field(0.5, gt=0)  # of each sampling step's class probabilities; < 1 sharpens
    reveal: Reveal = "confident"  # which masked pixels a step reveals: random (the chain) or confident (MaskGIT)
    reveal_noise: float = Field(4.5, ge=0)  # Gumbel noise on the confidence ranking, times t (confident only)


class LandcoverSamplingConfig(SamplingConfig):
    weights: Literal["raw", "ema"] = "raw"


class LandcoverConfig(StrictModel):
    """The budget keys follow :class:`terrasynth.config.TrainBudget`; ``max_steps`` is per stage."""

    seed: Seed = 0
    generator: Literal["latent", "discrete"] = "latent"  # latent: autoencoder + diffusion; discrete: masked diffusion
    max_minutes: float | None = Field(15.0, gt=0)  # total for autoencoder + diffusion; None = steps only
    target_minutes: float | None = Field(None, gt=0)  # total; sizes each stage's max_steps by a speed probe
    splits: list[str] = ["train"]
    val_split: str = "val"  # autoencoder metrics; falls back to the training maps when absent
    checkpoint_every: int = Field(500, ge=1)  # steps, in each stage
    mixed_precision: MixedPrecision = "no"
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    discrete: DiscreteConfig = DiscreteConfig()
    sampling: LandcoverSamplingConfig = LandcoverSamplingConfig()  # the latent generator's; weights: both

    def family_dict(self) -> dict:
        """The config without the other generator's sections: what a run's fingerprint holds (a latent
        run's is the same as before the discrete generator existed, so older runs still resume)."""
        d = config_dict(self)
        drop = ("autoencoder", "diffusion", "sampling") if self.generator == "discrete" else ("generator", "discrete")
        return {k: v for k, v in d.items() if k not in drop}

    def size_multiple(self) -> int:
        """What the tile size must be a multiple of (autoencoder and UNet halvings, or patch and UNet halvings)."""
        if self.generator == "discrete":
            return self.discrete.patch * 2 ** (len(self.discrete.block_out_channels) - 1)
        return 2 ** (len(self.autoencoder.block_out_channels) - 1) * 2 ** (len(self.diffusion.block_out_channels) - 1)


# ---- helpers ------------------------------------------------------------------------------


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


class _Objective(torch.nn.Module):
    """Wraps a loss in ``forward`` so Accelerate/DDP synchronises gradients through it (the
    autoencoder's loss calls ``encode``/``decode``, and ``denoise`` needs the bare UNet's type)."""

    def __init__(self, net: torch.nn.Module, fn, **kw):
        super().__init__()
        self.net, self.fn, self.kw = net, fn, kw

    def forward(self, *args, **kwargs):
        return self.fn(self.net, *args, **self.kw, **kwargs)


class _AutoencoderStage:
    """Runner family: the categorical autoencoder on random dihedral transforms of the maps."""

    def __init__(self, runner: Runner, a: AutoencoderConfig, masks: torch.Tensor, k: int, size: int):
        vae = a.build(k, sample_size=size)
        opt = torch.optim.AdamW(vae.parameters(), lr=a.lr, weight_decay=0.0)
        self.objective, _ = runner.prepare(_Objective(vae, autoencoder_loss, kl_weight=a.kl_weight), opt)
        self.runner, self.masks, self.batch_size = runner, masks, a.batch_size

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        i = torch.randint(0, len(self.masks), (self.batch_size,), generator=gen)
        r = int(torch.randint(0, 8, (1,), generator=gen))
        return self.objective(dihedral_t(self.masks[i], r).long().to(self.runner.acc.device))[0]

    @property
    def net(self) -> torch.nn.Module:
        return self.runner.unwrap(self.objective).net


class _DiffusionStage:
    """Runner family: the denoiser on normalised latents ``z`` (N, C, h, w), conditioned on
    their compositions ``comp`` (N, K) with dropout to the all-zero "null" condition."""

    def __init__(self, runner: Runner, d: DiffusionConfig, z: torch.Tensor, comp: torch.Tensor):
        unet = build_denoiser(z.shape[1], z.shape[-1], **d.unet_kwargs(),
                              composition_classes=comp.shape[1] if d.composition_control else None)  # fmt: skip
        sched = training_scheduler(d.prediction_type, d.num_train_timesteps)
        opt = torch.optim.AdamW(unet.parameters(), lr=d.lr, weight_decay=0.0)
        self.objective, _ = runner.prepare(_Objective(unet, p_losses, scheduler=sched, snr_gamma=d.snr_gamma), opt)
        self.runner, self.d, self.z, self.comp = runner, d, z, comp
        runner.track_ema(self.net.parameters())

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        d, dev = self.d, self.runner.acc.device
        i = torch.randint(0, len(self.z), (d.batch_size,), generator=gen)
        cond = None
        if d.composition_control:
            keep = (torch.rand(d.batch_size, 1, generator=gen) >= d.condition_dropout).float()
            cond = (self.comp[i] * keep).to(dev)
        return self.objective(self.z[i].to(dev), cond, generator=gen)

    @property
    def net(self) -> torch.nn.Module:
        return self.runner.unwrap(self.objective).net


class _DiscreteStage:
    """Runner family: masked discrete diffusion on random dihedral transforms of the maps (N, H, W),
    conditioned on their compositions ``comp`` (N, K) with dropout to the all-zero "null" condition."""

    def __init__(self, runner: Runner, d: DiscreteConfig, masks: torch.Tensor, comp: torch.Tensor):
        unet = build_label_denoiser(comp.shape[1], masks.shape[-1], patch=d.patch, **d.unet_kwargs())
        opt = torch.optim.AdamW(unet.parameters(), lr=d.lr, weight_decay=0.0)
        self.objective, _ = runner.prepare(_Objective(unet, masked_losses), opt)
        self.runner, self.d, self.masks, self.comp = runner, d, masks, comp
        runner.track_ema(self.net.parameters())

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        d, dev = self.d, self.runner.acc.device
        i = torch.randint(0, len(self.masks), (d.batch_size,), generator=gen)
        r = int(torch.randint(0, 8, (1,), generator=gen)) if d.dihedral_augment else 0
        keep = (torch.rand(d.batch_size, 1, generator=gen) >= d.condition_dropout).float()
        x0 = dihedral_t(self.masks[i], r).long().to(dev)
        return self.objective(x0, (self.comp[i] * keep).to(dev), generator=gen)

    net = _DiffusionStage.net


# ---- training -----------------------------------------------------------------------------


def train_landcover(cfg: LandcoverConfig, data: Path, out: Path, *, resume: bool = True) -> Path:
    """Train autoencoder then latent diffusion on the label maps of ``data``; returns ``out``.

    Rerunning with the same config resumes from ``out/checkpoints``; ``resume=False``
    (``--restart``) starts over. The finished model is ``out/model``
    (:meth:`LandcoverLDM.from_pretrained`).
    """
    data, out = Path(data), Path(out)
    ds = Dataset.open(data)
    scheme, size = ds.scheme, ds.info.tile_size
    need = cfg.size_multiple()
    if size % need:
        parts = "discrete.patch x UNet levels" if cfg.generator == "discrete" else "autoencoder f x UNet levels"
        raise UserError(f"{data}: tile size {size} is not divisible by {need} ({parts}); "
                        "change the block_out_channels (or discrete.patch) or the tile size")  # fmt: skip
    ensure_dir(out)
    fp = fingerprint(cfg.family_dict(), data=str(data.resolve()))
    if not resume or not any((out / "checkpoints").glob("*/step-*")):
        save_resolved(cfg, out)  # a run in progress keeps its config until the runner has accepted this one
    masks = load_masks(ds, cfg.splits)
    if cfg.generator == "discrete":
        return _train_discrete(cfg, ds, masks, out, fp, resume)
    val = ds.split(cfg.val_split)
    val_masks = load_masks(ds, [cfg.val_split]) if val else masks[:256]
    share = cfg.autoencoder.share
    t_start = time.perf_counter()

    ae_runner = _runner(cfg, "autoencoder", cfg.autoencoder.max_steps, share, 0.0, out, fp, resume)
    seed_everything(cfg.seed)
    ae = _AutoencoderStage(ae_runner, cfg.autoencoder, masks, scheme.num_classes, size)
    ae_res = ae_runner.fit(ae)
    vae = ae.net.eval()
    acc = ae_runner.acc
    if acc.is_main_process:
        save_resolved(cfg, out)
        _write_data_json(out, ds, cfg)
    ae_metrics = reconstruction_metrics(vae, val_masks.long().split(64), scheme.num_classes)
    ae_metrics["iou_by_code"] = {str(c): v for c, v in zip(scheme.codes, ae_metrics["iou"])}
    if acc.is_main_process:
        write_json_atomic(out / "autoencoder_metrics.json", {**ae_metrics, "steps": ae_res.steps})
    log.info("autoencoder: pixel accuracy %.4f after %d steps", ae_metrics["pixel_accuracy"], ae_res.steps)

    t0 = time.perf_counter()
    z, comp = _encode_all(vae, masks, scheme.num_classes, cfg.diffusion.dihedral_augment)
    norm = LatentNorm.fit(z)
    z = norm.normalize(z)
    encode_s = time.perf_counter() - t0
    # Diffusion checkpoints hold a model of the latents of the autoencoder that was there when they were
    # written: when this invocation trained the autoencoder further, the diffusion stage starts over.
    ae_unchanged = ae_res.resumed_from == ae_res.steps
    if resume and not ae_unchanged and any((out / "checkpoints" / "diffusion").glob("step-*")):
        log.warning("%s: the autoencoder was trained further; training the diffusion model from step 0", out)
    used_min = (ae_res.elapsed_s + encode_s) / 60
    d_runner = _runner(cfg, "diffusion", cfg.diffusion.max_steps, 1.0, used_min, out, fp, resume and ae_unchanged)
    seed_everything(cfg.seed)
    dm = _DiffusionStage(d_runner, cfg.diffusion, z, comp)
    d_res = d_runner.fit(dm)
    unet = dm.net.eval()

    if d_runner.acc.is_main_process:
        s, comps = cfg.sampling, batch_compositions(masks, scheme.num_classes)
        model = LandcoverLDM(
            vae, unet, dict(training_scheduler(cfg.diffusion.prediction_type, cfg.diffusion.num_train_timesteps).config),
            norm, scheme, class_frequencies=comps.mean(0).tolist(), default_sampler=s.scheduler, default_steps=s.steps,
            default_guidance=s.guidance_scale, train_compositions=comps if cfg.diffusion.composition_control else None,
        )  # fmt: skip
        model.save_pretrained(out / "model")
        ema_copy(d_runner, dm.net).save_pretrained(out / "model" / "unet_ema")
        resolved = cfg.model_copy(deep=True)  # a speed probe's choice, so the config reproduces the run
        resolved.autoencoder.max_steps, resolved.diffusion.max_steps = ae_res.max_steps, d_res.max_steps
        save_resolved(resolved, out)
        write_json_atomic(
            out / "metrics.json",
            {
                "autoencoder": {**_stage_metrics(ae_res), **ae_metrics},
                "diffusion": _stage_metrics(d_res),
                "encode_seconds": encode_s,
                "wall_seconds_this_invocation": time.perf_counter() - t_start,
                "latent_norm": {"mean": norm.shift.tolist(), "std": norm.std.tolist()},
                "samples_per_step": {"autoencoder": cfg.autoencoder.batch_size, "diffusion": cfg.diffusion.batch_size},
            },
        )
    return out


def _train_discrete(cfg: LandcoverConfig, ds: Dataset, masks: torch.Tensor, out: Path, fp, resume: bool) -> Path:
    """The discrete generator: one runner stage, "discrete", on the maps themselves; the whole budget."""
    runner = _runner(cfg, "discrete", cfg.discrete.max_steps, 1.0, 0.0, out, fp, resume)
    seed_everything(cfg.seed)
    comps = batch_compositions(masks, ds.scheme.num_classes)
    stage = _DiscreteStage(runner, cfg.discrete, masks, comps)
    res = runner.fit(stage)
    if runner.acc.is_main_process:
        d = cfg.discrete
        model = LandcoverMDM(stage.net.eval(), ds.scheme, class_frequencies=comps.mean(0).tolist(),
                             default_sampler=d.sampler, default_steps=d.steps, default_guidance=d.guidance,
                             train_compositions=comps, temperature=d.temperature, reveal=d.reveal,
                             reveal_noise=d.reveal_noise)  # fmt: skip
        model.save_pretrained(out / "model")
        ema_copy(runner, stage.net).save_pretrained(out / "model" / "unet_ema")
        _write_data_json(out, ds, cfg)
        resolved = cfg.model_copy(deep=True)
        resolved.discrete.max_steps = res.max_steps
        save_resolved(resolved, out)
        write_json_atomic(out / "metrics.json", {"discrete": _stage_metrics(res), "samples_per_step": d.batch_size})
    return out


def _write_data_json(out: Path, ds: Dataset, cfg: LandcoverConfig) -> None:
    write_json_atomic(out / "data.json", {"path": str(Path(ds.root).resolve()), "name": ds.info.name, "gsd": ds.info.gsd,
                                          "tile_size": ds.info.tile_size, "splits": cfg.splits})  # fmt: skip


def _runner(cfg: LandcoverConfig, stage: str, max_steps: int, share: float, used_min: float, out: Path, fp,
            resume: bool) -> Runner:  # fmt: skip
    """One stage's runner: ``share`` of the run's minutes, less the ``used_min`` already spent."""

    def part(total: float | None) -> float | None:
        return None if total is None else max(1 / 60, total * share - used_min)

    d = {"diffusion": cfg.diffusion, "discrete": cfg.discrete}.get(stage)
    spec = RunSpec(
        stage, max_steps=max_steps, max_minutes=part(cfg.max_minutes), target_minutes=part(cfg.target_minutes),
        checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
        **({"lr_schedule": d.lr_schedule, "warmup_steps": d.warmup_steps, "ema_decay": d.ema_decay} if d else {}),
    )  # fmt: skip
    acc = make_accelerator(mixed_precision=resolve_precision(cfg.mixed_precision))
    return Runner(spec, acc, out, fp, resume=resume)


def _stage_metrics(res: RunResult) -> dict:
    return {"steps": res.steps, "max_steps": res.max_steps, "seconds": res.elapsed_s, "loss_curve": res.losses,
            "probe": res.probe}  # fmt: skip


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
