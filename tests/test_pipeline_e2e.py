"""Every shipped pipeline config runs end to end through the CLI as a tiny twin; the matrix has
every cell; the report has every section and renders, with its images, in headless Chromium."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from pipeline_twins import twin_sets
from terrasynth.pipeline import GRID_ROWS
from terrasynth.report.build import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    # 8 segmenter steps (> the runner's 6 probe steps) with the demo's wall-time target: the speed probe runs
    sets = twin_sets(**{"data.world.tiles": "24", "data.world.size": "32", "segment.train.max_steps": "8"})
    assert run_cli("-q", "run", ROOT / "configs" / "demo.yaml", "--out", out, *sets) == 0
    return out, sets


def _outputs(run: Path) -> dict:
    return json.loads((run / "pipeline.json").read_text())["outputs"]


def test_demo_twin_every_stage_and_full_matrix(demo_run):
    run, _ = demo_run
    state = json.loads((run / "pipeline.json").read_text())
    assert list(state["stages"]) == ["data", "landcover", "spade", "controlnet_base", "controlnet", "datasets",
                                     "segment", "evaluate", "mixing", "report"]  # fmt: skip
    m = json.loads(Path(state["outputs"]["evaluate"]["matrix"]).read_text())
    cells = {(c["train_set"], c["arch"], c["test_set"]) for c in m["cells"]}
    assert len(cells) == 3 * 4 * 4
    assert all(0.0 <= c["micro_iou"] <= 1.0 for c in m["cells"])
    for name in ("fakergbreallc", "fakergbreallcspade", "fakergbfakelc"):
        info = json.loads((Path(state["outputs"]["datasets"][name]) / "dataset.json").read_text())
        assert info["kind"] == "synthetic" and set(info["splits"]) >= {"train", "test"}
    mix = state["outputs"]["mixing"]["curves"]
    # the demo mixes the ControlNet set only (configs/demo.yaml mixing.synthetic_sets)
    assert {(p["fraction"], p["added"]) for p in mix} == {(0.0, "fakergbreallc"), (0.5, "none"), (0.5, "fakergbreallc")}
    # the synthetic-alone ends of the curves are the segment stage's own UNet runs, not trained twice
    seg = {(m["train_set"], m["arch"], m["seed"]): m["run"] for m in state["outputs"]["segment"]["models"]}
    for p in mix:
        assert (p["run"] == seg.get((p["added"], "unet", 0))) == (p["fraction"] == 0.0), p
    mixing_dir = Path(state["outputs"]["mixing"]["mixing"]).parent
    assert not [p for p in mixing_dir.glob("r0-*") if p.is_dir()] and list(mixing_dir.glob("r0.5-*"))
    # one speed probe per architecture: its first run sizes the steps, every other run of it (matrix rows,
    # mixing points) trains exactly those steps without probing
    runs = [json.loads((Path(m["run"]) / "run.json").read_text()) | {"arch": m["arch"]}
            for m in state["outputs"]["segment"]["models"]]
    runs += [json.loads((Path(p["run"]) / "run.json").read_text()) | {"arch": "unet"} for p in mix]
    for arch in ("unet", "unetplusplus", "deeplabv3plus"):
        mine = [r for r in runs if r["arch"] == arch]
        assert mine[0]["budget"] and mine[0]["budget"]["target_minutes"] == 0.36
        assert not any(r["budget"] for r in mine[1:]), arch
        assert {r["max_steps"] for r in mine} == {state["outputs"]["segment"]["steps"][arch]}


def test_rerun_is_cached(demo_run):
    run, sets = demo_run
    assert run_cli("-q", "run", ROOT / "configs" / "demo.yaml", "--out", run, *sets) == 0
    state = json.loads((run / "pipeline.json").read_text())
    assert {s["status"] for s in state["stages"].values()} == {"cached"}


def test_report_sections_and_browser_render(demo_run):
    run, _ = demo_run
    html = Path(_outputs(run)["report"]["html"])
    text = html.read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in text, s
    md = html.with_suffix(".md").read_text()
    for title in ("Cross-test matrix", "Mixing", "Samples", "Image realism", "Realism", "Timings", "Configuration",
                  "Versions"):  # fmt: skip
        assert f"## {title}" in md
    assert "| segmenter FD / real floor |" in md and "| Laplacian variance, synthetic / real, per class |" in md
    found = json.loads((html.parent / "image_realism.json").read_text())
    assert set(found) == {"controlnet", "spade"} and all(r["segmenter_fd"]["ratio"] > 0 for r in found.values())
    for gen in found:  # one test mask per row: mask | real | two samples (32 px tiles, drawn 4x, 2 px padding)
        shape = np.asarray(Image.open(html.parent / f"samples-{gen}.png")).shape
        assert shape == ((GRID_ROWS * 34 + 2) * 4, (4 * 34 + 2) * 4, 3)
    n_img = text.count("<img ")
    assert n_img >= 5  # heatmap, mixing curves, sample grid, a grid per image generator
    if CHROMIUM is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    assert f'data-images-loaded="{n_img}/{n_img}"' in dom


def test_report_command_rebuilds(demo_run, tmp_path):
    run, _ = demo_run
    assert run_cli("report", run, "--out", tmp_path / "rep") == 0
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000


def _pairs_twin(shared_data: Path, out: Path, name: str, images: str, stride: int) -> None:
    """configs/<name>.yaml on the shared pairs ``images`` (a glob), 32 px tiles, one UNet, one synthetic set."""
    sets = twin_sets(**{
        "data.pairs.images": str(shared_data / "pairs" / name / "images" / images),
        "data.pairs.masks": str(shared_data / "pairs" / name / "masks"),
        "data.pairs.options.tile": "32", "data.pairs.options.stride": str(stride),
        "segment.archs": "[unet]", "mixing.synthetic_sets": "[fakergbreallc]",
    })  # fmt: skip
    assert run_cli("-q", "run", ROOT / "configs" / f"{name}.yaml", "--out", out, *sets) == 0


def test_dronedeploy_twin(shared_data, tmp_path):
    out = tmp_path / "dd"
    _pairs_twin(shared_data, out, "dronedeploy", "*-00000[0-9].png", 96)
    m = json.loads(Path(_outputs(out)["evaluate"]["matrix"]).read_text())
    assert len(m["cells"]) == 1 * 4 * 4


@pytest.mark.slow  # 14 min on the loaded 2-core machine (stride 160); the stages after data are the DroneDeploy twin's
def test_dubai_twin(shared_data, tmp_path):
    """configs/dubai.yaml on one part of each region: the region split reaches every stage."""
    out = tmp_path / "dubai"
    _pairs_twin(shared_data, out, "dubai", "*_part3.jpg", 320)
    real = json.loads((Path(_outputs(out)["data"]["real"]) / "dataset.json").read_text())
    assert real["extra"]["groups"] == {"tile1": "train", "tile2": "val", "tile3": "train", "tile4": "train",
                                       "tile5": "test", "tile6": "train", "tile8": "test"}  # fmt: skip
    m = json.loads(Path(_outputs(out)["evaluate"]["matrix"]).read_text())
    assert len(m["cells"]) == 1 * 4 * 4


def test_new_york_twin(shared_data, tmp_path):
    """configs/new-york.yaml with its Planetary Computer sources swapped for local COGs: a NAIP-like
    RGBN scene on a UTM grid rendered from real WorldCover, and that WorldCover for the generator."""
    from geo_fixtures import naip_like, worldcover_patch

    lc = worldcover_patch(shared_data, (6.69, 0.27, 6.77, 0.35), tmp_path / "wc.tif")
    img = tmp_path / "naip_like.tif"
    naip_like(lc, img, "EPSG:32632", origin=(244000.5, 37000.25), res=4.0, shape=(700, 700))
    local = {"source": "local", "area": "null", "state": "null", "datetime": "null", "max_nodata": "1.0",
             "workers": "1", "tile": "32"}  # fmt: skip
    extra = {f"data.acquire.{k}": v for k, v in {**local, "imagery": f"[{img}]", "landcover": f"[{lc}]", "gsd": "8",
                                                  "max_tiles": "null", "block_size": "300"}.items()}  # fmt: skip
    extra |= {f"data.landcover_source.{k}": v for k, v in {**local, "landcover": f"[{lc}]", "max_tiles": "40"}.items()}
    extra |= {"landcover.mixed_precision": "no", "controlnet_base.mixed_precision": "no", "controlnet.mixed_precision": "no",
              "controlnet_base.gradient_checkpointing": "false", "controlnet.gradient_checkpointing": "false",
              "segment.archs": "[unet]", "segment.seeds": "[0,1]", "segment.train.mixed_precision": "no",
              "mixing.synthetic_sets": "[fakergbfakelc]", "spade.model.latent_size": "4", "spade.model.num_middle": "1"}  # fmt: skip
    out = tmp_path / "ny"
    assert run_cli("-q", "run", ROOT / "configs" / "new-york.yaml", "--out", out, *twin_sets(**extra)) == 0
    outputs = _outputs(out)
    real = json.loads((Path(outputs["data"]["real"]) / "dataset.json").read_text())
    assert real["extra"]["scenes"][0]["crs"] == "EPSG:32632" and real["has_images"]
    m = json.loads(Path(outputs["evaluate"]["matrix"]).read_text())
    assert len(m["cells"]) == 16 and all(c["n_seeds"] == 2 for c in m["cells"])


@pytest.mark.slow  # 2 min on the loaded 2-core machine: the whole demo twin again
def test_demo_twin_with_the_discrete_land_cover_generator(tmp_path):
    """``landcover.generator: discrete``: the landcover stage trains the masked-diffusion model and the
    datasets stage samples it; every stage runs."""
    # 8 segmenter steps (> the runner's 6 probe steps) with the demo's wall-time target: the speed probe runs
    sets = twin_sets(**{"data.world.tiles": "24", "data.world.size": "32", "segment.train.max_steps": "8"})
    for kv in ("generator=discrete", "discrete.block_out_channels=[16,16]", "discrete.attention=[false,true]",
               "discrete.norm_num_groups=8", "discrete.max_steps=6", "discrete.steps=4"):  # fmt: skip
        sets += ["--set", f"landcover.{kv}"]
    assert run_cli("-q", "run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", *sets) == 0
    assert (Path(_outputs(tmp_path / "run")["landcover"]["run"]) / "model" / "landcover_mdm.json").exists()
