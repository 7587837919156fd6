"""Procedural world: generation speed and how hard it is (per-pixel colour rules vs a small CNN).

Run under the shared lock (it takes about 8 minutes on the shared 2-core machine):

    flock /work/heavy.lock python benchmarks/bench_world.py [--tiles 2000] [--train-seconds 180]

Speed: 2,000 tiles of 64 x 64 (generation + GeoTIFF writing) with 1 and 2 workers, against
the I/O floor measured in the same run (writing the same tiles, already in memory, with
the same DatasetWriter). Quality, on the world's test split (regions never seen in
training): nearest class-mean colour, the best per-pixel colour rule (argmax P(class |
RGB quantised to 32^3 bins), fitted on train), and smp Unet-resnet18 (encoder_weights=None)
trained for a fixed wall-clock budget. Metrics: macro mIoU over classes present in the
test labels, and pixel accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from world_baselines import colour_bayes, confusion, load_split, nearest_colour, scores  # noqa: E402

from terrasynth.data.dataset import DatasetInfo, DatasetWriter, provenance
from terrasynth.data.tile_sink import ThreadedWrites  # noqa: E402
from terrasynth.data.world import WorldConfig, generate_world  # noqa: E402


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


def train_unet(tx, ty, k: int, seconds: float, seed: int = 0, batch: int = 16):
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=k)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    x = torch.from_numpy(tx).permute(0, 3, 1, 2).float().div_(255)
    y = torch.from_numpy(ty.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    steps, t0 = 0, time.perf_counter()
    model.train()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        r = int(torch.randint(0, 8, (1,), generator=g))
        if r >= 4:
            xb, yb = xb.flip(-1), yb.flip(-1)
        xb, yb = torch.rot90(xb, r % 4, (-2, -1)), torch.rot90(yb, r % 4, (-2, -1))
        loss = torch.nn.functional.cross_entropy(model(xb), yb, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return model, steps


@torch.no_grad()
def predict(model, sx) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(sx), 64):
        xb = torch.from_numpy(sx[i : i + 64]).permute(0, 3, 1, 2).float().div_(255)
        out.append(model(xb).argmax(1).numpy())
    return np.concatenate(out)


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
    from terrasynth.data.dataset import Dataset

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
            tx, ty = load_split(ds, "train")
            sx, sy = load_split(ds, "test")
            res["train_tiles"], res["test_tiles"] = len(tx), len(sx)
            res["nearest_colour"] = scores(confusion(nearest_colour(tx, ty, sx, k), sy, k))
            res["colour_bayes"] = scores(confusion(colour_bayes(tx, ty, sx, k), sy, k))
            print(json.dumps(res, indent=1), flush=True)
            t = time.perf_counter()
            model, steps = train_unet(tx, ty, k, args.train_seconds, seed=args.seed)
            res["unet_train_s"], res["unet_steps"], res["unet_threads"] = time.perf_counter() - t, steps, args.threads
            res["unet_r18"] = scores(confusion(predict(model, sx), sy, k))
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
