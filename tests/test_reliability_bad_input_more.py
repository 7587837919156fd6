"""Bad-input matrix, continued: data world, data acquire and the training/sampling commands.

Same contract as test_reliability_bad_input.py: exit 2, one stderr line naming the file or flag and
the offending value, no traceback, no partial output. Commands that import torch (training,
sampling, the pipeline) cost 5-8 s a case on the shared machine, so one case each runs by default
and the rest under ``make test-slow``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from reliability_util import Case, assert_no_partial_output, assert_user_error, cli, write_tif
from reliability_util import imported_dataset as _dataset


# ---- data world --------------------------------------------------------------------------------


def _world(tmp, *extra):
    return ["data", "world", "--tiles", 4, "--size", 32, "--out", tmp / "out", *extra]


def world_set_unknown_key(tmp):
    return Case(_world(tmp, "--set", "sesaon=winter"), ["sesaon", "allowed keys"])


def world_bad_value(tmp):
    return Case(_world(tmp, "--haze", 3), ["haze", "3"])


def world_zero_tiles(tmp):
    return Case(_world(tmp, "--tiles", 0), ["tiles", "0"])


def world_bad_choice(tmp):
    return Case(_world(tmp, "--season", "monsoon"), ["--season", "'monsoon'"])


def world_config_bad_value(tmp):
    (tmp / "w.yaml").write_text("haze: lots\n")
    return Case(_world(tmp, "--config", tmp / "w.yaml"), ["w.yaml", "haze", "'lots'"])


def world_out_under_a_file(tmp):
    (tmp / "afile").write_text("x")
    return Case(["data", "world", "--tiles", 4, "--size", 32, "--out", tmp / "afile" / "w"], ["afile/w"],
                out=tmp / "afile" / "w")  # fmt: skip


# ---- data acquire --------------------------------------------------------------------------------


def _cog(tmp: Path, codes=(10, 30, 50, 80), crs="EPSG:4326", name="wc.tif", dtype=np.uint8) -> Path:
    from geo_fixtures import write_cog

    rng = np.random.default_rng(0)
    arr = rng.choice(np.array(codes, dtype), (12, 12)).repeat(8, 0).repeat(8, 1)
    if crs is None:  # write_cog needs a CRS; a plain GeoTIFF without one is what users hit
        return write_tif(tmp / name, arr, crs=None)
    return write_cog(tmp / name, arr[None], crs, from_origin(6.5, 0.4, 1 / 12000, 1 / 12000), nodata=0)


def _acq(tmp, *extra, lc=None):
    return ["data", "acquire", "--product", "landcover", "--landcover", lc or tmp / "wc.tif", "--tile", 16,
            "--gsd", "native", "--out", tmp / "out", *extra]  # fmt: skip


def acq_area_outside_files(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--bbox", "10,10,11,11"), ["--landcover", "(10.0, 10.0, 11.0, 11.0)"])


def acq_missing_file(tmp):
    return Case(_acq(tmp, lc=tmp / "nope.tif"), ["nope.tif"])


def acq_not_a_raster(tmp):
    (tmp / "wc.tif").write_text("not a raster\n")
    return Case(_acq(tmp), ["wc.tif"])


def acq_truncated_cog(tmp):
    from reliability_util import truncate

    truncate(_cog(tmp), 0.4)
    return Case(_acq(tmp), ["wc.tif"])


def acq_missing_crs(tmp):
    _cog(tmp, crs=None)
    return Case(_acq(tmp), ["wc.tif", "CRS"])


def acq_unknown_codes(tmp):
    _cog(tmp, codes=(10, 77))
    return Case(_acq(tmp), ["77"])


def acq_float_landcover(tmp):
    _cog(tmp, dtype=np.float32, codes=(10.0, 30.5))
    return Case(_acq(tmp), ["wc.tif", "30.5", "float32"])


def acq_nodata_only(tmp):
    _cog(tmp, codes=(0,))
    return Case(_acq(tmp), ["nodata"])


def acq_bad_bbox(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--bbox", "1,2,3"), ["bbox", "1,2,3"])


def acq_inverted_bbox(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--bbox", "7,1,6,0"), ["bbox"])


def acq_set_unknown_key(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--set", "tiel=3"), ["tiel", "allowed keys"])


def acq_bad_split(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--split", "0.5,0.5,0.5"), ["0.5"])


def acq_unknown_area(tmp):
    _cog(tmp)
    return Case(_acq(tmp, "--area", "atlantis"), ["'atlantis'"])


def acq_empty_static_catalog(tmp):
    import pystac

    cat = pystac.Catalog(id="empty", description="no items")
    cat.normalize_and_save(str(tmp / "cat"), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    argv = ["data", "acquire", "--source", "static", "--catalog", tmp / "cat" / "catalog.json", "--product",
            "landcover", "--bbox", "6.5,0.3,6.6,0.4", "--tile", 16, "--out", tmp / "out"]  # fmt: skip
    return Case(argv, ["no 'esa-worldcover' items", "(6.5, 0.3, 6.6, 0.4)"])


def acq_static_catalog_missing(tmp):
    argv = ["data", "acquire", "--source", "static", "--catalog", tmp / "none.json", "--product", "landcover",
            "--bbox", "6.5,0.3,6.6,0.4", "--out", tmp / "out"]  # fmt: skip
    return Case(argv, ["none.json"])


def acq_out_under_a_file(tmp):
    _cog(tmp)
    (tmp / "afile").write_text("x")
    argv = _acq(tmp)[:-2] + ["--out", tmp / "afile" / "o"]
    return Case(argv, ["afile/o"], out=tmp / "afile" / "o")


# ---- training and sampling -----------------------------------------------------------------------


def _label_only(tmp: Path) -> Path:
    from terrasynth.classes import WORLDCOVER
    from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance

    info = DatasetInfo(name="lo", kind="real", scheme=WORLDCOVER, tile_size=32, has_images=False,
                       provenance=provenance("t", config_hash="x"))  # fmt: skip
    with DatasetWriter(tmp / "lo", info) as w:
        for i in range(4):
            w.write(f"t{i}", "train", np.full((32, 32), 10 * (i + 1), np.uint8))
        w.finalize()
    return tmp / "lo"


def seg_missing_data(tmp):
    return Case(["segment", "train", "--data", tmp / "nodata", "--out", tmp / "out"], ["nodata", "not found"])


def seg_label_only_data(tmp):
    return Case(["segment", "train", "--data", _label_only(tmp), "--out", tmp / "out"], ["lo", "label-only"])


def seg_set_unknown_key(tmp):
    return Case(["segment", "train", "--data", _dataset(tmp), "--out", tmp / "run", "--set", "lr_rate=1"],
                ["lr_rate", "allowed keys"], out=tmp / "run")  # fmt: skip


def seg_bad_weight(tmp):
    return Case(["segment", "train", "--data", _dataset(tmp), "--weight", "-1", "--out", tmp / "run"],
                ["-1", "weight"], out=tmp / "run")  # fmt: skip


def segeval_not_a_run(tmp):
    (tmp / "run").mkdir()
    return Case(["segment", "evaluate", "--model", tmp / "run", "--data", _dataset(tmp), "--out", tmp / "m.json"],
                ["run"], out=tmp / "m.json")  # fmt: skip


def lc_missing_data(tmp):
    return Case(["landcover", "train", "--data", tmp / "nodata", "--out", tmp / "out"], ["nodata", "not found"])


def lc_set_bad_value(tmp):
    return Case(["landcover", "train", "--data", _label_only(tmp), "--out", tmp / "out",
                 "--set", "autoencoder.max_steps=-3"], ["autoencoder.max_steps", "-3"])  # fmt: skip


def lcs_not_a_run(tmp):
    (tmp / "run").mkdir()
    return Case(["landcover", "sample", "--model", tmp / "run", "--n", 2, "--out", tmp / "out"], ["run"])


def lcs_zero_maps(tmp):
    (tmp / "run").mkdir()
    return Case(["landcover", "sample", "--model", tmp / "run", "--n", 0, "--out", tmp / "out"], ["0"])


def spade_label_only_data(tmp):
    return Case(["spade", "train", "--data", _label_only(tmp), "--out", tmp / "out"], ["lo", "label"])


def spade_set_unknown_key(tmp):
    return Case(["spade", "train", "--data", _dataset(tmp), "--out", tmp / "run", "--set", "model.ngff=8"],
                ["model.ngff", "allowed keys"], out=tmp / "run")  # fmt: skip


def cnbase_missing_data(tmp):
    return Case(["controlnet", "train-base", "--data", tmp / "nodata", "--out", tmp / "out"], ["nodata", "not found"])


def cnbase_init_from_not_a_base(tmp):
    from conftest import toy_pairs

    (tmp / "nobase").mkdir()
    argv = ["controlnet", "train-base", "--data", toy_pairs(tmp / "pairs", n=4), "--init-from", tmp / "nobase",
            "--out", tmp / "out"]  # fmt: skip
    return Case(argv, ["nobase", "not a base model"])  # checked before the autoencoder trains, nothing at --out


def cn_base_not_a_run(tmp):
    (tmp / "base").mkdir()
    return Case(["controlnet", "train", "--data", _dataset(tmp), "--base", tmp / "base", "--out", tmp / "run"],
                ["base"], out=tmp / "run")  # fmt: skip


# ---- the pipeline ------------------------------------------------------------------------------------


def run_set_unknown_key(tmp):
    return Case(["run", "demo", "--out", tmp / "out", "--set", "segmnet.archs=[unet]"], ["--set", "'segmnet'"])


def run_set_names_the_flag_not_the_file(tmp):
    return Case(["run", "demo", "--out", tmp / "out", "--set", "seed=abc"], ["--set", "seed", "'abc'"])


def run_config_missing(tmp):
    return Case(["run", tmp / "nope.yaml", "--out", tmp / "out"], ["nope.yaml", "not found"])


def run_config_bad_yaml(tmp):
    (tmp / "p.yaml").write_text("data: [1\n")
    return Case(["run", tmp / "p.yaml", "--out", tmp / "out"], ["p.yaml", "YAML"])


def run_config_unknown_key(tmp):
    (tmp / "p.yaml").write_text("nmae: x\n")
    return Case(["run", tmp / "p.yaml", "--out", tmp / "out"], ["p.yaml", "'nmae'", "allowed keys"])


def run_unknown_stage(tmp):
    return Case(["run", "demo", "--out", tmp / "out", "--from", "nostage"], ["'nostage'", "stages are"])


def report_not_a_run(tmp):
    (tmp / "out").mkdir()
    return Case(["report", tmp / "out"], ["out", "pipeline.json"], strict=True)


PREFIXES = {"world_": "data world", "acq_": "data acquire", "seg_": "segment train",
            "segeval_": "segment evaluate", "lc_": "landcover train", "lcs_": "landcover sample",
            "spade_": "spade train", "cnbase_": "controlnet train-base", "cn_": "controlnet train",
            "run_": "run", "report_": "report"}  # fmt: skip
CASES = {cmd: [v for k, v in dict(globals()).items() if k.startswith(p) and callable(v)] for p, cmd in PREFIXES.items()}
TORCH_DEFAULT = {"seg_label_only_data", "report_not_a_run"}
# Data cases that repeat a default case's code path with another spelling of the mistake.
DATA_SLOW = {"world_zero_tiles", "world_bad_choice", "world_config_bad_value", "acq_missing_file", "acq_bad_bbox",
             "acq_set_unknown_key", "acq_bad_split", "acq_unknown_area", "acq_static_catalog_missing"}


def _params():
    for cmd, fns in CASES.items():
        for fn in fns:
            cheap = (cmd.startswith("data ") and fn.__name__ not in DATA_SLOW) or fn.__name__ in TORCH_DEFAULT
            yield pytest.param(fn, id=fn.__name__, marks=[] if cheap else [pytest.mark.slow])


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    chosen = [it.callspec.params["make_case"] for it in request.session.items
              if getattr(it, "originalname", "") == "test_bad_input_more"]  # fmt: skip

    def run(fn):
        tmp = tmp_path_factory.mktemp(fn.__name__)
        case = fn(tmp)
        return tmp, case, cli(*case.argv, runner=case.runner)

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {fn.__name__: pool.submit(run, fn) for fn in chosen}


@pytest.mark.parametrize("make_case", list(_params()))
def test_bad_input_more(make_case, results):
    tmp_path, case, res = results[make_case.__name__].result()
    assert_user_error(res, *case.needles)
    assert_no_partial_output(case.out or tmp_path / "out", strict=case.strict)

