"""Opening local and remote rasters: GDAL settings for COGs over HTTP, and retries.

Remote COGs are read with HTTP range requests through GDAL's ``/vsicurl/``. The settings
in :func:`gdal_env` stop GDAL from listing directories or probing side-car files
(``.aux.xml``, ``.ovr``, ``.msk``) and let it merge neighbouring ranges and cache blocks.
GDAL itself retries 429/5xx answers (``GDAL_HTTP_MAX_RETRY``); :func:`with_retries`
adds our own retry with exponential backoff around opens and reads for errors that get
past GDAL (dropped connections, a server down for longer than GDAL waits).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import time
from pathlib import Path
from typing import Callable, TypeVar

import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.io import DatasetReader

from terrasynth.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Messages of GDAL/curl errors worth retrying: server-side trouble, not a broken file.
TRANSIENT = re.compile(
    r"HTTP (response )?code: ?(408|429|5\d\d)|timed? ?out|Connection|connect|reset by peer|"
    r"SSL|Recv failure|Send failure|transfer closed|Empty reply|Could not resolve|IReadBlock failed|"
    r"read failed|TIFFReadEncodedTile|TIFFFillTile",
    re.IGNORECASE,
)


def gdal_env(http_retries: int = 3, retry_delay: float = 0.5, cache_mb: int = 64) -> dict[str, str | int | bool]:
    """GDAL configuration for reading cloud-optimised GeoTIFFs with few requests."""
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing to find side-cars
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",  # and no probing for .aux/.ovr/.msk
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_INGESTED_BYTES_AT_OPEN": 32768,  # header + tile index in the first request
        "VSI_CACHE": True,
        "VSI_CACHE_SIZE": cache_mb * 1024 * 1024,
        "GDAL_CACHEMAX": cache_mb,
        "GDAL_HTTP_MAX_RETRY": http_retries,
        "GDAL_HTTP_RETRY_DELAY": retry_delay,
        "GDAL_HTTP_TIMEOUT": 60,
        "CPL_VSIL_CURL_CHUNK_SIZE": 65536,
    }


def is_remote(href: str) -> bool:
    return href.startswith(("http://", "https://", "s3://", "gs://", "/vsi"))


def gdal_path(href: str) -> str:
    """The path GDAL opens for ``href``: ``/vsicurl/`` for HTTP(S), ``/vsis3/`` etc. for buckets."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("gs://"):
        return "/vsigs/" + href[5:]
    if href.startswith("file://"):
        return href[7:]
    return href


# An expired signature (Planetary Computer SAS tokens last about an hour) answers 403:
# worth retrying only when the href is re-signed before the next attempt.
EXPIRED = re.compile(r"HTTP (response )?code: ?403")


def is_transient(exc: BaseException, signed: bool = False) -> bool:
    if not isinstance(exc, (RasterioError, OSError)):
        return False
    return bool(TRANSIENT.search(str(exc)) or (signed and EXPIRED.search(str(exc))))


def with_retries(
    fn: Callable[[], T], what: str, retries: int = 4, backoff: float = 0.5, on_retry: Callable[[], None] | None = None,
    signed: bool = False,
) -> T:
    """Call ``fn``; on a transient I/O error wait ``backoff * 2**k`` seconds and try again.

    ``on_retry`` runs before each new attempt (e.g. to drop a handle and GDAL's cache);
    ``signed``: hrefs are re-signed on retry, so a 403 (expired token) is retried too.
    """
    for attempt in range(retries + 1):
        try:
            return fn()
        except (RasterioError, OSError) as exc:
            if attempt == retries or not is_transient(exc, signed):
                raise
            delay = backoff * 2**attempt
            log.warning("%s: transient error (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, retries, delay)
            time.sleep(delay)
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")


@functools.cache
def _libgdal() -> ctypes.CDLL | None:
    """The GDAL library rasterio loaded (the same instance, so its caches are the ones cleared)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgdal" in line and line.rstrip().endswith(tuple("0123456789o"))}
        # Other packages may bundle a GDAL of their own (pyogrio, pulled in by pylandstats ->
        # geopandas): clear the cache of the copy rasterio uses, or the retries never reach the server.
        for path in sorted(paths, key=lambda p: ("rasterio" not in p, p)):
            lib = ctypes.CDLL(path)
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            return lib
    except (OSError, AttributeError):
        pass
    return None


def clear_http_cache(href: str) -> None:
    """Forget what GDAL cached about a remote file: after a failure it would otherwise keep
    answering from its cache ("HTTP 503") without asking the server again."""
    if not is_remote(href):
        return
    lib = _libgdal()
    if lib is None:
        log.debug("cannot reach GDAL's VSICurlPartialClearCache; retries may reuse a cached failure")
        return
    lib.VSICurlPartialClearCache(gdal_path(href).encode())


def open_raster(
    href: str, retries: int = 4, backoff: float = 0.5, sign: Callable[[str], str] | None = None
) -> DatasetReader:
    """Open a local file or remote COG; a missing, corrupt or CRS-less raster is a UserError.

    ``sign`` turns ``href`` into a readable URL (e.g. ``planetary_computer.sign_url``) at
    each attempt, so an expired signature is renewed by the retry."""
    if not is_remote(href) and not Path(gdal_path(href)).is_file():
        raise UserError(f"{href}: raster file not found; check the path or glob")
    try:
        src = with_retries(lambda: rasterio.open(gdal_path(sign(href) if sign else href)), href, retries, backoff,
                           lambda: clear_http_cache(href), signed=sign is not None)  # fmt: skip
    except RasterioIOError as exc:
        raise UserError(f"{href}: cannot be opened as a raster ({exc}); check that it is a valid GeoTIFF/COG") from exc
    if src.crs is None:
        src.close()
        raise UserError(f"{href}: has no CRS; only georeferenced rasters can be tiled (assign one with gdal_edit.py -a_srs)")
    return src


class RasterCache:
    """Open datasets kept per process, so a scene is opened once, not once per tile."""

    def __init__(self, retries: int = 4, backoff: float = 0.5, sign: Callable[[str], str] | None = None):
        self.retries, self.backoff, self.sign = retries, backoff, sign
        self._open: dict[str, DatasetReader] = {}

    def get(self, href: str) -> DatasetReader:
        if href not in self._open:
            self._open[href] = open_raster(href, self.retries, self.backoff, self.sign)
        return self._open[href]

    def read(self, href: str, fn: Callable[[DatasetReader], T]) -> T:
        """``fn(dataset)`` with retries; a failed attempt drops the handle and GDAL's cache first
        (and, when signing, the next open signs the href afresh)."""
        return with_retries(lambda: fn(self.get(href)), href, self.retries, self.backoff, lambda: self.reset(href),
                            signed=self.sign is not None)  # fmt: skip

    def reset(self, href: str) -> None:
        old = self._open.pop(href, None)
        if old is not None:
            old.close()
        clear_http_cache(href)

    def close(self) -> None:
        for src in self._open.values():
            src.close()
        self._open.clear()
