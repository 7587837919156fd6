"""The terrasynth dataset format: the contract between every stage.

A dataset is a directory::

    dataset.json      metadata: scheme, tile size, GSD, kind, provenance (written last)
    index.csv         one row per tile: id, split, image, label, source, crs, bounds,
                      nodata_pixels, count_<code> for every class code of the scheme
    images/<id>.tif   RGB uint8 GeoTIFF (georeferenced when the source is); absent in
                      label-only datasets
    labels/<id>.tif   single-band uint8 class codes with the scheme's colour table

Every file is written atomically (temporary file, then rename). While a writer runs,
finished tiles are journaled in ``.journal*.jsonl``; a killed writer is resumed by
running the same command again: journaled tiles whose files exist are skipped. A
directory without ``dataset.json`` is an unfinished dataset and readers refuse it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from logging.handlers import BufferingHandler
import os
import shlex
import shutil
import sys
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import MemoryFile
from rasterio.transform import Affine

import terrasynth
from terrasynth.classes import ClassScheme
from terrasynth.errors import UserError
from terrasynth.io import (
    TMP_PREFIX, ensure_dir, os_user_error, remove_stale_tmp, write_bytes_atomic, write_json_atomic, write_text_atomic,
)  # fmt: skip

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
_log = logging.getLogger(__name__)

FORMAT_NAME = "terrasynth-dataset"
FORMAT_VERSION = 1
META_FILE = "dataset.json"
INDEX_FILE = "index.csv"
JOURNAL_GLOB = ".journal*.jsonl"
PARTIAL_FILE = ".partial.json"
CONFIG_FILE = "config.yaml"  # the resolved config the writing command saves beside the dataset
OWN_FILES = (META_FILE, INDEX_FILE, PARTIAL_FILE, CONFIG_FILE)

Kind = Literal["real", "procedural", "synthetic"]
Split = Literal["train", "val", "test"]
SPLITS = ("train", "val", "test")
# Label tiles read at each open to catch a dataset.json that disagrees with its tiles (all under --verify).
OPEN_SAMPLE = 4


@dataclass
class TileRecord:
    """One tile of a dataset. Paths are relative to the dataset root."""

    id: str
    split: str
    label: str
    image: str | None = None
    source: str = ""
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None  # left, bottom, right, top in ``crs``
    nodata_pixels: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # class code -> pixels

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["counts"] = {str(k): v for k, v in self.counts.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TileRecord":
        d = dict(d)
        d["counts"] = {int(k): int(v) for k, v in d.get("counts", {}).items()}
        if d.get("bounds") is not None:
            d["bounds"] = tuple(d["bounds"])
        return cls(**d)


@dataclass
class DatasetInfo:
    """The content of ``dataset.json``."""

    name: str
    kind: Kind
    scheme: ClassScheme
    tile_size: int
    gsd: float | None = None
    has_images: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, records: list[TileRecord] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": self.name, "kind": self.kind,
            "tile_size": self.tile_size, "gsd": self.gsd, "has_images": self.has_images,
            "scheme": self.scheme.to_dict(), "provenance": self.provenance, "extra": self.extra,
        }  # fmt: skip
        if records is not None:
            d["num_tiles"] = len(records)
            d["splits"] = split_counts(records)
            d["class_pixels"] = {str(k): v for k, v in class_pixels(records, self.scheme).items()}
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> "DatasetInfo":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise UserError(f"{where}: not a terrasynth dataset.json (format={fmt!r}); pass a dataset directory")
        version = d.get("format_version")
        if type(version) is int and version > FORMAT_VERSION:
            raise UserError(f"{where}: dataset format version {version} is newer than this terrasynth "
                            f"understands ({FORMAT_VERSION}); upgrade terrasynth")  # fmt: skip
        try:
            meta = DatasetMeta.model_validate(d)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            value = "(missing)" if err["type"] == "missing" else repr(err.get("input"))
            raise UserError(f"{where}: {key} = {value} is invalid ({err['msg']}); rebuild the dataset or "
                            "restore the file") from exc  # fmt: skip
        fields = ("name", "kind", "tile_size", "gsd", "has_images", "provenance", "extra")
        fields = {f: getattr(meta, f) for f in fields}
        return cls(scheme=ClassScheme.from_dict(meta.scheme, where=where), **fields)


class DatasetMeta(BaseModel):
    """The schema of ``dataset.json`` (types included): what readers accept."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["terrasynth-dataset"]
    format_version: int = Field(ge=1, le=FORMAT_VERSION)
    name: str
    kind: Kind
    tile_size: int = Field(ge=1)
    gsd: float | None = Field(None, gt=0)
    has_images: bool = True
    scheme: dict[str, Any]
    provenance: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    num_tiles: int | None = Field(None, ge=0)
    splits: dict[Split, int] | None = None
    class_pixels: dict[str, int] | None = None

    @field_validator("gsd", mode="before")
    @classmethod
    def _int_gsd(cls, v: Any) -> Any:  # JSON writes 10.0 as 10.0 but a hand edit may say 10
        return float(v) if type(v) is int else v


def split_counts(records: Iterable[TileRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.split for r in records).items()))


def class_pixels(records: Iterable[TileRecord], scheme: ClassScheme) -> dict[int, int]:
    tot = {c: 0 for c in scheme.codes}
    for r in records:
        for c, n in r.counts.items():
            if c in tot:
                tot[c] += n
    return tot


def provenance(source: str, *, config_hash: str | None = None, seed: int | None = None,
               generator: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """The provenance block of ``dataset.json``: what made this dataset, with which code."""
    return {
        "source": source,
        "command": " ".join(shlex.quote(a) for a in ["terrasynth", *sys.argv[1:]]) if sys.argv else "",
        "config_hash": config_hash, "version": terrasynth.__version__, "seed": seed, "generator": generator, **extra,
    }  # fmt: skip


# ---- GeoTIFF tiles ------------------------------------------------------------------


def crs_string(crs: CRS | str | None) -> str | None:
    if crs is None:
        return None
    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def write_label_tif(
    path: Path, codes: np.ndarray, scheme: ClassScheme, crs: CRS | str | None = None, transform: Affine | None = None
) -> None:
    """Write a single-band uint8 label GeoTIFF with the scheme's colour table, atomically."""
    _write_tif(path, codes.astype(np.uint8, copy=False)[None], crs, transform, nodata=scheme.nodata,
               colormap=scheme.colormap())  # fmt: skip


def write_image_tif(path: Path, rgb: np.ndarray, crs: CRS | str | None = None, transform: Affine | None = None) -> None:
    """Write an (H, W, 3) uint8 RGB GeoTIFF, atomically."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    _write_tif(path, np.moveaxis(rgb, -1, 0), crs, transform, photometric="RGB")


def _write_tif(path: Path, bands: np.ndarray, crs: CRS | str | None, transform: Affine | None,
               nodata: int | None = None, colormap: dict | None = None, **extra: str) -> None:  # fmt: skip
    """Write (C, H, W) uint8 ``bands`` as a deflated GeoTIFF (georeferenced when ``crs`` is given), atomically."""
    c, h, w = bands.shape
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype="uint8", compress="deflate", **extra)
    if crs is not None:
        profile.update(crs=CRS.from_user_input(crs), transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(bands)
            if colormap is not None:
                dst.write_colormap(1, colormap)
        _commit_tif(path, mem)


def _commit_tif(path: Path, mem: MemoryFile) -> None:
    """Write an encoded tile atomically and durably.

    Tiles are encoded in memory and written by Python, not by GDAL straight to disk: GDAL only
    logs failed writes (a full disk left 0-byte tiles that were renamed into place and journaled
    as done), while Python raises, and the bytes are fsynced before the rename.
    """
    data = mem.read()
    if not data:
        raise UserError(f"{path}: GDAL produced an empty GeoTIFF; check free memory and rerun")
    write_bytes_atomic(path, data)


def read_label_tif(path: Path) -> tuple[np.ndarray, CRS | None, Affine]:
    """(H, W) uint8 class codes with the file's CRS and transform, from one open."""
    with _open_tile(path, "label") as src:
        return src.read(1), src.crs, src.transform


def read_image_tif(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    with _open_tile(path, "image") as src:
        return np.moveaxis(src.read(), 0, -1)


@contextmanager
def _open_tile(path: Path, what: str) -> Iterator[rasterio.io.DatasetReader]:
    try:
        with rasterio.open(path) as src:
            yield src
    except RasterioIOError as exc:
        raise UserError(f"{path}: unreadable {what} tile ({exc}); rerun the command that wrote this dataset") from exc


def _valid_tif(path: Path) -> np.ndarray | None:
    """Opens *and decodes* the tile; its pixels ((H, W) or (C, H, W)), or None when damaged. A tile cut short may keep its header and pixels and lose its
    tail (colour table, metadata): GDAL then only warns ("IO error during reading"), so warnings
    count as damage too."""
    log = logging.getLogger("rasterio._env")
    seen, level, propagate = BufferingHandler(1 << 30), log.level, log.propagate  # collects what GDAL reports
    log.addHandler(seen)
    log.setLevel(logging.WARNING)  # the CLI raises rasterio's level to ERROR; here we want to hear
    log.propagate = False  # ... but not to print
    try:
        with rasterio.open(path) as src:
            arr = src.read()
            ok = src.width > 0
    except Exception:
        return None
    finally:
        log.removeHandler(seen)
        log.setLevel(level)
        log.propagate = propagate
    ok = ok and not any("error" in r.getMessage().lower() for r in seen.buffer)
    return (arr[0] if arr.shape[0] == 1 else arr) if ok else None


# ---- writing --------------------------------------------------------------------------


class DatasetWriter:
    """Writes tiles atomically, journals them, and finalises the index and metadata.

    Resuming: open a writer on the same ``out`` with the same ``provenance['config_hash']``
    and tiles already written are reported by :meth:`has` and skipped by the caller.
    ``shard`` gives each parallel process its own journal (e.g. the Accelerate rank);
    only one process calls :meth:`finalize`. :meth:`write` is thread-safe, so a few threads can
    overlap the per-file fsyncs (see :class:`terrasynth.data.tile_sink.ThreadedWrites`).
    """

    def __init__(self, out: str | os.PathLike, info: DatasetInfo, *, shard: int | None = None, overwrite: bool = False):
        self.root = Path(out)
        self.info = info
        self.shard = shard
        # Whether this writer starts from nothing: then a run that fails before its first tile
        # removes what it created, so bad input leaves no partial output (see discard_if_empty).
        self._existed = self.root.exists()
        first = shard in (None, 0)  # only the first writer sweeps, marks and may discard
        self._fresh = first and (
            not self._existed or not any(not p.name.startswith(TMP_PREFIX) for p in self.root.iterdir())
        )
        self._kept: list[str] = []  # what --overwrite left in place because terrasynth did not write it
        cfg_hash = info.provenance.get("config_hash")
        meta, partial = self.root / META_FILE, self.root / PARTIAL_FILE
        if overwrite:
            if meta.exists() or partial.exists():
                self._remove_own_files()
        else:
            old = json.loads(meta.read_text()).get("provenance", {}).get("config_hash") if meta.exists() else cfg_hash
            if old != cfg_hash:
                raise UserError(f"{self.root}: already holds a dataset made with another config (hash {old} vs "
                                f"{cfg_hash}); choose a new --out or pass --overwrite")  # fmt: skip
            old = json.loads(partial.read_text()).get("config_hash") if partial.exists() else cfg_hash
            if old != cfg_hash:
                raise UserError(f"{self.root}: holds an unfinished dataset from another config (hash {old} vs "
                                f"{cfg_hash}); rerun that command to finish it, choose a new --out, or pass "
                                "--overwrite")  # fmt: skip
        if self.root.exists() and not partial.exists() and not meta.exists() and not self._kept:
            # A writer killed while committing the marker leaves only its own temporary file.
            if any(not p.name.startswith(TMP_PREFIX) for p in self.root.iterdir()):
                raise UserError(f"{self.root}: directory is not empty and is not a terrasynth dataset; choose an empty --out")
        ensure_dir(self.root)
        # Only the first writer sweeps temp files a killed run left: a later rank's sweep would
        # delete files the first rank is writing at that moment.
        if first:
            for d in (self.root, self.root / "labels", self.root / "images"):
                remove_stale_tmp(d)
        self.complete = meta.exists()
        # The marker is committed before anything else is created, so a directory this writer has
        # touched is always recognisable as an unfinished dataset (a kill between creating labels/
        # and the marker used to leave a directory that the same command refused as "not empty").
        if not self.complete and first and not partial.exists():
            write_json_atomic(partial, {"config_hash": cfg_hash})
        ensure_dir(self.root / "labels")
        if info.has_images:
            ensure_dir(self.root / "images")
        self._done: dict[str, TileRecord] = self._load_journals() if not self.complete else {}
        self._journal_path = self.root / (".journal.jsonl" if shard is None else f".journal.{shard}.jsonl")
        self._journal = None
        # write() may run in several threads (tile fsyncs overlap); the journal is shared.
        self._journal_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Shard writers are sent to worker processes (acquire --workers): a lock and an open
        # journal handle do not pickle; the worker makes its own.
        return {**self.__dict__, "_journal_lock": None, "_journal": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._journal_lock = threading.Lock()

    def _owned(self) -> tuple[list[Path], list[Path]]:
        """(files of this dataset that terrasynth wrote, entries it did not write) under the root.

        Ours: the format's own files (``dataset.json``, ``index.csv``, ``config.yaml``, the
        marker, journals, ``.tmp-*``) and the tiles that ``index.csv`` or a journal names.
        Anything else (a user's notes, an analysis folder, a stray tile) is not ours.
        """
        tiles: set[str] = set()
        index = self.root / INDEX_FILE
        if index.exists():
            try:
                for row in csv.DictReader(io.StringIO(index.read_text())):
                    tiles.update(v for v in (row.get("label"), row.get("image")) if v)
            except (csv.Error, UnicodeDecodeError):
                pass
        for j in self.root.glob(JOURNAL_GLOB):
            for line in j.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    tiles.update(v for v in (rec.get("label"), rec.get("image")) if isinstance(v, str))
                except (json.JSONDecodeError, AttributeError):
                    continue
        # A killed writer may leave a whole tile that its journal never named: in an unfinished
        # dataset every tile file under labels/ and images/ is ours.
        unfinished = (self.root / PARTIAL_FILE).exists() and not (self.root / META_FILE).exists()
        own, foreign = [], []
        for p in sorted(self.root.iterdir()):
            if p.name in ("labels", "images") and p.is_dir() and not p.is_symlink():
                for q in sorted(p.iterdir()):
                    mine = q.is_file() and (f"{p.name}/{q.name}" in tiles or q.name.startswith(TMP_PREFIX)
                                            or (unfinished and q.suffix == ".tif"))  # fmt: skip
                    (own if mine else foreign).append(q)
            elif p.is_file() and (p.name in OWN_FILES or p.name.startswith(TMP_PREFIX) or p.match(JOURNAL_GLOB)):
                own.append(p)
            else:
                foreign.append(p)
        return own, foreign

    def _remove_own_files(self) -> None:
        """``--overwrite``: delete only what terrasynth wrote here, say what, and keep the rest."""
        own, foreign = self._owned()
        stray = [p for p in foreign if p.parent != self.root]
        if stray:
            raise UserError(
                f"{stray[0]}: --overwrite deletes only files terrasynth wrote, and this one is in no index or "
                f"journal of {self.root} ({len(stray)} such file(s) under labels/ or images/); move them elsewhere "
                "and rerun"
            )
        ntiles = sum(p.parent != self.root for p in own)
        others = [p.name for p in own if p.parent == self.root and not p.name.startswith(TMP_PREFIX)]
        _log.warning("--overwrite: removing the dataset in %s: %d tile file(s)%s", self.root, ntiles,
                    f", {', '.join(others)}" if others else "")  # fmt: skip
        self._kept = [p.name for p in foreign]
        if self._kept:
            _log.warning("--overwrite: keeping %d entr%s terrasynth did not write: %s", len(self._kept),
                        "y" if len(self._kept) == 1 else "ies", ", ".join(self._kept))  # fmt: skip
        for p in own:
            p.unlink(missing_ok=True)
        for sub in ("labels", "images"):
            d = self.root / sub
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def _load_journals(self) -> dict[str, TileRecord]:
        done: dict[str, TileRecord] = {}
        for j in sorted(self.root.glob(JOURNAL_GLOB)):
            for line in j.read_text().splitlines():
                try:
                    rec = TileRecord.from_json(json.loads(line))
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue  # a line cut by a kill: that tile is simply redone
                if (self.root / rec.label).exists() and (rec.image is None or (self.root / rec.image).exists()):
                    done[rec.id] = rec
        return done

    @property
    def done_ids(self) -> set[str]:
        return set(self._done)

    def has(self, tile_id: str) -> bool:
        return self.complete or tile_id in self._done

    def write(self, tile_id: str, split: str, label: np.ndarray, image: np.ndarray | None = None, *, source: str = "",
              crs: CRS | str | None = None, transform: Affine | None = None) -> TileRecord:  # fmt: skip
        """Write one tile: ``label`` (H, W) uint8 codes, ``image`` (H, W, 3) uint8 or None."""
        if self.info.has_images and image is None:
            raise ValueError(f"dataset {self.root} has images but tile {tile_id} has none")
        self.info.scheme.check_codes(label, f"tile {tile_id} of {source or self.root}")
        label_rel = f"labels/{tile_id}.tif"
        image_rel = f"images/{tile_id}.tif" if image is not None else None
        if image is not None:
            write_image_tif(self.root / image_rel, image, crs, transform)
        write_label_tif(self.root / label_rel, label, self.info.scheme, crs, transform)
        counts = np.bincount(label.ravel(), minlength=256)
        bounds = None
        if crs is not None and transform is not None:
            h, w = label.shape
            left, top = rasterio.transform.xy(transform, 0, 0, offset="ul")
            right, bottom = rasterio.transform.xy(transform, h, w, offset="ul")
            bounds = (float(min(left, right)), float(min(bottom, top)), float(max(left, right)), float(max(bottom, top)))
        nodata = self.info.scheme.nodata
        rec = TileRecord(
            id=tile_id, split=split, label=label_rel, image=image_rel, source=source, crs=crs_string(crs),
            bounds=bounds, nodata_pixels=int(counts[nodata]) if nodata is not None else 0,
            counts={c: int(counts[c]) for c in self.info.scheme.codes},
        )  # fmt: skip
        self._append(rec)
        return rec

    def _append(self, rec: TileRecord) -> None:
        with self._journal_lock:
            try:
                if self._journal is None:
                    torn = self._journal_path.exists() and _last_byte(self._journal_path) not in (b"", b"\n")
                    self._journal = open(self._journal_path, "a", encoding="utf-8")
                    if torn:  # a killed writer's half line: end it, or the next record would be glued onto it
                        self._journal.write("\n")
                self._journal.write(json.dumps(rec.to_json()) + "\n")
                self._journal.flush()
            except OSError as exc:  # a full disk must read as one line, not a traceback
                raise os_user_error(self._journal_path, exc) from exc
            self._done[rec.id] = rec

    def close(self) -> None:
        if self._journal is not None:
            journal, self._journal = self._journal, None
            try:
                journal.flush()
                os.fsync(journal.fileno())
                journal.close()
            except OSError as exc:
                raise os_user_error(self._journal_path, exc) from exc

    def finalize(self) -> "Dataset":
        """Write ``index.csv`` and ``dataset.json`` (last), drop the journals; return the dataset."""
        self.close()
        if self.complete:
            return Dataset.open(self.root)
        records = sorted(self._load_journals().values(), key=lambda r: r.id)
        if not records:
            self.discard_if_empty()
            raise UserError(f"{self.root}: no tiles were produced; check the input and the filters "
                            "(nodata threshold, tile size larger than the images?)")  # fmt: skip
        write_text_atomic(self.root / INDEX_FILE, index_to_csv(records, self.info.scheme))
        write_json_atomic(self.root / META_FILE, self.info.to_json(records))
        for j in self.root.glob(JOURNAL_GLOB):
            j.unlink()
        (self.root / PARTIAL_FILE).unlink(missing_ok=True)
        self.complete = True
        return Dataset.open(self.root)

    def __enter__(self) -> "DatasetWriter":
        return self

    def discard_if_empty(self) -> None:
        """Remove everything this writer (and its caller) created, if it started from nothing and no
        tile was written: a run that fails on its input then leaves no unfinished dataset behind."""
        if not self._fresh or self.complete or self._done or any(self.root.glob(JOURNAL_GLOB)):
            return
        self.close()
        if self.root.exists():
            for p in list(self.root.iterdir()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            if not self._existed:
                self.root.rmdir()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        finally:
            if exc_type is not None:
                self.discard_if_empty()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1))
        return f.read(1)


def index_to_csv(records: list[TileRecord], scheme: ClassScheme) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "split", "image", "label", "source", "crs", "left", "bottom", "right", "top", "nodata_pixels",
                *[f"count_{c}" for c in scheme.codes]])  # fmt: skip
    for r in records:
        b = r.bounds or ("", "", "", "")
        w.writerow(
            [r.id, r.split, r.image or "", r.label, r.source, r.crs or "", *[repr(x) if x != "" else "" for x in b],
             r.nodata_pixels, *[r.counts.get(c, 0) for c in scheme.codes]]
        )  # fmt: skip
    return buf.getvalue()


def index_from_csv(text: str, scheme: ClassScheme, where: str) -> list[TileRecord]:
    out = []
    for i, row in enumerate(csv.DictReader(io.StringIO(text))):
        try:
            bounds = tuple(float(row[k]) for k in ("left", "bottom", "right", "top")) if row.get("left") else None
            out.append(TileRecord(
                id=row["id"], split=row["split"], image=row["image"] or None, label=row["label"], source=row["source"],
                crs=row["crs"] or None, bounds=bounds,  # type: ignore[arg-type]
                nodata_pixels=int(row["nodata_pixels"]),
                counts={c: int(row.get(f"count_{c}", 0) or 0) for c in scheme.codes},
            ))  # fmt: skip
        except (KeyError, ValueError, TypeError) as exc:  # TypeError: a short row yields None fields
            raise UserError(f"{where}: row {i + 2} is malformed ({exc!r}); rebuild the dataset") from exc
    return out


def check_index_columns(text: str, scheme: ClassScheme, index: Path, meta: Path) -> None:
    """The index's ``count_<code>`` columns must be the scheme's codes: a ``dataset.json`` edited to
    fewer (or other) classes than the tiles were written with disagrees here."""
    header = next(csv.reader(io.StringIO(text)), [])
    counted = {int(c[6:]) for c in header if c.startswith("count_") and c[6:].isdigit()}
    if counted != set(scheme.codes):
        extra, missing = sorted(counted - set(scheme.codes)), sorted(set(scheme.codes) - counted)
        what = (f"counts codes {extra} that its scheme '{scheme.name}' lacks" if extra
                else f"has no counts for scheme codes {missing}")  # fmt: skip
        raise UserError(f"{index}: {what} ({meta} was edited, or the index belongs to another dataset); "
                        "restore dataset.json or rebuild the dataset")  # fmt: skip


def check_index(records: list[TileRecord], info: DatasetInfo, index: Path, meta: Path) -> None:
    """Rows against each other and against ``dataset.json``: unique ids and files, one known split
    per tile, images present exactly when the dataset has them, and the summary counts."""
    seen: dict[str, int] = {}
    files: set[str] = set()
    for i, r in enumerate(records):
        row = i + 2  # header is line 1
        if r.id in seen:
            raise UserError(f"{index}: tile id {r.id!r} is listed twice (lines {seen[r.id]} and {row}); "
                            "a tile has one row and one split: remove the duplicate or rebuild the dataset")  # fmt: skip
        seen[r.id] = row
        if r.split not in SPLITS:
            raise UserError(f"{index}: line {row}: split {r.split!r} of tile {r.id!r} is not one of {list(SPLITS)}; "
                            "fix the row or rebuild the dataset")  # fmt: skip
        for rel, sub in ((r.label, "labels"), (r.image, "images")):
            if rel is None:
                continue
            if not rel.startswith(sub + "/") or ".." in Path(rel).parts:
                raise UserError(f"{index}: line {row}: {rel!r} is not a file under {sub}/; rebuild the dataset")
            if rel in files:
                raise UserError(f"{index}: line {row}: {rel} is used by two tiles; rebuild the dataset")
            files.add(rel)
        if info.has_images != (r.image is not None):
            raise UserError(f"{index}: line {row}: tile {r.id!r} {'lacks' if info.has_images else 'has'} an image but "
                            f"{meta} says has_images: {str(info.has_images).lower()}; rebuild the dataset")  # fmt: skip
    listed = json.loads(meta.read_text()).get("num_tiles")
    if listed is not None and listed != len(records):
        raise UserError(f"{meta}: num_tiles is {listed} but {index} lists {len(records)} tiles; "
                        "restore the files or rebuild the dataset")  # fmt: skip


# ---- reading --------------------------------------------------------------------------


class Dataset:
    """A finished dataset on disk: metadata, index and tile readers."""

    def __init__(self, root: Path, info: DatasetInfo, records: list[TileRecord]):
        self.root = root
        self.info = info
        self.records = records

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Dataset":
        root = Path(root)
        meta = root / META_FILE
        if not root.is_dir():
            raise UserError(f"{root}: dataset directory not found; pass a directory made by a terrasynth data command")
        if not meta.exists():
            hint = ("it is an unfinished dataset: rerun the command that writes it to resume"
                    if (root / PARTIAL_FILE).exists()
                    else "it has no dataset.json: pass a directory made by a terrasynth data command")  # fmt: skip
            raise UserError(f"{root}: not a usable dataset; {hint}")
        try:
            info = DatasetInfo.from_json(json.loads(meta.read_text()), str(meta))
        except json.JSONDecodeError as exc:
            raise UserError(f"{meta}: not valid JSON ({exc}); rebuild the dataset") from exc
        index = root / INDEX_FILE
        if not index.exists():
            raise UserError(f"{index}: index missing; rebuild the dataset")
        text = index.read_text()
        check_index_columns(text, info.scheme, index, meta)
        records = index_from_csv(text, info.scheme, str(index))
        check_index(records, info, index, meta)
        ds = cls(root, info, records)
        # A few label tiles, spread over the index, against dataset.json (all of them under --verify).
        step = max(1, len(records) // OPEN_SAMPLE)
        for rec in records[::step][:OPEN_SAMPLE]:
            ds.read_label(rec)
        return ds

    @property
    def scheme(self) -> ClassScheme:
        return self.info.scheme

    def __len__(self) -> int:
        return len(self.records)

    def split(self, *names: str) -> list[TileRecord]:
        """Records of the given splits (all records when ``names`` is empty or ``'all'``)."""
        if not names or "all" in names:
            return list(self.records)
        return [r for r in self.records if r.split in names]

    def group(self, rec: TileRecord) -> str:
        """The unit a tile was split with: its region (``extra.source_groups``, written by an import
        with ``split_by: group``), else its source image. Holding out by group never leaks a region."""
        return self.info.extra.get("source_groups", {}).get(rec.source, rec.source)

    def read_label(self, rec: TileRecord) -> np.ndarray:
        """(H, W) uint8 class codes, checked against ``dataset.json``: its tile size and its scheme.

        Every reader (training, synthesis, metrics) gets its labels here, so a dataset whose
        labels hold codes the scheme lacks (a hand-edited ``dataset.json``) is refused instead of
        being trained on silently (unknown codes would become "ignore").
        """
        path = self.root / rec.label
        return self.check_label(path, read_label_tif(path)[0])

    def read_label_georef(self, rec: TileRecord) -> tuple[np.ndarray, CRS | None, Affine | None]:
        """(H, W) uint8 class codes (checked as in :meth:`read_label`) with the tile's CRS and transform
        (None, None when not georeferenced), from one open."""
        path = self.root / rec.label
        codes, crs, transform = read_label_tif(path)
        codes = self.check_label(path, codes)
        return (codes, crs, transform) if rec.crs is not None else (codes, None, None)

    def check_label(self, path: Path, codes: np.ndarray) -> np.ndarray:
        """``codes`` (H, W) read from ``path``, or a one-line error when its size or codes disagree with
        ``dataset.json``. Any other way of reading label tiles must pass them through here."""
        size = self.info.tile_size
        if codes.shape != (size, size):
            raise UserError(f"{path}: label tile is {codes.shape[1]}x{codes.shape[0]} px but {self.root / META_FILE} "
                            f"says tile_size {size}; rebuild the dataset or restore dataset.json")  # fmt: skip
        present = np.flatnonzero(np.bincount(codes.ravel(), minlength=256) * self._unknown_code_mask)
        if present.size:
            raise UserError(
                f"{path}: label codes {present.tolist()} are not in scheme '{self.scheme.name}' of "
                f"{self.root / META_FILE} (codes {sorted(self.scheme.valid_codes())}); the scheme was edited or the "
                "tile belongs to another dataset: restore dataset.json or rebuild the dataset"
            )
        return codes

    @property
    def _unknown_code_mask(self) -> np.ndarray:
        """(256,) int64: 1 where a code is not in the scheme (nodata included as known)."""
        mask = np.ones(256, dtype=np.int64)
        mask[sorted(self.scheme.valid_codes())] = 0
        return mask

    def read_image(self, rec: TileRecord) -> np.ndarray:
        """(H, W, 3) uint8."""
        if rec.image is None:
            raise UserError(f"{self.root}: tile {rec.id} has no image (label-only dataset); use a paired dataset")
        return read_image_tif(self.root / rec.image)

    def iter_tiles(self, split: str | None = None) -> Iterator[tuple[TileRecord, np.ndarray, np.ndarray | None]]:
        for rec in self.split(*([split] if split else [])):
            yield rec, self.read_label(rec), (self.read_image(rec) if rec.image else None)

    def class_frequencies(self, split: str | None = None) -> dict[int, float]:
        px = class_pixels(self.split(*([split] if split else [])), self.scheme)
        tot = sum(px.values()) or 1
        return {c: n / tot for c, n in px.items()}

    def verify(self) -> list[str]:
        """Problems between ``dataset.json``, the index and the files on disk (empty when consistent):
        every tile decodes, has the dataset's tile size, and every label holds only scheme codes in
        exactly the per-class pixel counts its index row records."""
        problems = []
        size = self.info.tile_size
        for rec in self.records:
            for rel in (rec.label, rec.image):
                if rel is None:
                    continue
                arr = _valid_tif(self.root / rel)
                if arr is None:
                    problems.append(f"{rel}: missing or unreadable")
                elif arr.shape[-2:] != (size, size):
                    problems.append(f"{rel}: {arr.shape[-1]}x{arr.shape[-2]} px, but tile_size is {size}")
                elif rel == rec.label:
                    counts = np.bincount(arr.ravel(), minlength=256)
                    unknown = np.flatnonzero(counts * self._unknown_code_mask)
                    if unknown.size:
                        problems.append(f"{rel}: label codes {unknown.tolist()} are not in scheme "
                                        f"'{self.scheme.name}'")  # fmt: skip
                    elif any(int(counts[c]) != rec.counts.get(c, 0) for c in self.scheme.codes):
                        problems.append(f"{rel}: class pixel counts differ from its index.csv row")
        listed = {r.label for r in self.records} | {r.image for r in self.records if r.image}
        for sub in ("labels", "images"):
            d = self.root / sub
            if d.exists():
                for p in d.glob("*.tif"):
                    if f"{sub}/{p.name}" not in listed:
                        problems.append(f"{sub}/{p.name}: on disk but not in the index")
        return problems


def describe(ds: Dataset) -> str:
    """A human summary for ``terrasynth data info``."""
    info = ds.info
    lines = [
        f"dataset   {ds.root}",
        f"name      {info.name}  (kind: {info.kind})",
        f"scheme    {info.scheme.name}, {info.scheme.num_classes} classes, nodata={info.scheme.nodata}",
        f"tiles     {len(ds)} of {info.tile_size}x{info.tile_size} px"
        + (f", GSD {info.gsd:g} m" if info.gsd else "")
        + ("" if info.has_images else ", label-only"),
        "splits    " + ", ".join(f"{k}: {v}" for k, v in split_counts(ds.records).items()),
    ]
    groups = info.extra.get("groups")
    if isinstance(groups, dict) and groups:
        by_split: dict[str, list[str]] = {}
        for g, s in sorted(groups.items()):
            by_split.setdefault(str(s), []).append(str(g))
        lines.append("groups    " + "; ".join(f"{s}: {', '.join(by_split[s])}" for s in SPLITS if s in by_split)
                     + f"  (pattern {info.extra.get('group_pattern')})")  # fmt: skip
    crs = sorted({r.crs for r in ds.records if r.crs})
    if crs:
        lines.append("crs       " + ", ".join(c if len(c) < 40 else c[:37] + "..." for c in crs))
    prov = info.provenance
    if prov:
        lines.append(f"source    {prov.get('source')}  seed={prov.get('seed')}  config={prov.get('config_hash')}")
        if prov.get("generator"):
            lines.append(f"generator {json.dumps(prov['generator'])}")
    px = class_pixels(ds.records, info.scheme)
    nod = sum(r.nodata_pixels for r in ds.records)
    tot = sum(px.values()) + nod or 1
    lines.append("class frequencies (share of all pixels):")
    for c in info.scheme.classes:
        lines.append(f"  {c.code:>4}  {c.name:<28} {px[c.code] / tot:7.2%}  ({px[c.code]} px)")
    if info.scheme.nodata is not None:
        lines.append(f"  {info.scheme.nodata:>4}  {'nodata':<28} {nod / tot:7.2%}  ({nod} px)")
    return "\n".join(lines)
