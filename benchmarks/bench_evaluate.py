"""CPU inference speed of the three segmenters as evaluation runs them, contiguous vs channels_last.

Each architecture is built at random init (the speed does not depend on the weights), made
inference-ready by :func:`terrasynth.models.segmentation.inference_ready` with and without
channels_last, and timed on ``--tiles`` random 64 px tiles through
:func:`terrasynth.models.segmentation.predict` in batches of 16 (as ``evaluate_segmentation``
does). The two formats alternate for ``--repeats`` rounds in one process so that load from other
jobs hits both alike; the figure is the best round. Ratios are channels_last over contiguous of the
same architecture, measured in the same run.

    python benchmarks/bench_evaluate.py [--tiles 320] [--repeats 3] [--threads 2]

With ``--data DATASET [--split test]`` it times instead what a matrix or the scarce experiment
does: :func:`terrasynth.evaluate.segmentation.evaluate_segmentation` of one model on the same split,
``--repeats`` times, each with the split read from disk (the cache emptied) against read once and
kept in memory. Baseline: the cold read, in the same run.

    python benchmarks/bench_evaluate.py --data RUN/stages/data-*/real --split test --repeats 3
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
    ap.add_argument("--data", default=None, help="a terrasynth dataset: time repeated evaluation of one split")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data:
        return repeated_evaluation(args.data, args.split, args.repeats)
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


def repeated_evaluation(data: str, split: str, repeats: int) -> None:
    """Cold (split read from disk each time) vs cached evaluation of one random-init UNet-r18."""
    import tempfile
    from pathlib import Path

    from terrasynth.data.dataset import Dataset
    from terrasynth.evaluate import segmentation as seg
    from terrasynth.models.segmentation import build_segmenter, load_segmenter, save_weights, segmenter_spec, write_spec

    scheme = Dataset.open(data).scheme
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        write_spec(run, segmenter_spec("unet", "resnet18", 3, scheme.num_classes, scheme))
        save_weights(build_segmenter("unet", "resnet18", 3, scheme.num_classes), run / "best.safetensors")
        loaded = load_segmenter(run, "best")
        times: dict[str, list[float]] = {"cold": [], "cached": []}
        seg._EVAL_TILES.clear()
        seg.evaluate_segmentation(run, Path(data), split, loaded=loaded)  # warm-up; fills the cache
        for _ in range(repeats):
            for mode in ("cold", "cached"):
                if mode == "cold":
                    seg._EVAL_TILES.clear()
                t = time.perf_counter()
                res = seg.evaluate_segmentation(run, Path(data), split, loaded=loaded)
                times[mode].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        print(json.dumps({"data": data, "split": split, "tiles": res["n_tiles"], **{f"{k}_s": round(v, 2) for k, v in best.items()},
                          "ratio": round(best["cold"] / best["cached"], 2)}), flush=True)


if __name__ == "__main__":
    main()
