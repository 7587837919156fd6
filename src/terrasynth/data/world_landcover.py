"""Procedural land cover with real spatial structure, in WorldCover codes.

One call makes one square *region* (e.g. 256 x 256 px); the world generator cuts regions
into tiles. Everything is numpy/scipy over whole arrays (no per-pixel Python loops):

- natural cover (tree, shrub, grass, bare): argmax of smooth random fields plus biome biases;
- cropland: rectangular parcels on a rotated, staggered grid, with hedgerows on some edges;
- built-up: towns with a rotated street grid, blocks of buildings (denser at the centre),
  gardens and parks; plus a few long roads;
- water: meandering rivers and lakes in low ground; herbaceous wetland along the shores
  (mangroves on rare tropical coasts);
- mountains: snow and moss/lichen at the highest elevations.

Auxiliary layers (elevation, parcel ids, roof ids, streets) go to the renderer so that
texture follows structure (crop rows inside parcels, roofs inside blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TREE, SHRUB, GRASS, CROP, BUILT, BARE, SNOW, WATER, WETLAND, MANGROVE, MOSS = 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100
BIOMES = ("forest", "farmland", "urban", "dryland", "wetland", "mountain")


@dataclass(frozen=True)
class Biome:
    """Biases of the natural fields and densities of structures (per 256 x 256 px)."""

    tree: float
    shrub: float
    grass: float
    bare: float
    farm: tuple[float, float]  # share of the region under parcels (min, max)
    towns: float  # expected number of towns
    town_radius: tuple[float, float]
    rivers: float
    lakes: float  # share of the region under lakes (max)
    roads: float
    wet_width: tuple[float, float]
    relief: float  # elevation scale for hillshade and mountain classes


BIOME_TABLE: dict[str, Biome] = {
    "forest": Biome(1.2, 0.1, -0.2, -1.5, (0.0, 0.25), 0.5, (12, 28), 0.8, 0.04, 0.6, (0.5, 2.5), 1.0),
    "farmland": Biome(0.2, -0.1, 0.4, -1.0, (0.45, 0.85), 1.2, (12, 30), 0.6, 0.02, 1.2, (0.5, 2.0), 0.6),
    "urban": Biome(0.1, -0.3, 0.5, -0.6, (0.0, 0.3), 1.0, (70, 150), 0.5, 0.01, 2.0, (0.0, 1.0), 0.4),
    "dryland": Biome(-1.2, 0.7, 0.3, 0.8, (0.0, 0.2), 0.4, (10, 24), 0.3, 0.0, 0.8, (0.0, 1.0), 0.9),
    "wetland": Biome(0.4, 0.0, 0.5, -1.2, (0.0, 0.3), 0.3, (10, 22), 1.6, 0.10, 0.4, (2.0, 6.0), 0.3),
    "mountain": Biome(0.6, 0.5, 0.1, 0.3, (0.0, 0.1), 0.2, (8, 16), 0.6, 0.02, 0.4, (0.0, 1.5), 2.5),
}


@dataclass
class LandCover:
    """A region's land cover and the layers the renderer needs. All arrays (R, R)."""

    codes: np.ndarray  # uint8 WorldCover codes
    elevation: np.ndarray  # float32, roughly unit scale
    parcel: np.ndarray  # int32 parcel id, 0 = no parcel
    parcel_angle: float  # radians, orientation of the parcel grid (crop rows follow it)
    roof: np.ndarray  # int32 building id, 0 = no building
    street: np.ndarray  # bool, streets and roads
    biome: str
    tropical: bool


def smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, n) float32 Gaussian random field with correlation length ``sigma`` px, unit std.

    Large scales are made on a coarse grid and zoomed up: same look, a fraction of the cost.
    """
    f = max(1, int(sigma // 4))
    m = -(-n // f) + 2
    z = ndimage.gaussian_filter(rng.standard_normal((m, m)).astype(np.float32), sigma / f, mode="wrap")
    if f > 1:
        z = ndimage.zoom(z, f, order=1)
    z = z[:n, :n]
    return (z - z.mean()) / (z.std() + 1e-6)


def fbm(rng: np.random.Generator, n: int, sigmas: tuple[float, ...], weights: tuple[float, ...]) -> np.ndarray:
    return sum(w * smooth_field(rng, n, s) for s, w in zip(sigmas, weights)) / sum(weights)


def rotated(n: int, angle: float, centre: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    xx, yy = xx - centre[1], yy - centre[0]
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _edges(rng: np.random.Generator, lo: float, hi: float, step: tuple[float, float]) -> np.ndarray:
    out = [lo - rng.uniform(0, step[1])]
    while out[-1] < hi:
        out.append(out[-1] + rng.uniform(*step))
    return np.array(out, np.float32)


def _curve_mask(rng: np.random.Generator, n: int, meander: float, width: float) -> np.ndarray:
    """A long curve across the region (river or road), ``width`` px wide."""
    p0 = rng.uniform(0.2 * n, 0.8 * n, 2)
    a = rng.uniform(0, np.pi)
    d, nrm = np.array([np.sin(a), np.cos(a)]), np.array([np.cos(a), -np.sin(a)])
    t = np.arange(-1.5 * n, 1.5 * n, 0.5)
    lam = rng.uniform(40, 120)
    walk = ndimage.gaussian_filter1d(np.cumsum(rng.standard_normal(t.size)), 30) * 0.5
    off = meander * (np.sin(2 * np.pi * t / lam + rng.uniform(0, 6.3)) * rng.uniform(5, 20) + walk)
    pts = p0[None] + t[:, None] * d[None] + off[:, None] * nrm[None]
    ij = np.round(pts).astype(int)
    ok = (ij >= 0).all(1) & (ij < n).all(1)
    line = np.zeros((n, n), bool)
    line[ij[ok, 0], ij[ok, 1]] = True
    if width <= 1.0:
        return line
    return ndimage.distance_transform_edt(~line) <= width / 2


def make_landcover(rng: np.random.Generator, n: int, biome: str, tropical: bool = False) -> LandCover:
    """Synthesize one (n, n) region of ``biome``."""
    b = BIOME_TABLE[biome]
    area = (n / 256.0) ** 2
    elev = fbm(rng, n, (48, 16, 5), (1.0, 0.45, 0.15)) * b.relief
    moist = smooth_field(rng, n, 14)

    # Natural cover: whichever smooth field (plus biome bias) is highest.
    fields = np.stack([
        smooth_field(rng, n, 11) + 0.35 * smooth_field(rng, n, 3) + b.tree - (0.6 * elev if biome == "mountain" else 0),
        smooth_field(rng, n, 9) + 0.35 * smooth_field(rng, n, 3) + b.shrub,
        smooth_field(rng, n, 13) + 0.35 * smooth_field(rng, n, 3) + b.grass,
        smooth_field(rng, n, 10) + 0.35 * smooth_field(rng, n, 3) + b.bare + (0.5 * elev if biome == "mountain" else 0),
    ])  # fmt: skip
    codes = np.array([TREE, SHRUB, GRASS, BARE], np.uint8)[fields.argmax(0)]

    # Cropland parcels on a rotated grid with staggered rows in each column.
    parcel = np.zeros((n, n), np.int32)
    angle = float(rng.choice([0.0, rng.uniform(-0.5, 0.5)], p=[0.4, 0.6]))
    farm_share = rng.uniform(*b.farm)
    if farm_share > 0.02:
        zone = smooth_field(rng, n, 28)
        farm = zone > np.quantile(zone, 1.0 - farm_share)
        u, v = rotated(n, angle, (n / 2, n / 2))
        ce = _edges(rng, float(u.min()), float(u.max()), (9, 30))
        ci = np.searchsorted(ce, u)
        off = rng.uniform(0, 30, ce.size + 1).astype(np.float32)
        re = _edges(rng, float(v.min()) - 30, float(v.max()) + 30, (7, 24))
        ri = np.searchsorted(re, v + off[ci])
        _, pid = np.unique(ci * 100000 + ri, return_inverse=True)
        pid = pid.reshape(n, n).astype(np.int32) + 1
        parcel = np.where(farm, pid, 0)
        kinds = rng.choice(
            np.array([CROP, GRASS, BARE, SHRUB], np.uint8), size=int(pid.max()) + 1, p=[0.78, 0.14, 0.05, 0.03]
        )
        codes = np.where(farm, kinds[pid], codes)
        # Hedgerows: trees along some parcel edges.
        edge = np.zeros((n, n), bool)
        edge[:, 1:] |= pid[:, 1:] != pid[:, :-1]
        edge[1:, :] |= pid[1:, :] != pid[:-1, :]
        hedge = edge & farm & (smooth_field(rng, n, 8) > 0.9 - 0.4 * b.tree)
        codes[hedge] = TREE
        parcel[hedge] = 0

    # Towns: rotated street grid; blocks built up towards the centre, gardens and parks outside.
    roof = np.zeros((n, n), np.int32)
    street = np.zeros((n, n), bool)
    next_roof = 1
    for _ in range(rng.poisson(b.towns * area) + (1 if biome == "urban" else 0)):
        cy, cx = rng.uniform(0.1 * n, 0.9 * n, 2)
        radius = rng.uniform(*b.town_radius) * (n / 256.0 if biome == "urban" else 1.0)
        yy, xx = np.mgrid[0:n, 0:n]
        d = np.hypot(yy - cy, xx - cx) / radius
        town = d * (1 + 0.3 * smooth_field(rng, n, 10)) < 1.0
        if not town.any():
            continue
        ta = rng.uniform(-0.8, 0.8)
        u, v = rotated(n, ta, (cy, cx))
        bx, by = rng.uniform(6, 12), rng.uniform(5, 11)
        su, sv = np.mod(u, bx), np.mod(v, by)
        is_street = (su < 1.0) | (sv < 1.0)
        bu, bv = np.floor(u / bx).astype(np.int64), np.floor(v / by).astype(np.int64)
        _, blk = np.unique(bu * 100003 + bv, return_inverse=True)
        blk = blk.reshape(n, n)
        nb = int(blk.max()) + 1
        r_blk = rng.random(nb)
        dens = np.clip(1.25 - d, 0.15, 1.0)
        built_blk = r_blk[blk] < dens
        park = rng.random(nb)[blk] < 0.06
        garden = np.where(rng.random(nb)[blk] < 0.35, TREE, GRASS).astype(np.uint8)
        lab = np.where(is_street | (built_blk & ~park), BUILT, garden)
        codes = np.where(town, lab, codes).astype(np.uint8)
        parcel[town] = 0
        street |= town & is_street
        # Roofs: each built block split into 1-4 buildings by random cuts inside the block.
        cut_u, cut_v = rng.uniform(0.35, 0.65, nb), rng.uniform(0.35, 0.65, nb)
        split_u, split_v = rng.random(nb) < 0.6, rng.random(nb) < 0.5
        part = ((su / bx > cut_u[blk]) & split_u[blk]).astype(np.int64) * 2 + ((sv / by > cut_v[blk]) & split_v[blk])
        rid = next_roof + blk * 4 + part
        has_roof = town & ~is_street & built_blk & ~park
        roof = np.where(has_roof, rid, roof).astype(np.int32)
        next_roof += nb * 4

    # Water: lakes in low ground, meandering rivers.
    water = np.zeros((n, n), bool)
    lake_share = rng.uniform(0, b.lakes)
    if lake_share > 0.005:
        low = -elev + 0.5 * smooth_field(rng, n, 12)
        water |= low > np.quantile(low, 1.0 - lake_share)
    for _ in range(rng.poisson(b.rivers * np.sqrt(area))):
        water |= _curve_mask(rng, n, meander=1.0, width=rng.choice([1.0, rng.uniform(2, 6)], p=[0.35, 0.65]))
    # Roads after water would make bridges; keep them before so rivers cut roads cleanly.
    for _ in range(rng.poisson(b.roads * np.sqrt(area))):
        road = _curve_mask(rng, n, meander=0.15, width=1.0)
        codes[road] = BUILT
        street |= road
        roof[road] = 0
        parcel[road] = 0
    if water.any():
        codes[water] = WATER
        roof[water] = 0
        street &= ~water
        parcel[water] = 0
        dist = ndimage.distance_transform_edt(~water)
        wet_w = rng.uniform(*b.wet_width)
        natural = np.isin(codes, (TREE, SHRUB, GRASS, BARE, CROP))
        shore = (dist <= wet_w * (1 + 0.8 * moist)) & ~water & natural
        if biome == "wetland":
            shore |= natural & (moist > 1.1)
        codes[shore] = MANGROVE if tropical else WETLAND
        if tropical:  # mangroves fringe the water; herbaceous wetland further inland
            codes[shore & (dist > 0.6 * wet_w + 1)] = WETLAND
        parcel[shore] = 0

    if biome == "mountain":
        hi = elev > np.quantile(elev, 0.9)
        codes[hi & ~water] = SNOW
        mid = (elev > np.quantile(elev, 0.78)) & ~hi & ~water & (codes != BUILT)
        codes[mid & (moist > -0.3)] = MOSS
        codes[mid & (moist <= -0.3)] = BARE
    parcel[np.isin(codes, (SNOW, MOSS))] = 0
    return LandCover(codes.astype(np.uint8), elev.astype(np.float32), parcel, angle, roof, street, biome, tropical)
