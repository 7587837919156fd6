"""Remote COGs through GDAL /vsicurl/ against a local HTTP server: range reads and retries."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geo_fixtures import serve, write_cog
from terrasynth.errors import UserError
from terrasynth.geo.read import RasterCache, gdal_env, gdal_path, open_raster

WINDOW = ((300, 364), (500, 564))


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8)  # noise: no compression, a 3 MB file
    write_cog(d / "scene.tif", img, "EPSG:32618", from_origin(500000, 4500000, 1.0, 1.0))
    return d


def _local(cog_dir):
    with rasterio.open(cog_dir / "scene.tif") as src:
        return src.read(window=WINDOW)


def _env(**kw):
    return rasterio.Env(**gdal_env(http_retries=2, retry_delay=0.01, **kw))


def test_window_read_uses_range_requests_and_no_sidecar_probes(cog_dir):
    with serve(cog_dir) as srv, _env():
        url = srv.base + "/scene.tif?t=range"
        assert gdal_path(url) == "/vsicurl/" + url
        with open_raster(url) as src:
            data = src.read(window=WINDOW)
    np.testing.assert_array_equal(data, _local(cog_dir))
    size = (cog_dir / "scene.tif").stat().st_size
    assert {p for _, p, _, _ in srv.log} == {"/scene.tif"}  # no .aux.xml/.ovr/.msk, no directory listing
    assert all(rng is not None for m, _, rng, _ in srv.log if m == "GET")  # only range requests
    assert srv.bytes_sent < 0.15 * size  # a 64 px window of a 1024 px COG, not the file


def test_transient_failures_when_opening_are_retried(cog_dir):
    with serve(cog_dir) as srv, _env():
        srv.fail = lambda n, path, rng: n < 7  # more than GDAL's own retries: ours must take over
        src = open_raster(srv.base + "/scene.tif?t=open", retries=4, backoff=0.01)
        data = src.read(window=WINDOW)
        src.close()
    np.testing.assert_array_equal(data, _local(cog_dir))
    statuses = [s for *_, s in srv.log]
    assert statuses[:7] == [503] * 7 and statuses[-1] == 206


def test_transient_failures_during_block_reads_are_retried(cog_dir):
    with serve(cog_dir) as srv, _env(cache_mb=1):
        cache = RasterCache(retries=4, backoff=0.01)
        url = srv.base + "/scene.tif?t=blocks"
        cache.get(url)  # opened: header and tile index fetched
        opened = srv.count
        srv.fail = lambda n, path, rng: opened <= n < opened + 6
        data = cache.read(url, lambda src: src.read(window=WINDOW))
        cache.close()
    np.testing.assert_array_equal(data, _local(cog_dir))
    assert [s for *_, s in srv.log].count(503) == 6


def test_persistent_errors_and_missing_files_are_one_line_user_errors(cog_dir):
    with serve(cog_dir) as srv, _env():
        srv.fail = lambda n, path, rng: True
        with pytest.raises(UserError, match="503"):
            open_raster(srv.base + "/scene.tif?t=down", retries=2, backoff=0.01)
        srv.fail = lambda n, path, rng: False
        n0 = srv.count
        with pytest.raises(UserError, match="cannot be opened"):
            open_raster(srv.base + "/missing.tif", retries=3, backoff=0.01)
        assert srv.count - n0 <= 2  # a 404 is not retried


def test_signed_hrefs_are_signed_again_after_a_403(cog_dir):
    """Planetary Computer SAS tokens expire: a 403 makes the cache sign the href afresh."""
    tokens = iter(["expired", "fresh", "fresh2"])
    signed = []

    def sign(href):
        signed.append(f"{href}?token={next(tokens)}")
        return signed[-1]

    with serve(cog_dir) as srv, _env():
        srv.forbid = "token=expired"  # the server answers 403 to the expired token
        cache = RasterCache(retries=3, backoff=0.01, sign=sign)
        data = cache.read(srv.base + "/scene.tif", lambda src: src.read(window=WINDOW))
        cache.close()
    np.testing.assert_array_equal(data, _local(cog_dir))
    assert signed[0].endswith("token=expired") and signed[1].endswith("token=fresh")
    assert any(s == 403 for *_, s in srv.log)
