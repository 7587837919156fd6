"""Image realism metrics: CPU seconds each metric costs per 100 masks, against reading the tiles alone.

    nice -n 19 python benchmarks/bench_image_realism.py [--tiles 500] [--size 64] [--threads 1] [--json FILE]

Data: a procedural world (``--tiles`` tiles of ``--size`` px; its test split, ~20%, is compared) and a
"synthetic" copy of its test tiles with 2 variants each (colour-shifted, with noise), written as
``terrasynth synthesize`` writes them (same ids + ``-v<j>``, same labels). The segmenter is an
untrained UNet-resnet18 (the segment-cpu encoder) and the Inception network randomly initialised
(no weights can be downloaded here): trained weights cost the same. Each metric runs alone through
:func:`image_realism` (``metrics=(name,)``); the baseline is the same call with no metric, which only
reads and checks the labels and images of both sets. Per-100 figures divide by the masks compared;
the segmenter FD also reads and encodes as many real train tiles for its floor, and FID pays a fixed
cost per FD (eigenvalues of a 2048 x 2048 product) whatever the number of tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads; as the CLI sets it (terrasynth.threads)

import numpy as np
import torch

from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
from terrasynth.data.world import WorldConfig, generate_world
from terrasynth.evaluate.image_realism import METRICS, InceptionFeatures, image_realism
from terrasynth.models.segmentation import build_segmenter, save_weights, segmenter_spec, write_spec


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def synthetic_copy(real: Dataset, out: Path, variants: int = 2) -> Dataset:
    """Test tiles repainted: a per-variant colour shift plus Gaussian noise; same ids (+ -v<j>) and labels."""
    info = DatasetInfo(name="syn", kind="synthetic", scheme=real.scheme, tile_size=real.info.tile_size,
                       provenance=provenance("bench", config_hash="bench"))  # fmt: skip
    rng = np.random.default_rng(0)
    with DatasetWriter(out, info) as w:
        for j in range(variants):
            for r in real.split("test"):
                img = real.read_image(r).astype(float) + [12.0 * (j + 1), -8.0, 0.0] + rng.normal(0, 6, (1, 1, 3))
                img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
                w.write(f"{r.id}-v{j}", r.split, real.read_label(r), img, source=r.source)
        return w.finalize()


def segmenter_run(root: Path, real: Dataset) -> Path:
    root.mkdir()
    torch.manual_seed(0)
    k = real.scheme.num_classes
    save_weights(build_segmenter("unet", "resnet18", 3, k), root / "best.safetensors")
    write_spec(root, segmenter_spec("unet", "resnet18", 3, k, real.scheme))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=500, help="world tiles (~20%% are test masks)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict = {"tiles": args.tiles, "size": args.size, "threads": args.threads, "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = generate_world(WorldConfig(tiles=args.tiles, size=args.size, seed=0), tmp / "real")
        syn = synthetic_copy(real, tmp / "syn")
        run = segmenter_run(tmp / "seg", real)
        torch.manual_seed(0)
        weights = tmp / "inception.pth"
        torch.save(InceptionFeatures().net.state_dict(), weights)
        kw = {"segmenter_run": run, "inception_weights": weights}
        image_realism(real, syn, metrics=(), **kw)  # warm the file cache and the imports
        for name in ("read", *METRICS):
            c, t = cpu_s(), time.perf_counter()
            out = image_realism(real, syn, metrics=() if name == "read" else (name,), **kw)
            res[name] = {"cpu_s": cpu_s() - c, "wall_s": time.perf_counter() - t}
            res["masks"] = out["masks"]
            if name != "read":
                extra = res[name]["cpu_s"] - res["read"]["cpu_s"]
                res[name]["extra_cpu_s_per_100"] = 100 * extra / out["masks"]
            res[name]["cpu_s_per_100"] = 100 * res[name]["cpu_s"] / out["masks"]
            print(name, json.dumps(res[name]), flush=True)
            if name in ("segmenter_fd", "inception", "diversity"):
                res[name]["result"] = out[name]
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
