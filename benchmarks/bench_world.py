"""Procedural world: generation speed and how hard it is (per-pixel colour rules vs a small CNN).

Run under the shared lock (it takes about 8 minutes on the shared 2-core machine):

    flock /work/heavy.lock python benchmarks/bench_world.py [--tiles 2000] [--train-seconds 180]

Speed: 2,000 tiles of 64 x 64 (generation + GeoTIFF writing) with 1 and 2 workers, against
the I/O floor measured in the same run (writing the same tiles, already in memory, with
the same DatasetWriter). Quality, on the world's test split (regions never seen in
training): nearest class-mean colour (``evaluate.colour_baseline``), the best per-pixel colour
rule (argmax P(class | RGB quantised to 32^3 bins), fitted on train), and a UNet-resnet18
trained by ``segment train`` for a fixed wall-clock budget. Metrics (``SegmentationMetrics``):
macro mIoU over classes present in the test labels, and pixel accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from torch.utils.data import DataLoader

from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.tile_sink import ThreadedWrites
from terrasynth.data.torchdata import TileDataset
from terrasynth.data.world import WorldConfig, generate_world
from terrasynth.evaluate.colour_baseline import NearestClassColour
from terrasynth.evaluate.segmentation import SegmentationMetrics, evaluate_segmentation
from terrasynth.train.segmentation import SegmentConfig, train_segmentation


def timed_world(cfg: WorldConfig, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    generate_world(cfg, out, workers=workers)
    return time.perf_counter() - t


def io_floor(ds, out: Path) -> float:
    """Time to write the same tiles (held in memory) with DatasetWriter: the cost of the format alone."""
    tiles = [(r, ds.read_label(r), ds.read_image(r)) for r in ds.records]
    shutil.rmtree(out, ignore_errors=True)
    info = DatasetInfo(name="floor", kind="procedural", scheme=ds.scheme, tile_size=ds.info.tile_size,
                       provenance=provenance("io floor", config_hash="floor"))  # fmt: skip
    t = time.perf_counter()
    with DatasetWriter(out, info) as w:
        with ThreadedWrites(w) as sink:
            for r, lab, img in tiles:
                sink.submit(r.id, r.split, lab, img)
        w.finalize()
    return time.perf_counter() - t


def colour_bayes(ds: Dataset, k: int, bins: int = 32) -> dict:
    """The best any per-pixel colour rule can do here: argmax P(class | quantised RGB) from train counts."""
    q = 256 // bins

    def key(img: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, H, W) bin index
        a = (img * 255).round().long() // q
        return (a[:, 0] * bins + a[:, 1]) * bins + a[:, 2]

    counts = torch.zeros(bins**3 * k, dtype=torch.int64)
    for b in DataLoader(TileDataset(ds, "train"), batch_size=64):
        ok = b["mask"] != 255
        counts += torch.bincount(key(b["image"])[ok] * k + b["mask"][ok], minlength=bins**3 * k)
    counts = counts.view(bins**3, k)
    table = torch.where(counts.sum(1) > 0, counts.argmax(1), counts.sum(0).argmax())
    m = SegmentationMetrics(k)
    for b in DataLoader(TileDataset(ds, "test"), batch_size=64):
        m.update(table[key(b["image"])], b["mask"])
    return m.compute()


def nearest_colour(ds: Dataset, k: int) -> dict:
    clf = NearestClassColour(k)
    for b in DataLoader(TileDataset(ds, "train"), batch_size=64):
        clf.fit_batch(b["image"], b["mask"])
    m = SegmentationMetrics(k)
    for b in DataLoader(TileDataset(ds, "test"), batch_size=64):
        m.update(clf.predict(b["image"]), b["mask"])
    return m.compute()


def scores(m: dict) -> dict[str, float]:
    return {"miou": m["macro_miou"], "pixel_acc": m["pixel_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--train-seconds", type=float, default=180)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only", choices=["all", "speed", "quality"], default="all")
    ap.add_argument("--world", type=Path, help="quality only: use this existing world instead of generating one")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the CNN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    cfg = WorldConfig(tiles=args.tiles, size=64, seed=args.seed)
    res: dict = {"tiles": args.tiles, "size": 64, "seed": args.seed, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in ("all", "speed") or args.world is None:
            res["world_s_workers1"] = timed_world(cfg, tmp / "w1", 1)
        if args.only in ("all", "speed"):
            res["world_s_workers2"] = timed_world(cfg, tmp / "w2", 2)
            ds = Dataset.open(tmp / "w1")
            same = all((tmp / "w1" / r.image).read_bytes() == (tmp / "w2" / r.image).read_bytes() for r in ds.records)
            res["workers_identical_bytes"] = same
            res["io_floor_s"] = io_floor(ds, tmp / "floor")
            for w in (1, 2):
                res[f"tiles_per_s_workers{w}"] = args.tiles / res[f"world_s_workers{w}"]
                res[f"x_io_floor_workers{w}"] = res[f"world_s_workers{w}"] / res["io_floor_s"]
            print(json.dumps(res, indent=1), flush=True)
        if args.only in ("all", "quality"):
            ds = Dataset.open(args.world or tmp / "w1")
            res["world"] = str(args.world or f"generated: tiles={args.tiles} seed={args.seed}")
            k = ds.scheme.num_classes
            res["train_tiles"], res["test_tiles"] = len(ds.split("train")), len(ds.split("test"))
            res["nearest_colour"] = scores(nearest_colour(ds, k))
            res["colour_bayes"] = scores(colour_bayes(ds, k))
            print(json.dumps(res, indent=1), flush=True)
            cfg = SegmentConfig(arch="unet", encoder="resnet18", batch_size=16, lr=2e-3, seed=args.seed,
                                max_steps=10**6, max_minutes=args.train_seconds / 60, val_every=10**6,
                                checkpoint_every=10**6, threads=args.threads)  # fmt: skip
            t = time.perf_counter()
            run = train_segmentation(cfg, [(ds.root, 1.0)], tmp / "unet")
            res["unet_train_s"], res["unet_threads"] = time.perf_counter() - t, args.threads
            res["unet_steps"] = json.loads((run / "last.json").read_text())["step"]
            res["unet_r18"] = scores(evaluate_segmentation(run, ds.root, "test", which="last"))
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
