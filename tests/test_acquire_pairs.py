"""`data acquire --product pairs`: imagery + WorldCover warped onto exactly the same grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_bounds as transform_from_bounds
from rasterio.warp import transform_bounds
from scipy.ndimage import maximum_filter, minimum_filter

from conftest import run_cli
from geo_fixtures import codes_from_rgb, naip_like, palette, worldcover_patch, write_cog
from terrasynth.data.acquire import AcquireConfig, acquire

PATCH = (6.69, 0.27, 6.77, 0.35)  # São Tomé east coast, EPSG:4326
HOLE = (slice(360, 400), slice(360, 420))  # a nodata hole punched into the land cover
UTM32N = "EPSG:32632"


@pytest.fixture
def sao_tome(shared_data, tmp_path):
    """(landcover COG, NAIP-like COG at 2 m on UTM 32N, the codes it was rendered from)."""
    lc = worldcover_patch(shared_data, PATCH, tmp_path / "wc.tif", nodata_box=HOLE)
    img = tmp_path / "naip_like_32n.tif"
    codes = naip_like(lc, img, UTM32N, origin=(244000.5, 37000.25), res=2.0, shape=(1500, 1500))
    assert (codes == 0).any() and len(np.unique(codes)) > 4  # the hole and several classes are in view
    return lc, img, codes


def _cfg(lc, img, **kw):
    base = dict(source="local", product="pairs", landcover=[str(lc)], imagery=[str(img)], tile=128,
                max_nodata=1.0, block_size=1200.0)  # fmt: skip
    return AcquireConfig(**{**base, **kw})


def test_native_pairs_line_up_pixel_for_pixel_and_nodata_stays_nodata(sao_tome, tmp_path):
    lc, img, codes = sao_tome
    ds = acquire(_cfg(lc, img, gsd="native"), tmp_path / "pairs")
    assert ds.info.has_images and ds.info.kind == "real" and len(ds) >= 20
    assert {r.crs for r in ds.records} == {UTM32N}
    saw_hole = False
    with rasterio.open(img) as src:
        for rec in ds.records:
            lab, rgb = ds.read_label(rec), ds.read_image(rec)
            # the label is exactly the code the image pixel was painted from: same grid, no shift
            np.testing.assert_array_equal(lab, codes_from_rgb(rgb))
            crs, tr = ds.read_label_georef(rec)[1:]
            assert (tr.a, tr.e) == (src.transform.a, src.transform.e)
            col, row = ~src.transform * (tr.c, tr.f)
            assert col == pytest.approx(round(col)) and row == pytest.approx(round(row))
            np.testing.assert_array_equal(lab, codes[round(row) : round(row) + 128, round(col) : round(col) + 128])
            saw_hole |= bool((lab == 0).any())
    assert saw_hole, "the nodata hole reached the output as nodata"
    meta = json.loads((tmp_path / "pairs" / "dataset.json").read_text())
    assert meta["extra"]["scenes"][0]["crs"] == UTM32N and meta["has_images"] is True


def test_resampled_pairs_keep_codes_exact_and_aligned(sao_tome, tmp_path):
    lc, img, codes = sao_tome
    ds = acquire(_cfg(lc, img, gsd=4.0, tile=64, max_nodata=0.0), tmp_path / "p4")
    src_codes = set(np.unique(codes).tolist())
    assert len(ds) > 10
    for rec in ds.records:
        lab, rgb = ds.read_label(rec), ds.read_image(rec)
        assert set(np.unique(lab).tolist()) <= src_codes - {0}  # no interpolated codes, no nodata kept
        crs, tr = ds.read_label_georef(rec)[1:]
        assert tr.a == 4.0 and tr.c % 4 == 0 and tr.f % 4 == 0
        # where the 3x3 neighbourhood holds one class the bilinear image has that class's exact colour
        uniform = (maximum_filter(lab, 3) == minimum_filter(lab, 3))[1:-1, 1:-1]
        np.testing.assert_array_equal(rgb[1:-1, 1:-1][uniform], palette()[lab[1:-1, 1:-1][uniform]])


def test_real_naip_scenes_keep_their_own_utm_zone_and_rgb_bands(shared_data, tmp_path, rng):
    naip = [shared_data / "naip/m_4208701_ne_16_060_20200902.tif", shared_data / "naip/m_3211605_ne_11_060_20200415.tif"]
    for i, f in enumerate(naip):  # a WorldCover-coded label raster (EPSG:4326, ~9 m) around each scene
        with rasterio.open(f) as src:
            w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        h, wd = 16, 16
        lab = np.repeat(np.repeat(rng.choice([10, 30, 50, 80], (h // 4, wd // 4)), 4, 0), 4, 1).astype(np.uint8)
        write_cog(tmp_path / f"lc{i}.tif", lab[None], "EPSG:4326",
                  transform_from_bounds(w - 2e-4, s - 2e-4, e + 2e-4, n + 2e-4, wd, h), nodata=0)  # fmt: skip
    cfg = AcquireConfig(source="local", product="pairs", landcover=[str(tmp_path / "lc*.tif")],
                        imagery=[str(f) for f in naip], tile=64, gsd="native", block_size=5000.0)  # fmt: skip
    ds = acquire(cfg, tmp_path / "naip")
    assert {r.crs for r in ds.records} == {"EPSG:26916", "EPSG:26911"}  # each scene in its own zone
    for rec in ds.records:
        with rasterio.open(rec.source) as src:
            crs, tr = ds.read_label_georef(rec)[1:]
            col, row = (round(v) for v in ~src.transform * (tr.c, tr.f))
            ref = src.read([1, 2, 3], window=((row, row + 64), (col, col + 64)))
        np.testing.assert_array_equal(np.moveaxis(ds.read_image(rec), -1, 0), ref)


def test_no_overlap_between_imagery_and_landcover_is_a_one_line_error(shared_data, tmp_path, capsys):
    rc = run_cli("data", "acquire", "--source", "local", "--product", "pairs", "--tile", "32",
                 "--imagery", shared_data / "naip/m_4208701_ne_16_060_20200902.tif",
                 "--landcover", shared_data / "worldcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif",
                 "--out", tmp_path / "x")  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no overlap" in err


def test_overlapping_scenes_share_a_tile_lattice_and_yield_each_tile_once(sao_tome, tmp_path):
    lc, img, _ = sao_tome
    east = tmp_path / "naip_like_east.tif"  # overlaps the first scene by 1.8 km
    naip_like(lc, east, UTM32N, origin=(245200.5, 37000.25), res=2.0, shape=(1500, 1500))
    cfg = _cfg(lc, img, gsd=4.0, tile=64, max_nodata=0.0, block_size=1e6)
    both = acquire(cfg.model_copy(update={"imagery": [str(img), str(east)]}), tmp_path / "both")
    one = acquire(cfg, tmp_path / "one")
    corners = [(r.bounds[0], r.bounds[3]) for r in both.records]
    assert len(corners) == len(set(corners))  # no tile twice
    assert all(c[0] % 256 == 0 and c[1] % 256 == 0 for c in corners)  # on the 64 px x 4 m lattice
    assert {(r.bounds[0], r.bounds[3]) for r in one.records} < set(corners)
    meta = json.loads((tmp_path / "both" / "dataset.json").read_text())
    assert meta["extra"]["stats"]["duplicate"] > 0


def test_two_workers_write_the_same_pairs(sao_tome, tmp_path):
    lc, img, _ = sao_tome
    one = acquire(_cfg(lc, img, gsd=4.0, tile=64), tmp_path / "w1")
    two = acquire(_cfg(lc, img, gsd=4.0, tile=64, workers=2), tmp_path / "w2")
    assert (tmp_path / "w1" / "index.csv").read_text() == (tmp_path / "w2" / "index.csv").read_text()
    for a, b in zip(one.records[::7], two.records[::7]):
        np.testing.assert_array_equal(one.read_image(a), two.read_image(b))
