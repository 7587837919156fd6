"""Training loop for segmenters: a weighted mixture of datasets, checkpointed and exactly resumable.

A run directory holds::

    config.yaml             resolved SegmentConfig
    run.json                training data (paths, weights), scheme, provenance
    segmenter.json          constructor arguments (see terrasynth.models.segmentation)
    best.safetensors/.json  weights with the best validation macro mIoU (and when)
    last.safetensors/.json  weights at the most recent checkpoint / end of training
    checkpoints/segment/    the runner's training state (terrasynth.train.runner), newest ``keep_checkpoints``
    tb/segment/             TensorBoard scalars (train/loss, train/lr, val/*)

Training runs on the one runner (:mod:`terrasynth.train.runner`): budgets, LR schedule,
precision, checkpoints and resume are its. Rerunning with the same config and data resumes
from the newest readable checkpoint. Every batch is a pure function of (seed, step)
(:mod:`terrasynth.data.mixture`), so on CPU an interrupted and resumed run ends with the
same weights as an uninterrupted one.

Validation: the ``val`` split of the FIRST dataset given; if it has none, a held-out part
of its ``train`` split (``val_fraction`` of its source images when it has at least two
sources, else of its tiles, chosen with the seed) that is then not trained on. List the
dataset you want checkpoints selected on first (e.g. the real data in a mixing run); with
weight 0 it is used for validation only (a synthetic-only run selected on real val).
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import DataLoader
from tqdm import tqdm

from terrasynth.accel import machine_kind, make_accelerator, resolve_precision
from terrasynth.classes import IGNORE_INDEX, ClassScheme
from terrasynth.config import MixedPrecision, Seed, TrainBudget, config_dict, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, TileRecord, class_pixels, provenance
from terrasynth.data.mixture import MixtureBatchSampler, MixtureDataset
from terrasynth.data.torchdata import TileDataset
from terrasynth.errors import UserError
from terrasynth.evaluate.segmentation import SegmentationMetrics
from terrasynth.io import ensure_dir, write_json_atomic
from terrasynth.models.segmentation import Arch, build_segmenter, predict, save_weights, segmenter_spec, write_spec
from terrasynth.train.runner import Runner, RunSpec, Schedule, fingerprint, seed_everything

log = logging.getLogger(__name__)
STAGE = "segment"


class SegmentConfig(TrainBudget):
    """How to train one segmenter. Data (paths + mixture weights) is passed separately."""

    arch: Arch = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = Field(None, description="local state dict for the encoder, or an smp name such as "
                                        "'imagenet' (Hub or its cache); None = random init")
    init_weights: str | None = Field(None, description="a segmenter weights file (a run's best.safetensors, same arch, "
                                     "encoder and classes) to start from instead of init, e.g. one pre-trained on synthetic tiles")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: Schedule = "cosine"
    warmup_steps: int = Field(0, ge=0, description="linear warm-up before the cosine decay")
    max_steps: int = Field(2000, ge=1, description="step budget")
    dice: bool = False
    dice_weight: float = Field(1.0, ge=0)
    class_weights: list[float] | Literal["balanced"] | None = None
    augment: bool = True
    seed: Seed = 0
    mixed_precision: MixedPrecision = "auto"
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


def same_scheme(a: ClassScheme, b: ClassScheme) -> bool:
    """Whether datasets in schemes ``a`` and ``b`` can be mixed: the same class codes in the same order.

    Their nodata codes may differ: each TileDataset maps its own scheme's nodata to the ignore index
    before mixing, so only the class -> training index map must agree (a filtered synthetic dataset
    adds nodata 255 to a scheme that had none; see terrasynth.synthesize_filter).
    """
    return a.codes == b.codes


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


def check_data(data: Sequence[tuple[Path, float]]) -> list[Dataset]:
    if not data:
        raise UserError("no training data; pass at least one --data DIR")
    datasets = []
    for path, weight in data:
        if not (weight >= 0 and math.isfinite(weight)):
            raise UserError(f"--weight {weight} for {path}: mixture weights must be numbers >= 0")
        datasets.append(Dataset.open(path))
    if not sum(w for _, w in data) > 0:
        raise UserError(f"--weight: every mixture weight is 0 ({[w for _, w in data]}); give at least one dataset a positive weight")
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


# Keys added after runs were made, at their default, stay out of a run's fingerprint: runs made before
# the key existed are still found and resumed.
LATER_KEYS = {"init_weights": None}


def run_fingerprint(cfg: SegmentConfig, data: Sequence[tuple[Path, float]]) -> str:
    """What a run folder must have been made with to be resumed (config less budgets, data, weights)."""
    d = {k: v for k, v in config_dict(cfg).items() if not (k in LATER_KEYS and v == LATER_KEYS[k])}
    return fingerprint(d, data=[[str(Path(p).resolve()), w] for p, w in data])


def init_from(model: torch.nn.Module, path: Path) -> None:
    """Start ``model`` from a whole segmenter's weights; a file of another model is a one-line error."""
    from terrasynth.io import load_weights

    try:
        model.load_state_dict(load_weights(path, "pass another run's weights"))
    except RuntimeError as exc:
        raise UserError(f"init_weights {path}: weights of another model ({str(exc).splitlines()[0][:160]}); "
                        "use a run with the same arch, encoder and classes") from exc  # fmt: skip


class SegmentationFamily:
    """The segmenter's step for the runner: cross-entropy (+ Dice) on a mixture batch; validation and best weights."""

    def __init__(self, cfg: SegmentConfig, runner: Runner, scheme: ClassScheme, parts: list[TileDataset],
                 weights: Sequence[float], val_tiles: TileDataset | None, val_how: str, out: Path,
                 class_weights: list[float] | None):  # fmt: skip
        self.cfg, self.runner, self.out, self.val_tiles, self.val_how = cfg, runner, out, val_tiles, val_how
        self.k = scheme.num_classes
        acc = runner.acc
        model = build_segmenter(cfg.arch, cfg.encoder, 3, scheme.num_classes, cfg.encoder_weights)
        if cfg.init_weights:  # a resumed run then loads its own checkpoint over these
            init_from(model, Path(cfg.init_weights))
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.fmt)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.model, self.opt = runner.prepare(model, opt)
        self.ce = torch.nn.CrossEntropyLoss(
            weight=torch.tensor(class_weights, dtype=torch.float32, device=acc.device) if class_weights else None,
            ignore_index=IGNORE_INDEX,
        )
        self.dice = None
        if cfg.dice:
            from segmentation_models_pytorch.losses import DiceLoss

            self.dice = DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)
        self.parts, self.weights = parts, list(weights)
        self.dataset = MixtureDataset(parts)
        self._it, self._next = None, -1
        self.best: dict[str, Any] = {"score": None, "step": None}
        self.last_val = -1

    # -- data: batch t is a pure function of (seed, t); rebuilt when the runner asks for another step
    def _batch(self, step: int) -> dict[str, torch.Tensor]:
        if step != self._next or self._it is None:
            acc = self.runner.acc
            sampler = MixtureBatchSampler(
                [len(p) for p in self.parts], self.weights, self.cfg.batch_size, self.cfg.seed,
                start_step=step, augment=self.cfg.augment, rank=acc.process_index, world=acc.num_processes,
            )  # fmt: skip
            # An explicit generator keeps the DataLoader from drawing on the global RNG.
            self._it = iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                                       generator=torch.Generator().manual_seed(self.cfg.seed)))  # fmt: skip
        self._next = step + 1
        return next(self._it)

    def training_step(self, step: int, gen: torch.Generator) -> torch.Tensor:
        batch = self._batch(step)
        dev = self.runner.acc.device
        x = batch["image"].to(dev, non_blocking=True).contiguous(memory_format=self.fmt)
        y = batch["mask"].to(dev, non_blocking=True)
        logits = self.model(x).float()  # prepare() wrapped forward in autocast when mixed precision is on
        loss = self.ce(logits, y)
        if self.dice is not None:
            loss = loss + self.cfg.dice_weight * self.dice(logits, y)
        return loss

    def validate(self) -> dict[str, Any] | None:
        if self.val_tiles is None:
            return None
        dev = self.runner.acc.device
        self.model.eval()
        metrics = SegmentationMetrics(self.k, dev)
        with torch.no_grad():
            loader = DataLoader(self.val_tiles, batch_size=max(self.cfg.batch_size, 16), generator=torch.Generator())
            for batch in loader:
                x = batch["image"].to(dev).contiguous(memory_format=self.fmt)
                metrics.update(predict(self.model, x), batch["mask"].to(dev))
        self.model.train()
        return metrics.compute()

    def _after_validation(self, step: int, m: dict[str, Any] | None) -> None:
        self.last_val = step
        score = m["macro_miou"] if m is not None and not math.isnan(m["macro_miou"]) else None
        main = self.runner.acc.is_main_process
        if m is not None and main:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(self.out / "tb" / STAGE)) as tb:
                for key in ("macro_miou", "micro_iou", "pixel_accuracy"):
                    tb.add_scalar(f"val/{key}", m[key], step)
        if score is None and self.val_tiles is not None:
            return
        # Without validation tiles, the newest weights count as the best.
        if score is None or self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "step": step}
            if main:
                save_weights(self.runner.unwrap(self.model), self.out / "best.safetensors")
                write_json_atomic(self.out / "best.json", {"step": step, "val_macro_miou": score,
                                                           "val_micro_iou": m and m["micro_iou"], "validation": self.val_how})  # fmt: skip

    def after_step(self, step: int, logs: dict[str, float]) -> None:
        if step % self.cfg.val_every == 0:
            self._after_validation(step, self.validate())

    def on_checkpoint(self, step: int) -> None:
        if self.runner.acc.is_main_process:
            save_weights(self.runner.unwrap(self.model), self.out / "last.safetensors")
            write_json_atomic(self.out / "last.json", {"step": step, "elapsed_s": round(self.runner.state.elapsed, 1)})

    def on_end(self, step: int) -> None:
        if self.last_val != step or self.best["step"] is None:
            self._after_validation(step, self.validate())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_val": self.last_val}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best, self.last_val = d["best"], d["last_val"]


def _machines(run_json: Path, now: str) -> str:
    """The machine kind and precision a run trains on; a run resumed on another one says both
    (``"A then B"``): the same seed gives other numbers there (docs/reliability.md)."""
    try:
        before = json.loads(run_json.read_text()).get("machine") if run_json.is_file() else None
    except (OSError, ValueError):
        before = None
    if not before:
        return now
    return before if before.split(" then ")[-1] == now else f"{before} then {now}"


def train_segmentation(
    cfg: SegmentConfig, data: Sequence[tuple[Path, float]], out: Path, *, resume: bool = True
) -> Path:
    """Train ``cfg.arch`` on the weighted mixture ``data`` [(dataset dir, weight), ...]; return the run dir.

    Stops at ``cfg.max_steps`` or ``cfg.max_minutes``, whichever comes first (``target_minutes``:
    steps sized by a speed probe, written to the resolved config). An existing run with the same
    config and data continues from its newest checkpoint (a finished one returns at once);
    ``resume=False`` (``--restart``) starts over.
    """
    out = Path(out)
    data = [(Path(p), float(w)) for p, w in data]
    datasets = check_data(data)
    scheme = datasets[0].scheme
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = make_accelerator(mixed_precision=resolve_precision(cfg.mixed_precision))
    main = acc.is_main_process
    if cfg.init_weights and not Path(cfg.init_weights).is_file():  # before the run folder exists
        raise UserError(f"init_weights {cfg.init_weights}: no such file; pass a segmenter run's best.safetensors")
    ensure_dir(out)
    fp = run_fingerprint(cfg, data)

    # ---- data --------------------------------------------------------------------------
    seed_everything(cfg.seed)
    train_recs, val_recs, val_how = validation_split(datasets[0], cfg.val_fraction, cfg.seed)
    parts_recs = [train_recs] + [ds.split("train") for ds in datasets[1:]]
    for ds, recs, (_, w) in zip(datasets, parts_recs, data):
        if not recs and w > 0:
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

    spec = RunSpec(
        STAGE, max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, target_minutes=cfg.target_minutes,
        lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, seed=cfg.seed,
        # the probed steps are shared by every run of this architecture in a matrix or an experiment
        # (pipeline._probed_once), which do not pay the probe: its seconds are not taken from their steps
        probe_in_target=False,
    )  # fmt: skip
    runner = Runner(spec, acc, out, fp, resume=resume)
    family = SegmentationFamily(cfg, runner, scheme, parts, [w for _, w in data], val_tiles, val_how, out, weights)

    def on_start(step: int) -> None:
        max_steps = runner.max_steps
        if not main:
            return
        # The steps that will run: a rerun of this resolved config trains the same model.
        resolved = cfg.model_copy(update={"max_steps": max_steps, "target_minutes": None}) if cfg.target_minutes else cfg
        save_resolved(resolved, out)
        write_spec(out, segmenter_spec(cfg.arch, cfg.encoder, 3, scheme.num_classes, scheme))
        write_json_atomic(out / "run.json", {
            "data": [{"path": str(p.resolve()), "weight": w, "name": ds.info.name, "kind": ds.info.kind,
                      "train_tiles": len(r)} for (p, w), ds, r in zip(data, datasets, parts_recs)],
            "validation": {"dataset": str(data[0][0].resolve()), "tiles": len(val_recs), "chosen": val_how},
            "class_weights": weights,
            "mixed_precision": acc.mixed_precision,
            "machine": _machines(out / "run.json", f"{machine_kind()}, {acc.mixed_precision}"),
            "processes": acc.num_processes,
            "max_steps": max_steps,
            "budget": runner.state.probe,
            "provenance": provenance("segment train", config_hash=config_hash(cfg, fp["data"]), seed=cfg.seed),
        })  # fmt: skip

    family.on_start = on_start
    if cfg.num_workers == 0:
        # Read every tile into the datasets' caches before the clock starts: the wall-time
        # budget then measures training, not the one-off decoding of GeoTIFFs.
        for part in [*parts, *([val_tiles] if val_tiles is not None else [])]:
            for i in tqdm(range(len(part)), desc=f"read {part.ds.root.name}", unit="tile", leave=False, disable=not main):
                part[i]
    runner.fit(family)
    acc.wait_for_everyone()
    return out
