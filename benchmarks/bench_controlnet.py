"""ControlNet quality and speed on the shared DroneDeploy pairs at 64 px (split by source image).

Two phases, each one heavy job under /work/heavy.lock (<= 20 minutes each):

    train     base (autoencoder + latent UNet) then ControlNet with configs/controlnet-cpu.yaml
    evaluate  sampling speed; images for the test masks and the train masks; two UNet-r18
              segmenters (real-trained, synthetic-trained); the two ratios of the issue

    flock /work/heavy.lock python benchmarks/bench_controlnet.py --phase train --work /tmp/bench_cn
    flock /work/heavy.lock python benchmarks/bench_controlnet.py --phase evaluate --work /tmp/bench_cn

or both in one job with shorter budgets (``--phase all --base-minutes 7 --controlnet-minutes 5``).

Results land in WORK/results.json and docs/controlnet_grid.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dronedeploy_pairs import import_dronedeploy  # noqa: E402

from terrasynth.config import load_config  # noqa: E402
from terrasynth.data.torchdata import TileDataset, paired_augment  # noqa: E402
from terrasynth.train.diffusion import ControlNetRunConfig, train_controlnet, train_controlnet_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def phase_train(work: Path, data: Path, config: Path, base_minutes: float | None, cn_minutes: float | None) -> dict:
    cfg = load_config(ControlNetRunConfig, config)
    if base_minutes:
        cfg.base.max_minutes = base_minutes
    if cn_minutes:
        cfg.controlnet.max_minutes = cn_minutes
    t0 = time.monotonic()
    train_controlnet_base(cfg.base, data, work / "base")
    t1 = time.monotonic()
    train_controlnet(cfg.controlnet, data, work / "base", work / "cn")
    t2 = time.monotonic()
    summ = {**json.loads((work / "base" / "train_summary.json").read_text()),
            **json.loads((work / "cn" / "train_summary.json").read_text())}  # fmt: skip
    return {"base_s": t1 - t0, "controlnet_s": t2 - t1, "total_s": t2 - t0, "stages": summ}


# ---- a small segmenter for the ratios (UNet-r18 from smp, trained from scratch) ---------


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, steps: int, max_s: float, seed: int = 0):
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, classes=6)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0, done = time.monotonic(), 0
    model.train()
    for _ in range(steps):
        if time.monotonic() - t0 > max_s:
            break
        idx = torch.randint(len(images), (16,), generator=g)
        pairs = [paired_augment(images[i], masks[i], g) for i in idx]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done += 1
    return model.eval(), {"steps": done, "seconds": time.monotonic() - t0}


@torch.no_grad()
def miou(model, images: torch.Tensor, masks: torch.Tensor) -> dict:
    from torchmetrics.classification import MulticlassJaccardIndex

    m = MulticlassJaccardIndex(6, average="none", ignore_index=255)
    acc_n = acc_d = 0
    for i in range(0, len(images), 64):
        p = model(images[i : i + 64]).argmax(1)
        m.update(p, masks[i : i + 64])
        valid = masks[i : i + 64] != 255
        acc_n += int((p == masks[i : i + 64])[valid].sum())
        acc_d += int(valid.sum())
    per = m.compute()
    present = torch.bincount(masks[masks != 255].flatten(), minlength=6) > 0
    return {"miou": float(per[present].mean()), "pixel_acc": acc_n / acc_d, "per_class": per.tolist()}


def load_split(data: Path, split: str):
    td = TileDataset(data, split)
    items = [td[i] for i in range(len(td))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


def generate(gen, masks: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    out, t0 = [], time.monotonic()
    for b, i in enumerate(range(0, len(masks), 64)):
        out.append(gen.generate(masks[i : i + 64], torch.Generator().manual_seed(seed * 100_003 + b)))
    return torch.cat(out), (time.monotonic() - t0) / len(masks)


def phase_evaluate(work: Path, data: Path, seg_steps: int, seg_max_s: float, n_train: int) -> dict:
    from terrasynth.data.preview import grid, save_png
    from terrasynth.models.generator import load_generator

    gen = load_generator(work / "cn")
    tr_img, tr_mask = load_split(data, "train")
    te_img, te_mask = load_split(data, "test")
    res: dict = {"generator": gen.describe(), "n_test": len(te_mask)}
    # Speed: one warm-up batch, then a timed batch of 64.
    gen.generate(te_mask[:8], torch.Generator().manual_seed(0))
    _, res["sampling_s_per_img"] = generate(gen, te_mask[:64], 7)
    fake_te, s_te = generate(gen, te_mask, 1)
    sub = torch.randperm(len(tr_mask), generator=torch.Generator().manual_seed(0))[:n_train]
    fake_tr, s_tr = generate(gen, tr_mask[sub], 2)
    res.update(gen_test_s_per_img=s_te, gen_train_s_per_img=s_tr, n_synthetic_train=len(sub))
    sc = gen.scheme
    rows = []
    for i in range(0, len(te_mask), max(1, len(te_mask) // 8))[:8]:
        codes = sc.to_codes(te_mask[i].numpy().astype(np.uint8))
        rows.append([sc.colourize(codes), *(x[i].mul(255).round().byte().permute(1, 2, 0).numpy() for x in (te_img, fake_te))])
    save_png(ROOT / "docs" / "controlnet_grid.png", grid(rows, scale=2))

    real_model, res["seg_real_train"] = train_segmenter(tr_img, tr_mask, seg_steps, seg_max_s)
    res["real_on_real_test"] = miou(real_model, te_img, te_mask)
    res["real_on_generated_test"] = miou(real_model, fake_te, te_mask)
    syn_model, res["seg_synthetic_train"] = train_segmenter(fake_tr, tr_mask[sub], seg_steps, seg_max_s)
    res["synthetic_on_real_test"] = miou(syn_model, te_img, te_mask)
    r = res["real_on_real_test"]["miou"]
    res["ratio_generated_test"] = res["real_on_generated_test"]["miou"] / r
    res["ratio_synthetic_train"] = res["synthetic_on_real_test"]["miou"] / r
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["train", "evaluate", "all"], required=True)
    ap.add_argument("--base-minutes", type=float, help="override base.max_minutes of the config")
    ap.add_argument("--controlnet-minutes", type=float, help="override controlnet.max_minutes of the config")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_cn"))
    ap.add_argument("--pairs", type=Path, default=ROOT.parent / "shared" / "data" / "pairs" / "dronedeploy")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "controlnet-cpu.yaml")
    ap.add_argument("--seg-steps", type=int, default=600)
    ap.add_argument("--seg-max-seconds", type=float, default=240)
    ap.add_argument("--n-train", type=int, default=1024, help="train masks to generate images for")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = args.work / "dd64"
    import_dronedeploy(args.pairs, data)
    res_path = args.work / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if args.phase in ("train", "all"):
        res["train"] = phase_train(args.work, data, args.config, args.base_minutes, args.controlnet_minutes)
        res_path.write_text(json.dumps(res, indent=2))
    if args.phase in ("evaluate", "all"):
        res["evaluate"] = phase_evaluate(args.work, data, args.seg_steps, args.seg_max_seconds, args.n_train)
        res_path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
