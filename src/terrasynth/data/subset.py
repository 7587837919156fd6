"""Subsets of a dataset (some splits, a fraction of tiles) without copying pixels.

Files are hard-linked where the filesystem allows (copied otherwise), and the subset is
assembled in a temporary directory that is renamed into place, so it is never half-made.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Sequence

from terrasynth.config import config_hash
from terrasynth.data.dataset import (
    INDEX_FILE,
    META_FILE,
    Dataset,
    DatasetInfo,
    index_to_csv,
)
from terrasynth.errors import UserError
from terrasynth.io import ensure_dir, write_json_atomic, write_text_atomic


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def subset_dataset(
    src: Dataset | str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """A new dataset at ``out`` with the tiles of ``splits`` (all when None), keeping ``fraction`` of them.

    The choice of tiles is random but fixed by ``seed``, and nested: for one seed, the
    tiles of a smaller fraction are a subset of those of a larger one (so a mixing sweep
    adds data rather than swapping it). Reusing ``out`` with the same arguments is a no-op.
    """
    ds = src if isinstance(src, Dataset) else Dataset.open(src)
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"subset of {ds.root}: fraction {fraction} must be in (0, 1]")
    out = Path(out)
    key = config_hash({"src": str(ds.root.resolve()), "cfg": ds.info.provenance.get("config_hash"),
                       "splits": sorted(splits) if splits else None, "fraction": fraction, "seed": seed})  # fmt: skip
    if (out / META_FILE).exists():
        existing = Dataset.open(out)
        if existing.info.provenance.get("subset_key") == key:
            return existing
        raise UserError(f"{out}: already holds another dataset; choose a new output directory")
    records = ds.split(*(splits or ()))
    order = sorted(records, key=lambda r: r.id)
    random.Random(seed).shuffle(order)
    keep = sorted(order[: max(1, round(fraction * len(order)))], key=lambda r: r.id)
    if not keep:
        raise UserError(f"{ds.root}: no tiles in split(s) {list(splits or [])} to take a subset from")
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    ensure_dir(tmp / "labels")
    if ds.info.has_images:
        ensure_dir(tmp / "images")
    for r in keep:
        _link(ds.root / r.label, tmp / r.label)
        if r.image:
            _link(ds.root / r.image, tmp / r.image)
    prov = dict(ds.info.provenance)
    prov.update(subset_of=str(ds.root), subset_key=key, subset_fraction=fraction, subset_splits=list(splits or []))
    info = DatasetInfo(
        name=out.name, kind=ds.info.kind, scheme=ds.scheme, tile_size=ds.info.tile_size, gsd=ds.info.gsd,
        has_images=ds.info.has_images, provenance=prov, extra=ds.info.extra,
    )  # fmt: skip
    write_text_atomic(tmp / INDEX_FILE, index_to_csv(keep, ds.scheme))
    write_json_atomic(tmp / META_FILE, info.to_json(keep))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return Dataset.open(out)
