"""Target pixel grids and reading a source onto one; resampling is chosen by role here, once.

Labels are always resampled with nearest neighbour (a class code is never interpolated)
and with an exact coordinate transformer, so every output pixel takes the code of the
source pixel under its centre. Imagery is resampled bilinearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

Role = Literal["label", "image"]
RESAMPLING: dict[Role, Resampling] = {"label": Resampling.nearest, "image": Resampling.bilinear}
# GDAL's approximate transformer may move a pixel centre by up to `tolerance` pixels; for
# labels that flips codes at class edges (52 of 4M pixels in a 1 m UTM warp of WorldCover),
# so labels use 1e-6 px, which matched the exact transformer on every pixel at 2x the cost
# (GDAL's WarpedVRT refuses 0).
TOLERANCE: dict[Role, float] = {"label": 1e-6, "image": 0.125}


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """left, bottom, right, top in ``crs``."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    def window(self, row_off: int, col_off: int, height: int, width: int) -> "Grid":
        """The sub-grid ``height`` x ``width`` starting at pixel (row_off, col_off)."""
        return Grid(self.crs, self.transform @ Affine.translation(col_off, row_off), width, height)


def grid_of(src: DatasetReader) -> Grid:
    return Grid(src.crs, src.transform, src.width, src.height)


def snapped_grid(crs: CRS, bounds: tuple[float, float, float, float], res: float, origin_step: float | None = None) -> Grid:
    """A grid at ``res`` covering ``bounds`` whose origin is a multiple of ``origin_step``
    (default ``res``).

    Snapping to a global lattice makes grids of neighbouring scenes in one CRS line up; with
    ``origin_step`` = stride x res their tiles line up too, so overlapping scenes yield the
    same tiles (and duplicates can be recognised).
    """
    step = origin_step or res
    left, bottom, right, top = bounds
    x0, y1 = math.floor(left / step) * step, math.ceil(top / step) * step
    x1, y0 = math.ceil(right / res) * res, math.floor(bottom / res) * res
    return Grid(CRS.from_user_input(crs), from_origin(x0, y1, res, res), round((x1 - x0) / res), round((y1 - y0) / res))


def native_subgrid(src_grid: Grid, bounds: tuple[float, float, float, float]) -> Grid | None:
    """The part of ``src_grid`` (whole pixels, same lattice) inside ``bounds`` (in its CRS)."""
    w = from_bounds(*bounds, transform=src_grid.transform)
    r0, c0 = max(0, math.floor(w.row_off + 1e-6)), max(0, math.floor(w.col_off + 1e-6))
    r1 = min(src_grid.height, math.ceil(w.row_off + w.height - 1e-6))
    c1 = min(src_grid.width, math.ceil(w.col_off + w.width - 1e-6))
    if r1 <= r0 or c1 <= c0:
        return None
    return src_grid.window(r0, c0, r1 - r0, c1 - c0)


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone CRS containing (lon, lat)."""
    zone = int(math.floor((lon + 180) / 6)) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def bounds_in(crs: CRS, bounds4326: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return transform_bounds("EPSG:4326", crs, *bounds4326, densify_pts=21)


def _same_lattice(src: DatasetReader, grid: Grid) -> Window | None:
    """The source window equal to ``grid`` when both share CRS and pixel lattice (no resampling)."""
    if src.crs != grid.crs:
        return None
    a, b = src.transform, grid.transform
    if a.b or a.d or b.b or b.d or not (math.isclose(a.a, b.a, rel_tol=1e-9) and math.isclose(a.e, b.e, rel_tol=1e-9)):
        return None
    col, row = (b.c - a.c) / a.a, (b.f - a.f) / a.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return Window(round(col), round(row), grid.width, grid.height)


def read_onto_grid(
    src: DatasetReader, grid: Grid, role: Role, bands: list[int] | None = None, nodata: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of ``src`` resampled onto ``grid``.

    Returns ``(data, valid)``: data (C, H, W) in the source dtype, pixels outside the source
    or at its nodata set to ``nodata``; valid (H, W) bool. A declared nodata value marks a
    pixel invalid where all bands hold it; alpha flags are ignored (NAIP's alpha is NIR).
    """
    bands = bands or list(range(1, src.count + 1))
    win = _same_lattice(src, grid)
    if win is not None:  # native grid: a plain windowed read, no warping at all
        data, valid = _read_native(src, win, bands, nodata)
    elif role == "label":
        with WarpedVRT(
            src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=RESAMPLING[role], tolerance=TOLERANCE[role], nodata=src.nodata,
            add_alpha=src.nodata is None,
        ) as vrt:  # fmt: skip
            if src.nodata is None:
                out = vrt.read(bands + [vrt.count])
                data, valid = out[:-1], out[-1] > 0
            else:  # nodata marks both holes in the source and pixels outside it
                data = vrt.read(bands)
                valid = (data != src.nodata).any(0)
    else:
        data, valid = _warp_image(src, grid, bands, nodata)
    data[:, ~valid] = nodata
    return data, valid


def _read_native(src: DatasetReader, win: Window, bands: list[int], nodata: float) -> tuple[np.ndarray, np.ndarray]:
    """A window on the source's own lattice, possibly reaching past its edges (filled with ``nodata``).

    Reads only the overlap: rasterio's ``boundless=True`` would go through a WarpedVRT, 3x slower.
    """
    r0, c0 = int(win.row_off), int(win.col_off)
    h, w = int(win.height), int(win.width)
    data = np.full((len(bands), h, w), nodata, dtype=src.dtypes[bands[0] - 1])
    valid = np.zeros((h, w), bool)
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, src.height), min(c0 + w, src.width)
    if rr1 > rr0 and cc1 > cc0:
        part = src.read(bands, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        data[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = part
        ok = (part != src.nodata).any(0) if src.nodata is not None else True
        valid[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = ok
    return data, valid


def _footprint(src: DatasetReader, grid: Grid, pad: int = 0) -> tuple[int, int, int, int]:
    """(col0, row0, col1, row1): the whole source pixels under ``grid``, ``pad`` more on each side."""
    w = from_bounds(*transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21), transform=src.transform)
    return (math.floor(w.col_off) - pad, math.floor(w.row_off) - pad,
            math.ceil(w.col_off + w.width) + pad, math.ceil(w.row_off + w.height) + pad)  # fmt: skip


def _warp_image(src: DatasetReader, grid: Grid, bands: list[int], nodata: float) -> tuple[np.ndarray, np.ndarray]:
    """Warp imagery through arrays rather than a WarpedVRT.

    NAIP files flag their 4th (NIR) band as alpha; a WarpedVRT then takes NIR as the
    validity mask and weights the bilinear kernel by it, changing RGB values. Reading the
    source window ourselves keeps the RGB exact and the validity mask our own.
    """
    c0, r0, c1, r1 = _footprint(src, grid, pad=2)  # bilinear reaches one source pixel beyond the footprint
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data, ok = _read_native(src, win, bands, 0)
    inside = ok.astype(np.float32)
    src_tr = src.window_transform(win)
    out = np.zeros((len(bands), grid.height, grid.width), data.dtype)
    cover = np.zeros((grid.height, grid.width), np.float32)
    common = dict(src_transform=src_tr, src_crs=src.crs, dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=RESAMPLING["image"], src_nodata=None, dst_nodata=None)  # fmt: skip
    reproject(data, out, **common)
    reproject(inside, cover, **common)
    return out, cover > 0.999  # valid only where the whole kernel lies on real source pixels


def read_preview(src: DatasetReader, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Labels on a coarse ``grid``, cheaply: a decimated read (GDAL serves it from the
    overviews) warped with nearest neighbour. For estimates only (e.g. which tiles are
    mostly nodata); returns ((H, W) codes, (H, W) valid)."""
    c0, r0, c1, r1 = _footprint(src, grid)
    c0, r0, c1, r1 = max(0, c0), max(0, r0), min(src.width, c1), min(src.height, r1)
    out = np.zeros((grid.height, grid.width), src.dtypes[0])
    if c1 <= c0 or r1 <= r0:
        return out, np.zeros(out.shape, bool)
    # a source pixel at most as large as a preview pixel, in both directions
    scale = max(1.0, min((c1 - c0) / (2 * grid.width), (r1 - r0) / (2 * grid.height)))
    h, wd = max(1, round((r1 - r0) / scale)), max(1, round((c1 - c0) / scale))
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data = src.read(1, window=win, out_shape=(h, wd), resampling=Resampling.nearest)
    tr = src.window_transform(win) @ Affine.scale((c1 - c0) / wd, (r1 - r0) / h)
    nod = src.nodata if src.nodata is not None else 0
    reproject(data, out, src_transform=tr, src_crs=src.crs, dst_transform=grid.transform, dst_crs=grid.crs,
              resampling=Resampling.nearest, src_nodata=nod, dst_nodata=nod)  # fmt: skip
    return out, out != nod
