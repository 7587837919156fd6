"""Synthesis: an image for every label tile of a dataset, from any image generator run.

The output is a paired dataset (``kind: synthetic``) with the labels copied unchanged,
each tile keeping its split and georeference, and the generator recorded in provenance.

Determinism: tiles are grouped into fixed global batches (in index order), and batch
``b`` is generated with a ``torch.Generator`` seeded from ``(seed, b)``. Outputs therefore
do not depend on how many processes share the work (under ``accelerate launch`` batch
``b`` goes to rank ``b % world_size``: no tile is missing or duplicated), nor on where a
killed run was resumed (a batch with any tile missing is regenerated whole and only the
missing tiles are written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from terrasynth import budget
from terrasynth.config import config_hash
from terrasynth.data.dataset import PARTIAL_FILE, Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.errors import UserError
from terrasynth.models.generator import load_generator


def batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) % (2**63 - 1)


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
) -> Dataset | None:
    """Generate images for the label tiles of ``labels`` with the generator in ``generator_run``.

    Returns the finished dataset on the main process (None on other ranks).
    """
    from terrasynth.accel import dist_state

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    state = dist_state()
    src = labels if isinstance(labels, Dataset) else Dataset.open(labels)
    gen = load_generator(generator_run, device=state.device)
    if gen.scheme.codes != src.scheme.codes:
        raise UserError(
            f"{src.root}: label scheme '{src.scheme.name}' {src.scheme.codes} differs from the generator's "
            f"'{gen.scheme.name}' {gen.scheme.codes}; synthesize from labels in the scheme the generator was trained on"
        )
    records = src.split(*(splits or ()))
    if not records:
        raise UserError(f"{src.root}: no tiles in split(s) {list(splits or [])}; available: {sorted({r.split for r in src.records})}")
    desc = gen.describe()
    cfg = {
        "generator": desc,
        "labels": str(Path(src.root).resolve()),
        "labels_config": src.info.provenance.get("config_hash"),
        "splits": sorted(splits) if splits else None,
        "seed": seed,
        "batch_size": batch_size,
    }
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
        ),
    )
    if state.is_main_process and not (Path(out) / PARTIAL_FILE).exists():
        budget.check_budget(f"synthesize {len(records):,} tiles of {info.tile_size} px",
                            disk=budget.tiles_disk_bytes(len(records), info.tile_size), out=out,
                            fix="free disk space, choose another --out, or pass --split to paint fewer tiles")  # fmt: skip
    if state.is_main_process:
        writer = DatasetWriter(out, info, shard=state.process_index, overwrite=overwrite)
    state.wait_for_everyone()
    if not state.is_main_process:
        writer = DatasetWriter(out, info, shard=state.process_index)
    if writer.complete:
        return Dataset.open(out) if state.is_main_process else None

    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not all(writer.has(r.id) for r in batches[b])]
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc="synthesize", unit="tile", disable=not state.is_main_process)
    bar.update(sum(len(batches[b]) for b in mine) - sum(len(batches[b]) for b in todo))
    with writer, torch.inference_mode():
        for b in todo:
            recs = batches[b]
            tiles = [src.read_label_georef(r) for r in recs]  # (codes, crs, transform)
            masks = torch.from_numpy(np.stack([src.scheme.to_indices(c) for c, _, _ in tiles]).astype(np.int64))
            g = torch.Generator(device="cpu").manual_seed(batch_seed(seed, b))
            images = gen.generate(masks.to(state.device), g)
            rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for rec, (lab, crs, transform), img in zip(recs, tiles, rgb):
                if writer.has(rec.id):
                    continue
                writer.write(rec.id, rec.split, lab, img, source=rec.source or rec.id, crs=crs, transform=transform)
            bar.update(len(recs))
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        return DatasetWriter(out, info, shard=0).finalize()
    return None
