"""``terrasynth synthesize``: images for every label tile of a dataset from a trained generator."""

from __future__ import annotations

import argparse

from terrasynth.cli_base import CLI, out_dir, seed


def register(cli: CLI) -> None:
    p = cli.command("synthesize", help="paint an image for every label tile of a dataset with a trained generator")
    p.add_argument("--generator", required=True, metavar="RUN", help="run dir of 'spade train' or 'controlnet train'")
    p.add_argument("--labels", required=True, metavar="DIR", help="dataset whose label tiles are painted")
    p.add_argument("--out", type=out_dir, required=True, metavar="DIR", help="output paired dataset")
    p.add_argument("--split", action="append", metavar="NAME", help="only these splits (repeatable; default all)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with another config")
    p.set_defaults(func=cmd_synthesize)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from terrasynth.data.dataset import describe
    from terrasynth.synthesize import synthesize

    ds = synthesize(
        args.generator, args.labels, args.out,
        seed=args.seed, batch_size=args.batch_size, splits=args.split, overwrite=args.overwrite,
    )  # fmt: skip
    if ds is not None:
        print(describe(ds))
    return 0
