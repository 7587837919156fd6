"""CPU inference speed of the three segmenters as evaluation runs them, contiguous vs channels_last.

Each architecture is built at random init (the speed does not depend on the weights), made
inference-ready by :func:`terrasynth.models.segmentation.inference_ready` with and without
channels_last, and timed on ``--tiles`` random 64 px tiles through
:func:`terrasynth.models.segmentation.predict` in batches of 16 (as ``evaluate_segmentation``
does). The two formats alternate for ``--repeats`` rounds in one process so that load from other
jobs hits both alike; the figure is the best round. Ratios are channels_last over contiguous of the
same architecture, measured in the same run.

    python benchmarks/bench_evaluate.py [--tiles 320] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time


def main() -> None:
    import torch

    from terrasynth.models.segmentation import build_segmenter, inference_ready, predict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=320)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.tiles, 3, args.size, args.size)
    rows = []
    for arch, encoder in (("unet", "resnet18"), ("unetplusplus", "mobilenet_v2"), ("deeplabv3plus", "resnet18")):
        base = build_segmenter(arch, encoder, 3, 6)
        models = {"contiguous": inference_ready(copy.deepcopy(base)), "channels_last": inference_ready(copy.deepcopy(base), arch)}
        best = {k: float("inf") for k in models}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, m in models.items():
                t = time.perf_counter()
                preds = [predict(m, x[i : i + args.batch]) for i in range(0, len(x), args.batch)]
                best[name] = min(best[name], time.perf_counter() - t)
        a, b = (predict(m, x[:64]) for m in models.values())
        agree = float((a == b).float().mean())  # same predictions up to float rounding
        row = {"arch": arch, "encoder": encoder, **{f"{k}_tiles_per_s": args.tiles / v for k, v in best.items()},
               "ratio": best["contiguous"] / best["channels_last"], "argmax_agreement": agree}
        del preds
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
