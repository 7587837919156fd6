"""``terrasynth segment train|evaluate``: UNet / UNet++ / DeepLabV3+ on terrasynth datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, add_config_args, out_dir, out_file, seed
from terrasynth.errors import UserError


def register(cli: CLI) -> None:
    seg = cli.group("segment", help="train and evaluate segmentation models (UNet, UNet++, DeepLabV3+)")

    p = seg.add_parser(
        "train",
        help="train a segmenter on one dataset or a weighted mixture",
        description="Train a segmenter. Rerun the same command to resume an interrupted run. "
        "Multi-GPU / multi-node: accelerate launch -m terrasynth segment train ...",
    )
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="training dataset (repeat for a mixture; the first one also provides validation)")
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="mixture weight of each --data, in order (default: equal weights)")
    p.add_argument("--out", type=out_dir, required=True, metavar="RUN", help="run directory")
    p.add_argument("--arch", choices=["unet", "unetplusplus", "deeplabv3plus"])
    p.add_argument("--encoder", metavar="NAME", help="smp encoder (resnet18, mobilenet_v2, ...) or tu-<timm model>")
    p.add_argument("--encoder-weights", metavar="PATH|NAME",
                   help="local state dict for the encoder, or smp's pretrained name (e.g. imagenet: needs internet or a "
                        "Hugging Face cache); default: random init")
    p.add_argument("--max-steps", type=int, metavar="N", help="step budget")
    p.add_argument("--max-minutes", type=float, metavar="M", help="wall-time budget (whichever ends first)")
    p.add_argument("--target-minutes", type=float, metavar="M",
                   help="size --max-steps by a short speed probe to fit M minutes on this machine")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=seed)
    p.add_argument("--restart", action="store_true", help="start over instead of resuming the run in --out")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = seg.add_parser("evaluate", help="IoU, per-class IoU, pixel accuracy and confusion matrix of a run on a dataset")
    p.add_argument("--model", required=True, metavar="RUN", help="run directory of 'segment train'")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--out", type=out_file, required=True, metavar="FILE.json", help="metrics JSON (a per-class CSV is written beside it)")
    p.set_defaults(func=cmd_evaluate)


def mixture(data: list[str], weights: list[float] | None) -> list[tuple[Path, float]]:
    if weights is None:
        weights = [1.0] * len(data)
    if len(weights) != len(data):
        raise UserError(
            f"{len(data)} --data but {len(weights)} --weight; give one --weight per --data (or none for equal weights)"
        )
    return [(Path(d), w) for d, w in zip(data, weights)]


def cmd_train(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.train.segmentation import SegmentConfig, train_segmentation

    flags = {
        "arch": args.arch, "encoder": args.encoder, "encoder_weights": args.encoder_weights,
        "max_steps": args.max_steps, "max_minutes": args.max_minutes,
        "target_minutes": args.target_minutes, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed,
    }  # fmt: skip
    cfg = load_config(SegmentConfig, args.config, flags, args.sets)
    run = train_segmentation(cfg, mixture(args.data, args.weight), Path(args.out), resume=not args.restart)
    print(f"trained {cfg.arch}/{cfg.encoder}: {run} (best.safetensors, last.safetensors)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from terrasynth.evaluate.segmentation import evaluate_segmentation, write_evaluation

    if not str(args.out).lower().endswith(".json"):
        raise UserError(f"--out {args.out}: the evaluation is written as JSON; give a file name ending in .json")
    result = evaluate_segmentation(Path(args.model), Path(args.data), args.split, which=args.checkpoint)
    js, csv_path = write_evaluation(result, Path(args.out))
    print(
        f"{result['n_tiles']} tiles  micro IoU {result['micro_iou']:.4f}  macro mIoU {result['macro_miou']:.4f}  "
        f"pixel accuracy {result['pixel_accuracy']:.4f}  -> {js}, {csv_path}"
    )
    return 0
