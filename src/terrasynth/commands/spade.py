"""``terrasynth spade ...``: train the SPADE image generator and preview its images."""

from __future__ import annotations

import argparse

from terrasynth.cli_base import CLI, add_config_args, out_dir, out_file, seed


def register(cli: CLI) -> None:
    spade = cli.group("spade", help="SPADE image generator (land-cover map -> RGB)")
    p = spade.add_parser(
        "train",
        help="train SPADE on a paired dataset (multi-GPU: accelerate launch -m terrasynth spade train ...)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="paired dataset (images + labels)")
    p.add_argument("--out", type=out_dir, required=True, metavar="RUN", help="run directory (rerun the same command to resume)")
    p.add_argument("--max-minutes", type=float, metavar="M", help="wall-clock budget (overrides max_minutes)")
    p.add_argument("--max-steps", type=int, metavar="N", help="step budget (overrides max_steps)")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming RUN")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = spade.add_parser("preview", help="write a PNG grid: mask | real | generated (two noise draws)")
    p.add_argument("--generator", required=True, metavar="RUN")
    p.add_argument("--data", required=True, metavar="DIR", help="paired dataset to take masks and real images from")
    p.add_argument("--split", default="test")
    p.add_argument("-n", type=int, default=8, help="rows")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", type=out_file, required=True, metavar="PNG")
    p.set_defaults(func=cmd_preview)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terrasynth.config import load_config
    from terrasynth.train.gan import SpadeConfig, train_spade

    flags = {"max_minutes": args.max_minutes, "max_steps": args.max_steps}
    cfg = load_config(SpadeConfig, args.config, flags, args.sets)
    run = train_spade(cfg, Path(args.data), Path(args.out), resume=not args.restart)
    print(f"SPADE run written to {run} (generator.json names the selected checkpoint)")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from terrasynth.inference.previews import preview_grid

    path = preview_grid(args.generator, args.data, args.out, split=args.split, n=args.n, seed=args.seed)
    print(f"wrote {path}")
    return 0
