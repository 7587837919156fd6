"""SPADE quality benchmark: does a segmenter read SPADE's images, and learn from them?

On a paired dataset with train/test splits by source image (DroneDeploy at 64 px):

  (a) consistency: a UNet trained on the *real* train split, scored on SPADE images
      generated from the *test* masks, relative to its score on the real test images;
  (b) train-synthetic/test-real: a UNet trained only on SPADE images generated from the
      *train* masks, scored on the real test images, relative to the real-trained UNet.

Plus the floor: "flat" images painting each pixel with its class's mean training colour.
Run it in stages under the shared heavy lock (each stage well under 20 minutes)::

    flock /work/heavy.lock python benchmarks/bench_spade.py spade --data DD64 --work W --variants plain,noise3d --minutes 3
    flock /work/heavy.lock python benchmarks/bench_spade.py segment --data DD64 --work W --variants real,flat,plain,noise3d --minutes 2
    python benchmarks/bench_spade.py report --work W
    python benchmarks/bench_spade.py speed --work W --steps 30      # G/D steps/s: fp32 vs mixed_precision=bf16

Every stage appends to ``W/results.json``; ``report`` prints the markdown table. A variant may
carry a tag after ``@`` to keep several runs of it apart (``noise3d_ema@10min``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

# name -> config overrides (``--set`` syntax) on top of the defaults (= original SPADE, bilinear upsampling).
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "nearest": ["model.upsample=nearest"],  # the original SPADE upsampling (grid artefacts)
    "oasis_labelmix": ["remedies.discriminator=oasis", "remedies.labelmix=true"],
    "noise3d": ["remedies.noise3d=true"],
    "ema": ["remedies.ema=true"],
    "noise3d_ema": ["remedies.noise3d=true", "remedies.ema=true"],  # configs/spade.yaml's remedies
    "noise3d_ema_diffaugment": ["remedies.noise3d=true", "remedies.ema=true",
                                "remedies.diffaugment=[color,translation,cutout]"],  # the remedies cheap on a CPU
    "diffaugment": ["remedies.diffaugment=[color,translation,cutout]"],
    "noise3d_ema_div": ["remedies.noise3d=true", "remedies.ema=true", "loss.diversity=1"],  # + mode-seeking term
    "all": [
        "remedies.discriminator=oasis", "remedies.labelmix=true", "remedies.noise3d=true",
        "remedies.ema=true", "remedies.diffaugment=[color,translation,cutout]",
    ],
}  # fmt: skip


def load_results(work: Path) -> dict:
    f = work / "results.json"
    return json.loads(f.read_text()) if f.exists() else {}


def save_results(work: Path, res: dict) -> None:
    from terrasynth.io import write_json_atomic

    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "results.json", res)


def stage_spade(args) -> None:
    from terrasynth.config import load_config
    from terrasynth.synthesize import synthesize
    from terrasynth.train.gan import SpadeConfig, train_spade

    res = load_results(args.work)
    for v in args.variants:
        # One judge (checkpoint-selection segmenter) shared by all variants: same data and seed.
        sets = VARIANTS[v.split("@")[0]] + [f"max_minutes={args.minutes}", f"seed={args.seed}",
                              f"select.judge_cache={args.work / 'judges'}"] + list(args.set or [])  # fmt: skip
        cfg = load_config(SpadeConfig, None, None, sets)
        run = args.work / "runs" / v
        t0 = time.monotonic()
        train_spade(cfg, args.data, run)
        t_train = time.monotonic() - t0
        meta = json.loads((run / "generator.json").read_text())
        scores = json.loads((run / "scores.json").read_text())
        t0 = time.monotonic()
        synthesize(run, args.data, args.work / "syn" / v, seed=args.seed, batch_size=32)
        t_syn = time.monotonic() - t0
        res.setdefault(v, {}).update(
            spade={"sets": sets, "train_s": round(t_train, 1), "synth_s": round(t_syn, 1),
                   "steps": scores[-1]["step"], "selected_step": meta["step"], "selected_score": meta["score"],
                   "scores": [(s["step"], round(s["score"], 3)) for s in scores]}
        )  # fmt: skip
        save_results(args.work, res)
        print(v, json.dumps(res[v]["spade"]))


def make_flat(data: Path, out: Path) -> Path:
    """Floor baseline: each pixel painted with its class's mean colour over the training tiles."""
    from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance

    ds = Dataset.open(data)
    if (out / "dataset.json").exists():
        return out
    sums, counts = np.zeros((256, 3)), np.zeros(256)
    for rec, lab, img in ds.iter_tiles("train"):
        np.add.at(sums, lab.ravel(), img.reshape(-1, 3).astype(float))
        counts += np.bincount(lab.ravel(), minlength=256)
    mean = (sums / np.maximum(counts, 1)[:, None]).round().astype(np.uint8)
    info = DatasetInfo(name="flat", kind="synthetic", scheme=ds.scheme, tile_size=ds.info.tile_size,
                       provenance=provenance("class-mean colours", config_hash="flat"))  # fmt: skip
    w = DatasetWriter(out, info)
    for rec in ds.records:
        lab = ds.read_label(rec)
        w.write(rec.id, rec.split, lab, mean[lab], source=rec.source)
    w.finalize()
    return out


def stage_segment(args) -> None:
    from terrasynth.evaluate.segmentation import evaluate_segmentation
    from terrasynth.train.segmentation import SegmentConfig, train_segmentation

    res = load_results(args.work)
    # A step budget with a matching cosine schedule; the minute cap only guards the shared machine.
    seg_cfg = SegmentConfig(max_minutes=args.minutes, max_steps=args.seg_steps, seed=args.seed, val_every=150,
                            checkpoint_every=150, threads=2)  # fmt: skip
    real_run = args.work / "seg" / "real"
    for v in args.variants:
        syn = make_flat(args.data, args.work / "syn" / "flat") if v == "flat" else args.work / "syn" / v
        train_on = args.data if v == "real" else syn
        run = args.work / "seg" / v
        t0 = time.monotonic()
        train_segmentation(seg_cfg, [(train_on, 1.0)], run)
        t_train = time.monotonic() - t0
        on_real = evaluate_segmentation(run, args.data, "test")
        entry = {"train_s": round(t_train, 1), "miou_real_test": on_real["macro_miou"],
                 "acc_real_test": on_real["pixel_accuracy"]}  # fmt: skip
        if v != "real":
            cons = evaluate_segmentation(real_run, syn, "test")
            entry["real_unet_miou_on_generated_test"] = cons["macro_miou"]
        res.setdefault(v, {})["segment"] = entry
        save_results(args.work, res)
        print(v, json.dumps(entry))


def stage_speed(args) -> None:
    """G/D steps per second and peak memory, fp32 (baseline) vs bf16 autocast, same model and batches.

    Runs each precision in a fresh process (Accelerate's precision state is process-wide) on
    random 64 px tiles; ``--steps`` timed steps after 5 warm-up steps.
    """
    import subprocess
    import sys

    res = load_results(args.work)
    out = {}
    for prec in ("fp32", "bf16"):
        cmd = [sys.executable, __file__, "_speed_one", "--work", str(args.work), "--steps", str(args.steps),
               "--precision", prec] + sum((["--set", x] for x in (args.set or [])), [])  # fmt: skip
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out[prec] = json.loads(line)
        print(prec, line)
    out["bf16_speedup"] = round(out["bf16"]["steps_per_s"] / out["fp32"]["steps_per_s"], 2)
    out["bf16_memory_ratio"] = round(out["bf16"]["peak_rss_mb"] / out["fp32"]["peak_rss_mb"], 2)
    res["speed"] = out
    save_results(args.work, res)
    print(json.dumps(out))


def _speed_one(args) -> None:
    import resource

    from terrasynth.accel import make_accelerator
    from terrasynth.config import load_config
    from terrasynth.train.gan import SpadeConfig, SpadeTrainer, build_spec
    from terrasynth.train.runner import Runner, fingerprint

    cfg = load_config(SpadeConfig, None, None, ["model.ngf=32", "model.ndf=32"] + list(args.set or []))
    acc = make_accelerator(mixed_precision="bf16" if args.precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    runner = Runner(build_spec(cfg), acc, args.work / "speed", fingerprint({}), progress=False)  # never fitted
    k, size = 6, 64
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(cfg.batch_size, 3, size, size, generator=gen) * 2 - 1
    masks = torch.randint(0, k, (cfg.batch_size, size, size), generator=gen)
    tr = SpadeTrainer(cfg, k, size, runner, real, masks)
    for i in range(5):
        tr.update(real, masks, runner.generator(i))
    t0 = time.perf_counter()
    for i in range(args.steps):
        tr.update(real, masks, runner.generator(5 + i))
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"steps_per_s": round(args.steps / dt, 3), "peak_rss_mb": round(rss), "batch": cfg.batch_size}))


def stage_report(args) -> None:
    res = load_results(args.work)
    real = res["real"]["segment"]["miou_real_test"]
    print(f"real-trained UNet, real test: macro mIoU {real:.3f}\n")
    print("| images | SPADE steps (selected) | (a) consistency | (b) train-syn/test-real |")
    print("|---|---|---|---|")
    for v, r in res.items():
        if v in ("real", "speed") or "segment" not in r:
            continue
        s = r["segment"]
        sp = r.get("spade", {})
        steps = f"{sp['steps']} ({sp['selected_step']})" if sp else "–"
        a = s["real_unet_miou_on_generated_test"] / real
        b = s["miou_real_test"] / real
        print(f"| {v} | {steps} | {a:.2f}x ({s['real_unet_miou_on_generated_test']:.3f}) | {b:.2f}x ({s['miou_real_test']:.3f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["spade", "segment", "speed", "report", "_speed_one"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--variants", type=lambda s: s.split(","), default=[])
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per run")
    ap.add_argument("--seg-steps", type=int, default=800, help="UNet training steps (segment stage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30, help="timed G/D steps (speed stage)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", help="extra SPADE config overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    stages = {"spade": stage_spade, "segment": stage_segment, "speed": stage_speed, "report": stage_report,
              "_speed_one": _speed_one}  # fmt: skip
    stages[args.stage](args)


if __name__ == "__main__":
    main()
