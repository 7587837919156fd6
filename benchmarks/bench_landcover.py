"""Land-cover generator benchmark: train on WorldCover 64x64 tiles within a wall budget, then measure.

    flock /work/heavy.lock python benchmarks/bench_landcover.py --data DATA --run RUN \
        --config configs/landcover-cpu.yaml --out docs/landcover-bench.json --grid docs/landcover-grid.png
    # the masked discrete generator, same minutes: add --set generator=discrete
    # another discrete sampler on a trained run: add --skip-train --set discrete.temperature=1.0 (etc.)

Measures: autoencoder pixel accuracy / IoU (val split), class JSD and landscape metrics of
the 3 most frequent classes against the real val tiles (and, as their floor, the training tiles
against the val tiles: real maps of another place), diversity, memorisation against
every training tile (8 dihedral transforms), sampling seconds per map for the configured
few-step solver against DDIM 50 steps measured in the same run (latent generator), and requested vs
achieved composition (the model's default guidance) for requests that include classes under 5% of
the pixels. Writes a real-vs-generated grid PNG.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from terrasynth.config import load_config
from terrasynth.data.dataset import Dataset
from terrasynth.data.preview import grid, save_png
from terrasynth.evaluate.realism import as_maps, composition_error, realism_metrics
from terrasynth.io import write_json_atomic
from terrasynth.inference.landcover import generate_maps, load_landcover
from terrasynth.train.landcover import LandcoverConfig, train_landcover


# Requests, each with at least one class under 5% of the São Tomé pixels (grass 3.3%, water 1.7%,
# built-up 1.5%, bare 1.1%, wetland 0.001%).
CONTROL = {"built30_water20": {50: 0.3, 80: 0.2}, "grass40": {30: 0.4}, "wetland10": {90: 0.1},
           "built5": {50: 0.05}, "bare10_built10": {60: 0.1, 50: 0.1}, "water5_grass10": {80: 0.05, 30: 0.1}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(LandcoverConfig, args.config, sets=args.sets)
    t0 = time.perf_counter()
    if not args.skip_train:
        train_landcover(cfg, Path(args.data), Path(args.run))
    train_wall = time.perf_counter() - t0
    ds = Dataset.open(args.data)
    real_val, train = as_maps(ds, ("val",)), as_maps(ds, ("train",))
    model = load_landcover(Path(args.run))
    if model.family == "landcover-mdm":  # the config's sampler, so --skip-train re-measures a run with another one
        d = cfg.discrete
        model.default_sampler, model.default_steps, model.default_guidance = d.sampler, d.steps, d.guidance
        model.temperature, model.reveal, model.reveal_noise = d.temperature, d.reveal, d.reveal_noise
    res: dict = {"train_wall_seconds": train_wall, "training": json.loads((Path(args.run) / "metrics.json").read_text())}

    gen, spm = generate_maps(model, args.n, seed=0, batch_size=64)
    res["sampling"] = {"family": model.family, "sampler": model.default_sampler, "steps": model.default_steps,
                       "seconds_per_map": spm}  # fmt: skip
    if model.family == "landcover-mdm":
        res["sampling"].update(temperature=model.temperature, reveal=model.reveal, reveal_noise=model.reveal_noise)
    if model.family == "landcover-ldm":
        _, spm_ddim = generate_maps(model, 32, seed=1, batch_size=32, sampler="ddim", steps=50)
        res["sampling"]["baseline_ddim50_seconds_per_map"] = spm_ddim
        res["sampling"]["speedup_vs_ddim50"] = spm_ddim / spm
    res["realism"] = realism_metrics(real_val, gen, ds.scheme, train=train, res=ds.info.gsd or 10.0)
    floor = realism_metrics(real_val, train, ds.scheme, res=ds.info.gsd or 10.0)  # real maps of the other split
    res["floor_train_vs_val"] = {"class_jsd": floor["class_jsd"], "worst": floor["landscape_worst_relative_error"],
                                 "relative_error": {c: x["relative_error"] for c, x in floor["landscape"].items()}}
    if model.conditional:
        res["control"] = {}
        for name, comp in CONTROL.items():
            maps, spm_c = generate_maps(model, 32, seed=3, batch_size=32, composition=comp)
            res["control"][name] = {**composition_error(maps, comp, ds.scheme), "seconds_per_map": spm_c,
                                    "guidance": model.default_guidance}  # fmt: skip
        maes = [v["mean_abs_error"] for k, v in res["control"].items()]
        res["control_mean_abs_error"] = sum(maes) / len(maes)
    write_json_atomic(Path(args.out), res)
    rows = [[ds.scheme.colourize(m) for m in real_val[i * 8 : (i + 1) * 8]] for i in range(3)]
    rows += [[ds.scheme.colourize(m) for m in gen[i * 8 : (i + 1) * 8]] for i in range(3)]
    save_png(args.grid, grid(rows, pad=3, scale=2))
    r = res["realism"]
    print(json.dumps({"ae_acc": res["training"].get("autoencoder", {}).get("pixel_accuracy"), "jsd": r["class_jsd"],
                      "control_mae": res.get("control_mean_abs_error"),
                      "landscape_worst": r["landscape_worst_relative_error"], "memo": r["memorisation"],
                      "s_per_map": spm, "train_wall": train_wall}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
