"""Segmentation metrics (torchmetrics) and the evaluation of a trained run on a dataset.

Definitions, over all evaluated pixels whose target is not the ignore index (255):

- ``per_class_iou[c]`` = TP_c / (TP_c + FP_c + FN_c); null when class c is in neither
  the target nor the prediction.
- ``micro_iou`` = sum_c TP_c / sum_c (TP_c + FP_c + FN_c): total intersection over total
  union, torchmetrics ``MulticlassJaccardIndex(average="micro")`` as torchgeo computes it.
- ``macro_miou`` = mean of ``per_class_iou`` over the classes present in the target
  (a class only predicted, never present, does not enter the mean: it still lowers the
  IoU of the classes it was confused with).
- ``pixel_accuracy`` = sum_c TP_c / valid pixels.
- ``confusion[i][j]`` = pixels of target class i predicted as j (training-index order).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex
from tqdm import tqdm

import terrasynth
from terrasynth.classes import IGNORE_INDEX, ClassScheme
from terrasynth.data.dataset import Dataset
from terrasynth.data.torchdata import TileDataset
from terrasynth.errors import UserError
from terrasynth.io import read_json, write_json_atomic, write_text_atomic


class SegmentationMetrics:
    """Accumulates predictions and targets (B, H, W) of training indices; 255 in the target is ignored."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        kw = dict(num_classes=num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.metrics = MetricCollection(
            {
                "confusion": MulticlassConfusionMatrix(**kw),
                "micro_iou": MulticlassJaccardIndex(average="micro", **kw),
                "per_class_iou": MulticlassJaccardIndex(average="none", zero_division=math.nan, **kw),
                "pixel_accuracy": MulticlassAccuracy(average="micro", **kw),
            }
        ).to(device)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.metrics.update(preds.reshape(-1), target.reshape(-1))

    def compute(self) -> dict[str, Any]:
        """``micro_iou``, ``macro_miou``, ``pixel_accuracy`` (floats; NaN when nothing valid),
        ``per_class_iou`` (list, None for absent classes) and ``confusion`` (K x K ints)."""
        out = self.metrics.compute()
        confusion = out["confusion"].to(torch.int64).cpu()
        per_class = out["per_class_iou"].cpu().double()
        present = confusion.sum(1) > 0
        valid = int(confusion.sum())
        macro = float(per_class[present].mean()) if present.any() else math.nan
        return {
            "micro_iou": float(out["micro_iou"]) if valid else math.nan,
            "macro_miou": macro,
            "pixel_accuracy": float(out["pixel_accuracy"]) if valid else math.nan,
            "per_class_iou": [None if math.isnan(v) else float(v) for v in per_class.tolist()],
            "confusion": confusion.tolist(),
            "valid_pixels": valid,
        }

    def reset(self) -> None:
        self.metrics.reset()


@torch.no_grad()
def reconstruction_metrics(vae: torch.nn.Module, batches, num_classes: int) -> dict[str, Any]:
    """Pixel accuracy and per-class IoU of a land-cover autoencoder's ``decode(encode(mask))`` over an
    iterable of (B, H, W) masks; IoU is ``None`` for classes absent from both maps and reconstructions."""
    from terrasynth.models.autoencoder import decode_indices, encode

    metrics = SegmentationMetrics(num_classes)
    was_training = vae.training
    vae.eval()
    for mask in batches:  # metrics on the CPU, whatever device the autoencoder is on
        mask = mask.cpu()
        metrics.update(decode_indices(vae, encode(vae, mask.to(vae.device))).cpu(), mask)
    vae.train(was_training)
    r = metrics.compute()
    return {"pixel_accuracy": r["pixel_accuracy"] if r["valid_pixels"] else 0.0, "iou": r["per_class_iou"]}


def confusion_metrics_table(result: dict[str, Any], scheme: ClassScheme) -> str:
    """CSV text, one row per class: code, name, iou, target pixels, predicted pixels, then the totals."""
    conf = result["confusion"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["code", "name", "iou", "target_pixels", "predicted_pixels"])
    for i, c in enumerate(scheme.classes):
        iou = result["per_class_iou"][str(c.code)]
        w.writerow([c.code, c.name, "" if iou is None else f"{iou:.6f}", sum(conf[i]), sum(r[i] for r in conf)])
    for key in ("micro_iou", "macro_miou", "pixel_accuracy"):
        w.writerow([key, "", f"{result[key]:.6f}", "", ""])
    return buf.getvalue()


# Test sets are read once per process: a matrix scores every model on the same test splits and the
# scarce experiment scores dozens of runs on one val and one test split (reading Dubai's 4,155 test
# tiles took about 17 s of each run's evaluation). Bounded by bytes, least recently used first out;
# keyed by the dataset's index file as well, so a dataset rewritten in place is read again.
EVAL_CACHE_BYTES = 1 << 30
_EVAL_TILES: dict[tuple[str, str, int, int], TileDataset] = {}


def eval_tiles(ds: Dataset, split: str) -> TileDataset:
    """The tiles of ``split`` (``all``: every split) for evaluation, kept in memory across calls."""
    index = ds.root / "dataset.json"
    st = index.stat()
    key = (str(ds.root.resolve()), split, st.st_mtime_ns, st.st_size)
    if key in _EVAL_TILES:
        _EVAL_TILES[key] = _EVAL_TILES.pop(key)  # most recently used last
        return _EVAL_TILES[key]
    tiles = TileDataset(ds, split if split != "all" else None, augment=False, cache=True)
    if _nbytes(tiles) > EVAL_CACHE_BYTES:
        tiles.cache = False
        return tiles
    while _EVAL_TILES and _nbytes(tiles) + sum(map(_nbytes, _EVAL_TILES.values())) > EVAL_CACHE_BYTES:
        _EVAL_TILES.pop(next(iter(_EVAL_TILES)))
    _EVAL_TILES[key] = tiles
    return tiles


def _nbytes(tiles: TileDataset) -> int:
    return len(tiles) * tiles.ds.info.tile_size**2 * 4  # uint8 RGB + uint8 mask per pixel, when read


def evaluate_segmentation(
    run: Path,
    data: Path,
    split: str = "test",
    *,
    which: str = "best",
    batch_size: int = 16,
    loaded: tuple[torch.nn.Module, ClassScheme] | None = None,
) -> dict[str, Any]:
    """Evaluate the segmenter in ``run`` on ``split`` (``train``/``val``/``test``/``all``) of dataset ``data``.

    Returns ``micro_iou``, ``macro_miou``, ``per_class_iou`` ({code: IoU or None}),
    ``pixel_accuracy``, ``confusion`` (rows = target, training-index order), ``classes``
    ([{code, name}]), ``n_tiles``, ``valid_pixels``, ``dataset`` and ``model`` info.
    """
    from terrasynth.models.segmentation import load_segmenter, predict

    run, data = Path(run), Path(data)
    model, scheme = loaded if loaded is not None else load_segmenter(run, which)  # type: ignore[arg-type]
    ds = Dataset.open(data)
    if ds.scheme.to_dict()["classes"] != scheme.to_dict()["classes"]:
        raise UserError(
            f"{data}: class scheme '{ds.scheme.name}' differs from the model's '{scheme.name}' ({run}); "
            "evaluate on a dataset with the scheme the model was trained on (remap it on import)"
        )
    tiles = eval_tiles(ds, split)
    loader = DataLoader(tiles, batch_size=batch_size, shuffle=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    metrics = SegmentationMetrics(scheme.num_classes, device)
    t0 = time.time()
    for batch in tqdm(loader, desc=f"evaluate {data.name}/{split}", unit="batch", leave=False):
        metrics.update(predict(model, batch["image"].to(device)), batch["mask"].to(device))
    m = metrics.compute()
    return {
        "micro_iou": m["micro_iou"],
        "macro_miou": m["macro_miou"],
        "per_class_iou": {str(c.code): v for c, v in zip(scheme.classes, m["per_class_iou"])},
        "pixel_accuracy": m["pixel_accuracy"],
        "confusion": m["confusion"],
        "classes": [{"code": c.code, "name": c.name} for c in scheme.classes],
        "n_tiles": len(tiles),
        "valid_pixels": m["valid_pixels"],
        "split": split,
        "dataset": {"path": str(data), "name": ds.info.name, "kind": ds.info.kind, "scheme": ds.scheme.name,
                    "tile_size": ds.info.tile_size},
        "model": {"run": str(run), "checkpoint": which, **_run_info(run, which)},
        "seconds": round(time.time() - t0, 2),
        "version": terrasynth.__version__,
    }  # fmt: skip


def _run_info(run: Path, which: str) -> dict[str, Any]:
    spec = read_json(run / "segmenter.json", "restore the run directory")
    meta = run / f"{which}.json"
    step = read_json(meta, "restore the run directory").get("step") if meta.is_file() else None
    return {"arch": spec.get("arch"), "encoder": spec.get("encoder"), "step": step}


def write_evaluation(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and a per-class CSV beside it (same name, ``.csv``)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise UserError(f"--out {out}: the evaluation is written as JSON; give a file name ending in .json")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    scheme = ClassScheme.from_dict(
        {"name": "eval", "classes": [dict(c, colour="#000000") for c in result["classes"]]}, where=str(out)
    )
    csv_path = out.with_suffix(".csv")
    write_json_atomic(out, _json_safe(result))
    write_text_atomic(csv_path, confusion_metrics_table(result, scheme))
    return out, csv_path


def _json_safe(obj: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
