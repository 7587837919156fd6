"""``terrasynth controlnet ...``: train a latent-diffusion base and a ControlNet generator on it.

Multi-GPU: ``accelerate launch -m terrasynth controlnet train ...`` (same flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli import CLI, add_config_args


def register(cli: CLI) -> None:
    g = cli.group("controlnet", help="ControlNet image generator (land cover -> RGB) on a latent diffusion base")
    p = g.add_parser("train-base", help="train the autoencoder and unconditional latent UNet on imagery")
    p.add_argument("--data", required=True, nargs="+", type=Path, metavar="DIR", help="dataset(s) with images")
    p.add_argument("--out", required=True, type=Path, metavar="RUN")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for both stages")
    p.add_argument("--init-from", type=Path, metavar="RUN", help="continue from a previous base run (fine-tuning)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in RUN and start over")
    add_config_args(p)
    p.set_defaults(func=cmd_train_base)

    p = g.add_parser("train", help="train a ControlNet on image/mask pairs over a frozen base")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="paired dataset (images + labels)")
    p.add_argument("--base", required=True, metavar="RUN_OR_PATH",
                   help="a train-base run or a local Stable-Diffusion-layout checkpoint")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, metavar="RUN")
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--init-from", type=Path, metavar="RUN", help="continue from a previous ControlNet run")
    p.add_argument("--prompt", help="text prompt for Stable-Diffusion-layout bases (default 'aerial photograph')")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in RUN and start over")
    add_config_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train_base(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.train.diffusion import ControlNetBaseConfig, train_controlnet_base

    cfg = load_config(ControlNetBaseConfig, args.config, {"max_minutes": args.max_minutes, "seed": args.seed}, args.sets)
    out = train_controlnet_base(cfg, args.data, args.out, init_from=args.init_from, resume=not args.no_resume)
    print(f"base model written to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.train.diffusion import ControlNetConfig, train_controlnet

    flags = {"max_minutes": args.max_minutes, "seed": args.seed, "prompt": args.prompt}
    cfg = load_config(ControlNetConfig, args.config, flags, args.sets)
    out = train_controlnet(cfg, args.data, args.base, args.out, init_from=args.init_from, resume=not args.no_resume)
    print(f"ControlNet generator written to {out} (use: terrasynth synthesize --generator {out} ...)")
    return 0
