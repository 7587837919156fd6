"""Up-front size checks: estimate memory and disk before the work starts, and refuse what cannot fit.

A resize to an absurd GSD or ``--tiles 1000000000`` used to run until the kernel killed the
process (no message) or the disk filled. Every command that can be asked for more than the
machine has calls :func:`check_budget` with its estimate before it writes anything; the
error names the numbers and the fix. Estimates are deliberately rough (within ~2x): they
catch requests that are orders of magnitude too large, not runs that are a little tight.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from terrasynth.errors import UserError

# Bytes on disk per pixel of a tile: an RGB image deflates poorly (~0.9 of 3 bytes for aerial
# texture) and a label tile well (~0.1 of 1 byte); plus a GeoTIFF header per file.
DISK_PER_PIXEL = 3 * 0.9 + 0.1
DISK_PER_FILE = 1024
# Disk is refused only beyond this multiple of the free space: a run that is merely tight fails later
# with the one-line disk-full error and resumes once there is room (docs/reliability.md, G4), which
# an estimate this rough must not pre-empt. Memory has no such margin: running out of it is a kill.
DISK_SLACK = 2.0
# A tile's record in memory (TileRecord with its class-count dict) and its index/journal lines.
RECORD_BYTES = 2048


def human(n: float) -> str:
    """``1.2 GB``-style size (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def available_memory() -> int:
    """Bytes this process may still allocate: the least of free RAM (MemAvailable), the cgroup
    limit and RLIMIT_AS."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                limits.append(int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    if not limits:
        import psutil  # not reached on Linux

        limits.append(psutil.virtual_memory().available)
    return max(0, min(limits))


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 1 << 62  # unknown: do not refuse


def tiles_disk_bytes(tiles: int, size: int, *, images: bool = True) -> int:
    """Estimated bytes on disk of ``tiles`` tiles of ``size`` x ``size`` px (label, and image)."""
    per_px = DISK_PER_PIXEL if images else 0.1
    return int(tiles * (size * size * per_px + DISK_PER_FILE * (2 if images else 1) + RECORD_BYTES / 4))


def check_budget(what: str, *, memory: int = 0, disk: int = 0, out: str | os.PathLike | None = None,
                 fix: str) -> None:  # fmt: skip
    """Refuse ``what`` with a one-line :class:`UserError` when its estimated ``memory`` (bytes in RAM at
    the peak) or ``disk`` (bytes written under ``out``) exceed what the machine has; ``fix`` says
    how to ask for less."""
    if memory:
        avail = available_memory()
        if memory > avail:
            raise UserError(f"{what} needs about {human(memory)} of memory but {human(avail)} is available; {fix}")
    if disk and out is not None:
        free = free_disk(out)
        if disk > free * DISK_SLACK:
            raise UserError(f"{what} needs about {human(disk)} of disk at {out} but {human(free)} is free; {fix}")
