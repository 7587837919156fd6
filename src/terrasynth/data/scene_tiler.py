"""Cutting one scene into filtered, split, aligned tiles, a chunk at a time.

A :class:`Scene` is one output pixel grid (a NAIP scene's UTM grid, or a land-cover grid)
plus the rasters read onto it: optional imagery (RGB bands) and land-cover labels
(a mosaic: the first source with data wins). Workers call :func:`cut_chunk`; it reads a
chunk of tiles at once, so memory is bounded by the chunk, never by the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points

from terrasynth.classes import Remap
from terrasynth.errors import UserError
from terrasynth.geo.read import RasterCache
from terrasynth.geo.reproject import Grid, read_onto_grid
from terrasynth.geo.tiling import SpatialBlocks, TileChunk, iter_tiles

NODATA = 0  # WorldCover's nodata code, and the fill of imagery outside a scene


@dataclass(frozen=True)
class Scene:
    """One output grid and what is read onto it. ``name`` prefixes tile ids."""

    name: str
    grid: Grid
    labels: tuple[str, ...]  # land-cover hrefs overlapping the grid, in priority order
    image: str | None = None  # imagery href (RGB = ``image_bands``)
    image_bands: tuple[int, ...] = (1, 2, 3)
    id_origin: tuple[int, int] = (0, 0)  # (row, col) of the grid's origin on its lattice; makes ids global
    # grids (bounds in this CRS) of earlier scenes on the same tile lattice: a tile lying wholly
    # inside one of them is that scene's (adjacent NAIP scenes overlap), so it is made once
    owned_by: tuple[tuple[float, float, float, float], ...] = ()
    # the area's polygon (prepared shapely geometry, EPSG:4326) when the user gave one: tiles
    # whose centre lies outside are dropped (a bbox area needs no clip: the grid is cut to it)
    clip: Any = field(default=None, compare=False, repr=False)

    def owned_elsewhere(self, left: float, top: float, size: float) -> bool:
        return any(b[0] <= left and left + size <= b[2] and b[1] <= top - size and top <= b[3] for b in self.owned_by)


@dataclass(frozen=True)
class TileFilter:
    """Which tiles are kept. Fractions are of all tile pixels.

    ``max_class`` / ``min_class`` map a group of codes to a bound on their summed share,
    e.g. ``{(80,): 0.5}`` in ``max_class`` drops tiles that are more than half water.
    """

    max_nodata: float = 0.0
    max_class: dict[tuple[int, ...], float] = field(default_factory=dict)
    min_class: dict[tuple[int, ...], float] = field(default_factory=dict)

    def reason(self, counts: np.ndarray, npix: int) -> str | None:
        """Why a tile with per-code ``counts`` (256,) is dropped, or None to keep it."""
        if counts[NODATA] / npix > self.max_nodata:
            return "nodata"
        for codes, hi in self.max_class.items():
            if counts[list(codes)].sum() / npix > hi:
                return "class_fraction"
        for codes, lo in self.min_class.items():
            if counts[list(codes)].sum() / npix < lo:
                return "class_fraction"
        return None


@dataclass
class Tile:
    id: str
    split: str
    label: np.ndarray  # (H, W) uint8 codes
    image: np.ndarray | None  # (H, W, 3) uint8
    transform: Affine


@dataclass
class ChunkResult:
    scene: int
    tiles: list[Tile]  # kept tiles (empty when a worker wrote them itself: see ``written``)
    candidates: int
    dropped: dict[str, int]
    written: int = 0  # kept tiles a worker wrote through its own shard writer


def lonlat_bounds(grid: Grid, rows: list[int], cols: list[int], tile: int) -> tuple[np.ndarray, ...]:
    """(west, south, east, north) arrays in EPSG:4326 of tiles at pixel offsets (rows[i], cols[i])."""
    r = np.asarray(rows, dtype=np.float64)[:, None] + np.array([0, 0, 0, 0.5, 0.5, 1, 1, 1]) * tile
    c = np.asarray(cols, dtype=np.float64)[:, None] + np.array([0, 0.5, 1, 0, 1, 0, 0.5, 1]) * tile
    t = grid.transform
    xs, ys = t.c + t.a * c, t.f + t.e * r
    if grid.crs != CRS.from_epsg(4326):
        lon, lat = transform_points(grid.crs, "EPSG:4326", xs.ravel(), ys.ravel())
        xs, ys = np.asarray(lon).reshape(xs.shape), np.asarray(lat).reshape(ys.shape)
    return xs.min(1), ys.min(1), xs.max(1), ys.max(1)


def lonlat_centres(grid: Grid, rows: list[int], cols: list[int], tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) arrays in EPSG:4326 of the centres of tiles at pixel offsets (rows[i], cols[i])."""
    t = grid.transform
    xs = t.c + t.a * (np.asarray(cols, dtype=np.float64) + tile / 2)
    ys = t.f + t.e * (np.asarray(rows, dtype=np.float64) + tile / 2)
    if grid.crs != CRS.from_epsg(4326):
        lon, lat = transform_points(grid.crs, "EPSG:4326", xs, ys)
        return np.asarray(lon), np.asarray(lat)
    return xs, ys


def check_label_values(href: str, values: np.ndarray) -> None:
    """Land-cover pixels must be whole codes 0..255: the uint8 cast below would otherwise turn 30.5
    into 30 and 266 into 10 without a word."""
    if values.size == 0 or values.dtype == np.uint8:
        return
    bad = values[(values != np.round(values)) | (values < 0) | (values > 255)] if values.dtype.kind == "f" else (
        values[(values < 0) | (values > 255)])  # fmt: skip
    if bad.size:
        raise UserError(f"{href}: land-cover value {bad.flat[0].item()!r} ({values.dtype}) is not a class code 0..255; "
                        "pass the integer-coded map (e.g. uint8 ESA WorldCover)")  # fmt: skip


def read_labels(cache: RasterCache, hrefs: tuple[str, ...], grid: Grid, remap: Remap | None = None) -> np.ndarray:
    """(H, W) uint8 WorldCover codes on ``grid``: a mosaic of ``hrefs`` (the first with data
    wins), mapped through ``remap`` when the sources use another scheme; nodata 0."""
    out = np.zeros((grid.height, grid.width), np.uint8)
    todo = np.ones(out.shape, bool)
    for href in hrefs:
        data, valid = cache.read(href, lambda src: read_onto_grid(src, grid, "label", [1], NODATA))
        check_label_values(href, data[0][valid])
        take = todo & valid
        out[take] = data[0][take]
        todo &= ~take
        if not todo.any():
            break
    if remap is not None:
        out = remap.apply(np.where(todo, remap.source.nodata or 0, out), f"land cover {', '.join(hrefs)}")
        out[todo] = NODATA
    return out


def cut_chunk(
    cache: RasterCache, scene: Scene, scene_index: int, chunk: TileChunk, blocks: SpatialBlocks, keep: TileFilter,
    remap: Remap | None = None,
) -> ChunkResult:
    """Read ``chunk`` of ``scene`` and return its kept tiles, with the reasons others were dropped."""
    cgrid = scene.grid.window(chunk.row_off, chunk.col_off, chunk.height, chunk.width)
    pos = [(r, c) for r in chunk.rows for c in chunk.cols]
    rows, cols = [p[0] for p in pos], [p[1] for p in pos]
    splits = blocks.assign(*lonlat_bounds(scene.grid, rows, cols, chunk.tile))
    dropped = {"block_edge": sum(s is None for s in splits), "outside_area": 0, "nodata": 0, "class_fraction": 0,
               "duplicate": 0}  # fmt: skip
    if scene.clip is not None:
        import shapely

        inside = shapely.contains_xy(scene.clip, *lonlat_centres(scene.grid, rows, cols, chunk.tile))
        dropped["outside_area"] = sum(1 for s, ok in zip(splits, inside) if s is not None and not ok)
        splits = [s if ok else None for s, ok in zip(splits, inside)]
    if all(s is None for s in splits):
        return ChunkResult(scene_index, [], len(pos), dropped)
    labels = read_labels(cache, scene.labels, cgrid, remap)
    image = None
    if scene.image is not None:
        href = scene.image
        rgb, valid = cache.read(href, lambda src: read_onto_grid(src, cgrid, "image", list(scene.image_bands), NODATA))
        labels[~valid] = NODATA  # no imagery there: the pair is unlabelled, never a guessed label
        image = np.moveaxis(rgb, 0, -1)  # (H, W, 3)
    tiles = []
    npix = chunk.tile * chunk.tile
    for (r, c, rs, cs), split in zip(iter_tiles(chunk), splits):
        if split is None:
            continue
        if scene.owned_by:
            t = scene.grid.transform
            if scene.owned_elsewhere(t.c + t.a * c, t.f + t.e * r, t.a * chunk.tile):
                dropped["duplicate"] += 1
                continue
        lab = labels[rs, cs]
        why = keep.reason(np.bincount(lab.ravel(), minlength=256), npix)
        if why:
            dropped[why] += 1
            continue
        tid = f"{scene.name}_{scene.id_origin[0] + r:06d}_{scene.id_origin[1] + c:06d}"
        # views into the chunk: no copy here (pickling to the main process or writing copies anyway)
        tiles.append(Tile(tid, split, lab, None if image is None else image[rs, cs],
                          scene.grid.transform @ Affine.translation(c, r)))  # fmt: skip
    return ChunkResult(scene_index, tiles, len(pos), dropped)
