"""Tiling covers the raster with the stated stride and edge rule; split blocks never mix."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from terrasynth.geo.tiling import SpatialBlocks, iter_tiles, tile_chunks, tile_offsets

sizes = st.integers(1, 300)
tiles = st.integers(1, 64)


@given(size=sizes, tile=tiles, stride=st.integers(1, 80))
def test_drop_rule_keeps_whole_tiles_at_the_stride(size, tile, stride):
    offs = tile_offsets(size, tile, stride, "drop")
    assert offs == list(range(0, size - tile + 1, stride)) if size >= tile else offs == []
    assert all(o + tile <= size for o in offs)
    if offs and stride <= tile:  # contiguous coverage up to the last tile; what is left is < stride
        assert size - (offs[-1] + tile) < stride


@given(size=sizes, tile=tiles, stride=st.integers(1, 64))
def test_shift_rule_covers_every_pixel(size, tile, stride):
    stride = min(stride, tile)  # a stride longer than the tile leaves gaps by design
    offs = tile_offsets(size, tile, stride, "shift")
    if size < tile:
        assert offs == []
        return
    covered = np.zeros(size, bool)
    for o in offs:
        assert 0 <= o and o + tile <= size
        covered[o : o + tile] = True
    assert covered.all()
    assert offs == sorted(set(offs)) and all(b - a <= stride for a, b in zip(offs, offs[1:]))


@settings(max_examples=60)
@given(h=st.integers(1, 200), w=st.integers(1, 200), tile=st.integers(1, 40), stride=st.integers(1, 40),
       chunk=st.integers(1, 150), edge=st.sampled_from(["drop", "shift"]))  # fmt: skip
def test_chunks_hold_every_tile_exactly_once(h, w, tile, stride, chunk, edge):
    expect = {(r, c) for r in tile_offsets(h, tile, stride, edge) for c in tile_offsets(w, tile, stride, edge)}
    got = []
    for ch in tile_chunks(h, w, tile, stride, edge, chunk_px=chunk):
        assert ch.row_off + ch.height <= h and ch.col_off + ch.width <= w
        for r, c, rs, cs in iter_tiles(ch):
            assert rs.stop - rs.start == tile and cs.stop - cs.start == tile
            assert (rs.start + ch.row_off, cs.start + ch.col_off) == (r, c)
            got.append((r, c))
    assert sorted(got) == sorted(expect)


@given(west=st.floats(-179, 178), south=st.floats(-89, 88), size=st.floats(1e-4, 0.5),
       block=st.floats(1e-3, 1.0), seed=st.integers(0, 5))  # fmt: skip
def test_a_kept_tile_lies_in_exactly_one_block_and_blocks_have_one_split(west, south, size, block, seed):
    b = SpatialBlocks(block, seed=seed)
    (cell,) = b.cells([west], [south], [west + size], [south + size])
    x0, y0 = b.cell(np.array([west]), np.array([south]))
    x1, y1 = b.cell(np.array([west + size]), np.array([south + size]))
    if cell is not None:
        assert size <= block + 1e-9
        lo = np.array(b.origin) + np.array(cell) * block
        assert lo[0] - 1e-6 <= west and west + size <= lo[0] + block + 1e-6
    else:
        assert (x0[0], y0[0]) != (x1[0], y1[0])
    assert b.split_of_cell(3, 4) == b.split_of_cell(3, 4) in ("train", "val", "test")


def test_fit_deals_blocks_in_proportion_and_gives_every_split_one():
    cells = {(i, j) for i in range(10) for j in range(10)}
    b = SpatialBlocks(0.1, (0.8, 0.1, 0.1), seed=1).fit(cells)
    counts = {s: sum(v == s for v in b.table.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 10, "test": 10}
    small = SpatialBlocks(0.1, (0.8, 0.1, 0.1), seed=1).fit({(0, 0), (0, 1), (1, 0)})
    assert sorted(small.table.values()) == ["test", "train", "val"]
    again = SpatialBlocks(0.1, (0.8, 0.1, 0.1), seed=1).fit(cells)
    assert again.table == b.table  # seeded: the same blocks every run
