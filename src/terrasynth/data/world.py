"""The procedural world: the embedded default dataset that needs no download.

``generate_world`` makes square *regions* of land cover (``world_landcover``), renders
each as aerial RGB (``world_render``), cuts it into ``size`` x ``size`` tiles and writes a
dataset of kind ``procedural`` in WorldCover codes. Splits are drawn per region, so no
two splits share pixels and neighbouring tiles of one split are spatially continuous.

Determinism: region ``k`` is generated from ``numpy.random.default_rng([seed, k])``
alone, so the same config gives byte-identical files whatever the number of workers,
and an interrupted run resumes by regenerating only the regions it had not finished.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import Field
from tqdm import tqdm

from terrasynth import budget
from terrasynth.classes import WORLDCOVER
from terrasynth.config import Seed, StrictModel, config_hash, save_resolved
from terrasynth.data.dataset import PARTIAL_FILE, Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.splits import SplitRatios, assign_splits
from terrasynth.data.tile_sink import ThreadedWrites
from terrasynth.data.world_landcover import BIOMES, make_landcover
from terrasynth.data.world_render import Season, render

log = logging.getLogger(__name__)


class BiomeMix(StrictModel):
    """Relative weights of the biome that dominates each region."""

    forest: float = Field(1.0, ge=0)
    farmland: float = Field(1.5, ge=0)
    urban: float = Field(0.8, ge=0)
    dryland: float = Field(0.6, ge=0)
    wetland: float = Field(0.5, ge=0)
    mountain: float = Field(0.3, ge=0)
    tropical: float = Field(0.15, ge=0, le=1, description="chance that a wetland region is a mangrove coast")

    def probabilities(self) -> np.ndarray:
        w = np.array([getattr(self, b) for b in BIOMES], np.float64)
        if w.sum() <= 0:
            raise ValueError("biomes: at least one biome weight must be positive")
        return w / w.sum()


class WorldConfig(StrictModel):
    """``terrasynth data world``: size, seed, look (season, light, haze, noise) and biome mix."""

    tiles: int = Field(2000, ge=1, description="number of tiles")
    size: int = Field(64, ge=16, le=1024, description="tile side in pixels")
    seed: Seed = 0
    gsd: float = Field(10.0, gt=0, description="nominal ground sample distance, m/px (WorldCover: 10)")
    region: int | None = Field(None, ge=1, le=16, description="region side in tiles; default: up to 4, "
                               "smaller for small worlds so every split gets regions")  # fmt: skip
    season: Season = "summer"
    sun_elevation: float = Field(45.0, ge=5, le=90, description="degrees")
    sun_azimuth: float = Field(315.0, ge=0, lt=360, description="degrees clockwise from north")
    brightness: float = Field(1.0, gt=0, le=3)
    haze: float = Field(0.0, ge=0, le=1, description="0 clear .. 1 opaque")
    noise: float = Field(3.0, ge=0, le=50, description="sensor noise std, DN")
    blur: float = Field(0.6, ge=0, le=5, description="optical blur std, px (mixed pixels at class edges)")
    jitter: float = Field(0.15, ge=0, le=1, description="per-region random variation of light and colour")
    biomes: BiomeMix = Field(default_factory=BiomeMix)
    ratios: SplitRatios = Field(default_factory=lambda: SplitRatios(train=0.7, val=0.1, test=0.2))

    def region_tiles(self) -> int:
        """Region side in tiles: at least ~10 regions so each split gets some."""
        if self.region is not None:
            return self.region
        return int(max(1, min(4, math.isqrt(max(1, self.tiles // 10)))))

    def num_regions(self) -> int:
        return -(-self.tiles // self.region_tiles() ** 2)


def region_tiles_layout(cfg: WorldConfig, k: int) -> list[tuple[str, int, int]]:
    """(tile id, row px, col px) of the tiles region ``k`` contributes (the last may be partial)."""
    r = cfg.region_tiles()
    first = k * r * r
    out = []
    for j in range(min(r * r, cfg.tiles - first)):
        y, x = (j // r) * cfg.size, (j % r) * cfg.size
        out.append((f"w{k:05d}_y{y:04d}_x{x:04d}", y, x))
    return out


def region_biome(cfg: WorldConfig, k: int) -> tuple[str, bool, np.random.Generator]:
    rng = np.random.default_rng([cfg.seed, k])
    biome = BIOMES[int(rng.choice(len(BIOMES), p=cfg.biomes.probabilities()))]
    tropical = biome == "wetland" and bool(rng.random() < cfg.biomes.tropical)
    return biome, tropical, rng


def generate_region(cfg: WorldConfig, k: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Region ``k``: (biome, codes (R, R) uint8, rgb (R, R, 3) uint8), R = region_tiles * size."""
    biome, tropical, rng = region_biome(cfg, k)
    n = cfg.region_tiles() * cfg.size
    lc = make_landcover(rng, n, biome, tropical)
    rgb = render(
        lc, rng, season=cfg.season, sun_elevation=cfg.sun_elevation, sun_azimuth=cfg.sun_azimuth,
        brightness=cfg.brightness, haze=cfg.haze, noise=cfg.noise, blur=cfg.blur, jitter=cfg.jitter,
    )  # fmt: skip
    return biome, lc.codes, rgb


def _region_job(args: tuple[WorldConfig, int]) -> tuple[int, str, np.ndarray, np.ndarray]:
    cfg, k = args
    return (k, *generate_region(cfg, k))


def generate_world(
    cfg: WorldConfig, out: str | Path, *, workers: int = 1, overwrite: bool = False, write_threads: int = 4
) -> Dataset:
    """Generate the procedural world at ``out`` (kind ``procedural``, WorldCover codes); resumable.

    ``workers`` > 1 renders regions in a process pool; ``write_threads`` overlap the per-file
    fsyncs of the writer. Files are identical either way.
    """
    out = Path(out)
    # Render buffers of one region per worker (float32 fields, ~64 B/px) and every tile's record.
    region_px = (cfg.region_tiles() * cfg.size) ** 2
    memory = max(1, workers) * region_px * 64 + cfg.tiles * budget.RECORD_BYTES
    disk = 0 if (out / PARTIAL_FILE).exists() else budget.tiles_disk_bytes(cfg.tiles, cfg.size)
    budget.check_budget(f"data world --tiles {cfg.tiles:,} --size {cfg.size}", memory=memory, disk=disk, out=out,
                        fix="ask for fewer --tiles or a smaller --size")  # fmt: skip
    nreg = cfg.num_regions()
    splits = assign_splits(nreg, cfg.ratios, cfg.seed)
    info = DatasetInfo(
        name=out.name, kind="procedural", scheme=WORLDCOVER, tile_size=cfg.size, gsd=cfg.gsd,
        provenance=provenance("terrasynth procedural world", config_hash=config_hash(cfg), seed=cfg.seed),
        extra={"regions": nreg, "region_tiles": cfg.region_tiles(), "season": cfg.season},
    )
    t0 = time.perf_counter()
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        save_resolved(cfg, out)
        todo = [k for k in range(nreg) if not all(writer.has(t) for t, _, _ in region_tiles_layout(cfg, k))]
        done = cfg.tiles - sum(len(region_tiles_layout(cfg, k)) for k in todo)
        with tqdm(total=cfg.tiles, initial=done, unit="tile", desc="world", dynamic_ncols=True) as bar, \
                ThreadedWrites(writer, threads=write_threads) as sink:  # fmt: skip
            for k, biome, codes, rgb in _regions(cfg, todo, workers):
                for tid, y, x in region_tiles_layout(cfg, k):
                    if not writer.has(tid):
                        s = cfg.size
                        sink.submit(tid, splits[k], codes[y : y + s, x : x + s], rgb[y : y + s, x : x + s],
                                    source=f"region {k} ({biome})")  # fmt: skip
                    bar.update(1)
        ds = writer.finalize()
    dt = time.perf_counter() - t0
    log.info("world: %d tiles in %.1f s (%.0f tiles/s) -> %s", cfg.tiles, dt, cfg.tiles / max(dt, 1e-9), out)
    return ds


def _regions(cfg: WorldConfig, todo: list[int], workers: int) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
    workers = max(1, min(workers, len(todo), os.cpu_count() or 1))
    if workers == 1:
        for k in todo:
            yield _region_job((cfg, k))
        return
    with ProcessPoolExecutor(workers) as pool:
        # map keeps order, so the journal is written in the same order as with one worker.
        yield from pool.map(_region_job, [(cfg, k) for k in todo], chunksize=2)
