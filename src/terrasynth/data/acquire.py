"""``terrasynth data acquire``: real land cover (and imagery) from STAC or local COGs into tiles.

Two products:

- ``landcover``: WorldCover labels alone, tiled on the source's own pixel grid ("native":
  for an EPSG:4326 tile that is its 1/12000 degree lattice, about 10 m) or reprojected
  with nearest neighbour onto a metric grid (``crs``/``gsd``; UTM of the area by default).
- ``pairs``: imagery RGB (NAIP bands 1-3) on each scene's own UTM grid at ``gsd`` (1 m by
  default, or ``native``), with WorldCover warped onto exactly that grid with nearest
  neighbour. Each scene keeps its own CRS, recorded per tile in the index.

Sources are resolved to hrefs (local globs, a static STAC catalog, a STAC API, or the
Planetary Computer with signed URLs) and read with windowed/range reads only. Tiles are
filtered (nodata share, class shares), split train/val/test by spatial blocks, written
through :class:`~terrasynth.data.dataset.DatasetWriter` (atomic, journaled, resumable) and
the STAC items used are recorded in ``dataset.json`` ``extra``.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import multiprocessing as mp
import os
import random
import re
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import rasterio
from pydantic import Field, field_validator
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from tqdm.auto import tqdm

from terrasynth.classes import WORLDCOVER, Remap, load_remap
from terrasynth.config import Seed, StrictModel, config_dict, config_hash, save_resolved
from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, crs_string, provenance
from terrasynth.data.scene_tiler import ChunkResult, Scene, Tile, TileFilter, cut_chunk, lonlat_bounds
from terrasynth.errors import UserError
from terrasynth.geo import stac
from terrasynth.geo.area import Area, Bounds, intersects, resolve_area
from terrasynth.geo.read import RasterCache, gdal_env
from terrasynth.geo.reproject import Grid, bounds_in, grid_of, native_subgrid, read_preview, snapped_grid, utm_crs
from terrasynth.geo.tiling import METRES_PER_DEGREE, EdgeRule, SpatialBlocks, TileChunk, tile_chunks, tile_offsets

log = logging.getLogger(__name__)

Source = Literal["local", "static", "stac", "planetary-computer"]
Product = Literal["pairs", "landcover"]


class AcquireConfig(StrictModel):
    """Everything ``terrasynth data acquire`` needs; every CLI flag maps onto one field."""

    source: Source = "local"
    product: Product = "pairs"
    # local sources: paths or globs
    landcover: list[str] = Field(default_factory=list)
    imagery: list[str] = Field(default_factory=list)
    # STAC sources
    catalog: str | None = None  # static catalog (catalog.json / collection.json) for source=static
    stac_url: str | None = None  # any STAC API for source=stac (default for planetary-computer: its API)
    imagery_collection: str = "naip"
    imagery_asset: str = "image"
    landcover_collection: str = "esa-worldcover"
    landcover_asset: str = "map"
    landcover_version: str | None = "2.0.0"  # esa_worldcover:product_version; 2.0.0 is the 2021 map
    remap: str | None = None  # land cover in another scheme: a remap (name or YAML) onto WorldCover
    datetime: str | None = None  # imagery date range, e.g. 2021-01-01/2022-12-31
    state: str | None = None  # NAIP state filter (naip:state), e.g. ny
    max_items: int | None = Field(None, gt=0)
    # area (EPSG:4326); none = the whole extent of the local sources
    bbox: tuple[float, float, float, float] | None = None
    area_file: str | None = None
    area: str | None = None
    # grid and tiles
    tile: int = Field(512, gt=0)
    stride: int | None = Field(None, gt=0)  # default: tile (no overlap)
    edge: EdgeRule = "drop"
    gsd: float | Literal["native"] | None = None  # metres; None = 1 m for pairs, native for landcover
    crs: str | None = None  # landcover only: target CRS (default: UTM of the area when gsd is set)
    # filters
    max_nodata: float = Field(0.05, ge=0, le=1)
    max_class_fraction: dict[str, float] = Field(default_factory=dict)  # "80": 0.5, or "0+80": 0.5
    min_class_fraction: dict[str, float] = Field(default_factory=dict)
    max_tiles: int | None = Field(None, gt=0)
    # splits
    block_size: float | None = Field(None, gt=0)  # metres; default 4 (geographic grid) or 10 tile widths
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: Seed = 0
    # execution (not part of the result: excluded from the config hash)
    workers: int = Field(1, ge=1)
    retries: int = Field(4, ge=0)
    retry_backoff: float = Field(0.5, ge=0)
    name: str | None = None

    @field_validator("max_class_fraction", "min_class_fraction")
    @classmethod
    def _codes(cls, v: dict[str, float]) -> dict[str, float]:
        for key, frac in v.items():
            parse_codes(key)
            if not 0 <= frac <= 1:
                raise ValueError(f"fraction for {key} must be in [0, 1], got {frac}")
        return v

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError("train, val, test fractions must be non-negative and sum to 1")
        return v


RUNTIME_FIELDS = {"workers", "retries", "retry_backoff"}


def parse_codes(key: str) -> tuple[int, ...]:
    """'80' -> (80,); '0+80' -> (0, 80). Codes must be WorldCover codes or its nodata."""
    try:
        codes = tuple(int(p) for p in str(key).split("+"))
    except ValueError:
        raise ValueError(f"class key {key!r} must be codes joined by '+', e.g. 80 or 0+80") from None
    unknown = sorted(set(codes) - WORLDCOVER.valid_codes())
    if unknown:
        raise ValueError(f"class key {key!r}: codes {unknown} are not WorldCover codes {sorted(WORLDCOVER.valid_codes())}")
    return codes


@dataclass
class Plan:
    """What will be tiled: scenes (one output grid each), and what was used to find them."""

    scenes: list[Scene]
    gsd_m: float  # nominal ground sample distance in metres
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role -> STAC items / files used
    skipped: list[str] = field(default_factory=list)
    area: dict[str, Any] | None = None  # the area asked for (None: the whole extent of the sources)


# ---- planning ---------------------------------------------------------------------------


def _expand(patterns: Iterable[str], flag: str) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not hits:
            raise UserError(f"{flag} {pat!r}: no files match; check the path or glob")
        out.extend(hits)
    return list(dict.fromkeys(out))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "scene"


def _stem(href: str) -> str:
    return Path(href.split("?")[0]).name.rsplit(".", 1)[0]


def _bounds4326(src: rasterio.io.DatasetReader) -> Bounds:
    return transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)


def _intersection(a: Bounds, b: Bounds) -> Bounds:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def find_sources(cfg: AcquireConfig, area: Area | None) -> tuple[list[stac.SourceItem], list[stac.SourceItem]]:
    """(imagery, landcover) items from the configured source."""
    need_imagery = cfg.product == "pairs"
    if cfg.source == "local":
        if not cfg.landcover:
            raise UserError("--source local needs --landcover PATH_OR_GLOB (WorldCover GeoTIFFs/COGs)")
        if need_imagery and not cfg.imagery:
            raise UserError("--product pairs with --source local needs --imagery PATH_OR_GLOB (NAIP GeoTIFFs/COGs)")
        lc = [stac.SourceItem(h, _stem(h)) for h in _expand(cfg.landcover, "--landcover")]
        im = [stac.SourceItem(h, _stem(h)) for h in _expand(cfg.imagery, "--imagery")] if need_imagery else []
        return im, lc
    if cfg.source == "static" and not cfg.catalog:
        raise UserError("--source static needs --catalog PATH (a STAC catalog.json or collection.json)")
    # --stac-url also overrides the Planetary Computer's address (mirrors, tests)
    url = cfg.stac_url or (stac.PLANETARY_COMPUTER if cfg.source == "planetary-computer" else None)
    if cfg.source == "stac" and not url:
        raise UserError("--source stac needs --stac-url URL (a STAC API root)")
    if area is None:
        raise UserError(f"--source {cfg.source} needs an area: --bbox W,S,E,N, --area-file GEOJSON or --area NAME")
    state = cfg.state or area.naip_state
    if cfg.source == "static":
        search: stac.ItemSearcher = stac.StaticCatalog(cfg.catalog)
    else:
        search = stac.ApiSearch(url, sign=cfg.source == "planetary-computer")
    lc_filter = {"esa_worldcover:product_version": cfg.landcover_version} if cfg.landcover_version else {}

    def find(collection: str, asset: str, dates: str | None, props: dict[str, Any]) -> list[stac.SourceItem]:
        found = search.items(collection, asset, area, dates, props, cfg.max_items)
        if cfg.source == "planetary-computer":
            # SAS tokens expire within hours: keep bare hrefs and sign when opening (RasterCache(sign=...))
            found = [dataclasses.replace(it, href=it.href.split("?")[0]) for it in found]
        return found

    lc = find(cfg.landcover_collection, cfg.landcover_asset, None, lc_filter)
    im: list[stac.SourceItem] = []
    if need_imagery:
        im_filter = {"naip:state": state} if state and cfg.imagery_collection == "naip" else {}
        im = find(cfg.imagery_collection, cfg.imagery_asset, cfg.datetime, im_filter)
        if not im:
            raise UserError(
                f"no '{cfg.imagery_collection}' items for area {area.bbox}"
                + (f", dates {cfg.datetime}" if cfg.datetime else "") + (f", state {state}" if state else "")
                + "; widen the area or date range, or check --state"
            )  # fmt: skip
    if not lc:
        raise UserError(
            f"no '{cfg.landcover_collection}' items (version {cfg.landcover_version}) for area {area.bbox}; "
            "widen the area or check --landcover-version"
        )
    return im, lc


def plan(cfg: AcquireConfig, cache: RasterCache) -> Plan:
    """Resolve sources and area into scenes (output grids); opens only raster headers."""
    area = resolve_area(cfg.bbox and ",".join(map(str, cfg.bbox)), cfg.area_file, cfg.area)
    im_items, lc_items = find_sources(cfg, area)
    lc_bounds = {}
    for it in lc_items:  # STAC items carry their bbox: no request needed
        lc_bounds[it.href] = tuple(it.bbox) if it.bbox else _bounds4326(cache.get(it.href))
    area_bbox = area.bbox if area else None
    items = {"landcover": [it.record() for it in lc_items], "imagery": [it.record() for it in im_items]}

    def plan_for(bbox: Bounds | None) -> Plan:
        if cfg.product == "landcover":
            return _plan_landcover(cfg, cache, lc_items, lc_bounds, bbox, items)
        return _plan_pairs(cfg, cache, im_items, lc_bounds, bbox, items)

    p = plan_for(area_bbox)
    clip = area.clip_shape() if area else None
    if clip is not None:  # an area file: keep the tiles whose centre lies in its polygon(s)
        # every such tile must fit on the grids: grow the bbox by half a tile (and a pixel)
        margin_m = (cfg.tile / 2 + 1) * p.gsd_m
        lat = max(abs(area_bbox[1]), abs(area_bbox[3]))
        dlat = margin_m / 110_574.0
        dlon = margin_m / (111_320.0 * max(math.cos(math.radians(min(lat + dlat, 89.9))), 1e-3))
        w, s_, e, n = area_bbox
        p = plan_for((max(-180.0, w - dlon), max(-90.0, s_ - dlat), min(180.0, e + dlon), min(90.0, n + dlat)))
        p.scenes = [dataclasses.replace(sc, clip=clip) for sc in p.scenes]
    if area:
        p.area = {"name": area.name, "bbox": list(area.bbox),
                  "clip": "tile centre inside the polygon(s)" if clip is not None else "bbox"}  # fmt: skip
    return p


def _plan_landcover(cfg, cache, lc_items, lc_bounds, area_bbox, items) -> Plan:
    lc_in = [it for it in lc_items if area_bbox is None or intersects(lc_bounds[it.href], area_bbox)]
    if not lc_in:
        raise UserError(f"--landcover: no file overlaps the area {area_bbox}; check --bbox/--area and the files")
    if cfg.gsd in (None, "native") and cfg.crs is None:
        scenes, names = [], set()
        res_m = []
        for it in lc_in:
            src = cache.get(it.href)
            full = grid_of(src)
            sub = native_subgrid(full, bounds_in(src.crs, area_bbox)) if area_bbox else full
            if sub is None:
                continue
            sub, row0, col0 = _snap_to_stride(full, sub, cfg.stride or cfg.tile)
            name = _unique(_safe(it.id), names)
            scenes.append(Scene(name, sub, (it.href,), id_origin=(row0, col0)))
            res_m.append(_res_metres(full))
        return Plan(scenes, round(sum(res_m) / len(res_m), 3), items)
    if cfg.gsd == "native":
        raise UserError("--gsd native cannot be combined with --crs; give --gsd METRES for a reprojected grid")
    bs = [lc_bounds[it.href] for it in lc_in]
    bbox = area_bbox or (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))
    crs = _parse_crs(cfg.crs) if cfg.crs else utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    gsd = float(cfg.gsd or 10.0)
    if crs.is_geographic:
        raise UserError(f"--crs {cfg.crs}: is geographic; --gsd is in metres, so give a projected CRS (e.g. a UTM EPSG)")
    grid = snapped_grid(crs, bounds_in(crs, bbox), gsd)
    name = f"epsg{crs.to_epsg() or 'custom'}-{gsd:g}m"
    origin = (-round(grid.transform.f / gsd), round(grid.transform.c / gsd))
    return Plan([Scene(_safe(name), grid, tuple(it.href for it in lc_in), id_origin=origin)], gsd, items)


def _plan_pairs(cfg, cache, im_items, lc_bounds, area_bbox, items) -> Plan:
    if cfg.crs:
        raise UserError("--crs applies to --product landcover only; pairs are tiled in each scene's own CRS")
    scenes, names, skipped, res_m = [], set(), [], []
    for it in im_items:
        # STAC items with the projection extension (NAIP on the Planetary Computer) give the
        # grid without opening the file: thousands of scenes are planned without a request.
        full = _item_grid(it)
        if full is None:
            src = cache.get(it.href)
            if src.count < 3:
                raise UserError(f"{it.href}: has {src.count} band(s); imagery needs RGB in bands 1-3 (NAIP RGBN)")
            full = grid_of(src)
        sb = transform_bounds(full.crs, "EPSG:4326", *full.bounds, densify_pts=21)
        if area_bbox is not None and not intersects(sb, area_bbox):
            skipped.append(f"{it.id}: outside the area")
            continue
        labels = tuple(h for h, b in lc_bounds.items() if intersects(b, sb))
        if not labels:
            skipped.append(f"{it.id}: no land cover overlaps it")
            continue
        region = bounds_in(full.crs, _intersection(sb, area_bbox)) if area_bbox else full.bounds
        region = _intersection(tuple(region), tuple(full.bounds))
        if cfg.gsd == "native":
            grid = native_subgrid(full, region)
            if grid is None:
                continue
            origin = _offset(full, grid)
            res_m.append(_res_metres(full))
        else:
            gsd = float(cfg.gsd or 1.0)
            grid = snapped_grid(full.crs, region, gsd, origin_step=(cfg.stride or cfg.tile) * gsd)
            origin = (-round(grid.transform.f / gsd), round(grid.transform.c / gsd))
            res_m.append(gsd)
        name = _unique(_safe(it.id), names)
        owned = ()
        if cfg.gsd != "native":  # grids on one stride x gsd lattice per CRS: overlaps are the same tiles
            owned = tuple(sc.grid.bounds for sc in scenes if sc.grid.crs == grid.crs
                          and intersects(sc.grid.bounds, grid.bounds))  # fmt: skip
        scenes.append(Scene(name, grid, labels, image=it.href, id_origin=origin, owned_by=owned))
    if not scenes:
        why = "; ".join(skipped[:3]) or "no imagery"
        raise UserError(f"no overlap between imagery and land cover in the area ({why}); check the inputs and --bbox")
    for s in skipped:
        log.warning("skipping imagery %s", s)
    return Plan(scenes, round(sum(res_m) / len(res_m), 3), items, skipped)


def _item_grid(it: stac.SourceItem) -> Grid | None:
    """The pixel grid from a STAC item's projection extension (proj:epsg|code, transform, shape)."""
    p = it.properties
    code = p.get("proj:code") or (f"EPSG:{p['proj:epsg']}" if p.get("proj:epsg") else None)
    tr, shape = p.get("proj:transform"), p.get("proj:shape")
    if not (code and tr and shape) or len(tr) < 6:
        return None
    try:
        return Grid(CRS.from_user_input(code), Affine(*tr[:6]), int(shape[1]), int(shape[0]))
    except (CRSError, TypeError, ValueError):
        return None


def _snap_to_stride(full: Grid, sub: Grid, stride: int) -> tuple[Grid, int, int]:
    """Start ``sub`` on a multiple of ``stride`` pixels of ``full``: tile positions (and ids)
    then do not depend on the exact area, and tiles line up with the lon/lat split blocks."""
    r0, c0 = _offset(full, sub)
    r1, c1 = r0 + sub.height, c0 + sub.width
    r0, c0 = r0 // stride * stride, c0 // stride * stride
    return full.window(r0, c0, r1 - r0, c1 - c0), r0, c0


def _offset(full: Grid, sub: Grid) -> tuple[int, int]:
    """(row, col) of ``sub``'s origin in pixels of ``full`` (same lattice)."""
    return (round((sub.transform.f - full.transform.f) / full.transform.e),
            round((sub.transform.c - full.transform.c) / full.transform.a))  # fmt: skip


def _unique(name: str, seen: set[str]) -> str:
    base, k = name, 1
    while name in seen:
        k += 1
        name = f"{base}-{k}"
    seen.add(name)
    return name


def _res_metres(g: Grid) -> float:
    r = g.res[0]
    return r * METRES_PER_DEGREE if g.crs.is_geographic else r * (g.crs.linear_units_factor[1] if g.crs.linear_units_factor else 1)


def _parse_crs(text: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError as exc:
        raise UserError(f"--crs {text!r}: not a CRS rasterio knows ({exc}); give e.g. EPSG:32632") from exc


# Default split block side in tile widths. On geographic grids blocks fall between tiles
# (no loss) and small blocks keep val/test possible on small areas; on projected grids a
# tile crossing a block edge is dropped, so blocks are larger (about 81% of tiles kept).
DEFAULT_BLOCK_TILES = {"geographic": 4, "projected": 10}


def make_blocks(scenes: list[Scene], block_m: float, tile: int, stride: int, edge: EdgeRule,
                fractions: tuple[float, float, float], seed: int, keep: TileFilter | None = None,
                cache: RasterCache | None = None, remap: Remap | None = None) -> SpatialBlocks:  # fmt: skip
    """Split blocks fitted to the tiles of ``scenes`` that will probably pass ``keep``.

    On geographic grids the block side is rounded to whole tile widths so that the block
    edges fall between tiles and no tile is lost; on projected grids tiles that cross a
    block edge are dropped. Blocks are dealt out among the blocks whose tiles pass the
    filters on a coarse preview of the labels (overviews; a few reads), so that ocean or
    nodata blocks do not take the val/test share.
    """
    block_deg, origin = block_m / METRES_PER_DEGREE, (-180.0, -90.0)
    if all(s.grid.crs.is_geographic for s in scenes) and len({s.grid.res for s in scenes}) == 1:
        tile_deg = scenes[0].grid.res[0] * stride
        block_deg = max(1, round(block_deg / tile_deg)) * tile_deg
        t = scenes[0].grid.transform  # on the stride lattice (see _snap_to_stride)
        origin = (t.c, t.f)
    blocks = SpatialBlocks(block_deg, fractions, seed, origin)
    per_scene = []
    for s in scenes:
        rows = tile_offsets(s.grid.height, tile, stride, edge)
        cols = tile_offsets(s.grid.width, tile, stride, edge)
        if not rows or not cols:
            continue
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        per_scene.append((s, rr.ravel(), cc.ravel(), blocks.cells(*lonlat_bounds(s.grid, rr.ravel(), cc.ravel(), tile))))
    cells = {c for *_, tc in per_scene for c in tc if c is not None}
    if keep is None or cache is None or len(cells) > PREVIEW_MAX_BLOCKS:
        return blocks.fit(cells)
    likely: set[tuple[int, int]] = set()
    for s, rows, cols, tile_cells in per_scene:
        ok = _likely_kept(cache, s, rows, cols, tile, keep, remap)
        likely.update(c for c, k in zip(tile_cells, ok) if c is not None and k)
    return blocks.fit(likely or cells)


PREVIEW_PX = 8  # preview pixels per tile side when guessing which tiles pass the filters
# Above this many blocks the seeded deal is balanced anyway and a preview read per scene
# (thousands of NAIP scenes over HTTP) would only slow planning down.
PREVIEW_MAX_BLOCKS = 400


def _likely_kept(cache: RasterCache, s: Scene, rows: np.ndarray, cols: np.ndarray, tile: int,
                 keep: TileFilter, remap: Remap | None = None) -> list[bool]:  # fmt: skip
    """Whether each tile passes ``keep`` on a coarse preview of its labels (imagery not read)."""
    f = max(1, tile // PREVIEW_PX)
    g = s.grid
    preview = Grid(g.crs, g.transform @ Affine.scale(f), -(-g.width // f), -(-g.height // f))
    codes = np.zeros((preview.height, preview.width), np.uint8)
    todo = np.ones(codes.shape, bool)
    for href in s.labels:
        data, valid = cache.read(href, lambda src: read_preview(src, preview))
        take = todo & valid
        codes[take] = data[take]
        todo &= ~take
    if remap is not None:
        codes = np.where(todo, 0, remap.lut[codes]).astype(np.uint8)
    out = []
    n = max(1, tile // f)
    for r, c in zip(rows, cols):
        win = codes[r // f : r // f + n, c // f : c // f + n]
        out.append(win.size > 0 and keep.reason(np.bincount(win.ravel(), minlength=256), win.size) is None)
    return out


# ---- running ----------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(scenes, blocks, keep, remap, retries, backoff, env, sign, writers, shard_ids) -> None:
    env_ctx = rasterio.Env(**env)
    env_ctx.__enter__()  # held for the worker's lifetime
    writer = writers[shard_ids.get()] if writers else None  # each worker its own shard journal
    _WORKER.update(scenes=scenes, blocks=blocks, keep=keep, remap=remap, cache=RasterCache(retries, backoff, sign),
                   env=env_ctx, writer=writer)  # fmt: skip


def _work(task: tuple[int, TileChunk]) -> ChunkResult:
    i, chunk = task
    w = _WORKER
    res = cut_chunk(w["cache"], w["scenes"][i], i, chunk, w["blocks"], w["keep"], w["remap"])
    writer: DatasetWriter | None = w["writer"]
    if writer is not None:  # write here, in parallel, instead of shipping pixels to the main process
        for t in res.tiles:
            _write(writer, w["scenes"][i], t)
        res.written, res.tiles = len(res.tiles), []
    return res


def _write(writer: DatasetWriter, scene: Scene, t: Tile) -> None:
    if not writer.has(t.id):
        writer.write(t.id, t.split, t.label, t.image, source=scene.image or scene.labels[0], crs=scene.grid.crs,
                     transform=t.transform)  # fmt: skip


@dataclass
class Job:
    """Everything fixed before any pixel is read: scenes, split blocks, filters, chunk order."""

    cfg: AcquireConfig
    plan: Plan
    blocks: SpatialBlocks
    keep: TileFilter
    tasks: list[tuple[int, TileChunk]]
    stride: int
    env: dict[str, Any]
    remap: Remap | None = None
    sign: Callable[[str], str] | None = None  # Planetary Computer: hrefs signed at open, renewed on retry

    @property
    def total(self) -> int:
        return sum(len(ch) for _, ch in self.tasks)

    def results(self, writers: list[DatasetWriter] | None = None) -> Iterator[ChunkResult]:
        """Chunks read and cut, in task order (so a tile cap is deterministic), at most 2 chunks per worker in
        flight; with ``writers`` (one shard writer per worker) the workers write their tiles themselves and
        return only counts."""
        scenes, workers, retries, backoff = self.plan.scenes, self.cfg.workers, self.cfg.retries, self.cfg.retry_backoff
        with rasterio.Env(**self.env):
            if workers <= 1:
                cache = RasterCache(retries, backoff, self.sign)
                try:
                    for i, chunk in self.tasks:
                        yield cut_chunk(cache, scenes[i], i, chunk, self.blocks, self.keep, self.remap)
                finally:
                    cache.close()
                return
            ctx = mp.get_context("spawn")
            shard_ids = ctx.Queue()
            for k in range(workers):
                shard_ids.put(k)
            ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(
                scenes, self.blocks, self.keep, self.remap, retries, backoff, self.env, self.sign, writers, shard_ids))
            try:
                it = iter(self.tasks)
                pending = deque(ex.submit(_work, t) for t in islice(it, 2 * workers))
                while pending:
                    res = pending.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(ex.submit(_work, nxt))
                    yield res
            finally:
                ex.shutdown(wait=True, cancel_futures=True)


def prepare(cfg: AcquireConfig) -> Job:
    """Resolve sources, plan scenes and split blocks (reads raster headers only)."""
    env = gdal_env()
    stride = cfg.stride or cfg.tile
    keep = TileFilter(cfg.max_nodata, {parse_codes(k): v for k, v in cfg.max_class_fraction.items()},
                      {parse_codes(k): v for k, v in cfg.min_class_fraction.items()})  # fmt: skip
    remap = load_remap(cfg.remap) if cfg.remap else None
    if remap is not None and remap.target.name != WORLDCOVER.name:
        raise UserError(f"--remap {cfg.remap}: maps onto '{remap.target.name}'; acquire needs a remap onto worldcover")
    sign = stac.pc_sign if cfg.source == "planetary-computer" else None
    with rasterio.Env(**env):
        cache = RasterCache(cfg.retries, cfg.retry_backoff, sign)
        try:
            p = plan(cfg, cache)
            kind = "geographic" if all(sc.grid.crs.is_geographic for sc in p.scenes) else "projected"
            block_m = cfg.block_size or DEFAULT_BLOCK_TILES[kind] * stride * p.gsd_m
            blocks = make_blocks(p.scenes, block_m, cfg.tile, stride, cfg.edge, cfg.split_fractions, cfg.seed,
                                 keep, cache, remap)  # fmt: skip
        finally:
            cache.close()  # workers open their own handles
    tasks = [(i, ch) for i, s in enumerate(p.scenes)
             for ch in tile_chunks(s.grid.height, s.grid.width, cfg.tile, stride, cfg.edge)]  # fmt: skip
    # Shuffled (seeded) so that a tile cap samples the whole area, not its first rows.
    random.Random(cfg.seed).shuffle(tasks)
    return Job(cfg, p, blocks, keep, tasks, stride, env, remap, sign)


def iter_pairs(cfg: AcquireConfig) -> Iterator[tuple[Scene, Tile]]:
    """The tiles ``acquire`` would write, in memory: (scene, tile) with ``tile.label`` (H, W)
    uint8 codes, ``tile.image`` (H, W, 3) uint8 or None, ``tile.transform`` in ``scene.grid.crs``."""
    job = prepare(cfg)
    n = 0
    for res in job.results():
        scene = job.plan.scenes[res.scene]
        for t in res.tiles:
            if cfg.max_tiles is not None and n >= cfg.max_tiles:
                return
            n += 1
            yield scene, t


def acquire(cfg: AcquireConfig, out: Path, *, overwrite: bool = False) -> Dataset:
    """Build a dataset in ``out`` (resumable: rerun the same config to finish a killed run)."""
    out = Path(out)
    job = prepare(cfg)
    p, blocks, stride = job.plan, job.blocks, job.stride
    chash = config_hash({k: v for k, v in config_dict(cfg).items() if k not in RUNTIME_FIELDS})
    info = DatasetInfo(
        name=cfg.name or out.name, kind="real", scheme=WORLDCOVER, tile_size=cfg.tile, gsd=p.gsd_m,
        has_images=cfg.product == "pairs",
        provenance=provenance(f"acquire:{cfg.source}", config_hash=chash, seed=cfg.seed),
    )
    writer = DatasetWriter(out, info, overwrite=overwrite)
    if writer.complete:
        log.info("%s: already complete (same config); nothing to do", out)
        return Dataset.open(out)
    save_resolved(cfg, out)
    # Several workers and no tile cap: each worker writes through its own journal shard (the
    # writers are made here, before any worker writes, so their start-up clean-up races with
    # nothing). With a cap the main process writes, so the cap takes the same tiles every run.
    shards = None
    if cfg.workers > 1 and cfg.max_tiles is None:
        shards = [DatasetWriter(out, info, shard=k) for k in range(cfg.workers)]
    stats = {"candidates": 0, "kept": 0, "block_edge": 0, "outside_area": 0, "nodata": 0, "class_fraction": 0,
             "duplicate": 0, "over_cap": 0}  # fmt: skip
    resumed = len(writer.done_ids)
    # TQDM_DISABLE is read here, not at tqdm's import: `terrasynth -q` sets it after tqdm may be loaded
    quiet = os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    bar = tqdm(total=job.total, unit="tile", desc=f"acquire {cfg.product}", dynamic_ncols=True, smoothing=0.1,
               disable=quiet)  # fmt: skip
    try:
        with writer:
            for res in job.results(shards):
                stats["candidates"] += res.candidates
                for k, v in res.dropped.items():
                    stats[k] += v
                scene = p.scenes[res.scene]
                stats["kept"] += res.written
                for t in res.tiles:
                    if cfg.max_tiles is not None and stats["kept"] >= cfg.max_tiles:
                        stats["over_cap"] += 1
                        continue
                    _write(writer, scene, t)
                    stats["kept"] += 1
                bar.update(res.candidates)
                bar.set_postfix(kept=stats["kept"], refresh=False)
                if cfg.max_tiles is not None and stats["kept"] >= cfg.max_tiles:
                    break
    finally:
        bar.close()
    if resumed:
        log.info("resumed: %d tiles were already written", resumed)
    writer.info.extra = {
        "product": cfg.product,
        "area": p.area,
        "stac_items": p.items,
        "scenes": [_scene_record(s) for s in p.scenes],
        "skipped_scenes": p.skipped,
        "tiling": {"tile": cfg.tile, "stride": stride, "edge": cfg.edge},
        "splits": {"block_size_deg": blocks.block_deg, "block_origin": list(blocks.origin),
                   "blocks": len(blocks.table), "fractions": list(cfg.split_fractions), "seed": cfg.seed,
                   "rule": "blocks of a global lon/lat grid; tiles crossing a block edge are dropped"},
        "filters": {"max_nodata": cfg.max_nodata, "max_class_fraction": cfg.max_class_fraction,
                    "min_class_fraction": cfg.min_class_fraction, "max_tiles": cfg.max_tiles},
        "stats": stats,
    }  # fmt: skip
    if stats["kept"] == 0:
        writer.discard_if_empty()  # nothing was written: leave no unfinished dataset behind
        raise UserError(
            f"{out}: no tile passed the filters ({stats['candidates']} candidates: {stats['nodata']} too much nodata, "
            f"{stats['class_fraction']} class-fraction, {stats['block_edge']} on block edges, "
            f"{stats['outside_area']} outside the area's polygon); "
            "relax --max-nodata/--max-class-fraction, use a smaller --tile or a larger --block-size"
        )
    ds = writer.finalize()
    empty = [s for s in ("train", "val", "test") if not ds.split(s)]
    if empty:
        log.warning("splits %s are empty: the area holds few blocks; use a smaller --block-size", ", ".join(empty))
    return ds


def _scene_record(s: Scene) -> dict[str, Any]:
    return {"name": s.name, "crs": crs_string(s.grid.crs),
            "res": list(s.grid.res), "width": s.grid.width, "height": s.grid.height, "bounds": list(s.grid.bounds),
            "image": s.image, "labels": list(s.labels)}  # fmt: skip
