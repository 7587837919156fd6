"""Making synthetic data pay (FreeMask: Yang et al., NeurIPS 2023): filter its noisy pixels and
paint more images for the harder masks, both judged by a segmenter trained on the real data.

- :func:`filter_synthetic`: the per-class mean cross-entropy of the real-trained segmenter on
  the real train tiles sets the bar; a synthetic pixel whose cross-entropy exceeds ``k`` times
  its class's bar is taken to be wrongly painted and is ignored in training. Optionally a whole
  tile is dropped when too much of it is ignored. FreeMask's own script uses ``k = 1.25`` (its
  ``--tolerance-margin`` default, ``preprocess/filter.py`` of github.com/LiheYoung/FreeMask),
  which is the default here; it does not drop tiles.
- :func:`tile_hardness` and :func:`hardness_variants`: harder real masks get more synthetic
  variants (pass the result to :func:`terrasynth.synthesize.synthesize` as ``variants``).

**How ignored pixels are stored.** A filtered label tile holds the scheme's *nodata* code where
a pixel is ignored, and the filtered dataset's scheme is the input's, with ``nodata: 255`` added
when it had none (DroneDeploy). Every reader already maps a dataset's own nodata code to the
ignore index (:meth:`~terrasynth.classes.ClassScheme.to_indices`), so training, metrics and
synthesis need nothing new, the dataset stays one label file per tile in the one format, and
``data info`` shows the ignored share as ``nodata_pixels``. Training mixes datasets whose class
codes agree even when their nodata codes differ (``train.segmentation.same_scheme``). The price:
an ignored pixel and a pixel the source never labelled look alike (the provenance keeps the
counts), and a side mask file would have needed a new reader in every consumer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from terrasynth import budget
from terrasynth.classes import IGNORE_INDEX, ClassScheme
from terrasynth.config import config_hash
from terrasynth.data.dataset import PARTIAL_FILE, Dataset, DatasetInfo, DatasetWriter, TileRecord, provenance
from terrasynth.errors import UserError
from terrasynth.models.segmentation import load_segmenter, predict_logits

log = logging.getLogger(__name__)

DEFAULT_K = 1.25  # FreeMask's tolerance margin
ADDED_NODATA = 255  # the ignore code added to a scheme without nodata (class codes are 0..254)

Loaded = tuple[torch.nn.Module, ClassScheme]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _segmenter(run: str | Path, which: str, loaded: Loaded | None) -> tuple[torch.nn.Module, ClassScheme, torch.device]:
    model, scheme = loaded if loaded is not None else load_segmenter(run, which)  # type: ignore[arg-type]
    dev = _device()
    return model.to(dev).eval(), scheme, dev


def _check_scheme(ds: Dataset, scheme: ClassScheme, run: str | Path) -> None:
    if ds.scheme.codes != scheme.codes:
        raise UserError(f"{ds.root}: class codes {ds.scheme.codes} of scheme '{ds.scheme.name}' differ from the "
                        f"segmenter's {scheme.codes} ({run}); use a segmenter trained on data in this scheme")  # fmt: skip
    if not ds.info.has_images:
        raise UserError(f"{ds.root}: label-only dataset, but the segmenter needs images; pass a paired dataset")


def pixel_ce(model: torch.nn.Module, images: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Per-pixel cross-entropy (B, H, W) float32 on the CPU of ``model`` on ``images`` (B, H, W, 3) uint8
    against training indices ``idx`` (B, H, W); 0 where ``idx`` is the ignore index."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255).to(device)
    y = torch.from_numpy(idx.astype(np.int64)).to(device)
    logits = predict_logits(model, x).float()
    return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none").cpu()


def _batches(ds: Dataset, records: Sequence[TileRecord], batch_size: int) -> Iterator[tuple[list[TileRecord], np.ndarray, np.ndarray]]:
    """Fixed batches in index order: (records, images (B, H, W, 3) uint8, indices (B, H, W) uint8)."""
    for i in range(0, len(records), batch_size):
        recs = list(records[i : i + batch_size])
        images = np.stack([ds.read_image(r) for r in recs])
        idx = np.stack([ds.scheme.to_indices(ds.read_label(r)) for r in recs])
        yield recs, images, idx


def class_mean_loss(model: torch.nn.Module, ds: Dataset, records: Sequence[TileRecord], *, batch_size: int = 16,
                    device: torch.device | None = None) -> np.ndarray:  # fmt: skip
    """(K,) float64: mean per-pixel cross-entropy of ``model`` over the pixels of each class in ``records``
    (NaN for a class with no pixel there)."""
    device = device or _device()
    k = ds.scheme.num_classes
    loss_sum, pixels = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for _, images, idx in tqdm(_batches(ds, records, batch_size), total=math.ceil(len(records) / batch_size),
                               desc=f"loss on {ds.root.name}", unit="batch", leave=False):  # fmt: skip
        ce = pixel_ce(model, images, idx, device)
        y = torch.from_numpy(idx.astype(np.int64))
        valid = y != IGNORE_INDEX
        loss_sum += torch.bincount(y[valid], weights=ce[valid].double(), minlength=k)
        pixels += torch.bincount(y[valid], minlength=k).double()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pixels.numpy() > 0, loss_sum.numpy() / pixels.numpy(), np.nan)


def _weights_digest(run: str | Path, which: str) -> str | None:
    """sha256 of the segmenter weights: a retrained segmenter is another filter (another config hash)."""
    path = Path(run) / f"{which}.safetensors"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _check_filter_args(k: float, drop_tile_above: float | None, batch_size: int) -> None:
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise UserError(f"--k {k}: the tolerance margin must be a positive number (FreeMask uses {DEFAULT_K})")
    if drop_tile_above is not None and not (math.isfinite(drop_tile_above) and 0 <= drop_tile_above < 1):
        raise UserError(f"--drop-tile-above {drop_tile_above}: must be a share in [0, 1), e.g. 0.5; "
                        "omit it to keep every tile")  # fmt: skip
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")


def filter_synthetic(
    segmenter_run: str | Path,
    real: str | Path | Dataset,
    synthetic: str | Path | Dataset,
    out: str | Path,
    *,
    k: float = DEFAULT_K,
    drop_tile_above: float | None = None,
    which: str = "best",
    splits: Sequence[str] | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    name: str | None = None,
    loaded: Loaded | None = None,
) -> Dataset:
    """Write ``synthetic`` (its ``splits``, default all) to ``out`` with its doubtful pixels ignored.

    The bar of class c is the mean cross-entropy of the segmenter in ``segmenter_run`` (weights
    ``which``; or the ``loaded`` (model, scheme)) over the class-c pixels of ``real``'s train
    split: the labelled tiles it learned from. A synthetic pixel of class c whose cross-entropy
    exceeds ``k`` x that bar becomes nodata (see the module docstring); a class absent from the
    real train tiles has no bar and its pixels are kept. With ``drop_tile_above`` a tile whose
    ignored share of labelled pixels exceeds it is left out. Resumable like every dataset writer.
    """
    _check_filter_args(k, drop_tile_above, batch_size)
    real_ds = real if isinstance(real, Dataset) else Dataset.open(real)
    syn = synthetic if isinstance(synthetic, Dataset) else Dataset.open(synthetic)
    model, scheme, dev = _segmenter(segmenter_run, which, loaded)
    for ds in (real_ds, syn):
        _check_scheme(ds, scheme, segmenter_run)
    real_recs = real_ds.split("train")
    if not real_recs:
        raise UserError(f"{real_ds.root}: no train tiles to measure the segmenter's loss on; pass the real dataset "
                        "the segmenter was trained on")  # fmt: skip
    records = syn.split(*(splits or ()))
    if not records:
        raise UserError(f"{syn.root}: no tiles in split(s) {list(splits or [])}; available: {sorted({r.split for r in syn.records})}")

    src_scheme = syn.scheme
    out_scheme = src_scheme if src_scheme.nodata is not None else dataclasses.replace(src_scheme, nodata=ADDED_NODATA)
    ignore_code = out_scheme.nodata
    cfg = {
        "segmenter": str(Path(segmenter_run).resolve()),
        "checkpoint": which,
        "weights": _weights_digest(segmenter_run, which),
        "real": str(Path(real_ds.root).resolve()),
        "real_config": real_ds.info.provenance.get("config_hash"),
        "synthetic": str(Path(syn.root).resolve()),
        "synthetic_config": syn.info.provenance.get("config_hash"),
        "splits": sorted(splits) if splits else None,
        "k": float(k),
        "drop_tile_above": drop_tile_above,
        "batch_size": batch_size,
    }
    summary: dict = {"segmenter": cfg["segmenter"], "checkpoint": which, "k": float(k),
                     "drop_tile_above": drop_tile_above, "real": cfg["real"], "real_train_tiles": len(real_recs),
                     "ignore_code": ignore_code, "nodata_added": src_scheme.nodata is None}  # fmt: skip
    info = DatasetInfo(
        name=name or Path(out).name,
        kind=syn.info.kind,
        scheme=out_scheme,
        tile_size=syn.info.tile_size,
        gsd=syn.info.gsd,
        has_images=True,
        provenance=provenance(
            f"filter {syn.root} by segmenter {segmenter_run}",
            config_hash=config_hash(cfg),
            seed=syn.info.provenance.get("seed"),
            generator=syn.info.provenance.get("generator"),  # the images are still that generator's
            filtered_from=cfg["synthetic"],
            filtered_from_config=cfg["synthetic_config"],
            filter=summary,
        ),
        extra=syn.info.extra,
    )
    if not (Path(out) / PARTIAL_FILE).exists():
        budget.check_budget(f"filter {len(records):,} tiles of {info.tile_size} px",
                            disk=budget.tiles_disk_bytes(len(records), info.tile_size), out=out,
                            fix="free disk space, choose another --out, or pass --split to filter fewer tiles")  # fmt: skip
    writer = DatasetWriter(out, info, overwrite=overwrite)
    if writer.complete:
        return Dataset.open(out)

    with writer, torch.inference_mode():
        bar_mean = class_mean_loss(model, real_ds, real_recs, batch_size=batch_size, device=dev)
        # A class the real train tiles lack has no bar: its pixels are kept (threshold +inf).
        threshold = torch.from_numpy(np.where(np.isnan(bar_mean), np.inf, k * bar_mean))
        n = src_scheme.num_classes
        ignored, labelled = np.zeros(n, np.int64), np.zeros(n, np.int64)
        dropped: list[str] = []
        bar = tqdm(total=len(records), desc="filter", unit="tile")
        for b in range(0, len(records), batch_size):
            recs = records[b : b + batch_size]
            if all(writer.has(r.id) for r in recs):
                # Resumed: count what an earlier run ignored from the labels it wrote.
                for r in recs:
                    src_idx = src_scheme.to_indices(syn.read_label(r))
                    done = read_written_label(Path(out), r.id)
                    _count(src_idx, done == ignore_code, n, ignored, labelled)
                bar.update(len(recs))
                continue
            tiles = [syn.read_label_georef(r) for r in recs]  # (codes, crs, transform)
            images = np.stack([syn.read_image(r) for r in recs])
            idx = np.stack([src_scheme.to_indices(c) for c, _, _ in tiles])
            ce = pixel_ce(model, images, idx, dev)  # (B, H, W)
            y = torch.from_numpy(idx.astype(np.int64))
            valid = y != IGNORE_INDEX
            bad = valid & (ce > threshold[y.clamp(max=n - 1)])  # (B, H, W): doubtful labelled pixels
            for i, (rec, (codes, crs, transform)) in enumerate(zip(recs, tiles)):
                drop = bad[i].numpy()
                _count(idx[i], drop, n, ignored, labelled)
                if writer.has(rec.id):
                    continue
                share = float(drop.sum()) / max(1, int(valid[i].sum()))
                if drop_tile_above is not None and share > drop_tile_above:
                    dropped.append(rec.id)
                    continue
                new = codes.copy()
                new[drop] = ignore_code
                writer.write(rec.id, rec.split, new, images[i], source=rec.source, crs=crs, transform=transform)
            bar.update(len(recs))
        bar.close()
        if len(dropped) == len(records):
            raise UserError(f"--drop-tile-above {drop_tile_above}: all {len(records)} tiles of {syn.root} exceed it, "
                            "so nothing is left; raise it (or omit it), or raise --k")  # fmt: skip
        summary.update({
            "class_mean_loss": {str(c): (None if math.isnan(v) else round(float(v), 6)) for c, v in zip(src_scheme.codes, bar_mean)},
            "ignored_share": {str(c): (round(int(i) / int(t), 6) if t else None) for c, i, t in zip(src_scheme.codes, ignored, labelled)},
            "ignored_pixels": int(ignored.sum()),
            "labelled_pixels": int(labelled.sum()),
            "tiles_in": len(records),
            "tiles_dropped": len(dropped),
            "dropped": sorted(dropped)[:100],
        })  # fmt: skip
    ds = writer.finalize()
    log.info("filtered %s: %.1f%% of labelled pixels ignored, %d of %d tiles dropped", ds.root,
             100 * summary["ignored_pixels"] / max(1, summary["labelled_pixels"]), len(dropped), len(records))  # fmt: skip
    return ds


def read_written_label(root: Path, tile_id: str) -> np.ndarray:
    """The label tile an earlier (killed) run of the filter wrote for ``tile_id``."""
    from terrasynth.data.dataset import read_label_tif

    return read_label_tif(root / "labels" / f"{tile_id}.tif")[0]


def _count(idx: np.ndarray, drop: np.ndarray, n: int, ignored: np.ndarray, labelled: np.ndarray) -> None:
    """Add one tile's ignored and labelled pixels per class (``idx`` training indices, ``drop`` (H, W) bool)."""
    valid = idx != IGNORE_INDEX
    labelled += np.bincount(idx[valid], minlength=n)[:n]
    ignored += np.bincount(idx[valid & drop], minlength=n)[:n]


# ---- hardness: more variants for the masks the real-trained segmenter finds hard -------------------


def tile_hardness(
    segmenter_run: str | Path,
    real: str | Path | Dataset,
    split: str | Sequence[str] | None = "train",
    *,
    which: str = "best",
    batch_size: int = 16,
    loaded: Loaded | None = None,
) -> dict[str, float]:
    """{tile id: mean per-pixel cross-entropy of the segmenter over the tile's labelled pixels} for the
    tiles of ``split`` (a name, several, or None/"all") of ``real``; 0.0 for a tile with none.

    FreeMask ranks a mask by the class-wise mean loss weighted by its class composition; this is the
    direct per-tile loss, which also sees how hard a tile's layout (edges, small patches) is.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    ds = real if isinstance(real, Dataset) else Dataset.open(real)
    model, scheme, dev = _segmenter(segmenter_run, which, loaded)
    _check_scheme(ds, scheme, segmenter_run)
    names = (split,) if isinstance(split, str) else tuple(split or ())
    records = ds.split(*names)
    if not records:
        raise UserError(f"{ds.root}: no tiles in split(s) {list(names)}; available: {sorted({r.split for r in ds.records})}")
    out: dict[str, float] = {}
    with torch.inference_mode():
        for recs, images, idx in tqdm(_batches(ds, records, batch_size), total=math.ceil(len(records) / batch_size),
                                      desc="hardness", unit="batch", leave=False):  # fmt: skip
            ce = pixel_ce(model, images, idx, dev)
            valid = torch.from_numpy(idx != IGNORE_INDEX)
            for rec, c, v in zip(recs, ce, valid):
                out[rec.id] = float(c[v].double().mean()) if bool(v.any()) else 0.0
    return out


def hardness_variants(hardness: Mapping[str, float], k_min: int, k_max: int) -> dict[str, int]:
    """{tile id: variants}, linear in hardness rank from ``k_min`` (easiest) to ``k_max`` (hardest).

    Tiles are ranked by hardness; tied tiles share their average rank, so equal hardness gives equal
    counts and a harder tile never gets fewer than an easier one. Rank r of n (0-based) gets
    ``k_min + floor(r / (n - 1) * (k_max - k_min) + 0.5)``; a single tile gets ``k_max`` (as in
    FreeMask's re-sampling, where the i-th easiest of n masks gets ``1 + round(i / n * 20)`` images).
    """
    for name, v in (("k_min", k_min), ("k_max", k_max)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"{name} = {v!r}: variant counts must be whole numbers >= 0")
    if k_min > k_max:
        raise UserError(f"variants {k_min}:{k_max}: the minimum exceeds the maximum; give MIN:MAX with MIN <= MAX")
    bad = [t for t, h in hardness.items() if not math.isfinite(h)]
    if bad:
        raise UserError(f"hardness of tile {bad[0]!r} is {hardness[bad[0]]}; hardness must be finite")
    ids = sorted(hardness, key=lambda t: (hardness[t], t))
    n = len(ids)
    out: dict[str, int] = {}
    i = 0
    while i < n:  # a run of tied hardness values shares the mean of its positions
        j = i
        while j + 1 < n and hardness[ids[j + 1]] == hardness[ids[i]]:
            j += 1
        q = 1.0 if n == 1 else (i + j) / 2 / (n - 1)
        for t in ids[i : j + 1]:
            out[t] = k_min + math.floor(q * (k_max - k_min) + 0.5)
        i = j + 1
    return out
