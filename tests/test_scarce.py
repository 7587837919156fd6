"""The scarce-label experiment (issue 15): the label-fraction knob keeps every learner on the labelled
subset, the fixed real share per batch holds exactly, and the preset's tiny twin runs end to end
through the CLI, writes learning_curve.json and saves every segmenter so it can be evaluated again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio

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


def _scarce_sets(data: Path, **extra: str) -> list[str]:
    return twin_sets(**{
        "data.source": "dataset", "data.path": str(data), "data.pairs": "null",
        "segment.train.target_minutes": "null", "segment.train.max_steps": "2",
        "scarce.seeds": "[0]", "scarce.headline_seeds": "2",
        **extra,
    })  # fmt: skip


def test_every_learner_reads_only_labelled_train_tiles(tmp_path, monkeypatch):
    """With data.label_fraction = 0.5, no stage (land-cover generator, SPADE, ControlNet base and
    ControlNet, filter model, segmenters) opens a train tile of an unlabelled source image."""
    data = _tiny(tmp_path)
    real = Dataset.open(data)
    opened: list[str] = []
    real_open = rasterio.open

    def spy(fp, mode="r", *a, **k):
        if mode == "r":
            opened.append(Path(str(fp)).stem)
        return real_open(fp, mode, *a, **k)

    monkeypatch.setattr(rasterio, "open", spy)
    recipes = ('{sp: {generator: spade, variants: 2, hardness: true, filter: {k: 2.0}},'
               ' lay: {new_layouts: 0.5}}')  # fmt: skip
    out = tmp_path / "run"
    assert run_cli("-q", "run", SCARCE, "--out", out, *_scarce_sets(data, **{
        "scarce.fractions": "[0.5]", "scarce.recipes": recipes, "scarce.larger_fraction_recipes": "null"})) == 0  # fmt: skip
    state = json.loads((out / "pipeline.json").read_text())
    ran = {k.split("@")[0] for k in state["stages"]}
    assert {"data", "landcover", "spade", "controlnet_base", "controlnet", "scarce_data", "scarce", "report"} <= ran
    labelled = Dataset.open(state["outputs"]["fractions"]["0.5"]["data"]["real"])
    keep = {r.id for r in labelled.split("train")}
    unlabelled = {r.id for r in real.split("train")} - keep
    assert len(keep) == 12 and len(unlabelled) == 12
    stems = {s.removeprefix("m-").removeprefix("g-").split("-v")[0] for s in opened}
    assert keep & stems, "the spy saw no reads of labelled tiles: it does not watch the readers"
    assert not unlabelled & stems, f"stages read unlabelled train tiles {sorted(unlabelled & stems)[:5]}"


def test_scarce_twin_learning_curve_and_saved_models(tmp_path):
    data = _tiny(tmp_path)
    out = tmp_path / "run"
    recipes = "{cn: {description: one per mask}, cnx2: {variants: 2, filter: {k: 2.0}}, only: {synthetic_only: true}}"
    sets = _scarce_sets(data, **{"scarce.fractions": "[0.5,1.0]", "scarce.recipes": recipes,
                                 "scarce.larger_fraction_recipes": "[cn,only]"})  # fmt: skip
    assert run_cli("-q", "run", SCARCE, "--out", out, *sets) == 0
    state = json.loads((out / "pipeline.json").read_text())
    lc = json.loads(Path(state["outputs"]["scarce"]["learning_curve"]).read_text())
    got = {(p["fraction"], p["recipe"], p["seed"]) for p in lc["points"]}
    head = lc["extra_seeds_for"]
    assert head in {"cn", "cnx2", "only"}
    want = {(0.5, r, 0) for r in ("real", "cn", "cnx2", "only")} | {(0.5, r, 1) for r in ("real", head)}
    want |= {(1.0, r, 0) for r in ("real", "cn", "only")}
    assert got == want
    for p in lc["points"]:
        assert 0 <= p["test"]["macro_miou"] <= 1 and set(p["test"]["per_class_iou"]) == {"water", "forest", "urban"}
        assert Path(p["run"], "best.safetensors").is_file()
    steps = {json.loads((Path(p["run"]) / "run.json").read_text())["max_steps"] for p in lc["points"]}
    assert steps == {2}  # every run the same steps
    # every segmenter can be scored again on any dataset
    assert run_cli("segment", "evaluate", "--model", lc["points"][-1]["run"], "--data", data,
                   "--out", tmp_path / "e.json") == 0  # fmt: skip
    md = Path(state["outputs"]["report"]["markdown"]).read_text()
    assert "Scarce labels" in md
    # a rerun is served from cache
    assert run_cli("-q", "run", SCARCE, "--out", out, *sets) == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert {s["status"] for s in state["stages"].values()} == {"cached"}
