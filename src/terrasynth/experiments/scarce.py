"""The scarce-label experiment: few labelled images; do synthetic pairs make the segmenter better?

For each label fraction ``r`` the pipeline keeps ``r`` of the real train split's source images
(``data.label_fraction``; val and test stay whole), retrains every generator on that labelled
subset only, and then this module:

1. builds each recipe's synthetic training set from the labelled masks (``scarce_data``, one
   cached pipeline stage per fraction): several images per mask (``variants``), harder masks
   getting more (``hardness``), new layouts from the land-cover generator (``new_layouts``,
   optionally steered by ``layout_composition``), and pixels a real-trained segmenter finds
   implausible set to ignore (``filter``);
2. trains one segmenter per (fraction, recipe, seed) with a fixed real share per batch
   (``real_share``; ``proportional`` = shares of tile counts, the old mixing), every run with the
   same step count (sized once by a speed probe when ``train.target_minutes`` is set), selects
   checkpoints and the headline recipe on real val, then scores on the whole real test split;
3. adds ``headline_seeds`` seeds for the real baseline and the recipe best on val at the smallest
   fraction, and writes ``learning_curve.json`` (read by :mod:`terrasynth.evaluate.stats` and
   the report).

Seeds vary the segmenter's initialisation, batch order and the synthetic draws; the labelled
subset is fixed by the pipeline seed (varying it would retrain every generator per seed), so the
confidence intervals cover training noise, not the choice of labelled images.

Segmenter runs live in ``RUN/stages/scarce-runs/`` under names that hash their config and data:
adding a recipe or a seed to the config trains only the new runs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from terrasynth.config import StrictModel, config_dict, config_hash
from terrasynth.data.dataset import Dataset
from terrasynth.errors import UserError
from terrasynth.io import ensure_dir, read_json, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from terrasynth.pipeline import Context

log = logging.getLogger(__name__)

Arch = Literal["unet", "unetplusplus", "deeplabv3plus"]
REAL = "real"


class FilterRecipe(StrictModel):
    """FreeMask-style filtering: pixels whose loss under a real-trained segmenter exceeds ``k`` times
    that class's mean loss on real tiles are ignored; tiles with more than ``drop_tile_above``
    ignored pixels are dropped (None: keep every tile)."""

    k: float = Field(1.25, gt=0, description="FreeMask's default tolerance margin")
    drop_tile_above: float | None = Field(None, gt=0, le=1)


class Recipe(StrictModel):
    """One way of adding synthetic pairs to the labelled real ones (each switch its own ablation row)."""

    description: str = ""
    generator: Literal["controlnet", "spade"] = "controlnet"
    variants: int = Field(1, ge=1, description="synthetic images per labelled mask (distinct seeds)")
    hardness: bool = Field(False, description="harder masks (real-trained segmenter's loss) get up to `variants` images, the easiest 1")
    new_layouts: float = Field(0.0, ge=0, description="generated land-cover maps, as a multiple of the labelled train tiles")
    layout_composition: dict[int, float] | None = Field(None, description="class code -> share asked of the land-cover generator")
    filter: FilterRecipe | None = None
    real_share: float | Literal["proportional"] = Field(0.5, description="share of real tiles in every batch")
    synthetic_only: bool = Field(False, description="no real tiles in training (real val still selects checkpoints)")
    pretrain: bool = Field(False, description="train on the synthetic tiles alone first (real val selects its checkpoint), "
                           "then on the real tiles alone from those weights, the same steps each")
    # The compute control of the pretrain recipes: the first phase is the real baseline's own run of
    # the same seed (reused, not retrained), the second the same real tiles again from its best
    # checkpoint. Same phases, steps and LR restart as a pretrain recipe, no synthetic image: what a
    # pretrain recipe gains over it is the synthetic images' share of its gain over real.
    pretrain_on: Literal["synthetic", "real"] = Field("synthetic", description="'real': the compute control (needs pretrain)")

    @model_validator(mode="after")
    def _share(self) -> "Recipe":
        if self.pretrain and self.synthetic_only:
            raise ValueError("pretrain and synthetic_only exclude each other: pretrain ends on real tiles")
        if self.control:
            synth = {k: v for k, v in self.synthesis_key().items() if k != "generator" and v != Recipe.model_fields[k].default}
            if not self.pretrain or synth or self.filter is not None:
                raise ValueError(f"pretrain_on: real is the compute control of the pretrain recipes: it needs pretrain: true and "
                                 f"no synthetic option (has pretrain={self.pretrain}, {synth or ''}"
                                 f"{' filter' if self.filter else ''}); drop those options or set pretrain_on: synthetic")
        if isinstance(self.real_share, float) and not 0.0 <= self.real_share < 1.0:
            raise ValueError(f"real_share {self.real_share} must be in [0, 1): 1 would be the real baseline")
        return self

    @property
    def control(self) -> bool:
        """No synthetic image: a control row, never a candidate for the headline."""
        return self.pretrain_on == "real"

    def weights(self, n_real: int, n_syn: int) -> tuple[float, float]:
        """(real weight, synthetic weight) per batch."""
        if self.synthetic_only:
            return 0.0, 1.0
        if self.real_share == "proportional":
            return float(n_real), float(n_syn)
        return float(self.real_share), 1.0 - float(self.real_share)

    def synthesis_key(self) -> dict[str, Any]:
        """What decides the synthetic images (not how they are mixed or filtered)."""
        return {k: getattr(self, k) for k in ("generator", "variants", "hardness", "new_layouts", "layout_composition")}


def default_recipes() -> dict[str, Recipe]:
    return {
        "cn": Recipe(description="ControlNet, one image per labelled mask, real share 0.5"),
        "cn-x4": Recipe(description="ControlNet, 4 images per labelled mask", variants=4),
        "cn-x4-filter": Recipe(description="cn-x4 + FreeMask filter (k=1.25)", variants=4, filter=FilterRecipe()),
        "cn-x4-hard": Recipe(description="cn-x4, harder masks get more images (1..4)", variants=4, hardness=True),
        "cn-layouts": Recipe(description="cn + as many new land-cover layouts as labelled tiles", new_layouts=1.0),
        "cn-x4-proportional": Recipe(description="cn-x4 mixed by tile counts (20% real) instead of a fixed share",
                                     variants=4, real_share="proportional"),
        "cn-only": Recipe(description="ControlNet images alone (real val selects checkpoints)", synthetic_only=True),
    }


class ScarceStage(StrictModel):
    enabled: bool = False
    fractions: list[float] = [0.1, 1.0]
    recipes: dict[str, Recipe] = Field(default_factory=default_recipes)
    seeds: list[int] = [0, 1, 2]
    headline_seeds: int = Field(5, ge=1, description="seeds for real and the best-on-val recipe at the smallest fraction")
    # The ablations run at the smallest fraction; the larger ones run these recipes (None: all).
    # Fix them before looking at results (e.g. from the literature), or rerun once the smallest
    # fraction's val has chosen: finished runs are reused.
    larger_fraction_recipes: list[str] | None = None
    arch: Arch = "unet"
    # None: every segmenter trains segment.train's steps (equal compute at every fraction). A number:
    # each fraction's segmenters train that many epochs of its labelled real tiles (steps =
    # ceil(epochs x labelled train tiles / batch size), at most segment.train.max_steps), so the
    # curve's larger fractions train longer.
    segment_epochs: float | None = Field(None, gt=0, description="epochs of the labelled real tiles per segmenter, per fraction")
    filter_seed: int = Field(0, description="seed of the real-trained segmenter used for filtering and hardness")

    @model_validator(mode="after")
    def _check(self) -> "ScarceStage":
        bad = [r for r in self.fractions if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"scarce.fractions {bad}: each must be in (0, 1], e.g. [0.1, 1.0]")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"scarce.fractions {self.fractions} repeats a value")
        if REAL in self.recipes:
            raise ValueError(f"scarce.recipes: '{REAL}' is the baseline and is always run; name your recipe otherwise")
        if not self.seeds:
            raise ValueError("scarce.seeds is empty; give at least one seed")
        unknown = sorted(set(self.larger_fraction_recipes or []) - set(self.recipes))
        if unknown:
            raise ValueError(f"scarce.larger_fraction_recipes {unknown} are not in scarce.recipes {sorted(self.recipes)}")
        return self

    def recipes_at(self, fraction: float) -> dict[str, Recipe]:
        if fraction == min(self.fractions) or self.larger_fraction_recipes is None:
            return dict(self.recipes)
        return {k: self.recipes[k] for k in self.larger_fraction_recipes}

    def generators(self, fraction: float) -> set[str]:
        """Pipeline stages the recipes at ``fraction`` need (besides data)."""
        need: set[str] = set()
        for r in self.recipes_at(fraction).values():
            if r.control:
                continue
            need |= {"controlnet_base", "controlnet"} if r.generator == "controlnet" else {"spade"}
            if r.new_layouts > 0:
                need |= {"landcover", "controlnet_base", "controlnet"}
        return need


# ---- per fraction: the recipes' synthetic training sets ----------------------------------


def _needs_real_model(recipes: dict[str, Recipe]) -> bool:
    return any(r.filter is not None or r.hardness for r in recipes.values())


def scarce_data(ctx: "Context", d: Path) -> dict[str, Any]:
    """Synthetic training sets of every recipe for this context's label fraction."""
    from terrasynth.data.subset import merge_datasets
    from terrasynth.synthesize import synthesize

    sc, seed, bs = ctx.cfg.scarce, ctx.cfg.seed, ctx.cfg.datasets.synth_batch_size
    real = Dataset.open(ctx.out("data", "real"))
    n_train = len(real.split("train"))
    out: dict[str, Any] = {"real": str(real.root), "fraction": ctx.cfg.data.label_fraction, "labelled_train_tiles": n_train,
                           "recipes": {}}  # fmt: skip
    real_model = None
    if _needs_real_model(sc.recipes_at(ctx.cfg.data.label_fraction)):
        real_model = train_run(ctx, REAL, None, sc.filter_seed, real, None)
        out["filter_model"] = str(real_model)
    # Content-addressed beside the stage folders: another mixing share or filter reuses the images.
    store = ensure_dir(ctx.run / "stages" / "scarce-synth")
    for name, rec in sc.recipes_at(ctx.cfg.data.label_fraction).items():
        if rec.control:  # no synthetic set (so no entry here): its runs train on the real tiles alone
            continue
        gen_run = ctx.out("controlnet" if rec.generator == "controlnet" else "spade", "run")
        lc_run = ctx.out("landcover", "run") if rec.new_layouts > 0 else None
        key = config_hash(rec.synthesis_key(), str(real.root.resolve()), gen_run, lc_run, seed,
                          str(real_model) if rec.hardness else None)[:12]
        path = store / f"syn-{key}"
        if not (path / "dataset.json").is_file():
            variants: Any = rec.variants
            if rec.hardness and rec.variants > 1:
                from terrasynth.synthesize_filter import hardness_variants, tile_hardness

                variants = hardness_variants(tile_hardness(real_model, real, split="train"), 1, rec.variants)
            target = store / f"syn-{key}-masks" if rec.new_layouts > 0 else path
            syn = synthesize(gen_run, real, target, seed=seed, batch_size=bs, splits=["train"], variants=variants)
            if rec.new_layouts > 0:
                from terrasynth.inference.landcover import sample_landcover

                n = max(1, round(rec.new_layouts * n_train))
                lc = sample_landcover(Path(lc_run), n, store / f"syn-{key}-layouts-lc", seed=seed + 7, split="train",
                                      composition=rec.layout_composition)  # fmt: skip
                lay = synthesize(gen_run, lc, store / f"syn-{key}-layouts", seed=seed + 7, batch_size=bs)
                merge_datasets([("m-", syn), ("g-", lay)], path)
        if rec.filter is not None:
            from terrasynth.synthesize_filter import filter_synthetic

            fpath = store / f"filtered-{config_hash(key, config_dict(rec.filter))[:12]}"
            if not (fpath / "dataset.json").is_file():
                filter_synthetic(real_model, real, path, fpath, k=rec.filter.k, drop_tile_above=rec.filter.drop_tile_above)
            path = fpath
        out["recipes"][name] = str(path)
    return out


# ---- all fractions: the segmenters and the learning curve --------------------------------


def _train_cfg(ctx: "Context", seed: int, max_steps: int | None):
    from terrasynth.train.segmentation import SegmentConfig

    sc = ctx.cfg.scarce
    base = {**config_dict(ctx.cfg.segment.train), **ctx.cfg.segment.per_arch.get(sc.arch, {}), "arch": sc.arch, "seed": seed}
    if max_steps is not None:
        base.update(max_steps=max_steps, target_minutes=None)
    return SegmentConfig.model_validate(base)


def runs_dir(ctx: "Context") -> Path:
    return ensure_dir(ctx.run / "stages" / "scarce-runs")


def experiment_steps(ctx: "Context", labelled_tiles: int) -> int | None:
    """The step count every segmenter of this fraction trains: with ``scarce.segment_epochs``, that
    many epochs of the ``labelled_tiles`` real train tiles (at most ``segment.train.max_steps``); else ``segment.train.max_steps`` without
    ``target_minutes``; with it, the steps the speed probe of the experiment's first run chose
    (``scarce-runs/steps.json``). None: the first run has not trained yet."""
    t, epochs = ctx.cfg.segment.train, ctx.cfg.scarce.segment_epochs
    if epochs is not None:  # segment.train.max_steps stays the cap, as it is for a speed probe's choice
        return max(1, min(t.max_steps, math.ceil(epochs * labelled_tiles / t.batch_size)))
    if not t.target_minutes:
        return t.max_steps
    f = runs_dir(ctx) / "steps.json"
    return int(json.loads(f.read_text())["max_steps"]) if f.is_file() else None


def train_run(ctx: "Context", recipe: str, rec: Recipe | None, seed: int, real: Dataset, syn: Path | None) -> Path:
    """Train (or find finished) the segmenter of one (recipe, seed) on this fraction's data.

    Every run trains the same number of steps, so recipes are compared at equal compute and a rerun
    is deterministic; the first run (real only, smallest fraction) sizes it when the config asks for
    a wall-time target. Run folders are named by the runner's own fingerprint (config without budget
    keys, data and weights): a finished run is found again, a new recipe trains only its own runs.
    """
    from terrasynth.train.segmentation import run_fingerprint, train_segmentation

    steps = experiment_steps(ctx, len(real.split("train")))
    cfg = _train_cfg(ctx, seed, steps)
    if rec is not None and rec.pretrain:
        # sim-to-real: the synthetic-only run of the same set and seed, then real tiles from its weights;
        # the control's first phase is the real baseline's run of this seed (the same fingerprint: found, not retrained)
        if rec.control:
            pre = train_run(ctx, REAL, None, seed, real, None)
        else:
            pre = train_run(ctx, f"{recipe}-pre", rec.model_copy(update={"pretrain": False, "synthetic_only": True}), seed, real, syn)
        cfg = _train_cfg(ctx, seed, experiment_steps(ctx, len(real.split("train"))))
        cfg = cfg.model_copy(update={"init_weights": str(pre / "best.safetensors")})
        syn = None
    if syn is None:
        parts = [(real.root, 1.0)]
    else:
        wr, ws = rec.weights(len(real.split("train")), len(Dataset.open(syn).split("train")))
        parts = [(real.root, wr), (Path(syn), ws)]
    fp = run_fingerprint(cfg, parts)

    def name(n: int | None) -> Path:  # the steps are part of the name: a run never continues past its own end
        return runs_dir(ctx) / f"r{ctx.cfg.data.label_fraction:g}-{recipe}-s{seed}-{config_hash(fp, n)[:10]}"

    run = name(steps) if steps is not None else runs_dir(ctx) / f"probe-{config_hash(fp)[:10]}"
    log.info("scarce: training %s", run.name)
    train_segmentation(cfg, parts, run)
    if steps is None:
        steps = int(read_json(run / "run.json", "rerun the experiment")["max_steps"])
        # the probe run is the run of its (recipe, seed) at the chosen steps
        run = run.rename(name(steps))
        write_json_atomic(runs_dir(ctx) / "steps.json", {"max_steps": steps, "probed_by": run.name,
                                                         "target_minutes": ctx.cfg.segment.train.target_minutes})  # fmt: skip
        log.info("scarce: every segmenter trains %d steps (the speed probe of %s chose it)", steps, run.name)
    return run


def _names(real: Dataset) -> dict[str, str]:
    return {str(c.code): c.name for c in real.scheme.classes}


def _point(run: Path, real: Dataset, fraction: float, recipe: str, seed: int) -> dict[str, Any]:
    from terrasynth.evaluate.segmentation import evaluate_segmentation, write_evaluation
    from terrasynth.models.segmentation import load_segmenter

    res: dict[str, Any] = {}
    loaded = None
    for split in ("val", "test"):
        f = run / f"scarce-eval.{split}.json"  # beside the (content-addressed) run: a new recipe set reuses it
        if not f.is_file():
            loaded = loaded or load_segmenter(run, "best")
            write_evaluation(evaluate_segmentation(run, real.root, split=split, loaded=loaded), f)
        res[split] = json.loads(f.read_text())
    names = _names(real)
    point = {
        "fraction": fraction, "recipe": recipe, "seed": seed, "run": str(run),
        "val": {k: res["val"][k] for k in ("micro_iou", "macro_miou")},
        "test": {**{k: res["test"][k] for k in ("micro_iou", "macro_miou")},
                 "per_class_iou": {names[c]: v for c, v in res["test"]["per_class_iou"].items()}},
    }  # fmt: skip
    machine = read_json(run / "run.json", "rerun the experiment").get("machine")
    return {**point, "machine": machine} if machine else point  # runs from before it was recorded have none


def run_scarce(ctx: "Context", per_fraction: dict[float, "Context"], d: Path) -> dict[str, Any]:
    """Every (fraction, recipe, seed) segmenter, then ``learning_curve.json``."""
    from terrasynth.evaluate.stats import best_recipe

    sc = ctx.cfg.scarce
    fractions = sorted(sc.fractions)
    points: list[dict[str, Any]] = []

    head: str | None = None

    def one(r: float, recipe: str, seed: int) -> None:
        fctx = per_fraction[r]
        data = fctx.outputs["scarce_data"]
        real = Dataset.open(data["real"])
        rec = sc.recipes.get(recipe)
        syn = data["recipes"].get(recipe)
        run = train_run(fctx, recipe, rec, seed, real, Path(syn) if syn else None)
        points.append(_point(run, real, r, recipe, seed))
        # what has finished so far, readable while the experiment runs (and after an interruption)
        write_json_atomic(d / "learning_curve.partial.json", _doc(ctx, points, headline=head))

    # The smallest fraction first, its headline seeds included; its first run (real only) is the
    # speed probe that sizes every run's steps.
    r0 = fractions[0]
    for s in sc.seeds:
        for name in [REAL, *sc.recipes_at(r0)]:
            one(r0, name, s)
    extra = list(range(max(sc.seeds) + 1, max(sc.seeds) + 1 + max(0, sc.headline_seeds - len(sc.seeds))))
    head = best_recipe(_doc(ctx, points), r0) if sc.recipes else None
    if head is not None and extra:
        log.info("scarce: best recipe on val at r=%g is %s; %d more seeds for it and the real baseline", r0, head, len(extra))
        # a pretrain headline takes its compute controls along: its gain over them needs the same seeds
        ctrls = [k for k, v in sc.recipes_at(r0).items() if v.control] if sc.recipes[head].pretrain else []
        for s in extra:
            for name in [REAL, head, *ctrls]:
                one(r0, name, s)
    for r in fractions[1:]:
        for s in sc.seeds:
            for name in [REAL, *sc.recipes_at(r)]:
                one(r, name, s)
    doc = _doc(ctx, points, headline=head)
    write_json_atomic(d / "learning_curve.json", doc)
    return {"learning_curve": str(d / "learning_curve.json"), "points": len(points)}


def _doc(ctx: "Context", points: list[dict[str, Any]], headline: str | None = None) -> dict[str, Any]:
    sc, t = ctx.cfg.scarce, ctx.cfg.segment.train
    arch_over = ctx.cfg.segment.per_arch.get(sc.arch, {})
    return {
        "dataset": ctx.cfg.name,
        "arch": sc.arch,
        "encoder": arch_over.get("encoder", t.encoder),
        "encoder_weights": arch_over.get("encoder_weights", t.encoder_weights),
        "selection_split": "val",
        "metric_split": "test",
        # null: the summary chooses the headline on val (terrasynth.evaluate.stats.best_recipe), as
        # the experiment did when it gave that recipe and the baseline their extra seeds
        "headline_recipe": None,
        "extra_seeds_for": headline,
        "label_seed": ctx.cfg.seed,
        "unlabelled_images": ctx.cfg.data.unlabelled_images,
        "labelled": _labelled(ctx),
        "recipes": {REAL: "real tiles only (the baseline)", **{k: v.description or k for k, v in sc.recipes.items()}},
        "recipe_configs": {k: config_dict(v) for k, v in sc.recipes.items()},
        # what else makes a point: the cache keys of its fraction's data and generator stages, and the
        # segmenters' config (seed aside); learning curves pool only where these agree
        "stages": {f"{r:g}": {s: c.keys[s] for s in ("data", *sorted(sc.generators(r)))} for r, c in ctx.fractions.items()},
        "segment_config": config_hash({k: v for k, v in config_dict(_train_cfg(ctx, 0, None)).items() if k != "seed"}),
        "points": points,
    }


def _labelled(ctx: "Context") -> dict[str, dict[str, Any]]:
    """Per fraction: how many train images (and tiles) were labelled, from the labelled set's provenance."""
    out = {}
    for r, c in ctx.fractions.items():
        if "data" in c.outputs:
            p = Dataset.open(c.outputs["data"]["real"]).info.provenance
            out[f"{r:g}"] = {k: p[k] for k in ("labelled_sources", "train_sources", "labelled_train_tiles")}
            out[f"{r:g}"]["segment_steps"] = experiment_steps(c, p["labelled_train_tiles"])
    return out


def check_scarce(sc: ScarceStage, seg_target_minutes: float | None = None) -> None:
    """Errors a user can fix before hours of training."""
    if not sc.enabled:
        return
    for name, rec in sc.recipes.items():
        if rec.layout_composition and rec.new_layouts <= 0:
            raise UserError(f"scarce.recipes.{name}: layout_composition is set but new_layouts is 0; set new_layouts > 0 "
                            "or drop layout_composition")  # fmt: skip
    if sc.segment_epochs is not None and seg_target_minutes:
        raise UserError(f"scarce.segment_epochs {sc.segment_epochs:g} sizes the segmenters' steps per fraction, and "
                        f"segment.train.target_minutes {seg_target_minutes:g} sizes them by a speed probe; set one "
                        "(segment.train.target_minutes=null to train by epochs)")  # fmt: skip
