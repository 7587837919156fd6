"""Property-based tests (hypothesis): the dataset index always matches the files on disk after any
sequence of writes, kills and resumes; remaps are total and consistent; pair-import tiling covers
the raster exactly with the stated stride and drop rule.

Acquire's tiling and label reprojection have their own properties in tests/test_geo_tiling.py and
tests/test_geo_reproject.py (referenced in docs/reliability.md, not repeated here).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import terrasynth.data.dataset as dsmod
import terrasynth.io as iomod
from terrasynth.classes import WORLDCOVER, Remap, load_remap, load_scheme, shipped_remaps
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.importers import tile_origins
from terrasynth.errors import UserError

CODES = np.array(WORLDCOVER.codes + [0], np.uint8)


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException no ``except Exception`` swallows."""


def _tile(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.choice(CODES, (8, 8)), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _session(root: Path, n: int, kill_at: int | None, info: DatasetInfo) -> bool:
    """One run of a writer over tiles 0..n-1; killed at its ``kill_at``-th atomic commit. True if finished.

    A kill leaves what SIGKILL would: a half-written ``.tmp-*`` beside the target and no cleanup.
    """
    real = iomod.write_bytes_atomic
    count = [0]

    def commit(path, data):
        count[0] += 1
        if count[0] == kill_at:
            (Path(path).parent / f"{iomod.TMP_PREFIX}{Path(path).stem}-x").write_bytes(data[: len(data) // 2])
            raise Killed
        real(path, data)

    iomod.write_bytes_atomic, dsmod.write_bytes_atomic = commit, commit
    try:
        with DatasetWriter(root, info) as w:
            for i in range(n):
                if not w.has(f"t{i}"):
                    lab, img = _tile(i)
                    w.write(f"t{i}", "train" if i % 3 else "test", lab, img, source=f"s{i}")
            w.finalize()
        return True
    except Killed:
        return False
    finally:
        iomod.write_bytes_atomic, dsmod.write_bytes_atomic = real, real


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 6),
    kills=st.lists(st.integers(1, 16), max_size=4),
    torn_journal=st.booleans(),
)
def test_index_matches_disk_after_any_writes_kills_and_resumes(n, kills, torn_journal):
    info = DatasetInfo(name="p", kind="real", scheme=WORLDCOVER, tile_size=8, provenance=provenance("t", config_hash="h"))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ds"
        for k in kills:
            if _session(root, n, k, info):
                break
            with pytest.raises(UserError):  # an unfinished dataset is never readable
                Dataset.open(root)
            journals = list(root.glob(".journal*.jsonl"))
            if torn_journal and journals:  # a kill in the middle of a journal line
                with journals[0].open("a") as f:
                    f.write('{"id": "t0", "spl')
        assert _session(root, n, None, info) or (root / "dataset.json").exists()
        ds = Dataset.open(root)
        assert ds.verify() == []
        assert sorted(r.id for r in ds.records) == sorted(f"t{i}" for i in range(n))
        for r in ds.records:  # the bytes are those of the tile, whatever run wrote them
            lab, img = _tile(int(r.id[1:]))
            assert (ds.read_label(r) == lab).all() and (ds.read_image(r) == img).all()
            assert r.counts == {c: int((lab == c).sum()) for c in WORLDCOVER.codes}
        assert not list(root.rglob(".tmp-*")) and not list(root.glob(".journal*")) and not (root / ".partial.json").exists()


# ---- remaps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_remaps())
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_shipped_remaps_are_total_and_land_in_the_target(name, data):
    remap = load_remap(name)
    src = sorted(remap.source.valid_codes())
    assert set(remap.mapping) == set(src)  # total: every source code, nodata included
    arr = np.array(data.draw(st.lists(st.sampled_from(src), min_size=1, max_size=64)), np.uint8)
    out = remap.apply(arr, "x")
    assert set(np.unique(out).tolist()) <= remap.target.valid_codes()
    assert (out == np.array([remap.mapping[int(v)] for v in arr], np.uint8)).all()  # elementwise, no mixing
    if remap.source.nodata is not None and remap.target.nodata is not None:
        assert remap.mapping[remap.source.nodata] == remap.target.nodata  # nodata stays nodata
    identity_src = Remap(remap.source, remap.source, {c: c for c in src})
    identity_tgt = Remap(remap.target, remap.target, {c: c for c in remap.target.valid_codes()})
    assert (remap.apply(identity_src.apply(arr, "x"), "x") == out).all()
    assert (identity_tgt.apply(out, "x") == out).all()


@settings(max_examples=30, deadline=None)
@given(scheme=st.sampled_from(["dronedeploy", "loveda", "flair", "worldcover"]), data=st.data())
def test_a_partial_or_outside_remap_is_refused(scheme, data):
    src = load_scheme(scheme)
    codes = sorted(src.valid_codes())
    drop = data.draw(st.sampled_from(codes))
    mapping = {c: 10 for c in codes if c != drop}
    with pytest.raises(UserError, match="not mapped"):
        Remap(src, WORLDCOVER, mapping)
    bad = data.draw(st.integers(0, 254).filter(lambda v: v not in WORLDCOVER.valid_codes()))
    with pytest.raises(UserError, match="not in scheme"):
        Remap(src, WORLDCOVER, {c: bad for c in codes})
    # Codes a mask holds outside the source scheme are an error, never silently mapped to 255.
    unknown = data.draw(st.integers(0, 254).filter(lambda v: v not in src.valid_codes()))
    full = Remap(src, WORLDCOVER, {c: 10 for c in codes})
    with pytest.raises(UserError, match=str(unknown)):
        full.apply(np.array([codes[0], unknown], np.uint8), "m.png")


# ---- pair-import tiling ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(w=st.integers(1, 200), h=st.integers(1, 200), tile=st.integers(8, 64), step=st.integers(1, 80))
def test_import_tiling_is_the_stride_grid_minus_tiles_that_do_not_fit(w, h, tile, step):
    got = tile_origins(w, h, tile, step)
    expect = [(0, r, c) for r in range(0, h - tile + 1, step) for c in range(0, w - tile + 1, step)]
    assert got == expect  # every origin on the stride grid, none that would cross the edge
    if got and step <= tile:  # no gaps: covered rows/cols are contiguous and the uncovered strip < step
        cover = np.zeros((h, w), bool)
        for _, r, c in got:
            cover[r : r + tile, c : c + tile] = True
        rows, cols = cover.any(1), cover.any(0)
        assert rows[: rows.sum()].all() and cols[: cols.sum()].all()
        assert h - rows.sum() < step and w - cols.sum() < step


@settings(max_examples=40, deadline=None)
@given(w=st.integers(8, 160), h=st.integers(8, 160), tile=st.integers(8, 32), step=st.integers(4, 40),
       block=st.integers(8, 64))  # fmt: skip
def test_import_block_tiling_keeps_every_tile_inside_one_block(w, h, tile, step, block):
    if block < tile:
        return  # refused by PairImportConfig
    nbx = -(-w // block)
    seen = set()
    for b, r, c in tile_origins(w, h, tile, step, block):
        br, bc = divmod(b, nbx)
        assert br * block <= r and r + tile <= min((br + 1) * block, h)
        assert bc * block <= c and c + tile <= min((bc + 1) * block, w)
        assert (r - br * block) % step == 0 and (c - bc * block) % step == 0  # the stride restarts per block
        assert (r, c) not in seen
        seen.add((r, c))


def test_a_shard_writer_pickles_to_a_worker_and_its_tiles_reach_the_index(tmp_path):
    """acquire --workers sends shard writers to worker processes; a lock or open file must not stop it."""
    import pickle

    info = DatasetInfo(name="p", kind="real", scheme=WORLDCOVER, tile_size=8, provenance=provenance("t", config_hash="h"))
    main = DatasetWriter(tmp_path / "ds", info, shard=0)
    lab, img = _tile(0)
    main.write("t0", "train", lab, img)
    shard = pickle.loads(pickle.dumps(DatasetWriter(tmp_path / "ds", info, shard=1)))
    lab1, img1 = _tile(1)
    shard.write("t1", "train", lab1, img1)
    shard.close()
    ds = DatasetWriter(tmp_path / "ds", info, shard=0).finalize()
    assert sorted(r.id for r in ds.records) == ["t0", "t1"] and ds.verify() == []
