"""Synthesis: an image for every label tile of a dataset, from any image generator run.

The output is a paired dataset (``kind: synthetic``) with the labels copied unchanged,
each tile keeping its split and georeference, and the generator recorded in provenance.

Determinism: tiles are grouped into fixed global batches (in index order), and batch
``b`` is generated with a ``torch.Generator`` seeded from ``(seed, b)``. Outputs therefore
do not depend on how many processes share the work (under ``accelerate launch`` batch
``b`` goes to rank ``b % world_size``: no tile is missing or duplicated), nor on where a
killed run was resumed (a batch with any tile missing is regenerated whole and only the
missing tiles are written).

Several images per mask (``variants``, FreeMask's "more synthetic images per real mask"):
with ``variants=K`` every label tile is painted K times, as tiles ``<id>-v0 .. <id>-v<K-1>``
(``K=1`` keeps the ids ``<id>`` and the bytes of a run without the option); a mapping
``{tile id: K_i}`` paints each tile its own number of times (``K_i = 0`` skips it; see
:func:`terrasynth.synthesize_filter.hardness_variants`) and always suffixes. The variants are
laid out variant-major: first every tile's ``-v0``, then every ``-v1``, ..., each variant
chunked into batches and the batches numbered globally in that order. Variant 0 of a run
with ``variants=K`` therefore comes from the very batches (and seeds) of the ``K=1`` run, and
the other variants from other batches, hence other noise. Each variant keeps its mask's
label, split and ``source``, so holding out by source keeps every variant with its mask.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from terrasynth import budget
from terrasynth.config import config_hash
from terrasynth.data.dataset import PARTIAL_FILE, Dataset, DatasetInfo, DatasetWriter, TileRecord, provenance
from terrasynth.errors import UserError
from terrasynth.models.generator import load_generator


def batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) % (2**63 - 1)


Variants = int | Mapping[str, int]


def variant_plan(src: Dataset, records: Sequence[TileRecord], variants: Variants) -> list[list[tuple[TileRecord, str]]]:
    """Per variant j, the (label tile, output tile id) pairs painted, in index order.

    ``variants`` is a count for every tile (ids unchanged when 1, ``<id>-v<j>`` otherwise) or a
    ``{tile id: count}`` mapping that covers every tile of ``records`` (ids always suffixed).
    """
    if isinstance(variants, Mapping):
        known = {r.id for r in src.records}
        bad = [(t, k) for t, k in variants.items() if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad:
            raise UserError(f"variants for tile {bad[0][0]!r} = {bad[0][1]!r}: counts must be whole numbers >= 0")
        stray = sorted(set(variants) - known)
        if stray:
            raise UserError(f"{src.root}: variants name {len(stray)} tile id(s) it does not hold (first {stray[0]!r}); "
                            "compute them on this dataset (tile_hardness on the labels you synthesize from)")  # fmt: skip
        missing = [r.id for r in records if r.id not in variants]
        if missing:
            raise UserError(f"{src.root}: variants give no count for {len(missing)} tile(s) (first {missing[0]!r}); "
                            "give every painted tile a count, or pass --split to paint only the tiles they cover")  # fmt: skip
        counts = {r.id: variants[r.id] for r in records}
        suffix = True
    else:
        if isinstance(variants, bool) or not isinstance(variants, int) or variants < 1:
            raise UserError(f"--variants {variants!r}: must be a whole number of images per label tile, at least 1")
        counts = {r.id: variants for r in records}
        suffix = variants != 1
    plan = [[(r, f"{r.id}-v{j}" if suffix else r.id) for r in records if counts[r.id] > j]
            for j in range(max(counts.values(), default=0))]  # fmt: skip
    twice = sorted(i for i, n in Counter(i for part in plan for _, i in part).items() if n > 1)
    if twice:
        dup = twice[0]
        raise UserError(f"{src.root}: output tile id {dup!r} would be written twice (a tile id already ends in -v<j>); "
                        "rename the tiles or paint one variant")  # fmt: skip
    return plan


def _variants_config(variants: Variants) -> int | dict[str, int] | None:
    """What enters the config hash and provenance: None for the plain one-image run (whose hash must
    not change), the count, or the per-tile counts."""
    if isinstance(variants, Mapping):
        return {k: int(variants[k]) for k in sorted(variants)}
    return None if variants == 1 else int(variants)


def _variants_summary(vcfg: int | dict[str, int]) -> int | dict[str, object]:
    """Provenance of the variant counts: the count, or a summary of per-tile counts (the full mapping
    is in the config hash; a dataset.json with one entry per tile would dwarf the rest)."""
    if isinstance(vcfg, int):
        return vcfg
    k = list(vcfg.values())
    return {"per_tile": True, "tiles": len(k), "min": min(k, default=0), "max": max(k, default=0),
            "total": sum(k), "config_hash": config_hash(vcfg)}  # fmt: skip


def synthesize(
    generator_run: str | Path,
    labels: str | Path | Dataset,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 16,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    name: str | None = None,
    variants: Variants = 1,
    sampling: Mapping[str, object] | None = None,
) -> Dataset | None:
    """Generate images for the label tiles of ``labels`` with the generator in ``generator_run``.

    ``variants``: images per label tile, a count or ``{tile id: count}`` (see the module docstring).
    ``sampling``: overrides of the run's saved sampling settings (ControlNet ``steps``,
    ``guidance_scale``, ...); they are part of the generator's description, hence of the output's
    config hash and provenance.
    Returns the finished dataset on the main process (None on other ranks).
    """
    from terrasynth.accel import dist_state

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    state = dist_state()
    src = labels if isinstance(labels, Dataset) else Dataset.open(labels)
    gen = load_generator(generator_run, device=state.device, **dict(sampling or {}))
    if gen.scheme.codes != src.scheme.codes:
        raise UserError(
            f"{src.root}: label scheme '{src.scheme.name}' {src.scheme.codes} differs from the generator's "
            f"'{gen.scheme.name}' {gen.scheme.codes}; synthesize from labels in the scheme the generator was trained on"
        )
    records = src.split(*(splits or ()))
    if not records:
        raise UserError(f"{src.root}: no tiles in split(s) {list(splits or [])}; available: {sorted({r.split for r in src.records})}")
    plan = variant_plan(src, records, variants)
    n_out = sum(len(part) for part in plan)
    if not n_out:
        raise UserError(f"{src.root}: every variant count is 0, so there is nothing to paint; give some tiles a count >= 1")
    desc = gen.describe()
    cfg = {
        "generator": desc,
        "labels": str(Path(src.root).resolve()),
        "labels_config": src.info.provenance.get("config_hash"),
        "splits": sorted(splits) if splits else None,
        "seed": seed,
        "batch_size": batch_size,
    }
    vcfg = _variants_config(variants)
    if vcfg is not None:  # absent for one image per tile: that run's hash (and bytes) stay as they were
        cfg["variants"] = vcfg
    info = DatasetInfo(
        name=name or Path(out).name,
        kind="synthetic",
        scheme=src.scheme,
        tile_size=src.info.tile_size,
        gsd=src.info.gsd,
        has_images=True,
        provenance=provenance(
            f"synthesize from {src.root}",
            config_hash=config_hash(cfg),
            seed=seed,
            generator=desc,
            labels=cfg["labels"],
            labels_config=cfg["labels_config"],
            **({} if vcfg is None else {"variants": _variants_summary(vcfg), "tiles_per_variant": [len(p) for p in plan]}),
        ),
    )
    if state.is_main_process and not (Path(out) / PARTIAL_FILE).exists():
        budget.check_budget(f"synthesize {n_out:,} tiles of {info.tile_size} px",
                            disk=budget.tiles_disk_bytes(n_out, info.tile_size), out=out,
                            fix="free disk space, choose another --out, or pass --split or fewer --variants to paint "
                                "fewer tiles")  # fmt: skip
    if state.is_main_process:
        writer = DatasetWriter(out, info, shard=state.process_index, overwrite=overwrite)
    state.wait_for_everyone()
    if not state.is_main_process:
        writer = DatasetWriter(out, info, shard=state.process_index)
    if writer.complete:
        return Dataset.open(out) if state.is_main_process else None

    # Fixed global batches: variant by variant, each chunked in index order (see the module docstring).
    batches = [part[i : i + batch_size] for part in plan for i in range(0, len(part), batch_size)]
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not all(writer.has(tid) for _, tid in batches[b])]
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc="synthesize", unit="tile", disable=not state.is_main_process)
    bar.update(sum(len(batches[b]) for b in mine) - sum(len(batches[b]) for b in todo))
    with writer, torch.inference_mode():
        for b in todo:
            jobs = batches[b]
            tiles = [src.read_label_georef(r) for r, _ in jobs]  # (codes, crs, transform)
            masks = torch.from_numpy(np.stack([src.scheme.to_indices(c) for c, _, _ in tiles]).astype(np.int64))
            g = torch.Generator(device="cpu").manual_seed(batch_seed(seed, b))
            images = gen.generate(masks.to(state.device), g)
            rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for (rec, tid), (lab, crs, transform), img in zip(jobs, tiles, rgb):
                if writer.has(tid):
                    continue
                writer.write(tid, rec.split, lab, img, source=rec.source or rec.id, crs=crs, transform=transform)
            bar.update(len(jobs))
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        return DatasetWriter(out, info, shard=0).finalize()
    return None
