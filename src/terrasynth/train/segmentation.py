"""Training loop for segmenters: a weighted mixture of datasets, checkpointed and exactly resumable.

A run directory holds::

    config.yaml             resolved SegmentConfig
    run.json                training data (paths, weights), scheme, provenance
    segmenter.json          constructor arguments (see terrasynth.models.segmentation)
    best.safetensors/.json  weights with the best validation macro mIoU (and when)
    last.safetensors/.json  weights at the most recent checkpoint / end of training
    checkpoints/step-*.pt   full training state (model, optimiser, scheduler, grad scaler,
                            RNG states, step, elapsed time, best score), newest ``keep_checkpoints``
    tb/                     TensorBoard scalars (train/loss, train/lr, val/*)

Rerunning with the same config and data resumes from the newest readable checkpoint.
Every batch is a pure function of (seed, step) (:mod:`terrasynth.data.mixture`) and the
global RNG states are restored, so on CPU an interrupted and resumed run ends with the same
weights as an uninterrupted one.

Validation: the ``val`` split of the FIRST dataset given; if it has none, a held-out part
of its ``train`` split (``val_fraction`` of its source images when it has at least two
sources, else of its tiles, chosen with the seed) that is then not trained on. List the
dataset you want checkpoints selected on first (e.g. the real data in a mixing run).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import DataLoader
from tqdm import tqdm

from terrasynth.classes import IGNORE_INDEX, ClassScheme
from terrasynth.config import Seed, StrictModel, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, TileRecord, class_pixels, provenance
from terrasynth.data.mixture import MixtureBatchSampler, MixtureDataset
from terrasynth.data.torchdata import TileDataset
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import SegmentationMetrics
from terrasynth.io import atomic_path, ensure_dir, remove_stale_tmp, write_json_atomic
from terrasynth.models.segmentation import Arch, build_segmenter, predict, save_weights, segmenter_spec, write_spec

log = logging.getLogger(__name__)

# Keys that may change between an interrupted run and its continuation (budgets and plumbing).
RESUMABLE_CHANGES = {"max_steps", "max_minutes", "num_workers", "keep_checkpoints", "checkpoint_every", "threads"}


class SegmentConfig(StrictModel):
    """How to train one segmenter. Data (paths + mixture weights) is passed separately."""

    arch: Arch = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = Field(None, description="local state dict for the encoder; None = random init")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_steps: int = Field(0, ge=0, description="linear warm-up before the cosine decay")
    max_steps: int = Field(2000, ge=1, description="step budget")
    schedule_steps: int | None = Field(None, ge=1, description="LR schedule length; default max_steps, fixed at start")
    max_minutes: float | None = Field(None, gt=0, description="wall-time budget over all resumes; whichever ends first")
    dice: bool = False
    dice_weight: float = Field(1.0, ge=0)
    class_weights: list[float] | Literal["balanced"] | None = None
    augment: bool = True
    seed: Seed = 0
    bf16: bool | Literal["auto"] = "auto"
    channels_last: bool = False
    val_every: int = Field(200, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None leaves torch's default")

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, list) and any(w < 0 for w in v):
            raise ValueError("class weights must be >= 0")
        return v


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(bf16: bool | str) -> str:
    """Accelerate's ``mixed_precision`` for this machine: bf16/fp16 autocast (AMP) or "no"."""
    if torch.cuda.is_available():
        if bf16 is False:
            return "no"
        return "bf16" if (bf16 is True or torch.cuda.is_bf16_supported()) else "fp16"
    if bf16 == "auto":
        return "bf16" if cpu_supports_bf16() else "no"
    return "bf16" if bf16 else "no"


def same_scheme(a: ClassScheme, b: ClassScheme) -> bool:
    return a.codes == b.codes and a.nodata == b.nodata


def validation_split(ds: Dataset, fraction: float, seed: int) -> tuple[list[TileRecord], list[TileRecord], str]:
    """(train records, validation records, how chosen) for the dataset checkpoints are selected on."""
    val = ds.split("val")
    train = ds.split("train")
    if val:
        return train, val, "val split"
    if len(train) < 2:
        return train, [], "none (fewer than 2 train tiles)"
    rng = random.Random(seed)
    sources = sorted({r.source for r in train})
    if len(sources) >= 2:
        k = min(len(sources) - 1, max(1, round(fraction * len(sources))))
        held = set(rng.sample(sources, k))
        return [r for r in train if r.source not in held], [r for r in train if r.source in held], (
            f"held-out train sources ({k} of {len(sources)})"
        )
    ids = sorted(r.id for r in train)
    k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held = set(rng.sample(ids, k))
    return [r for r in train if r.id not in held], [r for r in train if r.id in held], f"held-out train tiles ({k})"


def balanced_class_weights(records: Sequence[TileRecord], scheme: ClassScheme) -> list[float]:
    """Median-frequency balancing: w_c = median(f) / f_c over present classes (absent classes 1.0)."""
    px = class_pixels(records, scheme)
    tot = sum(px.values()) or 1
    freq = [px[c] / tot for c in scheme.codes]
    present = [f for f in freq if f > 0]
    med = float(np.median(present)) if present else 1.0
    return [min(med / f, 50.0) if f > 0 else 1.0 for f in freq]


def make_scheduler(
    opt: torch.optim.Optimizer, kind: str, horizon: int, lr: float, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=horizon)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, horizon - warmup))
    if warmup == 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fingerprint(cfg: SegmentConfig, data: Sequence[tuple[Path, float]]) -> dict[str, Any]:
    """What must not change for a run to be resumed."""
    c = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
    return {"config": c, "data": [[str(Path(p).resolve()), float(w)] for p, w in data]}


class Checkpoints:
    """Training-state files ``checkpoints/step-XXXXXXXX.pt``, written atomically, newest ``keep`` kept."""

    def __init__(self, run: Path, keep: int):
        self.dir = ensure_dir(run / "checkpoints")
        self.keep = keep
        remove_stale_tmp(self.dir)

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob("step-*.pt"))

    def save(self, state: dict[str, Any]) -> Path:
        path = self.dir / f"step-{state['step']:08d}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> dict[str, Any] | None:
        for path in reversed(self.paths()):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - a damaged file: fall back to the one before
                log.warning("checkpoint %s unreadable (%s); trying an older one", path, exc)
        return None


def check_data(data: Sequence[tuple[Path, float]]) -> list[Dataset]:
    if not data:
        raise UserError("no training data; pass at least one --data DIR")
    datasets = []
    for path, weight in data:
        if not (weight > 0 and math.isfinite(weight)):
            raise UserError(f"--weight {weight} for {path}: mixture weights must be positive numbers")
        datasets.append(Dataset.open(path))
    first = datasets[0]
    for ds in datasets[1:]:
        if not same_scheme(first.scheme, ds.scheme):
            raise UserError(
                f"{ds.root}: class scheme '{ds.scheme.name}' (codes {ds.scheme.codes}) differs from "
                f"'{first.scheme.name}' (codes {first.scheme.codes}) of {first.root}; "
                "mix only datasets with the same scheme (remap one on import)"
            )
    for ds in datasets:
        if ds.info.tile_size % 32:
            raise UserError(
                f"{ds.root}: tile size {ds.info.tile_size} px is not a multiple of 32, which the encoders' "
                "downsampling needs for training; re-import with --tile 32, 64, 128, ..."
            )
        if not ds.info.has_images:
            raise UserError(f"{ds.root}: label-only dataset; segmentation training needs image/label pairs")
    return datasets


def train_segmentation(
    cfg: SegmentConfig, data: Sequence[tuple[Path, float]], out: Path, *, resume: bool = True
) -> Path:
    """Train ``cfg.arch`` on the weighted mixture ``data`` [(dataset dir, weight), ...]; return the run dir.

    Stops at ``cfg.max_steps`` or ``cfg.max_minutes``, whichever comes first. With
    ``resume`` (default) an existing run with the same config and data continues from its
    newest checkpoint (a finished one returns at once); ``resume=False`` refuses to touch a
    directory that already holds checkpoints.
    """
    from terrasynth.accel import make_accelerator
    from accelerate.state import AcceleratorState
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    data = [(Path(p), float(w)) for p, w in data]
    datasets = check_data(data)
    scheme = datasets[0].scheme
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Accelerate keeps its state in a process-wide singleton; several runs in one process (the
    # experiment pipeline) with different precisions need it cleared. The distributed part
    # (PartialState: ranks, device) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = make_accelerator(mixed_precision=mixed_precision(cfg.bf16))
    main = accelerator.is_main_process
    ensure_dir(out)
    ckpts = Checkpoints(out, cfg.keep_checkpoints)
    state = ckpts.latest()
    fp = fingerprint(cfg, data)
    if state is not None:
        if not resume:
            raise UserError(f"{out}: already holds a training run; choose a new --out or resume it (drop --no-resume)")
        if state["fingerprint"] != fp:
            diff = _first_difference(state["fingerprint"], fp)
            raise UserError(
                f"{out}: holds a run made with a different {diff}; rerun with the original settings to resume "
                "or choose a new --out"
            )

    # ---- data --------------------------------------------------------------------------
    seed_everything(cfg.seed)
    train_recs, val_recs, val_how = validation_split(datasets[0], cfg.val_fraction, cfg.seed)
    parts_recs = [train_recs] + [ds.split("train") for ds in datasets[1:]]
    for ds, recs in zip(datasets, parts_recs):
        if not recs:
            raise UserError(f"{ds.root}: no train tiles to learn from; check the dataset's splits with 'terrasynth data info'")
    parts = [TileDataset(ds, records=recs) for ds, recs in zip(datasets, parts_recs)]
    val_tiles = TileDataset(datasets[0], records=val_recs) if val_recs else None
    weights = None
    if cfg.class_weights == "balanced":
        weights = balanced_class_weights([r for recs in parts_recs for r in recs], scheme)
    elif isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != scheme.num_classes:
            raise UserError(
                f"class_weights has {len(cfg.class_weights)} values but scheme '{scheme.name}' has "
                f"{scheme.num_classes} classes; give one weight per class, in scheme order"
            )
        weights = list(cfg.class_weights)

    # ---- model, optimiser, schedule ----------------------------------------------------
    model = build_segmenter(cfg.arch, cfg.encoder, 3, scheme.num_classes, cfg.encoder_weights)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    horizon = state["horizon"] if state else (cfg.schedule_steps or cfg.max_steps)
    sched = make_scheduler(opt, cfg.schedule, horizon, cfg.lr, cfg.warmup_steps)
    model, opt = accelerator.prepare(model, opt)
    ce = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=accelerator.device) if weights else None,
        ignore_index=IGNORE_INDEX,
    )
    dice = None
    if cfg.dice:
        from segmentation_models_pytorch.losses import DiceLoss

        dice = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)

    step, elapsed, best = 0, 0.0, {"score": -math.inf, "step": None}
    if state is not None:
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, elapsed, best = state["step"], state["elapsed"], state["best"]
        log.info("resuming %s at step %d (%.1f min trained)", out, step, elapsed / 60)

    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    if step >= cfg.max_steps or elapsed >= budget_s:
        log.info("%s: already trained to its budget (step %d); nothing to do", out, step)
        return out
    if main:
        save_resolved(cfg, out)
        write_spec(out, segmenter_spec(cfg.arch, cfg.encoder, 3, scheme.num_classes, scheme))
        write_json_atomic(out / "run.json", {
            "data": [{"path": str(p.resolve()), "weight": w, "name": ds.info.name, "kind": ds.info.kind,
                      "train_tiles": len(r)} for (p, w), ds, r in zip(data, datasets, parts_recs)],
            "validation": {"dataset": str(data[0][0].resolve()), "tiles": len(val_recs), "chosen": val_how},
            "class_weights": weights,
            "mixed_precision": accelerator.mixed_precision,
            "processes": accelerator.num_processes,
            "schedule_horizon": horizon,
            "provenance": provenance("segment train", config_hash=config_hash(cfg, fp["data"]), seed=cfg.seed),
        })  # fmt: skip

    sampler = MixtureBatchSampler(
        [len(p) for p in parts], [w for _, w in data], cfg.batch_size, cfg.seed,
        start_step=step, stop_step=cfg.max_steps, augment=cfg.augment,
        rank=accelerator.process_index, world=accelerator.num_processes,
    )  # fmt: skip
    # An explicit generator keeps the DataLoader from drawing on the global RNG (which is
    # checkpointed): otherwise a resumed run would shift every later random draw.
    loader = DataLoader(
        MixtureDataset(parts), batch_sampler=sampler, num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    tb = SummaryWriter(str(out / "tb"), purge_step=step) if main else None

    def validate() -> dict[str, Any] | None:
        if val_tiles is None:
            return None
        model.eval()
        metrics = SegmentationMetrics(scheme.num_classes, accelerator.device)
        with torch.no_grad():
            # Its own generator: creating a DataLoader iterator otherwise draws on the global RNG.
            val_loader = DataLoader(val_tiles, batch_size=max(cfg.batch_size, 16), generator=torch.Generator())
            for batch in val_loader:
                x = batch["image"].to(accelerator.device).contiguous(memory_format=fmt)
                metrics.update(predict(model, x), batch["mask"].to(accelerator.device))
        model.train()
        return metrics.compute()

    def snapshot() -> dict[str, Any]:
        return {
            "step": step, "elapsed": elapsed, "best": best, "horizon": horizon, "fingerprint": fp,
            "model": {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rng_state(),
        }  # fmt: skip

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        if main:
            unwrapped = accelerator.unwrap_model(model)
            save_weights(unwrapped, out / "last.safetensors")
            write_json_atomic(out / "last.json", {"step": step, "elapsed_s": round(elapsed, 1)})
            ckpts.save(snapshot())

    def after_validation(m: dict[str, Any] | None) -> None:
        nonlocal best
        score = m["macro_miou"] if m is not None and not math.isnan(m["macro_miou"]) else None
        if tb is not None and m is not None:
            for key in ("macro_miou", "micro_iou", "pixel_accuracy"):
                tb.add_scalar(f"val/{key}", m[key], step)
        # Without validation tiles, the newest weights count as the best.
        if score is None and val_tiles is not None:
            return
        if score is None or score > best["score"]:
            best = {"score": score if score is not None else -math.inf, "step": step}
            if main:
                save_weights(accelerator.unwrap_model(model), out / "best.safetensors")
                write_json_atomic(out / "best.json", {"step": step, "val_macro_miou": score,
                                                      "val_micro_iou": m and m["micro_iou"], "validation": val_how})

    if cfg.num_workers == 0:
        # Read every tile into the datasets' caches before the clock starts: the wall-time
        # budget then measures training, not the one-off decoding of GeoTIFFs.
        for part in [*parts, *([val_tiles] if val_tiles is not None else [])]:
            for i in tqdm(range(len(part)), desc=f"read {part.ds.root.name}", unit="tile", leave=False, disable=not main):
                part[i]
    model.train()
    t_start = time.time() - elapsed
    last_val = last_ckpt = step
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.arch}", unit="step", disable=not main)
    for batch in loader:
        x = batch["image"].to(accelerator.device, non_blocking=True).contiguous(memory_format=fmt)
        y = batch["mask"].to(accelerator.device, non_blocking=True)
        logits = model(x).float()  # prepare() wrapped forward in autocast when mixed precision is on
        loss = ce(logits, y)
        if dice is not None:
            loss = loss + cfg.dice_weight * dice(logits, y)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        if sched.last_epoch < horizon:  # past the horizon (max_steps extended) the LR stays at its end value
            sched.step()
        step += 1
        elapsed = time.time() - t_start
        loss_v = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", refresh=False)
        if tb is not None and (step % 10 == 0 or step == 1):
            tb.add_scalar("train/loss", loss_v, step)
            tb.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
        out_of_time = elapsed >= budget_s
        if step % cfg.val_every == 0:
            after_validation(validate())
            last_val = step
        if step % cfg.checkpoint_every == 0 or out_of_time:
            save_checkpoint()
            last_ckpt = step
        if out_of_time:
            log.info("wall-time budget of %.1f min reached at step %d", cfg.max_minutes, step)
            break
    bar.close()
    if last_val != step or best["step"] is None:
        after_validation(validate())
    if last_ckpt != step or not (out / "last.safetensors").exists():
        save_checkpoint()
    if tb is not None:
        tb.close()
    accelerator.wait_for_everyone()
    return out


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old["data"] != new["data"]:
        return f"--data/--weight list ({old['data']} vs {new['data']})"
    for k in sorted(set(old["config"]) | set(new["config"])):
        if old["config"].get(k) != new["config"].get(k):
            return f"{k} ({old['config'].get(k)!r} vs {new['config'].get(k)!r})"
    return "configuration"


def load_run_info(run: Path) -> dict[str, Any]:
    return json.loads((Path(run) / "run.json").read_text())
