"""Reading onto a grid: labels never gain codes, imagery is not altered by NAIP's alpha flag."""

from __future__ import annotations

import numpy as np
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject

from geo_fixtures import write_cog
from terrasynth.geo.reproject import Grid, read_onto_grid, snapped_grid, utm_crs


@settings(max_examples=25, deadline=None)
@given(
    codes=st.lists(st.sampled_from([0, 10, 20, 30, 40, 50, 60, 80, 90, 95]), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    gsd=st.sampled_from([3.0, 7.5, 10.0, 25.0]),
    dx=st.floats(-300, 300),
    dy=st.floats(-300, 300),
)
def test_label_reprojection_never_creates_codes_absent_from_the_source(tmp_path_factory, codes, seed, gsd, dx, dy):
    rng = np.random.default_rng(seed)
    lab = rng.choice(np.array(codes, np.uint8), size=(48, 48))
    lab = np.repeat(np.repeat(lab, 2, 0), 2, 1)  # 96 x 96, patches of 2 px
    path = write_cog(tmp_path_factory.mktemp("r") / "lc.tif", lab[None], "EPSG:4326",
                     from_origin(6.70, 0.31, 1 / 12000, 1 / 12000), nodata=0)  # fmt: skip
    crs = utm_crs(6.7, 0.3)
    with rasterio.open(path) as src:
        from rasterio.warp import transform_bounds

        b = transform_bounds(src.crs, crs, *src.bounds)
        grid = snapped_grid(crs, (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy), gsd)
        data, valid = read_onto_grid(src, grid, "label", [1], nodata=0)
    assert data.shape == (1, grid.height, grid.width)
    assert set(np.unique(data).tolist()) <= set(codes) | {0}
    assert (data[0][~valid] == 0).all()


def test_image_warp_ignores_nir_flagged_as_alpha(tmp_path):
    """NAIP marks band 4 (NIR) as alpha; GDAL's warper would weight bilinear by it and mask NIR=0."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (3, 64, 64), dtype=np.uint8)
    nir = rng.integers(0, 255, (1, 64, 64), dtype=np.uint8)
    nir[0, 20:30, 20:30] = 0
    tr = from_origin(500000.3, 4500000.1, 0.6, 0.6)
    naip = write_cog(tmp_path / "naip.tif", np.concatenate([rgb, nir]), "EPSG:32618", tr)
    plain = write_cog(tmp_path / "rgb.tif", rgb, "EPSG:32618", tr)
    grid = Grid(rasterio.crs.CRS.from_epsg(32618), from_origin(500002, 4499998, 1.0, 1.0), 30, 30)
    with rasterio.open(naip) as src:
        assert src.colorinterp[3].name == "alpha"  # as in real NAIP files
        data, valid = read_onto_grid(src, grid, "image", [1, 2, 3])
    ref = np.zeros((3, 30, 30), np.uint8)
    with rasterio.open(plain) as src:  # the same warp of an RGB-only copy: what NAIP's RGB should give
        reproject(src.read(), ref, src_transform=src.transform, src_crs=src.crs, dst_transform=grid.transform,
                  dst_crs=grid.crs, resampling=Resampling.bilinear)  # fmt: skip
    assert valid.all()  # NIR = 0 is a dark pixel, not a hole
    assert np.abs(data.astype(int) - ref.astype(int)).max() <= 1
