"""Render a procedural land-cover region as an aerial RGB image.

Colour alone must not give the class away: the per-class colour distributions overlap on
purpose (grass, pasture, young crops and shrub are all greens; fallow parcels, bare soil
and concrete are all greys and browns; water, wetland, mangroves and forest shade are all
dark). What separates them is texture and context, as in real imagery: tree crowns and
their shadows, crop rows inside rectangular parcels, roofs with cast shadows along street
grids, smooth water. On top come hillshade, season, illumination, haze, a slight optical
blur (mixed pixels at class edges) and sensor noise, so domain shift can be simulated.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from terrasynth.data.world_landcover import (
    BARE, BUILT, CROP, GRASS, LandCover, MANGROVE, MOSS, SHRUB, SNOW, TREE, WATER, WETLAND, rotated, smooth_field,
)  # fmt: skip

Season = Literal["spring", "summer", "autumn", "winter", "dry"]

# Per season: tree, grass, shrub-dark colours; crop stage probabilities (green, ripe, soil);
# deciduous share that turns (autumn colours / bare winter crowns).
_SEASON = {
    "spring": dict(tree=(60, 92, 48), grass=(116, 146, 72), shrub=(70, 95, 52), crop=(0.45, 0.10, 0.45), turn=0.0),
    "summer": dict(tree=(46, 70, 40), grass=(106, 130, 68), shrub=(62, 82, 48), crop=(0.55, 0.25, 0.20), turn=0.0),
    "autumn": dict(tree=(58, 70, 40), grass=(126, 128, 78), shrub=(96, 90, 58), crop=(0.15, 0.30, 0.55), turn=0.6),
    "winter": dict(tree=(40, 54, 42), grass=(122, 120, 94), shrub=(92, 86, 70), crop=(0.30, 0.0, 0.70), turn=0.6),
    "dry": dict(tree=(62, 74, 46), grass=(164, 150, 100), shrub=(110, 100, 70), crop=(0.10, 0.50, 0.40), turn=0.0),
}
_CROP_STAGE = np.array([[84, 122, 52], [182, 164, 98], [138, 112, 86]], np.float32)  # green, ripe, soil
_ROOFS = np.array([[156, 98, 82], [128, 126, 128], [98, 96, 100], [172, 168, 160], [122, 106, 94], [142, 134, 122]],
                  np.float32)  # fmt: skip
_HAZE = np.array([196, 202, 212], np.float32)


def _lerp(a, b, t):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * np.asarray(t, np.float32)[..., None]


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def render(
    lc: LandCover, rng: np.random.Generator, *, season: Season = "summer", sun_elevation: float = 45.0,
    sun_azimuth: float = 315.0, brightness: float = 1.0, haze: float = 0.0, noise: float = 3.0, blur: float = 0.6,
    jitter: float = 0.15,
) -> np.ndarray:  # fmt: skip
    """(R, R, 3) uint8 RGB for a region's land cover. Angles in degrees, azimuth clockwise from north."""
    codes = lc.codes
    n = codes.shape[0]
    se = _SEASON[season]
    img = np.zeros((n, n, 3), np.float32)
    mottle, detail = smooth_field(rng, n, 6), smooth_field(rng, n, 1.5)
    grain = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 0.6)
    grain /= grain.std() + 1e-6
    crown = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 0.9)
    crown /= crown.std() + 1e-6
    # Regional variation (species mix, soil moisture, phenology): absolute colour alone must not
    # identify a class across regions, only contrast and texture within a scene do.
    drift = rng.normal(0, 60 * jitter, 3).astype(np.float32)
    lushness = rng.random()

    def put(code: int, col: np.ndarray | tuple) -> None:
        m = codes == code
        if m.any():
            c = np.asarray(col, np.float32)
            img[m] = c[m] if c.ndim == 3 else c

    # Trees: crowns (bright tops, dark gaps); conifer-dark to deciduous-light per region;
    # some deciduous crowns turn in autumn/winter.
    contrast = rng.uniform(0.2, 0.4)
    crown_shade = (0.72 + contrast * np.tanh(1.2 * crown))[..., None]
    tree = _lerp(np.asarray(se["tree"], np.float32) * 0.85, np.asarray(se["tree"], np.float32) * 1.3 + (4, 10, 0),
                 rng.random()) + drift  # fmt: skip
    if se["turn"] > 0:
        f = smooth_field(rng, n, 2.0)
        turn = f > np.quantile(f, 1 - se["turn"])
        if season == "autumn":
            turned = np.where((smooth_field(rng, n, 1.5) > 0.3)[..., None], np.float32([140, 62, 40]),
                              np.float32([160, 100, 48]))  # fmt: skip
        else:
            turned = np.broadcast_to(np.float32([98, 88, 74]), (n, n, 3))
        tree = np.where(turn[..., None], turned, tree)
    put(TREE, np.broadcast_to(tree, (n, n, 3)) * crown_shade * (1 + 0.06 * mottle[..., None]))
    put(MANGROVE, np.broadcast_to(np.float32([36, 80, 50]) + drift, (n, n, 3)) * crown_shade)

    # Shrub: dark bushes scattered over soil: spans the colours of tree, grass and bare.
    soil = _lerp((172, 150, 120), (146, 146, 142), rng.random())
    bush = _sig(2.5 * smooth_field(rng, n, 1.2) + 0.3)
    put(SHRUB, _lerp(soil * 0.92, np.asarray(se["shrub"], np.float32) + drift, bush))
    grass = _lerp(np.asarray(se["grass"], np.float32) * 0.9, (150, 144, 96), (1 - lushness) * 0.8) + drift
    put(GRASS, grass + 12 * mottle[..., None] + 5 * detail[..., None])

    # Bare: regional soil colour between red-brown and grey rock, with grain.
    put(BARE, soil * (1 + 0.07 * mottle[..., None]) + 9 * grain[..., None])
    put(SNOW, np.float32([232, 236, 241]) + 4 * detail[..., None])
    put(MOSS, np.float32([146, 140, 106]) * (1 + 0.09 * mottle[..., None]) + 6 * grain[..., None])

    # Water: clear-deep to turbid-green per region, nearly flat.
    turbid = rng.random() ** 2
    put(WATER, _lerp((24, 48, 66), (70, 86, 70), np.full((n, n), turbid)) + 3 * mottle[..., None])
    pools = _sig(3 * smooth_field(rng, n, 1.5))
    put(WETLAND, _lerp(np.float32([90, 110, 72]) + drift, (44, 62, 62), pools))

    # Built-up: roofs per building, asphalt streets, concrete elsewhere.
    nroof = int(lc.roof.max()) + 1
    roof_col = _ROOFS[rng.integers(0, len(_ROOFS), nroof)] * rng.uniform(0.85, 1.12, (nroof, 1)).astype(np.float32)
    built = np.where(lc.street[..., None], np.float32([104, 104, 108]), np.float32([152, 149, 142]))
    built = np.where((lc.roof > 0)[..., None], roof_col[lc.roof], built) + 5 * grain[..., None]
    put(BUILT, built)

    # Parcels: each field its own crop stage, brightness and row direction.
    if lc.parcel.max() > 0:
        npar = int(lc.parcel.max()) + 1
        stage = rng.choice(3, size=npar, p=se["crop"])
        pcol = _CROP_STAGE[stage] + rng.normal(0, 10, (npar, 3)).astype(np.float32) + drift
        m = (codes == CROP) & (lc.parcel > 0)
        rows_along = rng.random(npar) < 0.5
        period = rng.uniform(2.2, 4.5, npar).astype(np.float32)
        amp = np.where(stage == 1, 0.05, 0.13) * rng.uniform(0.4, 1.0, npar)
        u, v = rotated(n, lc.parcel_angle)
        pid = lc.parcel[m]
        coord = np.where(rows_along[pid], u[m], v[m])
        rows = 1 + amp[pid] * np.sin(2 * np.pi * coord / period[pid] + rng.uniform(0, 6.3, npar)[pid])
        img[m] = pcol[pid] * rows[:, None].astype(np.float32) * (1 + 0.04 * mottle[m])[:, None]
        inparcel = lc.parcel > 0
        gain = rng.normal(1, 0.06, npar).astype(np.float32)
        img[inparcel] *= gain[lc.parcel[inparcel]][:, None]

    # Cast shadows away from the sun: buildings (long) and tree edges (short).
    dy, dx = _shadow_step(sun_azimuth)
    for mask, length, dark in ((lc.roof > 0, 2 if sun_elevation < 40 else 1, 0.55), (codes == TREE, 1, 0.72)):
        cast = np.zeros_like(mask)
        for k in range(1, length + 1):
            cast |= np.roll(mask, (k * dy, k * dx), axis=(0, 1))
        img[cast & ~mask] *= dark

    # Hillshade (flat ground at 45 degrees sun = 1.0), water stays flat.
    gy, gx = np.gradient(lc.elevation * 6.0)
    az, el = np.radians(sun_azimuth), np.radians(sun_elevation)
    light = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)], np.float32)
    shade = (-gx * light[0] - gy * light[1] + light[2]) / np.sqrt(gx**2 + gy**2 + 1)
    shade = np.where(codes == WATER, light[2], np.clip(shade, 0, 1))
    img *= (0.35 + 0.65 * shade / np.sin(np.radians(45)))[..., None]

    # Illumination and colour balance vary a little per region (jitter); haze; blur; noise.
    gain = brightness * max(0.3, 1 + jitter * rng.standard_normal())
    balance = 1 + jitter * 0.3 * rng.standard_normal(3).astype(np.float32)
    img *= gain * balance
    if haze > 0:
        h = np.clip(haze * (0.75 + 0.25 * smooth_field(rng, n, 30)), 0, 1)[..., None]
        img = img * (1 - h) + _HAZE * h
    if blur > 0:
        img = ndimage.gaussian_filter(img, (blur, blur, 0))
    if noise > 0:
        img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _shadow_step(azimuth: float) -> tuple[int, int]:
    """Pixel step (dy, dx) pointing away from the sun (image rows grow southwards)."""
    a = np.radians(azimuth)
    return int(np.rint(np.cos(a))), int(np.rint(-np.sin(a)))
