"""Atomic file writes: a temporary file in the same directory, then ``os.replace``.

Readers never see a half-written file; a killed writer leaves at most a ``.tmp-*``
file that the next run ignores and removes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from terrasynth.errors import UserError

TMP_PREFIX = ".tmp-"

# mkstemp creates files 0600; finished outputs get the mode a plain open() would give them
# (0666 minus the umask) so that datasets on shared machines are readable by the group.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    ``suffix`` keeps the file extension for writers that pick a format from it.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.stem + "-", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise os_user_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise os_user_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a one-line :class:`UserError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_user_error(path, exc) from exc
    if not os.access(path, os.W_OK):
        raise UserError(f"{path}: output directory is not writable; choose another --out or fix its permissions")
    return path


LOCK_NAME = ".terrasynth.lock"


@contextlib.contextmanager
def exclusive_dir(directory: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for the block, or fail at once with a one-line error.

    Two processes writing one run directory would corrupt each other's stages and
    journals; the second one to start is refused. The lock is an ``flock`` on a file in
    the directory, so the kernel drops it when the holder exits or is killed: no stale
    lock survives a crash (network file systems without flock support are not covered).
    """
    import fcntl

    directory = ensure_dir(directory)
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_user_error(path, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"{directory}: another terrasynth {what} (pid {holder}) is using this directory; "
                            "wait for it to finish or pass another --out") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield directory
    finally:
        os.close(fd)  # closing releases the flock


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete temporary files left by a killed writer; return how many."""
    n = 0
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def os_user_error(path: str | os.PathLike, exc: OSError) -> UserError:
    """A one-line error for an OS failure on ``path`` (full disk, quota, permissions, bad path)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"{path}: no space left on device ({exc.strerror}); free space or choose another --out, then rerun to resume")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{path}: permission denied ({exc.strerror}); choose a writable --out")
    return UserError(f"{path}: {exc.strerror or exc}; check the path")


def load_weights(path: str | os.PathLike, fix: str = "retrain, or restore the file from a backup") -> dict[str, Any]:
    """A ``.safetensors`` state dict; a truncated or damaged file is a one-line :class:`UserError`.

    Every trained-weights read at evaluation, sampling and synthesis goes through here, so a file cut
    short by a full disk or a copy names itself instead of ending in a safetensors traceback.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = path.stat().st_size if path.exists() else 0
        msg = " ".join(str(exc).split())[:120]
        raise UserError(f"{path}: damaged or truncated weights file ({size} bytes: {msg}); {fix}") from exc


def save_weights(path: str | os.PathLike, tensors: dict[str, Any]) -> None:
    """Write ``tensors`` (a state dict) as ``.safetensors``, atomically (CPU, contiguous copies)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """A JSON file that terrasynth wrote; unreadable or invalid JSON is a one-line :class:`UserError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); {fix}") from exc
    except OSError as exc:
        raise os_user_error(path, exc) from exc
