"""The SPADE family (generator + discriminator, hinge GAN) on the training runner.

One step: the generator paints a batch from its masks; the discriminator learns real vs
fake; the generator learns to fool it (plus feature matching, or OASIS's class-aware
loss). The runner owns the rest (budgets, EMA, seeding, checkpoints, resume, logging). At
every checkpoint (``checkpoint_every`` steps, and at the end) the inference generator (EMA
weights when on) is scored on validation masks (see :mod:`terrasynth.train.judge`), its
weights are saved, the best ``select.keep`` are kept, and ``generator.json`` points at the
best one.

Multi-GPU: ``accelerate launch -m terrasynth spade train ...`` (Accelerate wraps G and D).
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file

from terrasynth.accel import dist_state, make_accelerator, resolve_precision
from terrasynth.classes import ClassScheme, one_hot
from terrasynth.config import MixedPrecision, Seed, StrictModel, TrainBudget, config_dict, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, TileRecord, provenance
from terrasynth.data.torchdata import TileDataset, random_pairs
from terrasynth.errors import UserError
from terrasynth.io import ensure_dir, load_weights, save_weights, write_json_atomic
from terrasynth.models.discriminators import (
    Downsample, MultiscalePatchGAN, OASISDiscriminator, labelmix, labelmix_loss, oasis_class_weights, oasis_loss,
)  # fmt: skip
from terrasynth.models.generator import write_generator_file
from terrasynth.models.spade import SPADEGenerator, Upsample, num_up_for
from terrasynth.train.diffaugment import Policy, diff_augment
from terrasynth.train.gan_losses import (
    VGGLoss, feature_matching_loss, hinge_d_loss, hinge_g_loss, mode_seeking_loss, multiscale,
)  # fmt: skip
from terrasynth.train.judge import build_judge, judge_miou, train_judge
from terrasynth.train.runner import Runner, RunSpec, ema_copy, fingerprint, seed_everything

log = logging.getLogger(__name__)

SCORES_FILE = "scores.json"


# ---- configuration -------------------------------------------------------------------


class SpadeModelConfig(StrictModel):
    ngf: int = Field(32, ge=4, description="generator width at full resolution")
    latent_size: int = Field(4, ge=1, description="side of the grid the generator starts from")
    num_middle: int = Field(1, ge=0)
    hidden: int = Field(64, ge=4, description="channels of the SPADE modulation MLP")
    norm: Literal["instance", "batch"] = "instance"
    spectral_norm: bool = True
    noise_dim: int = Field(32, ge=1, description="size of the 3D noise vector (remedies.noise3d)")
    upsample: Upsample = Field(
        "bilinear", description="generator's x2 upsampling; nearest (the original) left a grid (docs/benchmarks.md)"
    )
    ndf: int = Field(32, ge=4, description="discriminator width")
    d_layers: int = Field(3, ge=2, description="PatchGAN conv layers")
    num_d: int = Field(2, ge=1, description="PatchGAN scales")
    d_downsample: Downsample = Field("stride", description="PatchGAN x2 downsampling: 4x4 stride-2 conv or conv + pool")
    oasis_depth: int = Field(3, ge=1, description="OASIS discriminator downsamplings")


class SpadeLossConfig(StrictModel):
    feature_matching: float = Field(10.0, ge=0, description="weight of D feature matching (PatchGAN only)")
    vgg: float = Field(0.0, ge=0, description="weight of the VGG-19 perceptual loss; needs vgg_weights")
    vgg_weights: str | None = Field(None, description="local torchvision vgg19 state dict (.pth/.safetensors)")
    labelmix: float = Field(10.0, ge=0, description="weight of the LabelMix consistency loss")
    diversity: float = Field(
        0.0,
        ge=0,
        description="weight of the mode-seeking term (MSGAN): two noise draws per mask should differ; "
        "needs remedies.noise3d; costs a second generator pass on half the batch",
    )

    @model_validator(mode="after")
    def _vgg_needs_weights(self) -> "SpadeLossConfig":
        if self.vgg > 0 and not self.vgg_weights:
            raise ValueError("loss.vgg > 0 needs loss.vgg_weights (a local vgg19 state dict); nothing is downloaded")
        return self


class SpadeRemedies(StrictModel):
    """The fixes the field found since SPADE; all off = the original method."""

    discriminator: Literal["patchgan", "oasis"] = "patchgan"
    labelmix: bool = False
    noise3d: bool = False
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    ema_warmup: bool = Field(
        True,
        description="decay min(ema_decay, n / (9 + n)) at the n-th update (the runner's 'linear' EMA warm-up), so "
        "short runs do not average in "
        "the random initial weights (with 0.999 and no warm-up a third of the EMA is still the init after 1,100 steps)",
    )
    diffaugment: list[Policy] = Field(default_factory=list, description="e.g. [color, translation, cutout]")

    @model_validator(mode="after")
    def _labelmix_needs_oasis(self) -> "SpadeRemedies":
        if self.labelmix and self.discriminator != "oasis":
            raise ValueError("remedies.labelmix needs remedies.discriminator=oasis")
        return self


class SpadeOptim(StrictModel):
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)


class SpadeSelect(StrictModel):
    """Checkpoint selection by a validation score (GAN training drifts; the last is not the best)."""

    metric: Literal["judge", "last"] = "judge"
    keep: int = Field(3, ge=1, description="snapshots kept (the best by score)")
    judge_steps: int = Field(400, ge=1, description="training steps of the judge segmenter")
    judge_encoder: str = "resnet18"
    judge_cache: str | None = Field(
        None, description="directory to share trained judges between runs (keyed by data, seed and judge settings)"
    )
    val_tiles: int = Field(128, ge=1, description="validation tiles scored per snapshot")


class SpadeConfig(TrainBudget):
    model: SpadeModelConfig = Field(default_factory=SpadeModelConfig)
    loss: SpadeLossConfig = Field(default_factory=SpadeLossConfig)
    remedies: SpadeRemedies = Field(default_factory=SpadeRemedies)
    optim: SpadeOptim = Field(default_factory=SpadeOptim)
    select: SpadeSelect = Field(default_factory=SpadeSelect)
    batch_size: int = Field(8, ge=1)
    max_minutes: float | None = Field(
        10.0, gt=0, description="wall-clock budget of GAN training (data loading and the judge not counted)"
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints, each a scored snapshot")
    seed: Seed = 0
    mixed_precision: MixedPrecision = Field(
        "no", description="autocast of G and D (CUDA: fp16 where bf16 is missing); 'auto' = bf16 where the CPU has it"
    )
    augment: bool = Field(True, description="random flips / 90-degree rotations of (image, mask)")
    train_split: str = "train"
    val_split: str = Field("val", description="falls back to held-out training sources when absent")
    log_every: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _diversity_needs_noise(self) -> SpadeConfig:
        if self.loss.diversity > 0 and not self.remedies.noise3d:
            raise ValueError(
                "loss.diversity > 0 compares two noise draws: set remedies.noise3d=true or loss.diversity=0"
            )
        return self


def generator_kwargs(cfg: SpadeConfig, num_classes: int, tile_size: int) -> dict[str, Any]:
    m = cfg.model
    return dict(
        num_classes=num_classes, ngf=m.ngf, num_up=num_up_for(tile_size, m.latent_size), num_middle=m.num_middle,
        hidden=m.hidden, norm=m.norm, spectral=m.spectral_norm, noise="3d" if cfg.remedies.noise3d else "none",
        noise_dim=m.noise_dim, upsample=m.upsample,
    )  # fmt: skip


def build_discriminator(cfg: SpadeConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    if cfg.remedies.discriminator == "oasis":
        return OASISDiscriminator(num_classes, ndf=m.ndf, depth=m.oasis_depth, spectral=m.spectral_norm)
    return MultiscalePatchGAN(num_classes, ndf=m.ndf, n_layers=m.d_layers, num_d=m.num_d, spectral=m.spectral_norm,
                              down=m.d_downsample)  # fmt: skip


def build_spec(cfg: SpadeConfig) -> RunSpec:
    """How the runner trains SPADE: constant learning rates, the EMA of G when ``remedies.ema``."""
    r = cfg.remedies
    return RunSpec(
        "spade", max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, target_minutes=cfg.target_minutes,
        lr_schedule="constant", ema_decay=r.ema_decay if r.ema else None,
        ema_warmup="linear" if r.ema_warmup else "none", checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
        log_every=cfg.log_every,
    )  # fmt: skip


# ---- data ----------------------------------------------------------------------------


def load_tiles(ds: Dataset, records: list[TileRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """All tiles in memory: images (N, 3, H, W) uint8, masks (N, H, W) uint8 (255 nodata)."""
    td = TileDataset(ds, records=records, cache=False)
    tiles = [td._load(i) for i in range(len(td))]
    imgs = [torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) for img, _ in tiles]
    return torch.stack(imgs), torch.stack([torch.from_numpy(idx.astype(np.uint8)) for _, idx in tiles])


def split_train_val(ds: Dataset, train: str, val: str) -> tuple[list[TileRecord], list[TileRecord]]:
    """The val split when it exists, else the training tiles of the last ~10% of sources (no leak)."""
    tr, va = ds.split(train), ds.split(val)
    if not tr:
        raise UserError(f"{ds.root}: no tiles in split {train!r}; available: {sorted({r.split for r in ds.records})}")
    if va:
        return tr, va
    sources = sorted({r.source for r in tr})
    if len(sources) >= 2:
        held = set(sources[-max(1, len(sources) // 10) :])
        return [r for r in tr if r.source not in held], [r for r in tr if r.source in held]
    k = max(1, len(tr) // 10)
    return tr[:-k] or tr, tr[-k:]


def sample_batch(
    images: torch.Tensor, masks: torch.Tensor, batch_size: int, gen: torch.Generator, augment: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images (B, 3, H, W) float in [-1, 1], masks (B, H, W) int64."""
    return random_pairs(lambda i: (images[i].float().div(127.5).sub(1), masks[i].long()), len(images), batch_size,
                        gen, augment)  # fmt: skip


# ---- the family ---------------------------------------------------------------------


class SpadeTrainer:
    """The SPADE family on a :class:`Runner`: G, D and their optimisers; a step is one D and one G update.

    ``images`` (N, 3, H, W) uint8 and ``masks`` (N, H, W) uint8 (255 nodata) are the training
    tiles a step samples its batch from; ``select`` scores and keeps snapshots (None: none).
    """

    def __init__(self, cfg: SpadeConfig, num_classes: int, tile_size: int, runner: Runner,
                 images: torch.Tensor, masks: torch.Tensor, select: Snapshots | None = None):  # fmt: skip
        self.cfg, self.k, self.runner, self.select = cfg, num_classes, runner, select
        self.images, self.masks = images, masks
        self.acc = runner.acc
        self.g_kwargs = generator_kwargs(cfg, num_classes, tile_size)
        seed_everything(cfg.seed)
        G = SPADEGenerator(**self.g_kwargs)
        D = build_discriminator(cfg, num_classes)
        o = cfg.optim
        opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
        self.G, self.D, self.opt_g, self.opt_d = runner.prepare(G, D, opt_g, opt_d)
        if cfg.remedies.ema:
            runner.track_ema(self.g.parameters())
        self.vgg = VGGLoss(cfg.loss.vgg_weights).to(self.acc.device) if cfg.loss.vgg > 0 else None
        # Freezing D during the G update saves its weight gradients; DDP needs a static graph.
        self._can_freeze = self.acc.num_processes == 1

    @property
    def g(self) -> SPADEGenerator:
        return self.runner.unwrap(self.G)

    def inference_generator(self) -> SPADEGenerator:
        """A frozen copy of the generator to save: the EMA weights when ``remedies.ema``."""
        return ema_copy(self.runner, self.G)

    def _d_inputs(self, imgs: list[torch.Tensor], masks: torch.Tensor, gen: torch.Generator):
        if self.cfg.remedies.diffaugment:
            imgs, masks = diff_augment(imgs, masks, self.cfg.remedies.diffaugment, gen)
        return imgs, masks

    def training_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        real, masks = sample_batch(self.images, self.masks, self.cfg.batch_size, gen, self.cfg.augment)
        logs = self.update(real, masks, gen)
        if not all(math.isfinite(v) for v in logs.values()):
            raise RuntimeError(f"spade: non-finite loss at step {step}: {logs}; lower the learning rates")
        return logs

    def update(self, real: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """``real`` (B, 3, H, W) in [-1, 1], ``masks`` (B, H, W) int64; returns the losses."""
        cfg, dev = self.cfg, self.acc.device
        real, masks = real.to(dev), masks.to(dev)
        seg = one_hot(masks, self.k)
        b = real.shape[0]
        z = self.g.sample_noise(b, gen, device=dev)
        n = max(1, b // 2) if cfg.loss.diversity > 0 else 0
        if n:  # the first n masks painted again with other noise, in the same forward pass
            z2 = self.g.sample_noise(n, gen, device=dev)
            fake, fake2 = self.G(torch.cat([seg, seg[:n]]), torch.cat([z, z2])).split([b, n])
        else:
            fake = self.G(seg, z)  # one generator forward serves both updates
        oasis = cfg.remedies.discriminator == "oasis"
        logs: dict[str, float] = {}

        # -- discriminator
        if self._can_freeze:
            self.D.requires_grad_(True)
        (f_d, r_d), m_d = self._d_inputs([fake.detach(), real], masks, gen)
        if oasis:
            batch = [f_d, r_d]
            if cfg.remedies.labelmix:
                mixed, lm = labelmix(r_d, f_d, m_d, gen)
                batch.append(mixed)
            out = self.D(torch.cat(batch))
            w = oasis_class_weights(m_d, self.k)
            d_loss = oasis_loss(out[b : 2 * b], m_d, real=True, weights=w)
            d_loss = d_loss + oasis_loss(out[:b], m_d, real=False, weights=w)
            if cfg.remedies.labelmix:
                lm_loss = labelmix_loss(out[2 * b :], out[b : 2 * b], out[:b], lm)
                logs["d_labelmix"] = lm_loss.item()
                d_loss = d_loss + cfg.loss.labelmix * lm_loss
        else:
            seg_d = one_hot(m_d, self.k)
            fk, rl = _split_scales(self.D(torch.cat([f_d, r_d]), torch.cat([seg_d, seg_d])), b)
            d_loss = multiscale(hinge_d_loss, rl, fk)
        self.opt_d.zero_grad(set_to_none=True)
        self.runner.backward(d_loss)
        self.opt_d.step()
        logs["d_loss"] = d_loss.item()

        # -- generator
        if self._can_freeze:
            self.D.requires_grad_(False)
        (f_g, r_g), m_g = self._d_inputs([fake, real], masks, gen)
        if oasis:
            g_loss = adv = oasis_loss(self.D(f_g), m_g, real=True, weights=oasis_class_weights(m_g, self.k))
        else:
            seg_g = one_hot(m_g, self.k)
            fk, rl = _split_scales(self.D(torch.cat([f_g, r_g]), torch.cat([seg_g, seg_g])), b)
            g_loss = adv = multiscale(hinge_g_loss, fk)
            if cfg.loss.feature_matching > 0:
                fm = feature_matching_loss(fk, rl)
                logs["g_fm"] = fm.item()
                g_loss = g_loss + cfg.loss.feature_matching * fm
        if n:
            ms = mode_seeking_loss(fake[:n], fake2, z[:n], z2)
            logs["g_ms"] = ms.item()
            g_loss = g_loss + cfg.loss.diversity * ms
        if self.vgg is not None:
            vgg = self.vgg(fake, real)
            logs["g_vgg"] = vgg.item()
            g_loss = g_loss + cfg.loss.vgg * vgg
        self.opt_g.zero_grad(set_to_none=True)
        self.runner.backward(g_loss)
        self.opt_g.step()
        logs["g_adv"] = adv.item()
        logs["g_loss"] = g_loss.item()
        return logs

    # ---- runner hooks: the resolved config, snapshots, their scores in checkpoints

    def on_start(self, step: int) -> None:
        if self.select is not None and self.acc.is_main_process:
            self.select.start(self.runner.max_steps)

    def after_step(self, step: int, logs: dict[str, float]) -> None:
        # At each checkpoint step; here, not in on_checkpoint, so scoring counts in the time budget.
        if step % self.runner.spec.checkpoint_every == 0:
            self._snapshot(step)

    def on_end(self, step: int) -> None:
        self._snapshot(step)

    def _snapshot(self, step: int) -> None:
        if self.select is not None and self.acc.is_main_process and self.select.last_step != step:
            self.select.take(self.inference_generator(), step, self.runner.state.elapsed / 60, self.runner.tb)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.select.scores if self.select is not None else []}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if self.select is not None:
            self.select.scores = d["scores"]


def _split_scales(outs: list[list[torch.Tensor]], b: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per-scale features of a (fake; real) batch -> (fake features, real features)."""
    return [[f[:b] for f in s] for s in outs], [[f[b:] for f in s] for s in outs]


class Snapshots:
    """Scores inference generators, keeps the best ``select.keep`` weight files, points generator.json at the best."""

    def __init__(self, cfg: SpadeConfig, out: Path, scheme: ClassScheme, g_kwargs: dict[str, Any],
                 va_mask: torch.Tensor, judge: torch.nn.Module | None, judge_real: float,
                 prov: dict[str, Any], judge_factory: Callable[[], tuple[torch.nn.Module, float]] | None = None):  # fmt: skip
        self.cfg, self.out, self.scheme, self.g_kwargs = cfg, out, scheme, g_kwargs
        self.va_mask, self.judge, self.judge_real, self.prov = va_mask, judge, judge_real, prov
        self.judge_factory = judge_factory  # a judge trained at start() only if there is a choice to make
        self.k = scheme.num_classes
        self.scores: list[dict[str, Any]] = []

    @property
    def last_step(self) -> int | None:
        return self.scores[-1]["step"] if self.scores else None

    def start(self, max_steps: int) -> None:
        """The resolved config (with the steps the speed probe chose) and provenance, once training starts."""
        save_resolved(self.cfg.model_copy(update={"max_steps": max_steps}), self.out)
        write_json_atomic(self.out / "provenance.json", self.prov)
        if not self.scores:  # started over: snapshots of an earlier run are no candidates
            for f in (self.out / "checkpoints").glob("step_*.safetensors"):
                f.unlink()
        if self.judge is None and self.judge_factory is not None:
            if not self.scores and max_steps <= self.cfg.checkpoint_every:
                log.info("spade: %d steps take one snapshot (checkpoint_every %d): nothing to choose, no judge "
                         "trained", max_steps, self.cfg.checkpoint_every)  # fmt: skip
            else:
                self._train_judge()

    def _train_judge(self) -> None:
        """Train (or load) the judge now, leaving the global RNGs as they were, and score the snapshots an
        earlier, judge-less call of this run took (an extended one-snapshot run)."""
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.judge, self.judge_real = self.judge_factory()
        random.setstate(rng[0]), np.random.set_state(rng[1]), torch.set_rng_state(rng[2])
        kept = []
        for s in self.scores:
            if "judge_miou" not in s and s["checkpoint"]:
                net = SPADEGenerator(**self.g_kwargs)
                net.load_state_dict(load_weights(self.out / s["checkpoint"]))
                fake = generate_images(net.to(next(self.judge.parameters()).device), self.va_mask, self.k,
                                       seed=self.cfg.seed)  # fmt: skip
                s["score"] = judge_miou(self.judge, fake, self.va_mask, self.k) / self.judge_real
                s["judge_miou"] = s["score"] * self.judge_real  # as take() records it
            if "judge_miou" in s:
                kept.append(s)
        self.scores = kept

    def take(self, net: SPADEGenerator, step: int, minutes: float, tb: Any) -> None:
        cfg, k, va_mask = self.cfg, self.k, self.va_mask
        score, extra = float(step), {}
        if self.judge is not None:
            fake = generate_images(net, va_mask, k, seed=cfg.seed)
            score = judge_miou(self.judge, fake, va_mask, k) / self.judge_real
            extra["judge_miou"] = score * self.judge_real
            if net.noise_dim:  # diversity: two noise draws for the same masks
                fake2 = generate_images(net, va_mask, k, seed=cfg.seed + 1)
                extra["diversity_l1"] = float((fake - fake2).abs().mean())
        name = f"checkpoints/step_{step:07d}.safetensors"
        ensure_dir(self.out / "checkpoints")
        save_weights(self.out / name, net.state_dict())
        self.scores.append({"step": step, "score": score, "checkpoint": name, "minutes": minutes, **extra})
        ranked = sorted(self.scores, key=lambda s: (s["score"], s["step"]), reverse=True)
        for s in ranked[cfg.select.keep :]:
            if s["checkpoint"]:  # dropped earlier ones are already gone
                (self.out / s["checkpoint"]).unlink(missing_ok=True)
                s["checkpoint"] = None
        best = ranked[0]
        write_json_atomic(self.out / SCORES_FILE, self.scores)
        write_generator_file(
            self.out, "spade", checkpoint=best["checkpoint"], step=best["step"], score=best["score"],
            selection=cfg.select.metric, generator_kwargs=self.g_kwargs, scheme=self.scheme.to_dict(),
            ema=cfg.remedies.ema,
        )  # fmt: skip
        if tb is not None:
            tb.add_scalar("select/score", score, step)
            for key, v in extra.items():
                tb.add_scalar(f"select/{key}", v, step)
            tb.add_images("samples", generate_images(net, va_mask[:8], k, seed=cfg.seed), step)
        log.info("step %d: score %.3f %s (best: step %d, %.3f)", step, score, extra, best["step"], best["score"])


# ---- the loop --------------------------------------------------------------------------


@torch.no_grad()
def generate_images(
    net: SPADEGenerator, masks: torch.Tensor, num_classes: int, seed: int, batch_size: int = 32
) -> torch.Tensor:
    """``masks`` (N, H, W) -> images (N, 3, H, W) float in [0, 1], fixed noise from ``seed``."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(masks), batch_size):
        m = masks[i : i + batch_size].long().to(dev)
        z = net.sample_noise(len(m), gen, device=dev)
        out.append(net(one_hot(m, num_classes), z).add(1).div(2).clamp(0, 1).cpu())
    net.train(was_training)
    return torch.cat(out)


def train_spade(cfg: SpadeConfig, data: Path, out: Path, *, resume: bool = True, progress: bool = True) -> Path:
    """Train SPADE on the paired dataset ``data``; write the run to ``out`` and return it.

    ``out`` gets ``config.yaml``, ``provenance.json``, ``checkpoints/spade/step-*/`` (the
    runner's full training state; ``checkpoints/judge/`` the judge's),
    ``checkpoints/step_*.safetensors`` (best ``select.keep`` inference generators),
    ``scores.json``, ``generator.json`` (the selected checkpoint) and ``tb/``. Rerunning
    resumes; ``resume=False`` starts over.
    """
    data, out = Path(data), Path(out)
    ds = Dataset.open(data)
    if not ds.info.has_images:
        raise UserError(f"{data}: label-only dataset; SPADE trains on image/label pairs (a paired dataset)")
    scheme, tile = ds.scheme, ds.info.tile_size
    k = scheme.num_classes
    g_kwargs = generator_kwargs(cfg, k, tile)  # raises a UserError on a bad latent size
    fp = fingerprint(config_dict(cfg), data=str(data.resolve()))

    seed_everything(cfg.seed)
    tr_recs, va_recs = split_train_val(ds, cfg.train_split, cfg.val_split)
    tr_img, tr_mask = load_tiles(ds, tr_recs)
    va_recs = va_recs[:: max(1, len(va_recs) // cfg.select.val_tiles)][: cfg.select.val_tiles]
    va_img, va_mask = load_tiles(ds, va_recs)

    def ready_judge() -> tuple[torch.nn.Module, float]:
        judge = _ready_judge(cfg, data, out, tr_recs, tr_img, tr_mask, k, resume=resume, progress=progress)
        judge_real = judge_miou(judge, va_img.float() / 255, va_mask, k)
        log.info("judge mIoU on real validation tiles: %.3f", judge_real)
        if not judge_real > 0:
            raise UserError(f"{data}: the judge segmenter scores 0 on real validation tiles; use select.metric=last")
        return judge, judge_real

    # The judge trains on its own fp32 accelerator and outside SPADE's time budget. Where SPADE too runs
    # fp32 in one process, it waits until the speed probe has sized the run: a run with a single snapshot
    # has nothing to choose and trains none. Otherwise it trains first (Accelerate's precision state is
    # process-wide, and every rank must train it).
    precision = resolve_precision(cfg.mixed_precision)
    lazy = cfg.select.metric == "judge" and precision == "no" and dist_state().num_processes == 1
    judge, judge_real = ready_judge() if cfg.select.metric == "judge" and not lazy else (None, 1.0)

    acc = make_accelerator(mixed_precision=precision)
    runner = Runner(build_spec(cfg), acc, out, fp, resume=resume, progress=progress)
    prov = provenance(str(data.resolve()), config_hash=config_hash(fp), seed=cfg.seed, dataset=ds.info.name,
                      tile_size=tile)  # fmt: skip
    select = Snapshots(cfg, out, scheme, g_kwargs, va_mask, judge, judge_real, prov,
                       judge_factory=ready_judge if lazy else None)  # fmt: skip
    runner.fit(SpadeTrainer(cfg, k, tile, runner, tr_img, tr_mask, select))
    return out


def _ready_judge(cfg: SpadeConfig, data: Path, out: Path, tr_recs: list[TileRecord], tr_img: torch.Tensor,
                 tr_mask: torch.Tensor, k: int, *, resume: bool, progress: bool) -> torch.nn.Module:  # fmt: skip
    """The judge from ``select.judge_cache`` when it holds one for these settings, else trained (stage ``judge``)."""
    s = cfg.select
    seed_everything(cfg.seed)
    judge = build_judge(k, s.judge_encoder)
    settings = {"select": {"judge_encoder": s.judge_encoder, "judge_steps": s.judge_steps}, "seed": cfg.seed}
    inputs = {"data": str(data.resolve()), "train": [r.id for r in tr_recs]}
    cached = None
    if s.judge_cache:
        cached = Path(s.judge_cache) / f"judge-{config_hash(settings, inputs)}.safetensors"
        if cached.is_file():
            judge.load_state_dict(load_file(str(cached)))
            return judge.to(dist_state().device).eval()
    judge = train_judge(judge, tr_img, tr_mask, steps=s.judge_steps, seed=cfg.seed, run_dir=out,
                        fingerprint=fingerprint(settings, **inputs), resume=resume, progress=progress)  # fmt: skip
    if cached is not None and dist_state().is_main_process:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_weights(cached, judge.state_dict())
    return judge
