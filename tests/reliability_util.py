"""Helpers for the reliability suite: run the real CLI in a subprocess and check what it left on disk.

Every run goes through ``python -m terrasynth`` (or :data:`RUNNER`, which adds a stand-in
generator family and optional fault hooks before calling the same ``main``) with this
worktree's ``src`` first on ``PYTHONPATH``, so the tests see exactly what a user sees:
exit code, stderr and the files left behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
RUNNER = TESTS / "reliability_runner.py"


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)])
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e["TQDM_DISABLE"] = "1"
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra)
    return e


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def cli(*args: object, debug: bool = False, runner: bool = False, cwd: Path | None = None,
        timeout: float = 120, **env_extra: str) -> Result:  # fmt: skip
    """Run ``terrasynth ARGS`` in a subprocess; ``runner`` uses :data:`RUNNER` (stand-in generator, hooks)."""
    head = [sys.executable, str(RUNNER)] if runner else [sys.executable, "-m", "terrasynth"]
    argv = [*head, *(["--debug"] if debug else []), "-q", *map(str, args)]
    p = subprocess.run(argv, capture_output=True, text=True, env=env(**env_extra), cwd=cwd, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_user_error(res: Result, *needles: str) -> None:
    """Exit 2, exactly one stderr line naming every needle, no traceback."""
    assert res.rc == 2, f"exit {res.rc}, stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr_lines
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.stderr}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def assert_no_partial_output(out: Path, *, strict: bool = True) -> None:
    """``strict``: nothing was created at ``out``. Otherwise: an unfinished dataset (readers refuse it) whose
    every file is whole: no dataset.json, no temporary files, every tile a readable GeoTIFF."""
    if strict:
        assert not out.exists() or not any(out.iterdir()), f"{out} holds {sorted(p.name for p in out.rglob('*'))}"
        return
    if not out.exists():
        return
    assert not (out / "dataset.json").exists(), f"{out}/dataset.json exists after a failed run"
    leftovers = [p for p in out.rglob(".tmp-*")]
    assert not leftovers, f"temporary files left: {leftovers}"
    for tif in out.rglob("*.tif"):
        with rasterio.open(tif) as src:  # a half-written tile would not open or read
            src.read()


def sha_tree(root: Path) -> dict[str, str]:
    """sha256 of every tile plus index.csv and the dataset.json minus its provenance command."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix == ".tif" or p.name == "index.csv"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- inputs ----------------------------------------------------------------------------------


def make_pairs(root: Path, n: int = 3, size: int = 40, codes=(10, 30, 50, 80), seed: int = 0) -> tuple[Path, Path]:
    """``n`` RGB PNGs and WorldCover-coded single-band mask PNGs of ``size`` px; returns (images, masks)."""
    rng = np.random.default_rng(seed)
    img, msk = root / "img", root / "msk"
    img.mkdir(parents=True, exist_ok=True)
    msk.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(img / f"p{i}.png")
        m = rng.choice(codes, size=(size // 4, size // 4)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(m).save(msk / f"p{i}.png")
    return img, msk


def write_tif(path: Path, arr: np.ndarray, crs: str | None = "EPSG:32633",
              transform=None, nodata=None) -> Path:  # fmt: skip
    """(H, W) or (C, H, W) array -> GeoTIFF (georeferenced unless ``crs`` is None)."""
    arr = arr if arr.ndim == 3 else arr[None]
    c, h, w = arr.shape
    prof = dict(driver="GTiff", width=w, height=h, count=c, dtype=arr.dtype.name)
    if crs is not None:
        prof.update(crs=crs, transform=transform or from_origin(500000, 4000000, 1.0, 1.0))
    if nodata is not None:
        prof["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **prof) as d:
        d.write(arr)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# ---- killing ---------------------------------------------------------------------------------


def run_and_kill(args: list[object], after_s: float, runner: bool = False, **env_extra: str) -> int | None:
    """Start ``terrasynth ARGS``, SIGKILL it after ``after_s`` seconds (if still running); return its rc."""
    head = [sys.executable, str(RUNNER)] if runner else [sys.executable, "-m", "terrasynth"]
    p = subprocess.Popen([*head, "-q", *map(str, args)], env=env(**env_extra),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + after_s
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    return p.returncode


# ---- CLI error cases (shared by the bad-input test modules) ---------------------------------


@dataclass
class Case:
    argv: list[object]
    needles: list[str]
    out: Path | None = None
    runner: bool = False
    strict: bool = True  # nothing at all may be created at ``out``
    setup_env: dict[str, str] = field(default_factory=dict)


def imported_dataset(tmp: Path) -> Path:
    """A finished 8-tile dataset at ``tmp/out``, built in-process (it is set-up, not the case under test)."""
    from terrasynth.data.importers import PairImportConfig, import_pairs

    img, msk = make_pairs(tmp, n=2)
    import_pairs(img, msk, PairImportConfig(tile=16), tmp / "out")
    return tmp / "out"
