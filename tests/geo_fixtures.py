"""Tiny real rasters and a local HTTP server for the acquire tests (no network).

Rasters are cut from the real WorldCover tile (skipped when the shared data is absent)
or built here with a real CRS and transform; imagery is a NAIP-like 4-band RGBN COG on a
UTM grid rendered from land cover, so that pairing can be checked pixel for pixel.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import from_bounds

from terrasynth.classes import WORLDCOVER

WC2021 = "worldcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"


def write_cog(path: Path, data: np.ndarray, crs: Any, transform: Affine, nodata: float | None = None,
              photometric: str | None = None) -> Path:  # fmt: skip
    """Write (C, H, W) ``data`` as a deflate COG with 256 px blocks (and overviews when large)."""
    c, h, w = data.shape
    prof = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype, crs=crs, transform=transform)
    if nodata is not None:
        prof["nodata"] = nodata
    with MemoryFile() as mem:
        with mem.open(**prof) as dst:
            dst.write(data)
        with mem.open() as src:
            opts = dict(compress="deflate", blocksize=256, overview_resampling="nearest")
            if photometric:
                opts["photometric"] = photometric
            rasterio.shutil.copy(src, path, driver="COG", **opts)
    return path


def worldcover_patch(shared_data: Path, bbox: tuple[float, float, float, float], out: Path,
                     nodata_box: tuple[slice, slice] | None = None) -> Path:  # fmt: skip
    """A COG of the real WorldCover over ``bbox`` (EPSG:4326, native grid), optionally with a nodata hole."""
    with rasterio.open(shared_data / WC2021) as src:
        win = from_bounds(*bbox, transform=src.transform).round_offsets().round_lengths()
        codes = src.read(1, window=win)
        tr = src.window_transform(win)
    if nodata_box is not None:
        codes[nodata_box] = 0
    return write_cog(out, codes[None], "EPSG:4326", tr, nodata=0)


def naip_like(landcover: Path, out: Path, crs: str, origin: tuple[float, float], res: float,
              shape: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """Render a NAIP-like RGBN COG on a UTM grid: each pixel the WorldCover colour of its code.

    Returns the (H, W) codes it was rendered from (nearest neighbour, exact transformer);
    land-cover nodata is painted black, a colour no WorldCover class has.
    """
    h, w = shape
    tr = from_origin(origin[0], origin[1], res, res)
    with rasterio.open(landcover) as src, WarpedVRT(src, crs=crs, transform=tr, width=w, height=h,
                                                    resampling=Resampling.nearest, tolerance=1e-6, nodata=0) as vrt:
        codes = vrt.read(1)  # fmt: skip
    rgb = palette()[codes]  # (H, W, 3)
    nir = np.where(codes > 0, 200, 0).astype(np.uint8)
    write_cog(out, np.concatenate([np.moveaxis(rgb, -1, 0), nir[None]]), crs, tr)
    return codes


def palette() -> np.ndarray:
    """(256, 3) uint8: WorldCover code -> colour; nodata and unknown codes -> black."""
    lut = np.zeros((256, 3), np.uint8)
    for c in WORLDCOVER.classes:
        lut[c.code] = c.colour
    return lut


def codes_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`palette` for (H, W, 3) images; black -> 0."""
    out = np.zeros(rgb.shape[:2], np.uint8)
    for c in WORLDCOVER.classes:
        out[(rgb == np.array(c.colour, np.uint8)).all(-1)] = c.code
    return out


# ---- a local HTTP server with range requests ----------------------------------------------


class Server:
    """Serves files (with ``Range``) and JSON routes on 127.0.0.1; logs every request.

    ``fail(n, path, range)`` decides per request whether to answer 503 (a transient
    failure), e.g. ``lambda n, path, rng: n < 5`` fails the first five requests.
    """

    def __init__(self, root: Path):
        self.root = root
        self.routes: dict[str, Callable[[dict[str, Any] | None], Any]] = {}
        self.log: list[tuple[str, str, str | None, int]] = []  # method, path, range, status
        self.fail: Callable[[int, str, str | None], bool] = lambda n, path, rng: False
        self.count = 0
        self.bytes_sent = 0  # file bytes sent (range bodies and whole-file GETs)
        self.lock = threading.Lock()
        self.base = ""
        self.forbid: str | None = None  # answer 403 to requests whose query holds this (expired tokens)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                with srv.lock:
                    n = srv.count
                    srv.count += 1
                if srv.forbid and srv.forbid in self.path:
                    srv.log.append((self.command, path, rng, 403))
                    return self._reply(403, b"AuthenticationFailed", "text/plain")
                if srv.fail(n, path, rng):
                    srv.log.append((self.command, path, rng, 503))
                    return self._reply(503, b"busy", "text/plain")
                if path in srv.routes:
                    body = None
                    if self.command == "POST":
                        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    data = json.dumps(srv.routes[path](body)).replace("{BASE}", srv.base).encode()
                    srv.log.append((self.command, path, rng, 200))
                    return self._reply(200, data, "application/json")
                f = srv.root / path.lstrip("/")
                if not f.is_file():
                    srv.log.append((self.command, path, rng, 404))
                    return self._reply(404, b"not found", "text/plain")
                blob = f.read_bytes()
                m = re.match(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    a = int(m.group(1))
                    b = min(int(m.group(2)) if m.group(2) else len(blob) - 1, len(blob) - 1)
                    srv.log.append((self.command, path, rng, 206))
                    srv.bytes_sent += b + 1 - a
                    return self._reply(206, blob[a : b + 1], "image/tiff",
                                       {"Content-Range": f"bytes {a}-{b}/{len(blob)}", "Accept-Ranges": "bytes"})  # fmt: skip
                srv.log.append((self.command, path, rng, 200))
                srv.bytes_sent += len(blob) if self.command == "GET" else 0
                return self._reply(200, blob, "image/tiff", {"Accept-Ranges": "bytes"})

            do_GET = do_HEAD = do_POST = _handle

        return H


@contextmanager
def serve(root: Path) -> Iterator[Server]:
    """Run a :class:`Server` for ``root`` in a thread; yields it with ``base`` set to its URL."""
    srv = Server(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), srv.handler())
    srv.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
