"""Bad-input matrix: every mistake a user can make gives exit 2, one stderr line naming the file and
the offending value, no traceback (unless ``--debug``), and no partial output.

Each case builds its own tiny inputs, runs the real CLI in a subprocess and checks stderr and the
output directory. The table in docs/reliability.md counts these cases per command.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from reliability_gen import make_run
from reliability_util import (
    Case,
    assert_no_partial_output,
    assert_user_error,
    cli,
    imported_dataset as _dataset,
    make_pairs,
    truncate,
    write_tif,
)


# ---- import-pairs ------------------------------------------------------------------------------


def _imp(tmp: Path, *extra: object, img=None, msk=None) -> list[object]:
    return ["data", "import-pairs", img or tmp / "img", msk or tmp / "msk", "--tile", 16, "--out", tmp / "out", *extra]


def _tif_pairs(tmp: Path, n: int = 2, mask_crs="EPSG:32633", mask_tf=None) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_tif(tmp / "img" / f"s{i}.tif", rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
        write_tif(tmp / "msk" / f"s{i}.tif", rng.choice(np.array([10, 80], np.uint8), (32, 32)),
                  crs=mask_crs, transform=mask_tf)  # fmt: skip


def imp_truncated_png_mask(tmp):
    make_pairs(tmp)
    truncate(tmp / "msk" / "p1.png")
    return Case(_imp(tmp), ["p1.png", "truncated"])


def imp_truncated_png_image(tmp):
    make_pairs(tmp)
    truncate(tmp / "img" / "p2.png", 0.6)
    return Case(_imp(tmp), ["img/p2.png", "truncated"])


def imp_truncated_geotiff_image(tmp):
    _tif_pairs(tmp)
    truncate(tmp / "img" / "s1.tif", 0.5)
    return Case(_imp(tmp), ["img/s1.tif"])


def imp_truncated_geotiff_mask(tmp):
    _tif_pairs(tmp)
    truncate(tmp / "msk" / "s0.tif", 0.7)
    return Case(_imp(tmp), ["msk/s0.tif"])


def imp_image_not_an_image(tmp):
    make_pairs(tmp)
    (tmp / "img" / "p1.png").write_text("not an image at all\n")
    return Case(_imp(tmp), ["img/p1.png", "cannot identify"])


def imp_mask_not_an_image(tmp):
    make_pairs(tmp)
    (tmp / "msk" / "p0.png").unlink()
    (tmp / "msk" / "p0.tif").write_bytes(b"II*\x00garbage")
    return Case(_imp(tmp), ["msk/p0.tif"])


def imp_size_mismatch(tmp):
    make_pairs(tmp)
    Image.fromarray(np.full((32, 40), 10, np.uint8)).save(tmp / "msk" / "p1.png")
    return Case(_imp(tmp), ["msk/p1.png", "40x32", "40x40"])


def imp_unknown_codes(tmp):
    make_pairs(tmp)
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(tmp / "msk" / "p2.png")
    return Case(_imp(tmp), ["msk/p2.png", "[77]"])


def imp_unknown_colours(tmp):
    make_pairs(tmp)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[...] = (0x12, 0x34, 0x56)
    Image.fromarray(rgb).save(tmp / "msk" / "p1.png")
    return Case(_imp(tmp), ["msk/p1.png", "#123456"])


def imp_float_mask_fraction(tmp):
    make_pairs(tmp)
    (tmp / "msk" / "p2.png").unlink()
    write_tif(tmp / "msk" / "p2.tif", np.full((40, 40), 10.5, np.float32), crs=None)
    return Case(_imp(tmp), ["msk/p2.tif", "10.5"])


def imp_mask_values_out_of_range(tmp):
    make_pairs(tmp)
    (tmp / "msk" / "p0.png").unlink()
    write_tif(tmp / "msk" / "p0.tif", np.full((40, 40), 300, np.uint16), crs=None)
    return Case(_imp(tmp), ["msk/p0.tif", "300"])


def imp_image_uint16(tmp):
    make_pairs(tmp)
    (tmp / "img" / "p2.png").unlink()
    write_tif(tmp / "img" / "p2.tif", np.full((3, 40, 40), 1000, np.uint16), crs=None)
    return Case(_imp(tmp), ["img/p2.tif", "uint16"])


def imp_mask_five_bands(tmp):
    make_pairs(tmp)
    (tmp / "msk" / "p1.png").unlink()
    write_tif(tmp / "msk" / "p1.tif", np.full((5, 40, 40), 10, np.uint8), crs=None)
    return Case(_imp(tmp), ["msk/p1.tif", "5 bands"])


def imp_index_mask_with_colours(tmp):
    make_pairs(tmp)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 10
    Image.fromarray(rgb).save(tmp / "msk" / "p1.png")
    return Case(_imp(tmp, "--mask-format", "index"), ["msk/p1.png", "mask_format=index"])


def imp_rgb_format_single_band(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--mask-format", "rgb"), ["msk/p0.png", "mask_format=rgb"])


def imp_crs_mismatch(tmp):
    _tif_pairs(tmp, mask_crs="EPSG:4326", mask_tf=from_origin(10, 50, 1e-4, 1e-4))
    return Case(_imp(tmp), ["msk/s0.tif", "EPSG:4326", "EPSG:32633"])


def imp_transform_mismatch(tmp):
    _tif_pairs(tmp, mask_tf=from_origin(500320, 4000000, 1.0, 1.0))
    return Case(_imp(tmp), ["msk/s0.tif", "500320"])


def imp_nodata_only(tmp):
    make_pairs(tmp, codes=(0,))
    return Case(_imp(tmp), ["nodata"])


def imp_missing_images_dir(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, img=tmp / "nope"), ["nope", "not found"])


def imp_no_images(tmp):
    make_pairs(tmp)
    (tmp / "empty").mkdir()
    (tmp / "empty" / "readme.txt").write_text("x")
    return Case(_imp(tmp, img=tmp / "empty"), ["empty", "no images"])


def imp_missing_partner(tmp):
    make_pairs(tmp)
    (tmp / "msk" / "p1.png").unlink()
    return Case(_imp(tmp), ["p1.png", "no mask"])


def imp_tile_larger_than_images(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--tile", 64), ["40x40", "tile 64"])


def imp_set_unknown_key(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "tilee=3"), ["tilee", "allowed keys"])


def imp_set_bad_type(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "tile=abc"), ["tile", "'abc'"])


def imp_set_out_of_range(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "max_nodata=1.5"), ["max_nodata", "1.5"])


def imp_set_bad_literal(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "split_by=tiles"), ["split_by", "'tiles'"])


def imp_set_no_equals(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "tile"), ["--set", "'tile'", "KEY=VALUE"])


def imp_set_ratios_sum(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--set", "ratios.train=0.5"), ["ratios", "0.7"])


def imp_config_missing(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--config", tmp / "none.yaml"), ["none.yaml", "not found"])


def imp_config_bad_yaml(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_text("tile: [16\nstride: 8\n")
    return Case(_imp(tmp, "--config", tmp / "c.yaml"), ["c.yaml", "YAML"])


def imp_config_unknown_key(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_text("tile: 16\nratios:\n  trian: 0.8\n")
    return Case(_imp(tmp, "--config", tmp / "c.yaml"), ["c.yaml", "ratios.trian", "train"])


def imp_config_bad_value(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_text("stride: -4\n")
    return Case(_imp(tmp, "--config", tmp / "c.yaml"), ["c.yaml", "stride", "-4"])


def imp_config_not_mapping(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_text("- 1\n- 2\n")
    return Case(_imp(tmp, "--config", tmp / "c.yaml"), ["c.yaml", "mapping"])


def imp_config_binary(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_bytes(b"\xff\xfe\x00\x81binary")
    return Case(_imp(tmp, "--config", tmp / "c.yaml"), ["c.yaml"])


def imp_flag_bad_type(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--tile", "big"), ["--tile", "'big'"])


def imp_unknown_scheme(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--scheme", "corine"), ["'corine'", "not found"])


def imp_bad_scheme_file(tmp):
    make_pairs(tmp)
    (tmp / "s.yaml").write_text("name: mine\nclasses:\n  - {code: 1, name: a, colour: 'zz'}\n")
    return Case(_imp(tmp, "--scheme", tmp / "s.yaml"), ["s.yaml", "'zz'"])


def imp_unknown_remap(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--remap", "corine_to_worldcover"), ["'corine_to_worldcover'", "not found"])


def imp_remap_source_mismatch(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--remap", "flair_to_worldcover"), ["flair_to_worldcover", "worldcover"])


def imp_remap_incomplete(tmp):
    make_pairs(tmp)
    (tmp / "r.yaml").write_text("source: worldcover\ntarget: worldcover\nmapping: {10: 10}\n")
    return Case(_imp(tmp, "--remap", tmp / "r.yaml"), ["worldcover", "not mapped"])


def imp_resize_without_gsd(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--resize-to-gsd", 1.0), ["resize_to_gsd", "--gsd"])


def imp_group_stem_not_matching(tmp):
    make_pairs(tmp)
    (tmp / "img" / "p1.png").rename(tmp / "img" / "x1.png")
    (tmp / "msk" / "p1.png").rename(tmp / "msk" / "x1.png")
    return Case(_imp(tmp, "--split-by", "group", "--group-pattern", "^(p)\\d"), ["img/x1.png", "'x1'", "group_pattern"])


def imp_group_unknown_name(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--split-by", "group", "--group-pattern", "^(p\\d)", "--test-groups", "p7"),
                ["groups.test", "'p7'", "fix the group names"])  # fmt: skip


def imp_group_without_pattern(tmp):
    make_pairs(tmp)
    return Case(_imp(tmp, "--split-by", "group"), ["group_pattern", "--group-pattern"])


def imp_out_under_a_file(tmp):
    make_pairs(tmp)
    (tmp / "afile").write_text("x")
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--tile", 16, "--out", tmp / "afile" / "sub"]
    return Case(argv, ["afile/sub", "Not a directory"], out=tmp / "afile" / "sub")


def imp_out_not_a_dataset(tmp):
    make_pairs(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return Case(_imp(tmp), ["out", "not empty"], strict=False)


def imp_out_other_config(tmp):
    _dataset(tmp)
    return Case(_imp(tmp, "--stride", 8), ["out", "another config", "--overwrite"], strict=False)


# ---- data info ---------------------------------------------------------------------------------


def info_missing_dir(tmp):
    return Case(["data", "info", tmp / "nope"], ["nope", "not found"])


def info_not_a_dataset(tmp):
    (tmp / "d").mkdir()
    return Case(["data", "info", tmp / "d"], ["d", "no dataset.json"])


def info_unfinished(tmp):
    ds = _dataset(tmp)
    (ds / "dataset.json").unlink()
    (ds / ".partial.json").write_text('{"config_hash": "x"}')
    return Case(["data", "info", ds], ["out", "unfinished", "rerun"])


def info_bad_json(tmp):
    ds = _dataset(tmp)
    truncate(ds / "dataset.json", 0.5)
    return Case(["data", "info", ds], ["dataset.json", "not valid JSON"])


def info_newer_format(tmp):
    ds = _dataset(tmp)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["format_version"] = 99
    (ds / "dataset.json").write_text(json.dumps(meta))
    return Case(["data", "info", ds], ["dataset.json", "99"])


def info_malformed_index(tmp):
    ds = _dataset(tmp)
    lines = (ds / "index.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",0,", ",zero,", 1) if ",0," in lines[2] else lines[2] + ",x"
    (ds / "index.csv").write_text("\n".join(lines[:2] + ["a,b"] + lines[3:]) + "\n")
    return Case(["data", "info", ds], ["index.csv", "row 3"])


def info_missing_index(tmp):
    ds = _dataset(tmp)
    (ds / "index.csv").unlink()
    return Case(["data", "info", ds], ["index.csv", "missing"])


def info_verify_truncated_tile(tmp):
    ds = _dataset(tmp)
    tile = sorted((ds / "labels").glob("*.tif"))[1]
    truncate(tile, 0.3)
    return Case(["data", "info", ds, "--verify"], [tile.name, "unreadable"])


def info_verify_stray_tile(tmp):
    ds = _dataset(tmp)
    (ds / "labels" / "zz_extra.tif").write_bytes((sorted((ds / "labels").glob("*.tif"))[0]).read_bytes())
    return Case(["data", "info", ds, "--verify"], ["zz_extra.tif", "not in the index"])


# ---- synthesize --------------------------------------------------------------------------------


def _syn(tmp: Path, gen: Path | None = None, labels: Path | None = None, *extra: object) -> list[object]:
    return ["synthesize", "--generator", gen or tmp / "gen", "--labels", labels or tmp / "out",
            "--out", tmp / "syn", *extra]  # fmt: skip


def syn_missing_labels(tmp):
    make_run(tmp / "gen")
    return Case(_syn(tmp, labels=tmp / "nolabels"), ["nolabels", "not found"], out=tmp / "syn", runner=True)


def syn_not_a_run(tmp):
    ds = _dataset(tmp)
    (tmp / "gen").mkdir()
    return Case(_syn(tmp, labels=ds), ["gen", "not a generator run"], out=tmp / "syn", runner=True)


def syn_generator_json_corrupt(tmp):
    ds = _dataset(tmp)
    make_run(tmp / "gen")
    (tmp / "gen" / "generator.json").write_text('{"family": "colourno')
    return Case(_syn(tmp, labels=ds), ["generator.json", "JSON"], out=tmp / "syn", runner=True)


def syn_unknown_family(tmp):
    ds = _dataset(tmp)
    (tmp / "gen").mkdir()
    (tmp / "gen" / "generator.json").write_text('{"family": "stylegan9"}')
    return Case(_syn(tmp, labels=ds), ["generator.json", "'stylegan9'"], out=tmp / "syn", runner=True)


def syn_scheme_mismatch(tmp):
    ds = _dataset(tmp)
    make_run(tmp / "gen", scheme="dronedeploy")
    return Case(_syn(tmp, labels=ds), ["out", "worldcover", "dronedeploy"], out=tmp / "syn", runner=True)


def syn_unknown_split(tmp):
    ds = _dataset(tmp)
    make_run(tmp / "gen")
    return Case(_syn(tmp, None, ds, "--split", "valid"), ["'valid'"], out=tmp / "syn", runner=True)


def syn_batch_size_zero(tmp):
    ds = _dataset(tmp)
    make_run(tmp / "gen")
    return Case(_syn(tmp, None, ds, "--batch-size", 0), ["--batch-size", "0"], out=tmp / "syn", runner=True)


def syn_out_under_a_file(tmp):
    ds = _dataset(tmp)
    make_run(tmp / "gen")
    (tmp / "afile").write_text("x")
    argv = ["synthesize", "--generator", tmp / "gen", "--labels", ds, "--out", tmp / "afile" / "syn"]
    return Case(argv, ["afile/syn", "Not a directory"], out=tmp / "afile" / "syn", runner=True)


CASES: dict[str, list[Callable[[Path], Case]]] = {
    "data import-pairs": [v for k, v in dict(globals()).items() if k.startswith("imp_")],
    "data info": [v for k, v in dict(globals()).items() if k.startswith("info_")],
    "synthesize": [v for k, v in dict(globals()).items() if k.startswith("syn_")],
}
# Cases that import torch in the subprocess cost ~5 s each on the shared machine: a few run by default;
# so do near-duplicates, to keep the default suite within its time budget.
SLOW = {"syn_unknown_family", "syn_out_under_a_file", "syn_missing_labels", "syn_unknown_split", "syn_not_a_run",
        "syn_scheme_mismatch",
        # near-duplicates of default cases (same code path, another spelling of the mistake)
        "imp_set_bad_literal", "imp_set_no_equals", "imp_set_out_of_range", "imp_config_not_mapping",
        "imp_config_binary", "imp_config_bad_value", "imp_flag_bad_type", "imp_unknown_remap", "imp_remap_incomplete",
        "imp_bad_scheme_file", "imp_mask_not_an_image", "imp_truncated_geotiff_mask", "imp_group_without_pattern"}


def _params():
    for cmd, fns in CASES.items():
        for fn in fns:
            marks = [pytest.mark.slow] if fn.__name__ in SLOW else []
            yield pytest.param(fn, id=fn.__name__, marks=marks)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Build and run every selected case up front, four subprocesses at a time (each mostly waits on
    interpreter start-up), so the matrix costs about a quarter of its serial wall time."""
    chosen = [it.callspec.params["make_case"] for it in request.session.items
              if getattr(it, "originalname", "") == "test_bad_input"]  # fmt: skip

    def run(fn):
        tmp = tmp_path_factory.mktemp(fn.__name__)
        case = fn(tmp)
        return tmp, case, cli(*case.argv, runner=case.runner, **case.setup_env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {fn.__name__: pool.submit(run, fn) for fn in chosen}
        yield futures


@pytest.mark.parametrize("make_case", list(_params()))
def test_bad_input(make_case, results):
    tmp_path, case, res = results[make_case.__name__].result()
    assert_user_error(res, *case.needles)
    out = case.out or tmp_path / "out"
    if case.argv[:2] == ["data", "info"]:
        return  # info writes nothing
    if "out" in case.needles and not case.strict:  # an existing dataset/dir at --out must be left as it was
        return
    assert_no_partial_output(out, strict=case.strict)


@pytest.mark.parametrize(
    "make_case", [imp_unknown_codes, info_bad_json, pytest.param(syn_scheme_mismatch, marks=pytest.mark.slow)],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_debug_shows_traceback(make_case, tmp_path):
    case = make_case(tmp_path)
    res = cli(*case.argv, runner=case.runner, debug=True)
    assert res.rc == 2 and "Traceback" in res.stderr and "UserError" in res.stderr
    assert res.stderr_lines[-1].startswith("terrasynth: error: ")
