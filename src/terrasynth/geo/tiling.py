"""Tiling a pixel grid into N x N windows, and spatial-block train/val/test splits.

Tiles are laid out with a stride along each axis. The edge rule says what happens to the
last, incomplete tile of a row or column: ``drop`` leaves it out (every tile lies inside
the raster; a margin narrower than the stride may stay uncovered), ``shift`` moves it back
so that it ends exactly at the edge (the whole raster is covered; the last tile overlaps
its neighbour more than the stride says).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np

EdgeRule = Literal["drop", "shift"]
SPLIT_NAMES = ("train", "val", "test")
METRES_PER_DEGREE = 111_320.0  # along a meridian; converts block sizes to the lon/lat block grid


def tile_offsets(size: int, tile: int, stride: int, edge: EdgeRule = "drop") -> list[int]:
    """Start offsets of tiles of length ``tile`` along an axis of ``size`` pixels."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive, got {tile}, {stride}")
    if size < tile:
        return []
    offs = list(range(0, size - tile + 1, stride))
    if edge == "shift" and offs[-1] + tile < size:
        offs.append(size - tile)
    return offs


@dataclass(frozen=True)
class TileChunk:
    """A rectangle of tiles read together: ``rows`` x ``cols`` offsets (pixels) in the grid."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]
    tile: int

    @property
    def row_off(self) -> int:
        return self.rows[0]

    @property
    def col_off(self) -> int:
        return self.cols[0]

    @property
    def height(self) -> int:
        return self.rows[-1] + self.tile - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[-1] + self.tile - self.cols[0]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def tile_chunks(
    height: int, width: int, tile: int, stride: int, edge: EdgeRule = "drop", chunk_px: int = 2048
) -> list[TileChunk]:
    """Group the tiles of a ``height`` x ``width`` grid into chunks about ``chunk_px`` wide.

    A chunk is read in one go and cut into tiles in memory, so a source is touched a few
    times per chunk instead of once per tile, and memory stays bounded by the chunk size.
    """
    rows, cols = tile_offsets(height, tile, stride, edge), tile_offsets(width, tile, stride, edge)
    per = max(1, chunk_px // stride)
    return [
        TileChunk(tuple(rows[i : i + per]), tuple(cols[j : j + per]), tile)
        for i in range(0, len(rows), per)
        for j in range(0, len(cols), per)
    ]


def iter_tiles(chunk: TileChunk) -> Iterator[tuple[int, int, slice, slice]]:
    """(row_off, col_off, row slice, col slice) of each tile, slices relative to the chunk."""
    for r in chunk.rows:
        for c in chunk.cols:
            rs, cs = r - chunk.row_off, c - chunk.col_off
            yield r, c, slice(rs, rs + chunk.tile), slice(cs, cs + chunk.tile)


class SpatialBlocks:
    """Train/val/test by spatial blocks: square cells of a global lon/lat grid.

    Each block belongs to one split and a tile is kept only when it lies wholly inside
    one block, so no tile of one split touches another split's block, even across UTM
    zones. ``block_deg`` is the block side in degrees. :meth:`fit` ranks the blocks that
    hold tiles by a seeded hash and deals them out in the split fractions (so small areas
    still get every split); blocks not seen by ``fit`` fall back to the seeded hash alone.
    """

    def __init__(
        self, block_deg: float, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
        origin: tuple[float, float] = (-180.0, -90.0),
    ):  # fmt: skip
        if block_deg <= 0:
            raise ValueError(f"block size must be positive, got {block_deg}")
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
        self.block_deg = block_deg
        self.fractions = tuple(fractions)
        self.cuts = np.cumsum(fractions)
        self.seed = seed
        self.origin = origin  # lon, lat of a block corner
        self.table: dict[tuple[int, int], str] = {}

    def _u(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # in block units, rounded so that an edge lying on a block edge is not split by float noise
        return (np.round((np.asarray(lon, np.float64) - self.origin[0]) / self.block_deg, 9),
                np.round((np.asarray(lat, np.float64) - self.origin[1]) / self.block_deg, 9))  # fmt: skip

    def cell(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The block holding each point (a point on a block edge belongs to the block above/right)."""
        u, v = self._u(lon, lat)
        return np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)

    def _hash(self, bx: int, by: int) -> float:
        h = hashlib.blake2b(f"{self.seed}:{bx}:{by}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64

    def fit(self, cells: set[tuple[int, int]]) -> "SpatialBlocks":
        """Deal ``cells`` out to val, test, then train in the split fractions (seeded order)."""
        ranked = sorted(cells, key=lambda c: self._hash(*c))
        n = len(ranked)
        n_val = round(n * self.fractions[1])
        n_test = round(n * self.fractions[2])
        if n >= 3:  # every split with a non-zero fraction gets at least one block
            n_val = max(n_val, 1 if self.fractions[1] > 0 else 0)
            n_test = max(n_test, 1 if self.fractions[2] > 0 else 0)
        labels = ["val"] * n_val + ["test"] * n_test
        self.table = {c: (labels[i] if i < len(labels) else "train") for i, c in enumerate(ranked)}
        return self

    def split_of_cell(self, bx: int, by: int) -> str:
        if (bx, by) in self.table:
            return self.table[(bx, by)]
        return SPLIT_NAMES[int(min(np.searchsorted(self.cuts, self._hash(bx, by), side="right"), 2))]

    def cells(self, west, south, east, north) -> list[tuple[int, int] | None]:
        """The block of each tile given its lon/lat bounds; None for tiles that cross a block edge.

        A tile may touch its block's edges (its east/north edge on a block edge stays inside)."""
        x0, y0 = self.cell(west, south)
        u1, v1 = self._u(east, north)
        x1, y1 = np.ceil(u1).astype(np.int64) - 1, np.ceil(v1).astype(np.int64) - 1
        return [(int(a), int(b)) if a == c and b == d else None for a, b, c, d in zip(x0, y0, x1, y1)]

    def assign(self, west, south, east, north) -> list[str | None]:
        """Split of each tile given its lon/lat bounds; None for tiles that cross a block edge."""
        return [None if c is None else self.split_of_cell(*c) for c in self.cells(west, south, east, north)]
