"""ControlNet quality and speed on the shared DroneDeploy pairs at 64 px (split by source image).

The pairs are imported exactly as ``configs/dronedeploy.yaml`` imports them (``import_pairs`` with
that preset's options: 64 px tiles, split by source image 70/10/20, seed 0). Two phases:

    train     base (autoencoder + latent UNet) then ControlNet with configs/controlnet-cpu.yaml
    evaluate  sampling speed; ``synthesize`` images for the test masks and the train masks;
              two UNet-r18 segmenters from ``train_segmentation`` (real-trained,
              synthetic-trained), scored by ``evaluate_segmentation``; the two ratios (micro and
              macro); ``image_realism`` of the synthetic test tiles (segmenter-feature FD against
              the real floor, per-class Laplacian variance and colour)

    flock /work/heavy.lock python benchmarks/bench_controlnet.py --phase train --work /tmp/bench_cn
    flock /work/heavy.lock python benchmarks/bench_controlnet.py --phase evaluate --work /tmp/bench_cn

or both in one job with shorter budgets (``--phase all --base-minutes 7 --controlnet-minutes 5``).
After evaluate, ``--phase recon`` scores the autoencoder's own reconstructions of the test tiles
(the cap it sets on every generated image) and ``--phase sampling`` sweeps sampling steps x guidance on the val masks (see
:func:`phase_sampling`).
``--target`` turns the minute overrides into ``target_minutes`` (a speed probe sizes the steps, so
every schedule decays inside the budget; the chosen steps land in each run's resolved config).

Results land in WORK/results.json and docs/controlnet_grid.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from terrasynth.config import load_config, read_yaml
from terrasynth.data.importers import PairImportConfig, import_pairs
from terrasynth.data.torchdata import TileDataset
from terrasynth.train.diffusion import ControlNetRunConfig, train_controlnet, train_controlnet_base

ROOT = Path(__file__).resolve().parents[1]


def phase_train(work: Path, data: Path, config: Path, base_minutes: float | None, cn_minutes: float | None,
                target: bool = False) -> dict:
    cfg = load_config(ControlNetRunConfig, config)
    key = "target_minutes" if target else "max_minutes"
    if base_minutes:
        cfg.base = cfg.base.model_copy(update={key: base_minutes, **({"max_minutes": None} if target else {})})
    if cn_minutes:
        cfg.controlnet = cfg.controlnet.model_copy(update={key: cn_minutes, **({"max_minutes": None} if target else {})})
    t0 = time.monotonic()
    train_controlnet_base(cfg.base, data, work / "base")
    t1 = time.monotonic()
    train_controlnet(cfg.controlnet, data, work / "base", work / "cn")
    t2 = time.monotonic()
    summ = {**json.loads((work / "base" / "train_summary.json").read_text()),
            **json.loads((work / "cn" / "train_summary.json").read_text())}  # fmt: skip
    return {"base_s": t1 - t0, "controlnet_s": t2 - t1, "total_s": t2 - t0, "stages": summ}


# ---- the ratios, with the project's own segmentation trainer and evaluator ----------------


def load_split(data: Path, split: str):
    td = TileDataset(data, split)
    items = [td[i] for i in range(len(td))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


def generate(gen, masks: torch.Tensor, seed: int) -> float:
    """Seconds per image for generating ``masks`` in batches of 64."""
    t0 = time.monotonic()
    for b, i in enumerate(range(0, len(masks), 64)):
        gen.generate(masks[i : i + 64], torch.Generator().manual_seed(seed * 100_003 + b))
    return (time.monotonic() - t0) / len(masks)


def phase_evaluate(work: Path, data: Path, seg_steps: int, seg_minutes: float, n_train: int, target: bool = False) -> dict:
    """Sampling speed, then the two ratios of the issue, as the pipeline measures them:
    ``synthesize`` images for the test masks and for ``n_train`` train masks, train
    ``train_segmentation``'s UNet-r18 on real train and on synthetic train tiles, and
    score with ``evaluate_segmentation`` (macro mIoU over classes present in the target)."""
    from terrasynth.data.dataset import Dataset
    from terrasynth.data.preview import grid, save_png
    from terrasynth.data.subset import subset_dataset
    from terrasynth.evaluate.image_realism import image_realism, summary_lines
    from terrasynth.evaluate.segmentation import evaluate_segmentation
    from terrasynth.models.generator import load_generator
    from terrasynth.synthesize import synthesize
    from terrasynth.train.segmentation import SegmentConfig, train_segmentation

    gen = load_generator(work / "cn")
    te_img, te_mask = load_split(data, "test")
    res: dict = {"generator": gen.describe(), "n_test": len(te_mask)}
    gen.generate(te_mask[:8], torch.Generator().manual_seed(0))  # warm-up
    res["sampling_s_per_img"] = generate(gen, te_mask[:64], 7)

    real = Dataset.open(data)
    t0 = time.monotonic()
    syn_test = synthesize(work / "cn", real, work / "syn-test", seed=1, batch_size=64, splits=["test"])
    res["gen_test_s_per_img"] = (time.monotonic() - t0) / len(syn_test)
    frac = min(1.0, n_train / len(real.split("train")))
    train_masks = subset_dataset(real, work / "train-masks", splits=["train"], fraction=frac, seed=0)
    t0 = time.monotonic()
    syn_train = synthesize(work / "cn", train_masks, work / "syn-train", seed=2, batch_size=64)
    res.update(gen_train_s_per_img=(time.monotonic() - t0) / len(syn_train), n_synthetic_train=len(syn_train))

    syn_img, _ = load_split(syn_test.root, "test")
    sc = gen.scheme
    rows = []
    for i in range(0, len(te_mask), max(1, len(te_mask) // 8))[:8]:
        codes = sc.to_codes(te_mask[i].numpy().astype(np.uint8))
        pics = (x[i].mul(255).round().byte().permute(1, 2, 0).numpy() for x in (te_img, syn_img))
        rows.append([sc.colourize(codes), *pics])
    save_png(ROOT / "docs" / "controlnet_grid.png", grid(rows, scale=2))

    budget = {"target_minutes": seg_minutes} if target else {"max_steps": seg_steps, "max_minutes": seg_minutes}
    seg = SegmentConfig(**budget, seed=0, val_every=150, checkpoint_every=150, threads=2)
    train_segmentation(seg, [(data, 1.0)], work / "seg-real")
    train_segmentation(seg, [(syn_train.root, 1.0)], work / "seg-synthetic")
    pick = ("macro_miou", "micro_iou", "pixel_accuracy", "per_class_iou")
    ev = {
        "real_on_real_test": evaluate_segmentation(work / "seg-real", data, "test"),
        "real_on_generated_test": evaluate_segmentation(work / "seg-real", syn_test.root, "test"),
        "synthetic_on_real_test": evaluate_segmentation(work / "seg-synthetic", data, "test"),
    }
    res.update({k: {m: v[m] for m in pick} for k, v in ev.items()})
    for m in ("macro_miou", "micro_iou"):
        r = res["real_on_real_test"][m]
        res[f"ratio_generated_test_{m}"] = res["real_on_generated_test"][m] / r
        res[f"ratio_synthetic_train_{m}"] = res["synthetic_on_real_test"][m] / r
    realism = image_realism(real, syn_test, segmenter_run=work / "seg-real")
    (work / "realism.json").write_text(json.dumps(realism, indent=2, default=str))
    res["realism"] = summary_lines(realism)
    return res


def phase_sampling(work: Path, data: Path, settings: list[tuple[int, float]]) -> dict:
    """Sampling steps x guidance, chosen on VAL: for each setting, ``synthesize`` the val masks with
    those overrides, time it, and score the real-trained segmenter of ``evaluate`` on the images
    (consistency ratio by macro and micro IoU) and their realism (FD ratio, Laplacian). The
    setting with the best val macro ratio among those within 0.02 of the best, fastest first, is
    then measured once on test."""
    from terrasynth.data.dataset import Dataset
    from terrasynth.evaluate.image_realism import headline, image_realism
    from terrasynth.evaluate.segmentation import evaluate_segmentation
    from terrasynth.models.generator import load_generator
    from terrasynth.synthesize import synthesize

    real, seg = Dataset.open(data), work / "seg-real"
    pick = ("macro_miou", "micro_iou")
    ref = {split: evaluate_segmentation(seg, data, split) for split in ("val", "test")}
    rows = []
    for steps, guidance in settings:
        out = work / f"syn-val-s{steps}-g{guidance:g}"
        t0 = time.monotonic()
        ds = synthesize(work / "cn", real, out, seed=1, batch_size=64, splits=["val"],
                        sampling={"steps": steps, "guidance_scale": guidance})  # fmt: skip
        sec = (time.monotonic() - t0) / len(ds)
        ev = evaluate_segmentation(seg, ds.root, "val")
        rea = headline(image_realism(real, ds, segmenter_run=seg, split="val"))
        rows.append({"steps": steps, "guidance": guidance, "s_per_img": sec,
                     **{f"val_ratio_{m}": ev[m] / ref["val"][m] for m in pick},
                     "fd_ratio": rea["segmenter FD / real floor"], "laplacian": rea.get("Laplacian variance, synthetic / real, per class")})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    best = max(r["val_ratio_macro_miou"] for r in rows)
    chosen = min((r for r in rows if r["val_ratio_macro_miou"] >= best - 0.02), key=lambda r: r["s_per_img"])
    saved = load_generator(work / "cn").describe()
    own = (chosen["steps"], chosen["guidance"]) == (saved["steps"], saved["guidance_scale"])
    name = "syn-test" if own else f"syn-test-s{chosen['steps']}-g{chosen['guidance']:g}"  # syn-test: evaluate's, same seed
    ds = synthesize(work / "cn", real, work / name, seed=1,
                    batch_size=64, splits=["test"], sampling={"steps": chosen["steps"], "guidance_scale": chosen["guidance"]})  # fmt: skip
    ev = evaluate_segmentation(seg, ds.root, "test")
    test = {f"test_ratio_{m}": ev[m] / ref["test"][m] for m in pick}
    return {"rows": rows, "chosen_on_val": {**chosen, **test}}


def phase_recon(work: Path, data: Path, base_run: Path | None = None) -> dict:
    """The cap the image autoencoder sets: its reconstructions of the real test tiles, written as a
    paired dataset (same labels) and scored like synthetic images (real-trained segmenter ratios,
    image realism). Whatever the diffusion model learns, its images are decoded by this autoencoder."""
    from terrasynth.data.dataset import Dataset, DatasetInfo, DatasetWriter, provenance
    from terrasynth.evaluate.image_realism import headline, image_realism
    from terrasynth.evaluate.segmentation import evaluate_segmentation
    from terrasynth.models.latent_base import load_base

    base_run = base_run or work / "base"
    real, seg, out = Dataset.open(data), work / "seg-real", work / f"recon-test-{base_run.name}"
    base = load_base(base_run)
    info = DatasetInfo(name="recon-test", kind="synthetic", scheme=real.scheme, tile_size=real.info.tile_size,
                       has_images=True, provenance=provenance(f"autoencoder reconstructions of {data}",
                                                              config_hash=f"recon-{base.path}", seed=0))  # fmt: skip
    recs = real.split("test")
    with DatasetWriter(out, info) as w, torch.inference_mode():
        for i in range(0, len(recs), 64):
            batch = recs[i : i + 64]
            x = torch.stack([torch.from_numpy(real.read_image(r)).permute(2, 0, 1).float() / 255 for r in batch])
            y = base.decode(base.encode(x, torch.Generator().manual_seed(i)))
            rgb = (y * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for r, img in zip(batch, rgb):
                if not w.has(r.id):
                    w.write(r.id, r.split, real.read_label(r), img, source=r.source or r.id)
        ds = w.finalize()
    pick = ("macro_miou", "micro_iou")
    ref, ev = evaluate_segmentation(seg, data, "test"), evaluate_segmentation(seg, ds.root, "test")
    return {**{f"ratio_{m}": ev[m] / ref[m] for m in pick}, **headline(image_realism(real, ds, segmenter_run=seg))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["train", "evaluate", "all", "sampling", "recon"], required=True)
    ap.add_argument("--sampling", nargs="+", default=["20:2", "10:2", "10:1", "5:1"], metavar="STEPS:GUIDANCE",
                    help="settings of --phase sampling (after evaluate: it needs its real-trained segmenter)")
    ap.add_argument("--base-minutes", type=float, help="override base.max_minutes of the config")
    ap.add_argument("--controlnet-minutes", type=float, help="override controlnet.max_minutes of the config")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_cn"))
    ap.add_argument("--pairs", type=Path, default=ROOT.parent / "shared" / "data" / "pairs" / "dronedeploy")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "controlnet-cpu.yaml")
    ap.add_argument("--seg-steps", type=int, default=1500, help="UNet step budget (cosine schedule length)")
    ap.add_argument("--seg-minutes", type=float, default=3.0, help="UNet wall-time budget")
    ap.add_argument("--n-train", type=int, default=1024, help="train masks to generate images for")
    ap.add_argument("--base", type=Path, help="--phase recon: another train-base run to score (default WORK/base)")
    ap.add_argument("--target", action="store_true", help="minute budgets as target_minutes (speed probe)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = args.work / "dd64"
    opts = read_yaml(ROOT / "configs" / "dronedeploy.yaml")["data"]["pairs"]["options"]
    import_pairs(args.pairs / "images", args.pairs / "masks", PairImportConfig(**opts), data)
    res_path = args.work / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if args.phase in ("train", "all"):
        res["train"] = phase_train(args.work, data, args.config, args.base_minutes, args.controlnet_minutes, args.target)
        res_path.write_text(json.dumps(res, indent=2))
    if args.phase in ("evaluate", "all"):
        res["evaluate"] = phase_evaluate(args.work, data, args.seg_steps, args.seg_minutes, args.n_train, args.target)
        res_path.write_text(json.dumps(res, indent=2))
    if args.phase == "recon":
        res[f"recon-{(args.base or args.work / 'base').name}"] = phase_recon(args.work, data, args.base)
        res_path.write_text(json.dumps(res, indent=2))
    if args.phase == "sampling":
        settings = [(int(a), float(b)) for a, b in (x.split(":") for x in args.sampling)]
        res["sampling"] = phase_sampling(args.work, data, settings)
        res_path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
