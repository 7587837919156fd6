"""Interruption: SIGKILL a command at random points, rerun it, and get exactly what an uninterrupted run
gives (sha256 of every tile and of index.csv).

Kills are real SIGKILLs of a subprocess (no cleanup code runs). Most land at the N-th
``os.replace`` (the commit point of every atomic write; ``reliability_runner``), before or after the
rename, with N drawn from a seeded RNG over the whole run, so every phase gets hit: config,
partial marker, each image/label tile, index, dataset.json. One more kill lands at a random time.
Training resume is covered by each trainer's own tests (see docs/reliability.md).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from reliability_gen import make_run
from reliability_util import cli, make_pairs, run_and_kill, sha_tree

RNG = random.Random(9)


def _count_replaces(args: list[object], tmp: Path) -> int:
    """How many atomic commits a full run makes (kill point N = count + 1 never fires)."""
    import os

    import terrasynth.cli as cli_mod

    n, real = [0], os.replace

    def counting(*a, **k):
        n[0] += 1
        return real(*a, **k)

    os.replace = counting
    try:
        assert cli_mod.main(["-q", *map(str, args)]) == 0
    finally:
        os.replace = real
    return n[0]


def _kill_rerun_compare(args_for, ref: Path, kills: list[tuple[int, str]], runner_env=None) -> None:
    out = args_for("out")
    for n, when in kills:
        rc = run_and_kill(out[0], 0, runner=True, TS_KILL_AT_REPLACE=str(n), TS_KILL_WHEN=when)
        assert rc == -9, f"kill at replace {n} ({when}) did not fire (rc {rc})"
    final = cli(*out[0], runner=True)
    assert final.rc == 0, final.stderr
    assert sha_tree(out[1]) == sha_tree(ref)
    assert not list(out[1].rglob(".tmp-*")) and not list(out[1].glob(".journal*"))


@pytest.fixture
def pairs(tmp_path):
    return make_pairs(tmp_path, n=3)


def _import_args(img, msk, out):
    return ["data", "import-pairs", img, msk, "--tile", 16, "--stride", 12, "--out", out]


@pytest.mark.parametrize("seed", [0, *[pytest.param(s, marks=pytest.mark.slow) for s in range(1, 9)]])
def test_import_killed_at_random_commits_resumes_to_identical_dataset(pairs, tmp_path, seed):
    img, msk = pairs
    ref = tmp_path / "ref"
    total = _count_replaces(_import_args(img, msk, ref), tmp_path)
    assert total > 20  # config, partial marker, 2 files per tile, index, dataset.json
    rng = random.Random(seed)  # one or two kills at random commits, then a run to completion
    kills = sorted((rng.randint(1, total), rng.choice(["before", "after"])) for _ in range(1 + seed % 2 + (seed == 0)))
    out = tmp_path / "out"
    _kill_rerun_compare(lambda _: (_import_args(img, msk, out), out), ref, kills)


def test_import_killed_at_a_random_time_resumes(tmp_path):
    img, msk = make_pairs(tmp_path / "big", n=6, size=64)
    ref = tmp_path / "ref"
    assert cli(*_import_args(img, msk, ref)).rc == 0
    out = tmp_path / "out"
    run_and_kill(_import_args(img, msk, out), after_s=RNG.uniform(0.4, 1.2))
    r = cli(*_import_args(img, msk, out))
    assert r.rc == 0, r.stderr
    assert sha_tree(out) == sha_tree(ref)


def _acquire_args(cog, out):
    return ["data", "acquire", "--product", "landcover", "--landcover", cog, "--tile", 16, "--stride", 16,
            "--gsd", "native", "--block-size", 200, "--out", out]  # fmt: skip


@pytest.fixture
def worldcover_cog(tmp_path):
    from geo_fixtures import write_cog

    rng = np.random.default_rng(3)
    codes = rng.choice(np.array([0, 10, 30, 50, 80], np.uint8), (12, 12)).repeat(8, 0).repeat(8, 1)
    return write_cog(tmp_path / "wc.tif", codes[None], "EPSG:4326", from_origin(6.5, 0.4, 1 / 12000, 1 / 12000),
                     nodata=0)  # fmt: skip


def test_acquire_killed_at_random_commits_resumes_to_identical_dataset(worldcover_cog, tmp_path):
    ref = tmp_path / "ref"
    total = _count_replaces(_acquire_args(worldcover_cog, ref), tmp_path)
    out = tmp_path / "out"
    kills = sorted((RNG.randint(1, total), RNG.choice(["before", "after"])) for _ in range(2))
    _kill_rerun_compare(lambda _: (_acquire_args(worldcover_cog, out), out), ref, kills)


@pytest.mark.slow
def test_synthesize_sigkilled_resumes_to_identical_images(pairs, tmp_path):
    img, msk = pairs
    labels = tmp_path / "labels"
    assert cli(*_import_args(img, msk, labels)).rc == 0
    gen = make_run(tmp_path / "gen")
    args = lambda out: ["synthesize", "--generator", gen, "--labels", labels, "--out", out, "--seed", 4,
                        "--batch-size", 5]  # fmt: skip
    ref = cli(*args(tmp_path / "ref"), runner=True)
    assert ref.rc == 0, ref.stderr
    out = tmp_path / "out"
    n = RNG.randint(4, 30)  # inside the tile phase (2 commits per tile, 27 tiles)
    _kill_rerun_compare(lambda _: (args(out), out), tmp_path / "ref", [(n, RNG.choice(["before", "after"]))])


def test_world_killed_at_random_commits_resumes_to_identical_dataset(tmp_path):
    args = lambda out: ["data", "world", "--tiles", 10, "--size", 32, "--seed", 2, "--out", out]  # noqa: E731
    ref = tmp_path / "ref"
    total = _count_replaces(args(ref), tmp_path)
    out = tmp_path / "out"
    kills = sorted((RNG.randint(1, total), RNG.choice(["before", "after"])) for _ in range(2))
    _kill_rerun_compare(lambda _: (args(out), out), ref, kills)
