"""Training loop of the SPADE family (generator + discriminator, hinge GAN).

One step: the generator paints a batch from its masks; the discriminator learns real vs
fake; the generator learns to fool it (plus feature matching, or OASIS's class-aware
loss). Every ``select.every`` steps the inference generator (EMA weights when on) is
scored on validation masks (see :mod:`terrasynth.train.judge`), its weights are saved,
the best ``select.keep`` are kept, and ``generator.json`` points at the best one.

Reproducible and resumable: all per-step randomness (batch, flips, noise, DiffAugment,
LabelMix) is drawn from a ``torch.Generator`` seeded by (seed, step), so rerunning the
same command continues from ``state.pt`` exactly where it stopped.

Multi-GPU: ``accelerate launch -m terrasynth spade train ...`` (Accelerate wraps G and D).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from terrasynth.classes import ClassScheme
from terrasynth.config import Seed, StrictModel, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, TileRecord, provenance
from terrasynth.data.torchdata import TileDataset, one_hot, paired_augment
from terrasynth.errors import UserError
from terrasynth.io import atomic_path, ensure_dir, write_json_atomic
from terrasynth.models.discriminators import (
    MultiscalePatchGAN,
    OASISDiscriminator,
    labelmix,
    labelmix_loss,
    oasis_class_weights,
    oasis_loss,
)
from terrasynth.models.generator import write_generator_file
from terrasynth.models.spade import SPADEGenerator, num_up_for
from terrasynth.train.diffaugment import Policy, diff_augment
from terrasynth.train.gan_losses import (
    VGGLoss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    multiscale,
)
from terrasynth.train.judge import build_judge, judge_miou, train_judge
from terrasynth.train.segmentation import mixed_precision

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
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
    ndf: int = Field(32, ge=4, description="discriminator width")
    d_layers: int = Field(3, ge=2, description="PatchGAN conv layers")
    num_d: int = Field(2, ge=1, description="PatchGAN scales")
    oasis_depth: int = Field(3, ge=1, description="OASIS discriminator downsamplings")


class SpadeLossConfig(StrictModel):
    feature_matching: float = Field(10.0, ge=0, description="weight of D feature matching (PatchGAN only)")
    vgg: float = Field(0.0, ge=0, description="weight of the VGG-19 perceptual loss; needs vgg_weights")
    vgg_weights: str | None = Field(None, description="local torchvision vgg19 state dict (.pth/.safetensors)")
    labelmix: float = Field(10.0, ge=0, description="weight of the LabelMix consistency loss")

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
        description="decay min(ema_decay, (1 + n) / (10 + n)) after n updates, so short runs do not average in "
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
    every: int = Field(200, ge=1, description="steps between snapshots")
    keep: int = Field(3, ge=1, description="snapshots kept (the best by score)")
    judge_steps: int = Field(400, ge=1, description="training steps of the judge segmenter")
    judge_encoder: str = "resnet18"
    judge_cache: str | None = Field(
        None, description="directory to share trained judges between runs (keyed by data, seed and judge settings)"
    )
    val_tiles: int = Field(128, ge=1, description="validation tiles scored per snapshot")


class SpadeConfig(StrictModel):
    model: SpadeModelConfig = Field(default_factory=SpadeModelConfig)
    loss: SpadeLossConfig = Field(default_factory=SpadeLossConfig)
    remedies: SpadeRemedies = Field(default_factory=SpadeRemedies)
    optim: SpadeOptim = Field(default_factory=SpadeOptim)
    select: SpadeSelect = Field(default_factory=SpadeSelect)
    batch_size: int = Field(8, ge=1)
    max_steps: int = Field(100_000, ge=1)
    max_minutes: float | None = Field(
        10.0, gt=0, description="wall-clock budget of GAN training (data loading and the judge not counted)"
    )
    seed: Seed = 0
    bf16: bool | Literal["auto"] = Field(
        False, description="bf16 autocast of G and D (CUDA: fp16 where bf16 is missing); 'auto' = when the CPU has bf16"
    )
    augment: bool = Field(True, description="random flips / 90-degree rotations of (image, mask)")
    train_split: str = "train"
    val_split: str = Field("val", description="falls back to held-out training sources when absent")
    log_every: int = Field(20, ge=1)


def resume_hash(cfg: SpadeConfig, data: Path) -> str:
    """What must match to continue a run: everything except the step/time budget."""
    d = cfg.model_dump(mode="json")
    d.pop("max_steps"), d.pop("max_minutes")
    return config_hash(d, str(Path(data).resolve()))


def generator_kwargs(cfg: SpadeConfig, num_classes: int, tile_size: int) -> dict[str, Any]:
    m = cfg.model
    return dict(
        num_classes=num_classes,
        ngf=m.ngf,
        num_up=num_up_for(tile_size, m.latent_size),
        num_middle=m.num_middle,
        hidden=m.hidden,
        norm=m.norm,
        spectral=m.spectral_norm,
        noise="3d" if cfg.remedies.noise3d else "none",
        noise_dim=m.noise_dim,
    )


def build_discriminator(cfg: SpadeConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    if cfg.remedies.discriminator == "oasis":
        return OASISDiscriminator(num_classes, ndf=m.ndf, depth=m.oasis_depth, spectral=m.spectral_norm)
    return MultiscalePatchGAN(num_classes, ndf=m.ndf, n_layers=m.d_layers, num_d=m.num_d, spectral=m.spectral_norm)


# ---- data ----------------------------------------------------------------------------


def load_tiles(ds: Dataset, records: list[TileRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """All tiles in memory: images (N, 3, H, W) uint8, masks (N, H, W) uint8 (255 nodata)."""
    td = TileDataset(ds, records=records, cache=False)
    imgs, masks = [], []
    for i in range(len(td)):
        img, idx = td._load(i)
        imgs.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
        masks.append(torch.from_numpy(idx.astype(np.uint8)))
    return torch.stack(imgs), torch.stack(masks)


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


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


def sample_batch(
    images: torch.Tensor, masks: torch.Tensor, batch_size: int, gen: torch.Generator, augment: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images (B, 3, H, W) float in [-1, 1], masks (B, H, W) int64."""
    idx = torch.randint(0, len(images), (batch_size,), generator=gen).tolist()
    xs, ys = [], []
    for i in idx:
        x, y = images[i].float().div(127.5).sub(1), masks[i].long()
        if augment:
            x, y = paired_augment(x, y, gen)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


# ---- one training step -----------------------------------------------------------------


class SpadeTrainer:
    """Holds the networks and optimisers; :meth:`step` runs one D and one G update."""

    def __init__(self, cfg: SpadeConfig, num_classes: int, tile_size: int, accelerator):
        self.cfg = cfg
        self.k = num_classes
        self.acc = accelerator
        self.g_kwargs = generator_kwargs(cfg, num_classes, tile_size)
        torch.manual_seed(cfg.seed)
        G = SPADEGenerator(**self.g_kwargs)
        D = build_discriminator(cfg, num_classes)
        o = cfg.optim
        opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.remedies.ema else None
        self.updates = 0  # generator updates so far (EMA warm-up)
        self.vgg = VGGLoss(cfg.loss.vgg_weights).to(accelerator.device) if cfg.loss.vgg > 0 else None
        # Freezing D during the G update saves its weight gradients; DDP needs a static graph.
        self._can_freeze = accelerator.num_processes == 1

    @property
    def g(self) -> SPADEGenerator:
        return self.acc.unwrap_model(self.G)

    def inference_generator(self) -> SPADEGenerator:
        return self.G_ema if self.G_ema is not None else self.g

    def _d_inputs(self, imgs: list[torch.Tensor], masks: torch.Tensor, gen: torch.Generator):
        if self.cfg.remedies.diffaugment:
            imgs, masks = diff_augment(imgs, masks, self.cfg.remedies.diffaugment, gen)
        return imgs, masks

    def step(self, real: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """``real`` (B, 3, H, W) in [-1, 1], ``masks`` (B, H, W) int64; returns the losses."""
        cfg, dev = self.cfg, self.acc.device
        real, masks = real.to(dev), masks.to(dev)
        seg = one_hot(masks, self.k)
        z = self.g.sample_noise(real.shape[0], gen, device=dev)
        fake = self.G(seg, z)  # one generator forward serves both updates
        oasis = cfg.remedies.discriminator == "oasis"
        logs: dict[str, float] = {}

        # -- discriminator
        if self._can_freeze:
            self.D.requires_grad_(True)
        (f_d, r_d), m_d = self._d_inputs([fake.detach(), real], masks, gen)
        if oasis:
            b = real.shape[0]
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
            outs = self.D(torch.cat([f_d, r_d]), torch.cat([seg_d, seg_d]))
            fk, rl = _split_scales(outs, real.shape[0])
            d_loss = multiscale(hinge_d_loss, rl, fk)
        self.opt_d.zero_grad(set_to_none=True)
        self.acc.backward(d_loss)
        self.opt_d.step()
        logs["d_loss"] = d_loss.item()

        # -- generator
        if self._can_freeze:
            self.D.requires_grad_(False)
        (f_g, r_g), m_g = self._d_inputs([fake, real], masks, gen)
        if oasis:
            w = oasis_class_weights(m_g, self.k)
            adv = oasis_loss(self.D(f_g), m_g, real=True, weights=w)
            g_loss = adv
        else:
            seg_g = one_hot(m_g, self.k)
            outs = self.D(torch.cat([f_g, r_g]), torch.cat([seg_g, seg_g]))
            fk, rl = _split_scales(outs, real.shape[0])
            adv = multiscale(hinge_g_loss, fk)
            g_loss = adv
            if cfg.loss.feature_matching > 0:
                fm = feature_matching_loss(fk, rl)
                logs["g_fm"] = fm.item()
                g_loss = g_loss + cfg.loss.feature_matching * fm
        if self.vgg is not None:
            vgg = self.vgg(fake, real)
            logs["g_vgg"] = vgg.item()
            g_loss = g_loss + cfg.loss.vgg * vgg
        self.opt_g.zero_grad(set_to_none=True)
        self.acc.backward(g_loss)
        self.opt_g.step()
        logs["g_adv"] = adv.item()
        logs["g_loss"] = g_loss.item()
        self.updates += 1
        if self.G_ema is not None:
            self._update_ema()
        return logs

    def ema_decay(self) -> float:
        """The EMA decay for the update just made (warm-up: short horizons early in training)."""
        r = self.cfg.remedies
        if not r.ema_warmup:
            return r.ema_decay
        return min(r.ema_decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.ema_decay()
        for pe, p in zip(self.G_ema.parameters(), self.g.parameters()):
            pe.lerp_(p.detach(), 1 - decay)
        for be, b in zip(self.G_ema.buffers(), self.g.buffers()):
            be.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.g.state_dict(),
            "D": self.acc.unwrap_model(self.D).state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.g.load_state_dict(s["G"])
        self.acc.unwrap_model(self.D).load_state_dict(s["D"])
        if self.G_ema is not None and s.get("G_ema") is not None:
            self.G_ema.load_state_dict(s["G_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.updates = s.get("updates", 0)


def _split_scales(outs: list[list[torch.Tensor]], b: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per-scale features of a (fake; real) batch -> (fake features, real features)."""
    return [[f[:b] for f in s] for s in outs], [[f[b:] for f in s] for s in outs]


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


def train_spade(cfg: SpadeConfig, data: Path, out: Path, *, resume: bool = True) -> Path:
    """Train SPADE on the paired dataset ``data``; write the run to ``out`` and return it.

    ``out`` gets ``config.yaml``, ``provenance.json``, ``state.pt`` (latest full state),
    ``checkpoints/step_*.safetensors`` (best ``select.keep`` inference generators),
    ``scores.json``, ``generator.json`` (the selected checkpoint) and ``tb/``.
    """
    from terrasynth.accel import make_accelerator
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    data, out = Path(data), Path(out)
    ds = Dataset.open(data)
    if not ds.info.has_images:
        raise UserError(f"{data}: label-only dataset; SPADE trains on image/label pairs (a paired dataset)")
    scheme, tile = ds.scheme, ds.info.tile_size
    k = scheme.num_classes
    g_kwargs_check = generator_kwargs(cfg, k, tile)  # raises a UserError on a bad latent size
    del g_kwargs_check

    acc = make_accelerator(mixed_precision=mixed_precision(cfg.bf16))
    main = acc.is_main_process
    ensure_dir(out / "checkpoints")
    rhash = resume_hash(cfg, data)
    state_path = out / STATE_FILE
    state = None
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if not resume:
            state = None
        elif state["resume_hash"] != rhash:
            raise UserError(
                f"{out}: holds a SPADE run from another config or dataset (hash {state['resume_hash']} vs {rhash}); "
                "choose a new --out or pass --restart"
            )
    if main:
        save_resolved(cfg, out)
        write_json_atomic(
            out / "provenance.json",
            provenance(str(data.resolve()), config_hash=rhash, seed=cfg.seed, dataset=ds.info.name, tile_size=tile),
        )

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    tr_recs, va_recs = split_train_val(ds, cfg.train_split, cfg.val_split)
    tr_img, tr_mask = load_tiles(ds, tr_recs)
    va_recs = va_recs[:: max(1, len(va_recs) // cfg.select.val_tiles)][: cfg.select.val_tiles]
    va_img, va_mask = load_tiles(ds, va_recs)
    trainer = SpadeTrainer(cfg, k, tile, acc)
    step, elapsed, scores = 0, 0.0, []
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        step, elapsed, scores = state["step"], state["elapsed"], state["scores"]
        log.info("resuming %s at step %d (%.0f s already spent)", out, step, elapsed)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf

    judge = None
    judge_real = None
    if cfg.select.metric == "judge":
        t_judge = time.monotonic()
        judge = build_judge(k, cfg.select.judge_encoder)
        jpath = out / "judge.safetensors"
        if cfg.select.judge_cache:
            key = config_hash(
                {"data": str(data.resolve()), "train": [r.id for r in tr_recs], "seed": cfg.seed,
                 "steps": cfg.select.judge_steps, "encoder": cfg.select.judge_encoder}
            )  # fmt: skip
            jpath = ensure_dir(cfg.select.judge_cache) / f"judge-{key}.safetensors"
        if jpath.exists():
            judge.load_state_dict(load_file(str(jpath)))
            judge.to(acc.device).eval()
        else:
            train_judge(
                judge, tr_img, tr_mask, steps=cfg.select.judge_steps, batch_size=8, seed=cfg.seed, device=acc.device
            )
            if main:
                with atomic_path(jpath) as tmp:
                    save_file(judge.state_dict(), str(tmp))
        log.info("judge ready in %.0f s (not counted in max_minutes)", time.monotonic() - t_judge)
        judge_real = judge_miou(judge, va_img.float() / 255, va_mask, k)
        log.info("judge mIoU on real validation tiles: %.3f", judge_real)
        if judge_real <= 0:
            raise UserError(f"{data}: the judge segmenter scores 0 on real validation tiles; use select.metric=last")

    tb = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))

    def snapshot() -> None:
        """Score the inference generator, save its weights, keep the best, point generator.json at it."""
        net = trainer.inference_generator()
        score, extra = float(step), {}
        if judge is not None:
            fake = generate_images(net, va_mask, k, seed=cfg.seed)
            score = judge_miou(judge, fake, va_mask, k) / judge_real
            extra["judge_miou"] = score * judge_real
            if net.noise_dim:  # diversity: two noise draws for the same masks
                fake2 = generate_images(net, va_mask, k, seed=cfg.seed + 1)
                extra["diversity_l1"] = float((fake - fake2).abs().mean())
        name = f"checkpoints/step_{step:07d}.safetensors"
        with atomic_path(out / name) as tmp:
            save_file({n: t.detach().cpu().contiguous() for n, t in net.state_dict().items()}, str(tmp))
        scores.append({"step": step, "score": score, "checkpoint": name, "minutes": clock() / 60, **extra})
        ranked = sorted(scores, key=lambda s: (s["score"], s["step"]), reverse=True)
        for s in ranked[cfg.select.keep :]:
            if s["checkpoint"]:  # dropped earlier ones are already gone
                (out / s["checkpoint"]).unlink(missing_ok=True)
                s["checkpoint"] = None
        best = ranked[0]
        write_json_atomic(out / SCORES_FILE, scores)
        write_generator_file(
            out, "spade", checkpoint=best["checkpoint"], step=best["step"], score=best["score"],
            selection=cfg.select.metric, generator_kwargs=trainer.g_kwargs, scheme=scheme.to_dict(),
            ema=cfg.remedies.ema,
        )  # fmt: skip
        if tb is not None:
            tb.add_scalar("select/score", score, step)
            for key, v in extra.items():
                tb.add_scalar(f"select/{key}", v, step)
            grid = generate_images(net, va_mask[:8], k, seed=cfg.seed)
            tb.add_images("samples", grid, step)
        log.info("step %d: score %.3f %s (best: step %d, %.3f)", step, score, extra, best["step"], best["score"])

    def save_state() -> None:
        with atomic_path(state_path) as tmp:
            torch.save(
                {"trainer": trainer.state_dict(), "step": step, "elapsed": clock(), "scores": scores,
                 "resume_hash": rhash},
                tmp,
            )  # fmt: skip

    t0 = time.monotonic()
    clock = lambda: elapsed + time.monotonic() - t0  # noqa: E731  (training time across resumes)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="spade", unit="step", disable=not main)
    trainer.G.train()
    trainer.D.train()
    while step < cfg.max_steps and clock() < budget:
        gen = step_generator(cfg.seed, step, acc.process_index)
        real, masks = sample_batch(tr_img, tr_mask, cfg.batch_size, gen, cfg.augment)
        logs = trainer.step(real, masks, gen)
        if not all(math.isfinite(v) for v in logs.values()):
            raise RuntimeError(f"non-finite loss at step {step}: {logs}; lower the learning rates")
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            bar.set_postfix({k_: f"{v:.3f}" for k_, v in logs.items()})
            if tb is not None:
                for k_, v in logs.items():
                    tb.add_scalar(f"loss/{k_}", v, step)
        if step % cfg.select.every == 0:
            if main:
                snapshot()
                save_state()
            acc.wait_for_everyone()
    bar.close()
    if main and (not scores or scores[-1]["step"] != step):
        snapshot()
        save_state()
    acc.wait_for_everyone()
    if tb is not None:
        tb.close()
    return out
