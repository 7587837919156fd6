"""Subsets of a dataset (some splits, a fraction of tiles) without copying pixels.

Files are hard-linked where the filesystem allows (copied otherwise), and the subset is
assembled in a temporary directory that is renamed into place, so it is never half-made.
"""

from __future__ import annotations

import dataclasses
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
    records = ds.split(*(splits or ()))
    order = sorted(records, key=lambda r: r.id)
    random.Random(seed).shuffle(order)
    keep = sorted(order[: max(1, round(fraction * len(order)))], key=lambda r: r.id)
    if not keep:
        raise UserError(f"{ds.root}: no tiles in split(s) {list(splits or [])} to take a subset from")
    return _write_subset(ds, out, keep, key, {"subset_fraction": fraction, "subset_splits": list(splits or [])})


def _write_subset(ds: Dataset, out: Path, keep: list, key: str, extra_prov: dict) -> Dataset:
    """Hard-link the tiles of ``keep`` into a new dataset at ``out`` (a no-op when ``out`` holds this subset)."""
    existing, tmp = _reuse_or_stage(out, "subset_key", key, ds.info.has_images)
    if existing is not None:
        return existing
    for r in keep:
        _link(ds.root / r.label, tmp / r.label)
        if r.image:
            _link(ds.root / r.image, tmp / r.image)
    prov = {**ds.info.provenance, "subset_of": str(ds.root), "subset_key": key, **extra_prov}
    return _publish(tmp, out, ds.info, keep, name=out.name, has_images=ds.info.has_images, provenance=prov)


def labelled_subset(src: Dataset | str | Path, out: str | Path, fraction: float, *, seed: int = 0) -> Dataset:
    """The scarce-label regime: ``fraction`` of the train split's SOURCE images (all their tiles), with
    the val and test splits whole.

    Choosing by source image keeps tiles of one photo together (no near-duplicate tiles of an unseen
    image leak in), and the choice is nested: for one seed, the sources kept at a smaller fraction
    are a subset of those kept at a larger one. ``fraction`` 1.0 keeps every tile.
    """
    ds = src if isinstance(src, Dataset) else Dataset.open(src)
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"label subset of {ds.root}: fraction {fraction} must be in (0, 1]; e.g. 0.1 for 10% of the labels")
    train = ds.split("train")
    if not train:
        raise UserError(f"{ds.root}: no train tiles to take labelled sources from; re-import with a train ratio > 0")
    sources = sorted({r.source or r.id for r in train})
    random.Random(seed).shuffle(sources)
    keep_sources = set(sources[: max(1, round(fraction * len(sources)))])
    keep = [r for r in ds.records if r.split != "train" or (r.source or r.id) in keep_sources]
    key = config_hash({"src": str(ds.root.resolve()), "cfg": ds.info.provenance.get("config_hash"),
                       "labelled_fraction": fraction, "seed": seed})  # fmt: skip
    prov = {"label_fraction": fraction, "label_seed": seed, "labelled_sources": len(keep_sources),
            "train_sources": len(sources), "labelled_train_tiles": sum(r.split == "train" for r in keep)}  # fmt: skip
    return _write_subset(ds, Path(out), keep, key, prov)


def merge_datasets(parts: Sequence[tuple[str, Dataset | str | Path]], out: str | Path, *, name: str | None = None) -> Dataset:
    """One dataset from several with the same scheme and tile size; tile ids get each part's prefix.

    ``parts`` is ``[(prefix, dataset), ...]``; tiles keep their split. Files are hard-linked.
    """
    dss = [(p, d if isinstance(d, Dataset) else Dataset.open(d)) for p, d in parts]
    first = dss[0][1]
    for _, d in dss[1:]:
        if d.scheme.codes != first.scheme.codes or d.info.tile_size != first.info.tile_size:
            raise UserError(f"{d.root}: cannot merge with {first.root}: scheme or tile size differ")
    # A part without nodata holds none, so the merged scheme takes the one nodata code the others
    # agree on (e.g. 255 of a filtered synthetic set); two different codes cannot share one scheme.
    nodatas = {d.scheme.nodata for _, d in dss} - {None}
    if len(nodatas) > 1:
        raise UserError(f"{out}: the parts' nodata codes differ ({sorted(nodatas)}); remap one of them before merging")
    scheme = next((d.scheme for _, d in dss if d.scheme.nodata is not None), first.scheme)
    out = Path(out)
    key = config_hash({"parts": [(p, str(d.root.resolve()), d.info.provenance.get("config_hash")) for p, d in dss]})
    has_images = all(d.info.has_images for _, d in dss)
    existing, tmp = _reuse_or_stage(out, "merge_key", key, has_images)
    if existing is not None:
        return existing
    records = []
    for prefix, d in dss:
        for r in d.records:
            new_id = f"{prefix}{r.id}"
            label = f"labels/{new_id}.tif"
            _link(d.root / r.label, tmp / label)
            image = None
            if has_images and r.image:
                image = f"images/{new_id}.tif"
                _link(d.root / r.image, tmp / image)
            records.append(type(r)(**{**r.__dict__, "id": new_id, "label": label, "image": image}))
    records.sort(key=lambda r: r.id)
    if len({r.id for r in records}) != len(records):
        raise UserError(f"{out}: tile ids collide when merging; give each part a distinct prefix")
    prov = {**first.info.provenance, "merged_from": [str(d.root) for _, d in dss], "merge_key": key}
    return _publish(tmp, out, dataclasses.replace(first.info, scheme=scheme), records, name=name or out.name, has_images=has_images, provenance=prov)


def _reuse_or_stage(out: Path, key_name: str, key: str, has_images: bool) -> tuple[Dataset | None, Path]:
    """The dataset already at ``out`` when its provenance ``key_name`` is ``key``; else a fresh staging
    directory beside ``out`` (terrasynth's own ``.tmp-*``, left by an interrupted run) to assemble into."""
    tmp = out.parent / f".tmp-{out.name}"
    if (out / META_FILE).exists():
        existing = Dataset.open(out)
        if existing.info.provenance.get(key_name) == key:
            return existing, tmp
        raise UserError(f"{out}: already holds another dataset; choose a new output directory")
    if tmp.exists():
        shutil.rmtree(tmp)
    ensure_dir(tmp / "labels")
    if has_images:
        ensure_dir(tmp / "images")
    return None, tmp


def _publish(tmp: Path, out: Path, template: DatasetInfo, records: list, *, name: str, has_images: bool,
             provenance: dict) -> Dataset:  # fmt: skip
    """Write the index and metadata into the assembled ``tmp`` directory, then rename it onto ``out``."""
    info = DatasetInfo(
        name=name, kind=template.kind, scheme=template.scheme, tile_size=template.tile_size, gsd=template.gsd,
        has_images=has_images, provenance=provenance, extra=template.extra,
    )  # fmt: skip
    write_text_atomic(tmp / INDEX_FILE, index_to_csv(records, template.scheme))
    write_json_atomic(tmp / META_FILE, info.to_json(records))
    if out.exists():
        # Only an empty directory is replaced: a non-empty one holds something terrasynth did not write.
        try:
            out.rmdir()
        except OSError:
            shutil.rmtree(tmp)
            raise UserError(f"{out}: directory is not empty and holds no finished dataset; choose an empty output "
                            "directory (terrasynth does not delete what it did not write)") from None  # fmt: skip
    os.replace(tmp, out)
    return Dataset.open(out)
