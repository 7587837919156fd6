"""Bad-input matrix, second round (issue #17): data safety, up-front size checks, verified reads,
tracebacks turned into user errors, strict YAML, signals and silent band conversions.

Same contract as test_reliability_bad_input.py (exit 2, one stderr line naming the file or flag, the
value and the fix, no traceback), plus, per case, a check that nothing was lost: an input that
overlaps ``--out`` is still whole, a dataset that ``--overwrite`` refused to touch still verifies.
Rows and counts: docs/reliability.md ("Bad-input matrix, second round").
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_util import (
    RUNNER,
    assert_no_partial_output,
    assert_user_error,
    cli,
    env,
    make_pairs,
    sha_tree,
    truncate,
)  # fmt: skip
from test_reliability_bad_input import Case, _dataset


@dataclass
class SafeCase(Case):
    check: Callable[[], None] | None = None  # replaces assert_no_partial_output when the case needs its own


def _intact(ds: Path) -> Callable[[], None]:
    """The dataset at ``ds`` is byte-for-byte what it was when this was called, and still opens."""
    before = sha_tree(ds)
    meta = (ds / "dataset.json").read_bytes()

    def check() -> None:
        from terrasynth.data.dataset import Dataset

        assert sha_tree(ds) == before, "a dataset that must not be touched changed"
        assert (ds / "dataset.json").read_bytes() == meta
        assert Dataset.open(ds).verify() == []

    return check


def _edit_meta(ds: Path, **changes) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(changes)
    (ds / "dataset.json").write_text(json.dumps(meta))


def _drop_class(ds: Path, code: int, *, index_too: bool) -> None:
    """A hand edit: remove class ``code`` from the scheme in dataset.json (and its index column)."""
    meta = json.loads((ds / "dataset.json").read_text())
    meta["scheme"]["classes"] = [c for c in meta["scheme"]["classes"] if c["code"] != code]
    meta["class_pixels"].pop(str(code), None)
    (ds / "dataset.json").write_text(json.dumps(meta))
    if index_too:
        rows = [ln.split(",") for ln in (ds / "index.csv").read_text().splitlines()]
        col = rows[0].index(f"count_{code}")
        (ds / "index.csv").write_text("\n".join(",".join(r[:col] + r[col + 1 :]) for r in rows) + "\n")


# ---- 1. data safety: --out never holds an input; --overwrite removes only terrasynth's files -----------


def over_out_holds_its_inputs(tmp):
    ds = _dataset(tmp)
    argv = ["data", "import-pairs", ds / "images", ds / "labels", "--tile", 16, "--out", ds, "--overwrite"]
    return SafeCase(argv, ["--out", "images", "inside it", "outside the inputs"], check=_intact(ds))


def over_glob_input_inside_out(tmp):
    make_pairs(tmp / "out")
    argv = ["data", "import-pairs", f"{tmp / 'out' / 'img'}/*.png", tmp / "out" / "msk", "--tile", 16,
            "--out", tmp / "out", "--overwrite"]  # fmt: skip
    before = {p: p.read_bytes() for p in (tmp / "out").rglob("*.png")}

    def check():
        assert {p: p.read_bytes() for p in (tmp / "out").rglob("*.png")} == before
        assert sorted(p.name for p in (tmp / "out").iterdir()) == ["img", "msk"]

    return SafeCase(argv, ["--out", "*.png"], check=check)


def over_synthesize_out_is_labels(tmp):
    ds = _dataset(tmp)
    argv = ["synthesize", "--generator", tmp / "gen", "--labels", ds, "--out", ds, "--overwrite"]
    return SafeCase(argv, ["--out", "--labels", "is it"], check=_intact(ds))


def over_segment_out_is_data(tmp):
    ds = _dataset(tmp)
    return SafeCase(["segment", "train", "--data", ds, "--out", ds], ["--out", "--data"], check=_intact(ds))


def over_stray_tile_is_not_deleted(tmp):
    ds = _dataset(tmp)
    user_tile = ds / "labels" / "zz_user.tif"
    user_tile.write_bytes(min((ds / "labels").glob("*.tif")).read_bytes())
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--tile", 16, "--stride", 8, "--out", ds, "--overwrite"]

    def check():
        assert user_tile.exists() and (ds / "dataset.json").exists() and (ds / "index.csv").exists()

    return SafeCase(argv, ["zz_user.tif", "--overwrite deletes only files terrasynth wrote"], check=check)


# ---- 2. up-front size checks -------------------------------------------------------------------------


def size_resize_to_absurd_gsd(tmp):
    make_pairs(tmp, n=2, size=40)
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--tile", 16, "--gsd", 1, "--resize-to-gsd", 0.0001,
            "--out", tmp / "out"]  # fmt: skip
    return SafeCase(argv, ["memory", "400,000x400,000", "--resize-to-gsd 0.0001", "coarser"])


def size_world_a_billion_tiles(tmp):
    return SafeCase(["data", "world", "--tiles", 1_000_000_000, "--out", tmp / "out"],
                    ["--tiles 1,000,000,000", "memory", "fewer --tiles"])  # fmt: skip


def size_world_huge_tiles(tmp):
    return SafeCase(["data", "world", "--tiles", 5_000_000, "--size", 1024, "--out", tmp / "out"],
                    ["--size 1024", "needs about", "fewer --tiles"])  # fmt: skip


# ---- 3. what is read is verified -------------------------------------------------------------------------


def read_scheme_lost_a_class(tmp):
    ds = _dataset(tmp)
    _drop_class(ds, 80, index_too=False)
    return SafeCase(["data", "info", ds], ["index.csv", "[80]", "dataset.json"])


def read_scheme_and_index_lost_a_class(tmp):
    ds = _dataset(tmp)
    _drop_class(ds, 80, index_too=True)
    return SafeCase(["data", "info", ds, "--verify"], ["labels/", "[80]", "not in scheme"])


def read_training_refuses_unknown_codes(tmp):
    ds = _dataset(tmp)
    _drop_class(ds, 80, index_too=True)
    return SafeCase(["segment", "train", "--data", ds, "--out", tmp / "run", "--max-steps", 1], ["[80]", "not in scheme"],
                    out=tmp / "run")  # fmt: skip


def read_duplicate_index_row(tmp):
    ds = _dataset(tmp)
    lines = (ds / "index.csv").read_text().splitlines()
    (ds / "index.csv").write_text("\n".join([*lines[:3], lines[2], *lines[3:]]) + "\n")
    return SafeCase(["data", "info", ds], ["index.csv", "listed twice", "lines 3 and 4"])


def read_unknown_split(tmp):
    ds = _dataset(tmp)
    lines = (ds / "index.csv").read_text().splitlines()
    parts = lines[1].split(",")
    parts[1] = "holdout"
    (ds / "index.csv").write_text("\n".join([lines[0], ",".join(parts), *lines[2:]]) + "\n")
    return SafeCase(["data", "info", ds], ["index.csv", "'holdout'", "train"])


def read_tile_size_disagrees(tmp):
    ds = _dataset(tmp)
    _edit_meta(ds, tile_size=32)
    return SafeCase(["data", "info", ds], ["16x16", "tile_size 32"])


def read_format_version_as_text(tmp):
    ds = _dataset(tmp)
    _edit_meta(ds, format_version="1")
    return SafeCase(["data", "info", ds], ["dataset.json", "format_version", "'1'"])


def read_tile_size_as_text(tmp):
    ds = _dataset(tmp)
    _edit_meta(ds, tile_size="16")
    return SafeCase(["data", "info", ds], ["dataset.json", "tile_size", "'16'"])


def read_unknown_kind(tmp):
    ds = _dataset(tmp)
    _edit_meta(ds, kind="imaginary")
    return SafeCase(["data", "info", ds], ["dataset.json", "kind", "'imaginary'"])


def read_num_tiles_disagrees(tmp):
    ds = _dataset(tmp)
    _edit_meta(ds, num_tiles=99)
    return SafeCase(["data", "info", ds], ["num_tiles is 99", "8 tiles"])


def read_verify_counts_disagree(tmp):
    ds = _dataset(tmp)
    a, b = sorted((ds / "labels").glob("*.tif"))[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return SafeCase(["data", "info", ds, "--verify"], ["class pixel counts"])


# ---- 4. tracebacks where a user error belongs ----------------------------------------------------------


def _afile(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def user_out_is_a_file_world(tmp):
    return SafeCase(["data", "world", "--tiles", 4, "--out", _afile(tmp)], ["--out", "afile", "existing file"],
                    out=tmp / "nothing")  # fmt: skip


def user_out_is_a_file_import(tmp):
    make_pairs(tmp)
    return SafeCase(["data", "import-pairs", tmp / "img", tmp / "msk", "--out", _afile(tmp)],
                    ["--out", "afile", "existing file"], out=tmp / "nothing")  # fmt: skip


def user_out_is_a_file_segment(tmp):
    return SafeCase(["segment", "train", "--data", _dataset(tmp), "--out", _afile(tmp)],
                    ["--out", "afile", "existing file"], out=tmp / "nothing")  # fmt: skip


def user_out_is_a_file_landcover(tmp):
    return SafeCase(["landcover", "train", "--data", tmp / "d", "--out", _afile(tmp)],
                    ["--out", "afile", "existing file"], out=tmp / "nothing")  # fmt: skip


def user_out_is_a_file_synthesize(tmp):
    return SafeCase(["synthesize", "--generator", tmp / "g", "--labels", tmp / "l", "--out", _afile(tmp)],
                    ["--out", "afile", "existing file"], out=tmp / "nothing")  # fmt: skip


def user_out_is_a_dir_evaluate(tmp):
    (tmp / "adir").mkdir()
    return SafeCase(["segment", "evaluate", "--model", tmp / "r", "--data", tmp / "d", "--out", tmp / "adir"],
                    ["--out", "adir", "existing directory"], out=tmp / "nothing")  # fmt: skip


def user_negative_seed_world(tmp):
    return SafeCase(["data", "world", "--tiles", 4, "--seed", -1, "--out", tmp / "out"], ["--seed", "-1", ">= 0"])


def user_negative_seed_import(tmp):
    make_pairs(tmp)
    return SafeCase(["data", "import-pairs", tmp / "img", tmp / "msk", "--seed", -5, "--out", tmp / "out"],
                    ["--seed", "-5"])  # fmt: skip


def user_negative_seed_set(tmp):
    return SafeCase(["data", "world", "--tiles", 4, "--set", "seed=-2", "--out", tmp / "out"], ["--set", "seed", "-2"])


def user_negative_seed_config(tmp):
    (tmp / "w.yaml").write_text("seed: -7\n")
    return SafeCase(["data", "world", "--tiles", 4, "--config", tmp / "w.yaml", "--out", tmp / "out"],
                    ["w.yaml", "seed", "-7"])  # fmt: skip


def _segment_run(tmp: Path) -> Path:
    """A segmentation run directory holding an untrained UNet (weights + segmenter.json)."""
    from terrasynth.classes import WORLDCOVER
    from terrasynth.models.segmentation import build_segmenter, save_weights, segmenter_spec, write_spec

    run = tmp / "run"
    run.mkdir()
    k = WORLDCOVER.num_classes
    save_weights(build_segmenter("unet", "resnet18", 3, k), run / "best.safetensors")
    write_spec(run, segmenter_spec("unet", "resnet18", 3, k, WORLDCOVER))
    return run


def user_truncated_weights_at_evaluation(tmp):
    run = _segment_run(tmp)
    truncate(run / "best.safetensors", 0.5)
    argv = ["segment", "evaluate", "--model", run, "--data", _dataset(tmp), "--out", tmp / "m.json"]
    return SafeCase(argv, ["best.safetensors", "truncated", "bytes"], out=tmp / "m.json")


def user_segmenter_json_wrong_type(tmp):
    run = _segment_run(tmp)
    spec = json.loads((run / "segmenter.json").read_text())
    spec["in_channels"] = "three"
    (run / "segmenter.json").write_text(json.dumps(spec))
    argv = ["segment", "evaluate", "--model", run, "--data", _dataset(tmp), "--out", tmp / "m.json"]
    return SafeCase(argv, ["segmenter.json", "three"], out=tmp / "m.json")


# ---- 5. config strictness ------------------------------------------------------------------------------


def yaml_duplicate_key_config(tmp):
    make_pairs(tmp)
    (tmp / "c.yaml").write_text("tile: 16\nseed: 1\ntile: 32\n")
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--config", tmp / "c.yaml", "--out", tmp / "out"]
    return SafeCase(argv, ["c.yaml", "line 3", "'tile' appears twice", "first on line 1"])


def yaml_duplicate_nested_key(tmp):
    (tmp / "w.yaml").write_text("tiles: 4\nbiomes:\n  forest: 1.0\n  urban: 2.0\n  forest: 3.0\n")
    return SafeCase(["data", "world", "--config", tmp / "w.yaml", "--out", tmp / "out"],
                    ["w.yaml", "line 5", "'forest'", "first on line 3"])  # fmt: skip


def yaml_duplicate_key_scheme(tmp):
    make_pairs(tmp)
    (tmp / "s.yaml").write_text("name: mine\nnodata: 0\nclasses:\n  - {code: 10, name: a, colour: '#ff0000'}\n"
                                "name: other\n")  # fmt: skip
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--scheme", tmp / "s.yaml", "--out", tmp / "out"]
    return SafeCase(argv, ["s.yaml", "line 5", "'name'"])


# ---- 7. what a band means --------------------------------------------------------------------------------


def bands_beyond_the_image(tmp):
    make_pairs(tmp)
    argv = ["data", "import-pairs", tmp / "img", tmp / "msk", "--tile", 16, "--bands", "4,1,1", "--out", tmp / "out"]
    return SafeCase(argv, ["--bands 4,1,1", "3 band(s)"])


def bands_not_three(tmp):
    make_pairs(tmp)
    return SafeCase(["data", "import-pairs", tmp / "img", tmp / "msk", "--bands", "1,2", "--out", tmp / "out"],
                    ["--bands", "'1,2'"])  # fmt: skip


PREFIXES = ("over_", "size_", "read_", "user_", "yaml_", "bands_")
CASES = [v for k, v in dict(globals()).items() if k.startswith(PREFIXES) and callable(v)]
# Cases whose command imports torch in the subprocess (5-8 s each here): one per class by default.
SLOW = {"user_segmenter_json_wrong_type"}


def _params():
    for fn in CASES:
        yield pytest.param(fn, id=fn.__name__, marks=[pytest.mark.slow] if fn.__name__ in SLOW else [])


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    chosen = [it.callspec.params["make_case"] for it in request.session.items
              if getattr(it, "originalname", "") == "test_bad_input_second_round"]  # fmt: skip

    def run(fn):
        tmp = tmp_path_factory.mktemp(fn.__name__)
        case = fn(tmp)
        # torch-importing commands take 5-8 s alone but minutes on a saturated shared machine
        return tmp, case, cli(*case.argv, runner=case.runner, timeout=600)

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {fn.__name__: pool.submit(run, fn) for fn in chosen}


@pytest.mark.parametrize("make_case", list(_params()))
def test_bad_input_second_round(make_case, results):
    tmp_path, case, res = results[make_case.__name__].result()
    assert_user_error(res, *case.needles)
    if case.check is not None:
        case.check()
    elif case.argv[:2] != ["data", "info"]:
        assert_no_partial_output(case.out or tmp_path / "out", strict=case.strict)


# ---- behaviour that is not an error -------------------------------------------------------------------------


def test_overwrite_keeps_what_terrasynth_did_not_write_and_says_what_it_removes(tmp_path):
    out = tmp_path / "ds"
    assert cli("data", "world", "--tiles", 4, "--size", 16, "--out", out).rc == 0
    (out / "notes.txt").write_text("my notes")
    (out / "analysis").mkdir()
    (out / "analysis" / "a.csv").write_text("x\n")
    res = cli("data", "world", "--tiles", 6, "--size", 16, "--seed", 1, "--out", out, "--overwrite")
    assert res.rc == 0, res.stderr
    assert (out / "notes.txt").read_text() == "my notes" and (out / "analysis" / "a.csv").exists()
    assert "removing" in res.stderr and "8 tile file(s)" in res.stderr and "dataset.json" in res.stderr
    assert "keeping 2 entries" in res.stderr and "notes.txt" in res.stderr
    from terrasynth.data.dataset import Dataset

    ds = Dataset.open(out)
    assert len(ds) == 6 and ds.verify() == []


def test_an_unfinished_dataset_is_overwritten_including_tiles_its_journal_never_named(tmp_path):
    from terrasynth.classes import WORLDCOVER
    from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance

    info = DatasetInfo(name="x", kind="real", scheme=WORLDCOVER, tile_size=8, has_images=False,
                       provenance=provenance("t", config_hash="a"))  # fmt: skip
    w = DatasetWriter(tmp_path / "ds", info)
    w.write("t0", "train", np.full((8, 8), 10, np.uint8))
    w.close()
    # A kill after a tile's rename but before its journal line: the tile is ours all the same.
    (tmp_path / "ds" / "labels" / "t1.tif").write_bytes((tmp_path / "ds" / "labels" / "t0.tif").read_bytes())
    info.provenance["config_hash"] = "b"
    with DatasetWriter(tmp_path / "ds", info, overwrite=True) as w2:
        w2.write("u0", "train", np.full((8, 8), 20, np.uint8))
        ds = w2.finalize()
    assert [r.id for r in ds.records] == ["u0"] and ds.verify() == []


def _grey_pairs(root: Path, bands: int) -> None:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir()
    for i in range(2):
        px = rng.integers(0, 256, (32, 32) if bands == 1 else (32, 32, 2), dtype=np.uint8)
        Image.fromarray(px, mode="L" if bands == 1 else "LA").save(root / "img" / f"p{i}.png")
        Image.fromarray(rng.choice(np.array([10, 30], np.uint8), (32, 32))).save(root / "msk" / f"p{i}.png")


@pytest.mark.parametrize("bands", [1, 2])
def test_one_and_two_band_images_warn_once_and_bands_says_what_they_mean(tmp_path, bands):
    _grey_pairs(tmp_path, bands)
    res = cli("data", "import-pairs", tmp_path / "img", tmp_path / "msk", "--tile", 16, "--out", tmp_path / "a")
    assert res.rc == 0, res.stderr
    warnings = [ln for ln in res.stderr_lines if "band 1 is copied into R, G and B" in ln]
    assert len(warnings) == 1 and "2 of 2 image(s)" in warnings[0] and "--bands 1,1,1" in warnings[0]
    res = cli("data", "import-pairs", tmp_path / "img", tmp_path / "msk", "--tile", 16, "--bands", "1,1,1",
              "--out", tmp_path / "b")  # fmt: skip
    assert res.rc == 0 and res.stderr_lines == [], res.stderr
    from terrasynth.data.dataset import Dataset

    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    ra, rb = a.records[0], b.records[0]
    assert np.array_equal(a.read_image(ra), b.read_image(rb))  # same bytes, now said out loud
    img = a.read_image(ra)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_rgb_images_do_not_warn_and_bands_reorders_them(tmp_path):
    make_pairs(tmp_path, n=2, size=32)
    res = cli("data", "import-pairs", tmp_path / "img", tmp_path / "msk", "--tile", 16, "--out", tmp_path / "a")
    assert res.rc == 0 and res.stderr_lines == [], res.stderr
    res = cli("data", "import-pairs", tmp_path / "img", tmp_path / "msk", "--tile", 16, "--bands", "3,2,1",
              "--out", tmp_path / "b")  # fmt: skip
    assert res.rc == 0, res.stderr
    from terrasynth.data.dataset import Dataset

    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    assert np.array_equal(a.read_image(a.records[0])[..., ::-1], b.read_image(b.records[0]))


# ---- 6. signals ------------------------------------------------------------------------------------------


def _start(argv: list[object], quiet: bool) -> subprocess.Popen:
    e = env()
    e.pop("TQDM_DISABLE")  # the bars must be live for the "no bar after the line" check
    head = [sys.executable, str(RUNNER)]
    # A shell starts background jobs with SIGINT ignored, and a child inherits that (Python then installs
    # no KeyboardInterrupt handler): give the child the default disposition, as a terminal user's has.
    return subprocess.Popen([*head, *(["-q"] if quiet else []), *map(str, argv)], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _wait_for_tiles(out: Path, n: int, p: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        journal = out / ".journal.jsonl"
        if journal.exists() and journal.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{out}: fewer than {n} tiles journaled before the signal (rc {p.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_with_one_line_no_bar_after_it_no_temp_files_and_the_same_resume(tmp_path, sig):
    argv = ["data", "world", "--tiles", 160, "--size", 32, "--out", tmp_path / "w"]
    p = _start(argv, quiet=False)
    _wait_for_tiles(tmp_path / "w", 8, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "Traceback" not in err
    tail = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert tail.startswith("terrasynth: ") and "run the same command again to resume" in tail, err[-500:]
    assert err.rstrip("\n").endswith(tail) and "\r" not in tail  # nothing (no bar redraw) after the line
    assert not list((tmp_path / "w").rglob(".tmp-*"))
    assert not (tmp_path / "w" / "dataset.json").exists()
    assert cli(*argv).rc == 0
    assert cli("data", "world", "--tiles", 160, "--size", 32, "--out", tmp_path / "ref").rc == 0
    assert sha_tree(tmp_path / "w") == sha_tree(tmp_path / "ref")


# ---- 8. CPU threads ------------------------------------------------------------------------------------------


def test_thread_policy_is_set_before_torch_loads_and_respects_the_user(tmp_path):
    code = ("import os, sys; from terrasynth.threads import configure_threads; configure_threads(); "
            "import torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())")  # fmt: skip
    e = {k: v for k, v in env().items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.split()
    from terrasynth.threads import cpu_budget

    assert out[0] == "PASSIVE" and int(out[1]) == cpu_budget()
    e.update(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ACTIVE", "1"]
