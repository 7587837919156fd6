"""ControlNet sampling settings on any trained run: CPU seconds per image and consistency, on val.

For each STEPS:GUIDANCE setting, the ControlNet run paints the masks of ``--split`` of a real paired
dataset (same seed), and a real-trained segmenter scores the images: consistency = its IoU on the
synthetic images / its IoU on the real ones (micro and macro). CPU seconds per image are
``time.process_time`` over the generation in one thread, so they hold under load. Baseline: the first
setting (the run's own, as a rule).

    python benchmarks/bench_controlnet_sampling.py --controlnet RUN/stages/controlnet-*/run \\
        --segmenter RUN/stages/scarce-runs/r1-real-s0-* --data RUN/stages/data-*/real --settings 10:2 6:2 10:1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from terrasynth.data.dataset import Dataset
from terrasynth.evaluate.segmentation import SegmentationMetrics, eval_tiles
from terrasynth.models.generator import load_generator
from terrasynth.models.segmentation import load_segmenter, predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--controlnet", type=Path, required=True, help="a 'controlnet train' run (generator.json)")
    ap.add_argument("--segmenter", type=Path, required=True, help="a segmenter run trained on the real data")
    ap.add_argument("--data", type=Path, required=True, help="the real paired dataset")
    ap.add_argument("--split", default="val")
    ap.add_argument("--settings", nargs="+", default=["10:2", "6:2"], metavar="STEPS:GUIDANCE")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seg, scheme = load_segmenter(args.segmenter)
    tiles = eval_tiles(Dataset.open(args.data), args.split)
    masks = torch.stack([tiles[i]["mask"] for i in range(len(tiles))]).long()
    real = torch.stack([tiles[i]["image"] for i in range(len(tiles))])

    def score(images: torch.Tensor) -> dict[str, float]:
        m = SegmentationMetrics(scheme.num_classes, torch.device("cpu"))
        for i in range(0, len(images), 32):
            m.update(predict(seg, images[i : i + 32]), masks[i : i + 32])
        r = m.compute()
        return {"micro_iou": r["micro_iou"], "macro_miou": r["macro_miou"]}

    ref = score(real)
    rows = []
    for s in args.settings:
        steps, guidance = s.split(":")
        gen = load_generator(args.controlnet, steps=int(steps), guidance_scale=float(guidance))
        t0 = time.process_time()
        images = gen.generate(masks, torch.Generator().manual_seed(args.seed))
        cpu = (time.process_time() - t0) / len(masks)
        sc = score(images)
        rows.append({"setting": s, "cpu_s_per_image": round(cpu, 4),
                     **{f"consistency_{k}": round(sc[k] / ref[k], 4) for k in ref}})  # fmt: skip
        rows[-1]["cpu_vs_first"] = round(cpu / rows[0]["cpu_s_per_image"], 3)
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"split": args.split, "masks": len(masks), "real": ref, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
