"""The staged experiment: data -> generators -> four datasets -> cross-tested segmentation -> report.

Each stage writes into ``RUN/stages/<stage>-<key>/`` where ``key`` hashes the stage's own
config sections and the keys of the stages it reads. A stage that finished leaves
``done.json`` (its outputs and wall time) and is skipped on a rerun; a changed config value
changes the key of exactly the stages that depend on it. A killed run resumes: finished
stages are skipped and the stage in flight resumes from its own checkpoints and journals.
``from_stage`` reruns a stage and everything after it; ``only`` runs one stage whose
inputs are already cached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from terrasynth.config import Seed, StrictModel, config_dict, config_hash, save_resolved
from terrasynth.data.acquire import AcquireConfig
from terrasynth.data.dataset import Dataset
from terrasynth.data.importers import PairImportConfig
from terrasynth.data.world import WorldConfig
from terrasynth.errors import UserError
from terrasynth.experiments.matrix import DATASETS, Matrix
from terrasynth.experiments.scarce import ScarceStage, check_scarce, run_scarce, scarce_data
from terrasynth.io import ensure_dir, exclusive_dir, write_json_atomic, write_text_atomic
from terrasynth.train.diffusion import ControlNetBaseConfig, ControlNetConfig
from terrasynth.train.gan import SpadeConfig
from terrasynth.train.landcover import LandcoverConfig
from terrasynth.train.segmentation import SegmentConfig

log = logging.getLogger(__name__)

Arch = Literal["unet", "unetplusplus", "deeplabv3plus"]
SyntheticSet = Literal["fakergbreallc", "fakergbreallcspade", "fakergbfakelc"]


# ---- configuration -----------------------------------------------------------------------


class PairsSource(StrictModel):
    images: str
    masks: str
    options: PairImportConfig = Field(default_factory=PairImportConfig)


class DataStage(StrictModel):
    """Where the real (or procedural) paired data comes from."""

    source: Literal["world", "pairs", "acquire", "dataset"] = "world"
    world: WorldConfig = Field(default_factory=lambda: WorldConfig(tiles=500))
    pairs: PairsSource | None = None
    acquire: AcquireConfig | None = None
    path: str | None = None  # an existing terrasynth dataset (source: dataset)
    # Land cover for the land-cover generator, when it should not be the pairs' own labels
    # (the paper: WorldCover tiled at its native 10 m, while the pairs are at 1 m).
    landcover_source: AcquireConfig | None = None
    # The scarce-label regime: keep this share of the train split's source images labelled (val and
    # test stay whole); every learner (generators, segmenters, filter) sees only those labels, and the
    # generators then learn from the labelled train tiles only (not val). None: all labels, and the
    # generators learn from train + val as before.
    label_fraction: float | None = Field(None, gt=0, le=1)
    # Images need no labels: with label_fraction set, let the ControlNet base (image autoencoder and
    # unconditional UNet) learn from every train image, labelled or not (recorded in provenance).
    unlabelled_images: bool = False

    @model_validator(mode="after")
    def _source_present(self) -> "DataStage":
        need = {"pairs": self.pairs, "acquire": self.acquire, "dataset": self.path}
        if self.source in need and need[self.source] is None:
            raise ValueError(f"data.source is {self.source!r} but data.{'path' if self.source == 'dataset' else self.source} is not set")
        return self


class DatasetsStage(StrictModel):
    synth_batch_size: int = Field(32, ge=1)
    # Generated land-cover maps for fakergbfakelc; None = as many as the real train / test splits.
    fake_lc_train: int | None = Field(None, ge=1)
    fake_lc_test: int | None = Field(None, ge=1)


class SegmentStage(StrictModel):
    archs: list[Arch] = ["unet", "unetplusplus", "deeplabv3plus"]
    train_sets: list[str] = list(DATASETS)
    test_sets: list[str] = list(DATASETS)
    seeds: list[int] = [0]
    train: SegmentConfig = Field(default_factory=SegmentConfig)
    per_arch: dict[Arch, dict[str, Any]] = {}  # e.g. {unetplusplus: {encoder: mobilenet_v2}}

    @model_validator(mode="after")
    def _known_sets(self) -> "SegmentStage":
        bad = sorted(set(self.train_sets + self.test_sets) - set(DATASETS))
        if bad:
            raise ValueError(f"unknown dataset names {bad}; use {list(DATASETS)}")
        return self

    def config_for(self, arch: str, seed: int) -> SegmentConfig:
        return SegmentConfig.model_validate({**config_dict(self.train), **self.per_arch.get(arch, {}), "arch": arch, "seed": seed})


class MixingStage(StrictModel):
    enabled: bool = True
    fractions: list[float] = [0.0, 0.1, 0.25, 0.5, 1.0]
    synthetic_sets: list[SyntheticSet] = ["fakergbreallc", "fakergbreallcspade", "fakergbfakelc"]
    arch: Arch = "unet"
    seeds: list[int] = [0]
    train: SegmentConfig | None = None  # None: the segment stage's training config


class ReportStage(StrictModel):
    sample_rows: int = Field(6, ge=1)
    realism_samples: int = Field(200, ge=2)


class PipelineConfig(StrictModel):
    name: str = "terrasynth"
    seed: Seed = 0
    data: DataStage = Field(default_factory=DataStage)
    landcover: LandcoverConfig = Field(default_factory=LandcoverConfig)
    spade: SpadeConfig = Field(default_factory=SpadeConfig)
    controlnet_base: ControlNetBaseConfig = Field(default_factory=ControlNetBaseConfig)
    controlnet: ControlNetConfig = Field(default_factory=ControlNetConfig)
    datasets: DatasetsStage = Field(default_factory=DatasetsStage)
    segment: SegmentStage = Field(default_factory=SegmentStage)
    mixing: MixingStage = Field(default_factory=MixingStage)
    report: ReportStage = Field(default_factory=ReportStage)
    scarce: ScarceStage = Field(default_factory=ScarceStage)

    @model_validator(mode="after")
    def _unlabelled_needs_a_fraction(self) -> "PipelineConfig":
        # the scarce experiment sets data.label_fraction per fraction; elsewhere it must be given
        if self.data.unlabelled_images and self.data.label_fraction is None and not self.scarce.enabled:
            raise ValueError("data.unlabelled_images needs data.label_fraction or scarce.enabled "
                             "(without either every image is labelled already)")  # fmt: skip
        return self


# ---- stages ------------------------------------------------------------------------------

STAGES = ("data", "landcover", "spade", "controlnet_base", "controlnet", "datasets", "segment", "evaluate", "mixing", "report")
# stage -> (config sections it reads, stages whose outputs it reads)
GRAPH: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data": (("data", "seed"), ()),
    "landcover": (("landcover",), ("data",)),
    "spade": (("spade",), ("data",)),
    "controlnet_base": (("controlnet_base",), ("data",)),
    "controlnet": (("controlnet",), ("data", "controlnet_base")),
    "datasets": (("datasets", "seed"), ("data", "landcover", "spade", "controlnet")),
    "segment": (("segment",), ("datasets",)),
    "evaluate": (("segment", "seed"), ("datasets", "segment")),  # seed: the sample grids' draws
    "mixing": (("mixing", "segment", "seed"), ("datasets", "segment")),  # segment: its runs are reused
    "report": (("report",), ("data", "landcover", "datasets", "evaluate", "mixing", "scarce")),
    # the scarce-label experiment (scarce.enabled): scarce_data once per label fraction, then scarce
    "scarce_data": (("scarce", "datasets", "segment", "seed"), ("data", "landcover", "spade", "controlnet")),
    "scarce": (("scarce", "segment", "seed"), ("data", "landcover", "spade", "controlnet")),
}
SCARCE_STAGES = ("scarce_data", "scarce")


def stage_keys(cfg: PipelineConfig) -> dict[str, str]:
    """Cache key per stage: its config sections plus the keys of its inputs."""
    full = config_dict(cfg)
    keys: dict[str, str] = {}
    for stage in sorted((*STAGES, *SCARCE_STAGES), key=lambda s: s == "report"):  # report reads scarce
        sections, deps = GRAPH[stage]
        keys[stage] = config_hash({s: full[s] for s in sections}, stage, [keys[d] for d in deps])
    return keys


class Context:
    """What a stage sees: the config, its own directory, and finished stages' outputs."""

    def __init__(self, cfg: PipelineConfig, run: Path, keys: dict[str, str], tag: str = ""):
        self.cfg, self.run, self.keys, self.tag = cfg, run, keys, tag
        self.outputs: dict[str, dict[str, Any]] = {}
        self.fractions: dict[float, Context] = {}  # the scarce experiment: one context per label fraction

    def dir(self, stage: str) -> Path:
        return self.run / "stages" / f"{stage}-{self.keys[stage]}"

    def out(self, stage: str, name: str) -> Any:
        return self.outputs[stage][name]


def _main_first():
    """Under ``accelerate launch``, the main process does it first; the others then find the
    (idempotent, resumable) result finished. A no-op context in a single process."""
    from terrasynth.accel import dist_state

    return dist_state().main_process_first()


def _data(ctx: Context, d: Path) -> dict[str, Any]:
    with _main_first():
        return _data_main(ctx, d)


def _data_main(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.data.subset import subset_dataset

    c = ctx.cfg.data
    real = d / "real"
    if c.source == "world":
        from terrasynth.data.world import generate_world

        generate_world(c.world, real)
    elif c.source == "pairs":
        from terrasynth.data.importers import import_pairs

        import_pairs(c.pairs.images, c.pairs.masks, c.pairs.options, real)
    elif c.source == "acquire":
        from terrasynth.data.acquire import acquire

        acquire(c.acquire, real)
    else:
        real = Path(c.path)
    ds = Dataset.open(real)
    if not ds.info.has_images:
        raise UserError(f"{real}: the pipeline needs a paired dataset (images + labels); this one is label-only")
    splits = {r.split for r in ds.records}
    if not {"train", "test"} <= splits:
        raise UserError(f"{real}: the pipeline needs train and test splits, found {sorted(splits)}; re-import with test ratio > 0")
    out: dict[str, Any] = {}
    if c.label_fraction is not None:
        from terrasynth.data.subset import labelled_subset

        full = ds
        ds = labelled_subset(full, d / "labelled", c.label_fraction, seed=ctx.cfg.seed)
        real = ds.root
        p = ds.info.provenance
        log.info("data: label_fraction %g keeps %d of %d train sources (%d train tiles); val and test whole",
                 c.label_fraction, p["labelled_sources"], p["train_sources"], p["labelled_train_tiles"])
        # Scarce regime: generators learn from the labelled train tiles only (val labels select models).
        train = subset_dataset(ds, d / "generator-train", splits=["train"])
        out["real_full"] = str(full.root)
        if c.unlabelled_images:
            out["image_train"] = str(subset_dataset(full, d / "image-train", splits=["train"]).root)
    else:
        # Generators learn from train (+val) only: the test split stays unseen by every generator.
        train = subset_dataset(ds, d / "generator-train", splits=[s for s in ("train", "val") if s in splits])
    out.update({"real": str(real), "generator_train": str(train.root), "landcover_train": str(train.root)})
    if c.landcover_source is not None:
        from terrasynth.data.acquire import acquire

        lc = acquire(c.landcover_source, d / "landcover")
        lc_splits = [s for s in ("train", "val") if any(r.split == s for r in lc.records)]
        out["landcover_train"] = str(subset_dataset(lc, d / "landcover-train", splits=lc_splits).root)
    return out


def _landcover(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.train.landcover import train_landcover

    return {"run": str(train_landcover(ctx.cfg.landcover, Path(ctx.out("data", "landcover_train")), d / "run"))}


def _spade(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.train.gan import train_spade

    return {"run": str(train_spade(ctx.cfg.spade, Path(ctx.out("data", "generator_train")), d / "run"))}


def _controlnet_base(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.train.diffusion import train_controlnet_base

    # Images need no labels: with data.unlabelled_images the base learns from every train image.
    images = ctx.outputs["data"].get("image_train") or ctx.out("data", "generator_train")
    return {"run": str(train_controlnet_base(ctx.cfg.controlnet_base, Path(images), d / "run"))}


def _controlnet(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.train.diffusion import train_controlnet

    run = train_controlnet(ctx.cfg.controlnet, Path(ctx.out("data", "generator_train")),
                           Path(ctx.out("controlnet_base", "run")), d / "run")  # fmt: skip
    return {"run": str(run)}


def _datasets(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.data.subset import merge_datasets
    from terrasynth.synthesize import synthesize
    from terrasynth.inference.landcover import sample_landcover

    c, seed = ctx.cfg.datasets, ctx.cfg.seed
    real = Dataset.open(ctx.out("data", "real"))
    n_train = c.fake_lc_train or len(real.split("train"))
    n_test = c.fake_lc_test or len(real.split("test"))
    lc_run = Path(ctx.out("landcover", "run"))
    with _main_first():
        # Generated land cover: separate draws (different seeds) for the train and test splits.
        lc_train = sample_landcover(lc_run, n_train, d / "fakelc-train", seed=seed, split="train")
        lc_test = sample_landcover(lc_run, n_test, d / "fakelc-test", seed=seed + 1, split="test")
        fakelc = merge_datasets([("train-", lc_train), ("test-", lc_test)], d / "fakelc")
    bs = c.synth_batch_size
    cn, sp = ctx.out("controlnet", "run"), ctx.out("spade", "run")
    synthesize(cn, real, d / "fakergbreallc", seed=seed, batch_size=bs, splits=["train", "test"])
    synthesize(sp, real, d / "fakergbreallcspade", seed=seed, batch_size=bs, splits=["train", "test"])
    synthesize(cn, fakelc, d / "fakergbfakelc", seed=seed, batch_size=bs)
    return {
        "realrgbreallc": str(real.root),
        "fakergbreallc": str(d / "fakergbreallc"),
        "fakergbreallcspade": str(d / "fakergbreallcspade"),
        "fakergbfakelc": str(d / "fakergbfakelc"),
        "fakelc": str(fakelc.root),
    }


def _segment(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.train.segmentation import train_segmentation

    s = ctx.cfg.segment
    models, steps = [], {}
    for train_set in s.train_sets:
        for arch in s.archs:
            for seed in s.seeds:
                run = d / f"{train_set}-{arch}-s{seed}"
                log.info("segment: training %s on %s (seed %d)", arch, train_set, seed)
                cfg = _probed_once(s.config_for(arch, seed), steps.get(arch))
                train_segmentation(cfg, [(Path(ctx.out("datasets", train_set)), 1.0)], run)
                steps.setdefault(arch, _trained_steps(run))
                models.append({"train_set": train_set, "arch": arch, "seed": seed, "run": str(run)})
    return {"models": models, "steps": steps}


def _probed_once(cfg: SegmentConfig, steps: int | None) -> SegmentConfig:
    """One speed probe per architecture and stage: with a wall-time target, the first run of an
    architecture sizes its steps and every later run of it trains exactly that many, so the rows of
    a matrix or the points of a curve compare models at equal steps (and skip 6 probe steps each)."""
    if steps is None or not cfg.target_minutes:
        return cfg
    return cfg.model_copy(update={"max_steps": steps, "target_minutes": None})


def _trained_steps(run: Path) -> int:
    from terrasynth.io import read_json

    return int(read_json(run / "run.json", "rerun the pipeline")["max_steps"])


_LOADED: dict[str, Any] = {}  # the last model loaded for evaluation: one model, several test sets


def _evaluate_cached(run: Path, data: Path, out: Path) -> dict[str, Any]:
    from terrasynth.evaluate.segmentation import evaluate_segmentation, write_evaluation
    from terrasynth.models.segmentation import load_segmenter

    with _main_first():
        if out.exists():
            return json.loads(out.read_text())
        if str(run) not in _LOADED:
            _LOADED.clear()
            _LOADED[str(run)] = load_segmenter(run, "best")
        res = evaluate_segmentation(run, data, split="test", loaded=_LOADED[str(run)])
        write_evaluation(res, out)  # JSON (NaN as null) + per-class CSV beside it
        return json.loads(out.read_text())


def _evaluate(ctx: Context, d: Path) -> dict[str, Any]:
    s = ctx.cfg.segment
    ensure_dir(d / "evals")
    results = []
    for m in ctx.out("segment", "models"):
        for test_set in s.test_sets:
            res = _evaluate_cached(Path(m["run"]), Path(ctx.out("datasets", test_set)),
                                   d / "evals" / f"{m['train_set']}-{m['arch']}-s{m['seed']}--{test_set}.json")  # fmt: skip
            results.append({**{k: m[k] for k in ("train_set", "arch", "seed")}, "test_set": test_set,
                            "micro_iou": res["micro_iou"], "macro_miou": res["macro_miou"]})  # fmt: skip
    matrix = Matrix.from_results(results, s.train_sets, s.archs, s.test_sets)
    missing = matrix.missing()
    if missing:
        raise RuntimeError(f"cross-test matrix is missing cells {missing[:3]}")
    with _main_first():
        write_json_atomic(d / "matrix.json", {**matrix.to_json(), "transfer_ratios": matrix.transfer_ratios()})
        write_text_atomic(d / "matrix.csv", matrix.to_csv())
        write_text_atomic(d / "matrix.md",
        "## micro IoU\n\n" + matrix.to_markdown("micro_iou") + "\n\n## macro mIoU\n\n" + matrix.to_markdown("macro_miou") + "\n",
        )
    return {"matrix": str(d / "matrix.json"), "results": results, "realism": _image_realism(ctx, d)}


GRID_ROWS = 4  # masks in each generator's sample grid
IMAGE_GENERATORS = {"controlnet": "fakergbreallc", "spade": "fakergbreallcspade"}  # stage -> its synthetic set


def _image_realism(ctx: Context, d: Path) -> dict[str, dict[str, str]]:
    """Per image generator: the realism of its synthetic test tiles against the real ones on the same masks
    (features of the real-trained segmenter) and a sample grid (mask | real | two draws), once per stage key."""
    from terrasynth.evaluate.image_realism import image_realism
    from terrasynth.inference.previews import preview_grid

    real = ctx.out("datasets", "realrgbreallc")
    seg = next((m["run"] for m in sorted(ctx.out("segment", "models"), key=lambda m: (m["arch"] != "unet", m["seed"]))
                if m["train_set"] == "realrgbreallc"), None)  # fmt: skip
    out = {}
    for gen, syn in IMAGE_GENERATORS.items():
        f, png = d / f"realism-{gen}.json", d / f"samples-{gen}.png"
        with _main_first():
            if not f.exists():
                t0 = time.perf_counter()
                res = image_realism(real, ctx.out("datasets", syn), segmenter_run=seg)
                preview_grid(ctx.out(gen, "run"), real, png, n=GRID_ROWS, seed=ctx.cfg.seed)
                write_json_atomic(f, {**res, "seconds": time.perf_counter() - t0})
                log.info("evaluate: image realism of %s in %.1f s", gen, time.perf_counter() - t0)
        out[gen] = {"json": str(f), "grid": str(png)}
    return out


def _mixing(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.data.subset import subset_dataset
    from terrasynth.train.segmentation import train_segmentation

    mx = ctx.cfg.mixing
    if not mx.enabled:
        return {"curves": []}
    real = Dataset.open(ctx.out("datasets", "realrgbreallc"))
    seg = ctx.cfg.segment
    base = mx.train or seg.train
    trained = {(m["train_set"], m["arch"], m["seed"]): m["run"] for m in ctx.out("segment", "models")}
    curves = []
    steps = None  # the segment stage's probed steps when the configs agree, else this stage's first run's
    for seed in mx.seeds:
        cfg = SegmentConfig.model_validate({**config_dict(base), **seg.per_arch.get(mx.arch, {}),
                                            "arch": mx.arch, "seed": seed})  # fmt: skip
        same = cfg == seg.config_for(mx.arch, seed)
        if same and steps is None:
            steps = (ctx.outputs["segment"].get("steps") or {}).get(mx.arch)
        fixed = _probed_once(cfg, steps)
        for r in mx.fractions:
            with _main_first():
                real_r = subset_dataset(real, d / f"real-r{r:g}-s{seed}", splits=["train"], fraction=r, seed=seed) if r > 0 else None
            for added in [None, *mx.synthetic_sets]:
                if real_r is None and added is None:
                    continue
                parts: list[tuple[Path, float]] = []
                if real_r is not None:
                    parts.append((real_r.root, float(len(real_r))))
                if added is not None:
                    syn = Dataset.open(ctx.out("datasets", added))
                    parts.append((syn.root, float(len(syn.split("train")))))
                tot = sum(w for _, w in parts)
                parts = [(p, w / tot) for p, w in parts]  # per-batch share = share of tiles
                name = f"r{r:g}-{added or 'real'}-s{seed}"
                # The ends of a curve (synthetic alone; all real alone) are runs the segment stage has
                # made when its config, arch and seed are these: reuse them instead of training twice.
                alone = added if r == 0 else "realrgbreallc" if r == 1 and added is None else None
                run = Path(trained[(alone, mx.arch, seed)]) if same and (alone, mx.arch, seed) in trained else None
                if run is not None:
                    log.info("mixing: %s = the segment stage's %s run (same data, config and seed)", name, run.name)
                else:
                    run = d / name
                    log.info("mixing: %s", name)
                    train_segmentation(fixed, parts, run)
                    if steps is None and cfg.target_minutes:
                        steps = _trained_steps(run)
                        fixed = _probed_once(cfg, steps)
                res = _evaluate_cached(run, real.root, d / f"{name}.eval.json")
                curves.append({"fraction": r, "added": added or "none", "seed": seed, "run": str(run),
                               "micro_iou": res["micro_iou"], "macro_miou": res["macro_miou"]})  # fmt: skip
    with _main_first():
        write_json_atomic(d / "mixing.json", {"arch": mx.arch, "points": curves})
    return {"curves": curves, "mixing": str(d / "mixing.json")}


def _report(ctx: Context, d: Path) -> dict[str, Any]:
    from terrasynth.report.build import build_report

    with _main_first():
        html, md = build_report(ctx.run, d, sample_rows=ctx.cfg.report.sample_rows,
                                realism_samples=ctx.cfg.report.realism_samples)
    return {"html": str(html), "markdown": str(md)}


STAGE_FUNCS: dict[str, Callable[[Context, Path], dict[str, Any]]] = {
    "data": _data,
    "landcover": _landcover,
    "spade": _spade,
    "controlnet_base": _controlnet_base,
    "controlnet": _controlnet,
    "datasets": _datasets,
    "segment": _segment,
    "evaluate": _evaluate,
    "mixing": _mixing,
    "report": _report,
    "scarce_data": scarce_data,
}


# ---- running -----------------------------------------------------------------------------

DONE = "done.json"
STATE = "pipeline.json"


def data_tile_size(c: DataStage) -> int | None:
    """The pairs' tile size as the config says it, before any data is made (None: not known yet)."""
    if c.source == "world":
        return c.world.size
    if c.source == "pairs" and c.pairs is not None:
        return c.pairs.options.tile
    if c.source == "acquire" and c.acquire is not None:
        return c.acquire.tile
    if c.source == "dataset" and c.path and (Path(c.path) / "dataset.json").is_file():
        return Dataset.open(c.path).info.tile_size
    return None


def check_pipeline(cfg: PipelineConfig) -> None:
    """Cross-stage constraints, checked before any stage runs: every model must fit the tile size."""
    size = data_tile_size(cfg.data)
    if size is None:
        return
    where = "data.world.size" if cfg.data.source == "world" else "the data's tile size"

    def need(mult: int, what: str, fix: str) -> None:
        if size % mult:
            raise UserError(f"{where} = {size} px is not a multiple of {mult}, which {what} needs; "
                            f"choose a tile size that is, or {fix}")  # fmt: skip

    need(32, "the segmenters' encoders (5 halvings)", "use another tile size (32, 64, 128, ...)")
    lc = cfg.landcover
    lc_size = cfg.data.landcover_source.tile if cfg.data.landcover_source is not None else size
    f = lc.size_multiple()
    if lc_size % f:
        raise UserError(f"land-cover tiles of {lc_size} px are not a multiple of {f} (autoencoder or patch x UNet "
                        "halvings); change landcover.autoencoder/diffusion/discrete.block_out_channels or the tile size")  # fmt: skip
    from terrasynth.models.spade import num_up_for

    num_up_for(size, cfg.spade.model.latent_size)  # raises the one-line error for a latent size that cannot grow to it
    cb = cfg.controlnet_base
    if cb.vae.pretrained is None:
        f = 2 ** (len(cb.vae.block_out_channels) - 1) * 2 ** (len(cb.unet.block_out_channels) - 1)
        need(f, "the ControlNet base (autoencoder x UNet halvings)",
             "change controlnet_base.vae/unet.block_out_channels")  # fmt: skip


def run_pipeline(
    cfg: PipelineConfig,
    run: str | Path,
    *,
    from_stage: str | None = None,
    only: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the pipeline into ``run``; returns the state written to ``RUN/pipeline.json``."""
    for name, val in (("--from", from_stage), ("--only", only)):
        if val is not None and val not in (*STAGES, *SCARCE_STAGES):
            raise UserError(f"{name} {val!r}: unknown stage; stages are {', '.join((*STAGES, *SCARCE_STAGES))}")
    check_pipeline(cfg)
    check_scarce(cfg.scarce, cfg.segment.train.target_minutes)
    from terrasynth.accel import dist_state

    dist = dist_state()  # under `accelerate launch`: every rank runs this; one writes the state
    run = ensure_dir(run)
    # one invocation per run directory: a second `terrasynth run` on the same --out is refused
    # (the ranks of one `accelerate launch` are one invocation: only the main process locks)
    with exclusive_dir(run, "run") if dist.is_main_process else contextlib.nullcontext():
        return _run_locked(cfg, run, dist, from_stage, only, progress)


def _plan(cfg: PipelineConfig, run: Path) -> tuple[Context, list[tuple[Context, str]]]:
    """(the run's context, [(context, stage), ...] in order). The scarce-label experiment runs the
    data and generator stages once per label fraction (each fraction's config differs in
    ``data.label_fraction``, so its stages get their own keys and folders), then one ``scarce``
    stage over all of them and the report."""
    ctx = Context(cfg, run, stage_keys(cfg))
    if not cfg.scarce.enabled:
        return ctx, [(ctx, s) for s in STAGES]
    plan: list[tuple[Context, str]] = []
    for r in sorted(cfg.scarce.fractions):
        need = cfg.scarce.generators(r)
        cfg_r = cfg.model_copy(update={"data": cfg.data.model_copy(update={"label_fraction": r})})
        ctx_r = Context(cfg_r, run, stage_keys(cfg_r), tag=f"r{r:g}")
        ctx.fractions[r] = ctx_r
        plan += [(ctx_r, s) for s in ("data", "landcover", "spade", "controlnet_base", "controlnet", "scarce_data")
                 if s in need | {"data", "scarce_data"}]  # fmt: skip
    return ctx, [*plan, (ctx, "scarce"), (ctx, "report")]


def _scarce(ctx: Context, d: Path) -> dict[str, Any]:
    return run_scarce(ctx, ctx.fractions, d)


def _run_locked(cfg: PipelineConfig, run: Path, dist: Any, from_stage: str | None, only: str | None,
                progress: bool) -> dict[str, Any]:  # fmt: skip
    from tqdm.auto import tqdm

    if dist.is_main_process:
        save_resolved(cfg, run)
    ctx, plan = _plan(cfg, run)
    names = [s for _, s in plan]
    for name, val in (("--from", from_stage), ("--only", only)):
        if val is not None and val not in names:
            raise UserError(f"{name} {val!r}: not a stage of this run; its stages are {', '.join(dict.fromkeys(names))}")
    funcs = {**STAGE_FUNCS, "scarce": _scarce}
    state: dict[str, Any] = {"name": cfg.name, "config_hash": config_hash(cfg), "stages": {}}
    redo = set(names[names.index(from_stage):]) if from_stage else set()
    bar = tqdm(total=len(plan), desc="pipeline", unit="stage", disable=not (progress and dist.is_main_process), position=0, leave=True)
    t_run = time.perf_counter()
    for i, (c, stage) in enumerate(plan):
        label = f"{stage}@{c.tag}" if c.tag else stage
        d = c.dir(stage)
        done = d / DONE
        if stage in redo and done.exists():
            if dist.is_main_process:
                shutil.rmtree(d)
            dist.wait_for_everyone()
        if done.exists():
            rec = json.loads(done.read_text())
            c.outputs[stage] = rec["outputs"]
            state["stages"][label] = {"dir": str(d), "status": "cached", "seconds": rec["seconds"]}
            bar.update(1)
            continue
        if only and stage != only:
            if names.index(stage) < names.index(only):
                raise UserError(f"--only {only}: input stage '{label}' has not finished for this config; run without --only first")
            bar.update(1)
            continue
        bar.set_postfix_str(label)
        log.info("[%d/%d] %s: running in %s", i + 1, len(plan), label, d)
        ensure_dir(d)
        t0 = time.perf_counter()
        outputs = funcs[stage](c, d)
        secs = time.perf_counter() - t0
        c.outputs[stage] = outputs
        state["stages"][label] = {"dir": str(d), "status": "ran", "seconds": secs}
        if dist.is_main_process:
            write_json_atomic(done, {"stage": stage, "key": c.keys[stage], "outputs": outputs, "seconds": secs})
            write_json_atomic(run / STATE, {**state, "outputs": _all_outputs(ctx)})
        dist.wait_for_everyone()
        log.info("[%d/%d] %s: done in %.1f s", i + 1, len(plan), label, secs)
        bar.update(1)
    bar.close()
    state["seconds_this_invocation"] = time.perf_counter() - t_run
    state["outputs"] = _all_outputs(ctx)
    if dist.is_main_process:
        write_json_atomic(run / STATE, state)
    return state


def _all_outputs(ctx: Context) -> dict[str, Any]:
    """The run's stage outputs; in the scarce experiment each fraction's under ``fractions``."""
    out = dict(ctx.outputs)
    if ctx.fractions:
        out["fractions"] = {f"{r:g}": dict(c.outputs) for r, c in ctx.fractions.items()}
    return out


def timing_table(state: dict[str, Any]) -> str:
    rows = [f"{'stage':<16} {'status':<7} {'seconds':>8}"]
    for stage, s in state["stages"].items():
        rows.append(f"{stage:<16} {s['status']:<7} {s['seconds']:>8.1f}")
    rows.append(f"{'total':<16} {'':<7} {sum(s['seconds'] for s in state['stages'].values()):>8.1f}")
    return "\n".join(rows)
