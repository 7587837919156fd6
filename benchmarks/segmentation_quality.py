"""Segmentation quality figure: each architecture after a fixed CPU wall-time budget vs a colour baseline.

Trains UNet, UNet++ and DeepLabV3+ (same encoder) on the train split of a dataset (e.g.
the DroneDeploy pairs imported at 64x64, split by source image) for ``--minutes`` each,
then evaluates the best-by-validation and the last weights on the test split, next to
the nearest class-mean colour baseline fitted on the train split. The runner's speed probe
(``target_minutes``) sizes the steps so that the cosine decay ends at the time budget.
Prints a markdown table and writes JSON. Run it under the heavy lock:

    flock /work/heavy.lock python benchmarks/segmentation_quality.py --data outputs/dd64 --out outputs/segq
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from terrasynth.data.torchdata import TileDataset
from terrasynth.evaluate.colour_baseline import NearestClassColour
from terrasynth.evaluate.segmentation import SegmentationMetrics, evaluate_segmentation
from terrasynth.accel import resolve_precision
from terrasynth.train.segmentation import SegmentConfig, train_segmentation


def colour_baseline(data: Path) -> dict:
    train = DataLoader(TileDataset(data, "train"), batch_size=64)
    test = DataLoader(TileDataset(data, "test"), batch_size=64)
    k = train.dataset.scheme.num_classes
    clf = NearestClassColour(k)
    for b in train:
        clf.fit_batch(b["image"], b["mask"])
    m = SegmentationMetrics(k)
    for b in test:
        m.update(clf.predict(b["image"]), b["mask"])
    return m.compute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--archs", nargs="+", default=["unet", "unetplusplus", "deeplabv3plus"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.time()
    base = colour_baseline(args.data)
    rows.append({"model": "nearest class-mean colour", "steps": 0, "seconds": round(time.time() - t0, 1),
                 "test_macro_miou": base["macro_miou"], "test_micro_iou": base["micro_iou"],
                 "test_pixel_accuracy": base["pixel_accuracy"]})  # fmt: skip
    for arch in args.archs:
        cfg = SegmentConfig(arch=arch, encoder=args.encoder, batch_size=8, lr=1e-3, seed=args.seed, val_every=100,
                            checkpoint_every=200, max_steps=10**6, target_minutes=args.minutes,
                            threads=args.threads)  # fmt: skip
        run = args.out / f"{arch}-{args.encoder}"
        shutil.rmtree(run, ignore_errors=True)
        t = time.time()
        train_segmentation(cfg, [(args.data, 1.0)], run)
        seconds = time.time() - t
        best = evaluate_segmentation(run, args.data, "test", which="best")
        last = evaluate_segmentation(run, args.data, "test", which="last")
        steps = json.loads((run / "last.json").read_text())["step"]
        probe = json.loads((run / "run.json").read_text())["budget"]
        rows.append({"model": f"{arch} / {args.encoder}", "steps": steps, "planned_steps": probe["steps"],
                     "probe_steps_per_s": round(1 / probe["seconds_per_step"], 2), "seconds": round(seconds, 1),
                     "best_step": best["model"]["step"],
                     "test_macro_miou": best["macro_miou"], "test_micro_iou": best["micro_iou"],
                     "test_pixel_accuracy": best["pixel_accuracy"],
                     "last_macro_miou": last["macro_miou"], "last_micro_iou": last["micro_iou"],
                     "per_class_iou_best": best["per_class_iou"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    meta = {"data": str(args.data), "minutes": args.minutes, "seed": args.seed, "threads": args.threads,
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "mixed_precision": resolve_precision("auto"), "rows": rows}  # fmt: skip
    (args.out / "quality.json").write_text(json.dumps(meta, indent=2))
    print("| model | steps | test macro mIoU | test micro IoU | pixel acc. | last macro mIoU | last micro IoU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['test_macro_miou']:.3f} | {r['test_micro_iou']:.3f} | "
              f"{r['test_pixel_accuracy']:.3f} | {r.get('last_macro_miou', float('nan')):.3f} | "
              f"{r.get('last_micro_iou', float('nan')):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
