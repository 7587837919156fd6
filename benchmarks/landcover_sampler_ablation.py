"""Samplers of a trained discrete (masked-diffusion) land-cover run against the real val maps.

    python benchmarks/landcover_sampler_ablation.py --data DATA --run RUN --n 64 \
        --variants matched:24:1.0,ancestral:24:1.0,matched:48:1.0,matched:24:0.5 --out ablation.json

Each variant is SAMPLER:STEPS:TEMPERATURE[:REVEAL[:NOISE]] (REVEAL random or confident, NOISE the
Gumbel scale of the confident ranking); prints and writes class JSD, the landscape metrics' relative
errors and patches per map of the three most frequent classes, and seconds per map. The same metrics
for the training maps against the real maps (``floor``: what real maps of another place score, so a
generator cannot be asked to do better) and for the samples against the training maps (``vs_train``:
the distribution the generator was fit to, without the split's shift) come with them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from terrasynth.data.dataset import Dataset
from terrasynth.evaluate.realism import as_maps, realism_metrics
from terrasynth.inference.landcover import generate_maps, load_landcover
from terrasynth.io import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--variants", default="matched:24:1.0,ancestral:24:1.0")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--split", default="val", help="real maps to compare with (choose on val; test once, at the end)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ds = Dataset.open(args.data)
    real, model, out = as_maps(ds, (args.split,)), load_landcover(Path(args.run)), {}
    train = as_maps(ds, ("train",))
    out["floor"] = _summary(realism_metrics(real, train, ds.scheme, res=ds.info.gsd or 10.0))
    print("floor", json.dumps(out["floor"]), flush=True)
    for v in args.variants.split(","):
        sampler, steps, temp, *rest = v.split(":")
        model.temperature = float(temp)
        model.reveal = rest[0] if rest else "random"
        model.reveal_noise = float(rest[1]) if len(rest) > 1 else 1.0
        gen, spm = generate_maps(model, args.n, seed=0, sampler=sampler, steps=int(steps), progress=False)
        r = realism_metrics(real, gen, ds.scheme, res=ds.info.gsd or 10.0)
        vs_train = _summary(realism_metrics(train, gen, ds.scheme, res=ds.info.gsd or 10.0))
        out[v] = {"seconds_per_map": spm, **_summary(r), "vs_train": vs_train}
        print(v, json.dumps(out[v]), flush=True)
    write_json_atomic(Path(args.out), out)


def _summary(r: dict) -> dict:
    return {"class_jsd": r["class_jsd"], "worst": r["landscape_worst_relative_error"],
            "relative_error": {c: x["relative_error"] for c, x in r["landscape"].items()},
            "patches_real_generated": {c: (x["real"]["patches"], x["generated"]["patches"])
                                       for c, x in r["landscape"].items()}}  # fmt: skip


if __name__ == "__main__":
    main()
