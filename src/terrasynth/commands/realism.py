"""``terrasynth realism``: image realism of a synthetic dataset against the real one it was painted from."""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, out_file
from terrasynth.errors import UserError

# evaluate.image_realism.METRICS, spelled out so that building the parser imports no torch (a test checks they agree).
METRICS = ("segmenter_fd", "inception", "class_stats", "diversity", "grid")


def register(cli: CLI) -> None:
    p = cli.command(
        "realism",
        help="how real synthetic images look, on the same masks: segmenter FD (+ real floor), FID/KID, per-class "
        "colour and texture, diversity of variants, grid artefacts",
        description="Compare a synthetic dataset with the real one whose labels it was painted from, tile by tile "
        "on the same masks (ids pair; -v<j> variants pair with their mask). FID/KID need local Inception v3 weights "
        "(nothing is downloaded); the segmenter FD needs a segmenter trained on the real data.",
    )
    p.add_argument("--real", required=True, metavar="DIR", help="the real paired dataset")
    p.add_argument("--synthetic", required=True, metavar="DIR", help="synthetic dataset painted from --real's labels")
    p.add_argument("--segmenter", metavar="RUN", help="run dir of 'segment train' on --real (the segmenter-feature FD)")
    p.add_argument("--inception-weights", dest="inception_weights", metavar="PATH",
                   help="torchvision's Inception v3 ImageNet state dict (inception_v3_google-0cc3c7bd.pth) for FID/KID; "
                        "default: torchvision's cache, else FID/KID are skipped")  # fmt: skip
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split compared (default test)")
    p.add_argument("--max-tiles", dest="max_tiles", type=int, default=1000, metavar="N",
                   help="at most N masks, spread over the index (default 1000)")  # fmt: skip
    p.add_argument("--metric", action="append", choices=METRICS, help="only these metrics (repeatable; default all)")
    p.add_argument(
        "--out", type=out_file, metavar="FILE.json", help="write the full result (per-class tables too) as JSON"
    )
    p.set_defaults(func=cmd_realism)


def cmd_realism(args: argparse.Namespace) -> int:
    from terrasynth.evaluate.image_realism import image_realism, summary_lines
    from terrasynth.io import write_json_atomic

    if args.out is not None and not str(args.out).lower().endswith(".json"):
        raise UserError(f"--out {args.out}: the result is written as JSON; give a file name ending in .json")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        raise UserError(f"--inception-weights {args.inception_weights}: file not found; pass torchvision's Inception "
                        "v3 state dict, or leave the flag out to skip FID/KID")  # fmt: skip
    result = image_realism(
        args.real, args.synthetic, segmenter_run=args.segmenter, split=args.split, max_tiles=args.max_tiles,
        inception_weights=args.inception_weights, metrics=tuple(args.metric or METRICS),
    )  # fmt: skip
    for line in summary_lines(result):
        print(line)
    if args.out is not None:
        write_json_atomic(args.out, result)
        print(f"-> {args.out}")
    return 0
