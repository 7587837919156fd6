"""The scarce-label experiment (issue 15): the label-fraction knob keeps every learner on the labelled
subset, the fixed real share per batch holds exactly, and the preset's tiny twin runs end to end
through the CLI, writes learning_curve.json and saves every segmenter so it can be evaluated again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
import yaml

from conftest import ROOT, make_dataset, run_cli
from pipeline_twins import twin_sets
from terrasynth.data.dataset import Dataset
from terrasynth.data.mixture import MixtureBatchSampler
from terrasynth.data.subset import labelled_subset

SCARCE = ROOT / "configs" / "scarce-dronedeploy.yaml"


def _tiny(tmp_path: Path) -> Path:
    # 24 train tiles from 12 source scenes (2 tiles each), 4 val, 4 test
    return make_dataset(tmp_path / "real", n=32, size=32, splits={"val": 4, "test": 4})


def test_labelled_subset_by_source_nested_and_whole_val_test(tmp_path):
    real = Dataset.open(_tiny(tmp_path))
    small = labelled_subset(real, tmp_path / "s25", 0.25, seed=3)
    big = labelled_subset(real, tmp_path / "s50", 0.5, seed=3)
    src = lambda d: {r.source for r in d.split("train")}  # noqa: E731
    assert len(src(small)) == 3 and len(src(big)) == 6 and src(small) < src(big)
    # every tile of a kept source is kept: no part of an image is labelled without the rest
    assert {r.id for r in small.split("train")} == {r.id for r in real.split("train") if r.source in src(small)}
    for s in ("val", "test"):
        assert [r.id for r in small.split(s)] == [r.id for r in real.split(s)]
    assert small.info.provenance["labelled_sources"] == 3 and small.info.provenance["train_sources"] == 12
    assert labelled_subset(real, tmp_path / "s25", 0.25, seed=3).records == small.records  # reuse is a no-op
    assert src(labelled_subset(real, tmp_path / "o25", 0.25, seed=4)) != src(small)


@pytest.mark.parametrize("share,batch", [(0.5, 8), (0.25, 8), (0.5, 6), (0.0, 8)])
def test_fixed_real_share_holds_in_every_batch(share, batch):
    """A fixed share of real tiles in every batch, whatever the datasets' sizes (10 real vs 400 synthetic)."""
    s = MixtureBatchSampler([10, 400], [share, 1 - share], batch, seed=0, stop_step=50)
    for b in s:
        assert sum(1 for i, _, _ in b if i == 0) == round(share * batch)


def _preset(tmp_path: Path, data: Path, **scarce) -> Path:
    """The shipped preset with the tiny dataset and the given ``scarce`` keys replaced (not merged)."""
    cfg = yaml.safe_load(SCARCE.read_text())
    cfg["data"] = {"source": "dataset", "path": str(data)}
    cfg["scarce"].update({"seeds": [0], "headline_seeds": 2, **scarce})
    path = tmp_path / "scarce-twin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


SETS = twin_sets(**{"segment.train.target_minutes": "null", "segment.train.max_steps": "2"})


def _run_recorded(tmp: Path, *sets: str, checks: list[Path] | None = None, **scarce) -> tuple[Path, Path, Path, list[Path]]:
    """Run the preset's tiny twin with every rasterio read recorded: (run, config, data, paths opened).
    ``checks``: also collect there the reads Dataset.open makes itself (its integrity sample of labels)."""
    data = _tiny(tmp)
    cfg = _preset(tmp, data, **scarce)
    opened: list[Path] = []
    real_open, real_ds_open = rasterio.open, Dataset.open.__func__

    def spy(fp, mode="r", *a, **k):
        if mode == "r":
            opened.append(Path(str(fp)))
        return real_open(fp, mode, *a, **k)

    def ds_open(cls, root, *a, **k):
        n = len(opened)
        ds = real_ds_open(cls, root, *a, **k)
        checks.extend(opened[n:])
        return ds

    with pytest.MonkeyPatch.context() as m:
        m.setattr(rasterio, "open", spy)
        if checks is not None:
            m.setattr(Dataset, "open", classmethod(ds_open))
        assert run_cli("-q", "run", cfg, "--out", tmp / "run", *SETS, *sets) == 0
    return tmp / "run", cfg, data, opened


# SPADE images, 2 per mask with harder masks getting more, filtered, plus new layouts from the
# land-cover generator, and ControlNet images: every learner of the experiment.
ALL_LEARNERS = {
    "sp": {"generator": "spade", "variants": 2, "hardness": True, "filter": {"k": 2.0}, "new_layouts": 0.5},
    "cn": {"description": "ControlNet, one image per mask"},
}


@pytest.fixture(scope="module")
def knob_run(tmp_path_factory):
    # and a segmenter pre-trained on synthetic tiles, and its compute control (real tiles twice)
    recipes = {**ALL_LEARNERS, "cn-pre": {"pretrain": True}, "real-pre": {"pretrain": True, "pretrain_on": "real"}}
    # segment_epochs 0.25 of 12 labelled tiles at batch 4: 1 step per segmenter (the twin's cap is 2)
    return _run_recorded(tmp_path_factory.mktemp("knob"), fractions=[0.5], recipes=recipes, headline_seeds=1,
                         larger_fraction_recipes=None, segment_epochs=0.25)  # fmt: skip


@pytest.fixture(scope="module")
def scarce_run(tmp_path_factory):
    """The preset's tiny twin at label fractions 0.5 and 1.0 with headline seeds."""
    recipes = {**ALL_LEARNERS, "only": {"synthetic_only": True}}
    return _run_recorded(tmp_path_factory.mktemp("scarce"), fractions=[0.5, 1.0], recipes=recipes,
                         larger_fraction_recipes=["only"])  # fmt: skip


def _state(run: Path) -> dict:
    return json.loads((run / "pipeline.json").read_text())


def test_every_learner_reads_only_labelled_train_tiles(knob_run):
    """With data.label_fraction = 0.5, no stage of that fraction (land-cover generator, SPADE,
    ControlNet base and ControlNet, filter model, segmenters, evaluation) opens a train tile of an
    unlabelled source image: not the imported dataset's, nor a synthetic one painted from it."""
    run, _, data, opened = knob_run
    state = _state(run)
    ran = {k for k in state["stages"]}
    for stage in ("data", "landcover", "spade", "controlnet_base", "controlnet", "scarce_data"):
        assert f"{stage}@r0.5" in ran
    f05 = state["outputs"]["fractions"]["0.5"]
    labelled = Dataset.open(f05["data"]["real"])
    real = Dataset.open(data)
    keep = {r.id for r in labelled.split("train")}
    unlabelled = {r.id for r in real.split("train")} - keep
    assert len(keep) == 12 and len(unlabelled) == 12
    # everything the r=0.5 learners may see lies under these folders
    roots = [Path(f05["data"]["real"]).parent, *map(Path, f05["scarce_data"]["recipes"].values())]
    roots += [Path(f05[g]["run"]).parent for g in ("landcover", "spade", "controlnet_base", "controlnet")]
    roots += [p for p in Path(run, "stages", "scarce-runs").iterdir() if p.name.startswith("r0.5-")]
    mine = [p for p in opened if any(p.is_relative_to(r) for r in roots)]
    stem = lambda p: p.stem.removeprefix("m-").removeprefix("g-").split("-v")[0]  # noqa: E731
    assert keep & {stem(p) for p in mine}, "the spy saw no reads of labelled tiles: it does not watch the readers"
    bad = sorted({str(p) for p in mine if stem(p) in unlabelled})
    assert not bad, f"r=0.5 stages read unlabelled train tiles: {bad[:3]}"
    # the report says how many labels there were, and that no unlabelled imagery was used
    md = Path(state["outputs"]["report"]["markdown"]).read_text()
    assert "Labels: 50% = 6 of 12 train images (12 tiles, segmenters 1 steps)" in md and "No unlabelled imagery was used" in md
    steps = {json.loads((p / "run.json").read_text())["max_steps"] for p in Path(run, "stages", "scarce-runs").glob("r0.5-*")}
    assert steps == {1}  # scarce.segment_epochs sized every segmenter of the fraction, the filter model's too


def test_unlabelled_images_reach_the_controlnet_base_and_no_learner_reads_a_label_of_them(tmp_path):
    """data.unlabelled_images: the ControlNet base (unconditional) learns from every train image, and no
    learner opens a label of an unlabelled source image, nor any tile of one except its image in the
    base's own image set. (Opening a dataset checks a few of its label tiles against dataset.json; those
    reads, by Dataset.open itself, are the only label reads allowed there.)"""
    checks: list[Path] = []
    run, _, data, opened = _run_recorded(tmp_path, "--set", "data.unlabelled_images=true", checks=checks,
                                         fractions=[0.5], recipes={"cn": {}}, headline_seeds=1,
                                         larger_fraction_recipes=None, segment_epochs=0.25, seeds=[0])  # fmt: skip
    state = _state(run)
    f05 = state["outputs"]["fractions"]["0.5"]
    keep = {r.id for r in Dataset.open(f05["data"]["real"]).split("train")}
    unlabelled = {r.id for r in Dataset.open(data).split("train")} - keep
    image_train = Path(f05["data"]["image_train"])
    assert {r.id for r in Dataset.open(image_train).split("train")} == keep | unlabelled
    seen = [p for p in opened if p.stem in unlabelled and p.is_relative_to(run)]
    base_images = {p.stem for p in seen if p.parent == image_train / "images"}
    assert base_images == unlabelled, "the base did not learn from the unlabelled images"
    learner_reads = list(seen)
    for p in checks:  # each integrity read removes one matching read
        if p in learner_reads:
            learner_reads.remove(p)
    bad = sorted({str(p) for p in learner_reads if p.parent != image_train / "images"})
    assert not bad, f"learners read labels or tiles of unlabelled images beyond the base's images: {bad[:3]}"
    md = Path(state["outputs"]["report"]["markdown"]).read_text()
    assert "Unlabelled train images were used by the ControlNet base" in md


def test_segment_epochs_beside_a_speed_probe_target_is_refused_before_any_work(tmp_path):
    cfg = _preset(tmp_path, _tiny(tmp_path), fractions=[0.5], recipes={}, segment_epochs=1.0)
    assert run_cli("-q", "run", cfg, "--out", tmp_path / "run", *SETS, "--set", "segment.train.target_minutes=0.5") == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_segment_epochs_size_each_fractions_steps_by_its_labelled_tiles(tmp_path):
    """scarce.segment_epochs: a learning curve at equal epochs of the labelled real tiles, so the
    larger fraction trains longer (here 1 epoch at batch 4: 12 tiles -> 3 steps, 24 -> 6, capped
    at segment.train.max_steps 5)."""
    data = _tiny(tmp_path)
    cfg = _preset(tmp_path, data, fractions=[0.5, 1.0], recipes={}, headline_seeds=1, larger_fraction_recipes=None,
                  segment_epochs=1.0)  # fmt: skip
    assert run_cli("-q", "run", cfg, "--out", tmp_path / "run", *SETS, "--set", "segment.train.max_steps=5") == 0
    lc = json.loads(Path(_state(tmp_path / "run")["outputs"]["scarce"]["learning_curve"]).read_text())
    steps = {p["fraction"]: json.loads((Path(p["run"]) / "run.json").read_text())["max_steps"] for p in lc["points"]}
    assert steps == {0.5: 3, 1.0: 5}
    assert {r: v["segment_steps"] for r, v in lc["labelled"].items()} == {"0.5": 3, "1": 5}
    md = Path(_state(tmp_path / "run")["outputs"]["report"]["markdown"]).read_text()
    assert "50% = 6 of 12 train images (12 tiles, segmenters 3 steps)" in md


def test_pretrain_recipe_trains_on_synthetic_then_on_real_from_those_weights(knob_run):
    run, _, _, _ = knob_run
    state = _state(run)
    lc = json.loads(Path(state["outputs"]["scarce"]["learning_curve"]).read_text())
    point = next(p for p in lc["points"] if p["recipe"] == "cn-pre")
    fine = Path(point["run"])
    cfg = yaml.safe_load((fine / "config.yaml").read_text())
    pre = Path(cfg["init_weights"]).parent
    assert pre.name.startswith("r0.5-cn-pre-pre-s0-") and Path(cfg["init_weights"]).name == "best.safetensors"
    real = state["outputs"]["fractions"]["0.5"]["data"]["real"]
    syn = state["outputs"]["fractions"]["0.5"]["scarce_data"]["recipes"]["cn-pre"]
    data = lambda r: [(d["path"], d["weight"]) for d in json.loads((r / "run.json").read_text())["data"]]  # noqa: E731
    assert data(pre) == [(real, 0.0), (syn, 1.0)]  # synthetic tiles alone, real val selects the checkpoint
    assert data(fine) == [(real, 1.0)]  # then real tiles alone
    # the same images as the one-image-per-mask recipe (content-addressed), and its own baseline name
    assert syn == state["outputs"]["fractions"]["0.5"]["scarce_data"]["recipes"]["cn"]


def test_compute_control_continues_the_real_run_of_its_seed_on_real_tiles(knob_run):
    run, _, _, _ = knob_run
    state = _state(run)
    lc = json.loads(Path(state["outputs"]["scarce"]["learning_curve"]).read_text())
    by = {p["recipe"]: Path(p["run"]) for p in lc["points"] if p["seed"] == 0}
    cfg = yaml.safe_load((by["real-pre"] / "config.yaml").read_text())
    assert Path(cfg["init_weights"]) == by["real"] / "best.safetensors"  # the baseline's own run, not a retrained copy
    real = state["outputs"]["fractions"]["0.5"]["data"]["real"]
    assert [(d["path"], d["weight"]) for d in json.loads((by["real-pre"] / "run.json").read_text())["data"]] == [(real, 1.0)]
    assert "real-pre" not in state["outputs"]["fractions"]["0.5"]["scarce_data"]["recipes"]  # nothing synthesized
    assert not any(p.name.startswith("r0.5-real-pre-pre-") for p in by["real"].parent.iterdir())


def test_every_point_names_the_machine_and_precision_its_run_trained_on(knob_run):
    from terrasynth.accel import machine_kind

    lc = json.loads(Path(_state(knob_run[0])["outputs"]["scarce"]["learning_curve"]).read_text())
    for p in lc["points"]:
        info = json.loads((Path(p["run"]) / "run.json").read_text())
        assert p["machine"] == info["machine"] == f"{machine_kind()}, {info['mixed_precision']}"
    # and which data and generators made the points, so that only the same experiment pools
    stages = lc["stages"]["0.5"]
    assert {"data", "controlnet_base", "controlnet", "spade", "landcover"} <= set(stages)
    assert all((knob_run[0] / "stages" / f"{s}-{k}").is_dir() for s, k in stages.items())
    assert isinstance(lc["segment_config"], str) and len(lc["segment_config"]) >= 8


def test_compute_control_needs_no_generator_and_refuses_synthetic_options():
    from pydantic import ValidationError

    from terrasynth.experiments.scarce import ScarceStage

    sc = ScarceStage(enabled=True, fractions=[0.1], recipes={"ctl": {"pretrain": True, "pretrain_on": "real"}})
    assert sc.generators(0.1) == set()
    for bad in ({"pretrain_on": "real"}, {"pretrain": True, "pretrain_on": "real", "variants": 3},
                {"pretrain": True, "pretrain_on": "real", "filter": {"k": 1.25}}):  # fmt: skip
        with pytest.raises(ValidationError, match="compute control"):
            ScarceStage(enabled=True, recipes={"ctl": bad})


@pytest.mark.slow
def test_scarce_twin_learning_curve_and_saved_models(scarce_run, tmp_path):
    run, cfg, data, _ = scarce_run
    lc = json.loads(Path(_state(run)["outputs"]["scarce"]["learning_curve"]).read_text())
    got = {(p["fraction"], p["recipe"], p["seed"]) for p in lc["points"]}
    head = lc["extra_seeds_for"]
    assert head in {"sp", "cn", "only"}
    want = {(0.5, r, 0) for r in ("real", "sp", "cn", "only")} | {(0.5, r, 1) for r in ("real", head)}
    want |= {(1.0, r, 0) for r in ("real", "only")}
    assert got == want
    for p in lc["points"]:
        assert 0 <= p["test"]["macro_miou"] <= 1 and set(p["test"]["per_class_iou"]) == {"water", "forest", "urban"}
        assert Path(p["run"], "best.safetensors").is_file()
    steps = {json.loads((Path(p["run"]) / "run.json").read_text())["max_steps"] for p in lc["points"]}
    assert steps == {2}  # every run the same steps
    only = next(p for p in lc["points"] if p["recipe"] == "only")
    assert json.loads((Path(only["run"]) / "run.json").read_text())["data"][0]["weight"] == 0.0  # real val only
    # every segmenter can be scored again on any dataset
    assert run_cli("segment", "evaluate", "--model", lc["points"][-1]["run"], "--data", data,
                   "--out", tmp_path / "e.json") == 0  # fmt: skip
    md = Path(_state(run)["outputs"]["report"]["markdown"]).read_text()
    assert "Scarce labels" in md and "learning_curve.png" in md
    # a rerun is served from cache
    assert run_cli("-q", "run", cfg, "--out", run, *SETS) == 0
    assert {s["status"] for s in _state(run)["stages"].values()} == {"cached"}


@pytest.mark.slow
def test_scarce_dubai_twin(shared_data, tmp_path):
    """configs/scarce-dubai.yaml end to end on one part of each region it needs: train regions
    tile1 and tile3, val tile2, test tile5 and tile8 (whole regions held out)."""
    cfg = yaml.safe_load((ROOT / "configs" / "scarce-dubai.yaml").read_text())
    cfg["data"]["pairs"]["images"] = str(shared_data / "pairs" / "dubai" / "images" / "tile[12358]_part1.jpg")
    cfg["data"]["pairs"]["masks"] = str(shared_data / "pairs" / "dubai" / "masks")
    cfg["data"]["pairs"]["options"].update(tile=32, stride=160)
    cfg["scarce"].update({"fractions": [0.5], "seeds": [0], "headline_seeds": 1, "recipes": {"cn": {}},
                          "larger_fraction_recipes": None})
    path = tmp_path / "scarce-dubai-twin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli("-q", "run", path, "--out", tmp_path / "run", *SETS) == 0
    state = _state(tmp_path / "run")
    real = Dataset.open(state["outputs"]["fractions"]["0.5"]["data"]["real"])
    groups = {s: {real.group(r) for r in real.split(s)} for s in ("train", "val", "test")}
    assert groups["val"] == {"tile2"} and groups["test"] == {"tile5", "tile8"} and len(groups["train"]) == 1
    lc = json.loads(Path(state["outputs"]["scarce"]["learning_curve"]).read_text())
    assert {(p["recipe"], p["seed"]) for p in lc["points"]} == {("real", 0), ("cn", 0)}
