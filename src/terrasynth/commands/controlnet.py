"""``terrasynth controlnet ...``: train a latent-diffusion base and a ControlNet generator on it.

``--config`` takes a file with ``base:`` and ``controlnet:`` sections
(configs/controlnet-cpu.yaml); ``--set KEY=VALUE`` applies inside the command's section.
Multi-GPU: ``accelerate launch -m terrasynth controlnet train ...`` (same flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, add_config_args, out_dir, seed


def register(cli: CLI) -> None:
    g = cli.group("controlnet", help="ControlNet image generator (land cover -> RGB) on a latent diffusion base")
    p = g.add_parser("train-base", help="train the autoencoder and unconditional latent UNet on imagery")
    p.add_argument("--data", required=True, nargs="+", type=Path, metavar="DIR", help="dataset(s) with images")
    p.add_argument("--out", type=out_dir, required=True, metavar="RUN")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for both stages")
    p.add_argument("--init-from", type=Path, metavar="RUN", help="continue from a previous base run (fine-tuning)")
    p.add_argument("--seed", type=seed)
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in RUN and start over")
    add_config_args(p)
    p.set_defaults(func=cmd_train_base)

    p = g.add_parser("train", help="train a ControlNet on image/mask pairs over a frozen base")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="paired dataset (images + labels)")
    p.add_argument("--base", required=True, metavar="RUN_OR_PATH",
                   help="a train-base run, a local Stable-Diffusion-layout checkpoint, or its Hugging Face Hub id "
                        "(org/name, from the Hub cache or downloaded by diffusers)")  # fmt: skip
    p.add_argument("--out", type=out_dir, required=True, metavar="RUN")
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--init-from", type=Path, metavar="RUN", help="continue from a previous ControlNet run")
    p.add_argument("--prompt", help="text prompt for Stable-Diffusion-layout bases (default 'aerial photograph')")
    p.add_argument("--seed", type=seed)
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in RUN and start over")
    add_config_args(p)
    p.set_defaults(func=cmd_train)


def _section(args: argparse.Namespace, name: str, flags: dict):
    """The ``name`` section of a ControlNetRunConfig file; ``--set k=v`` applies inside it."""
    from terrasynth.config import load_config
    from terrasynth.train.diffusion import ControlNetRunConfig

    sets = [f"{name}.{s}" for s in args.sets]
    return getattr(load_config(ControlNetRunConfig, args.config, {name: flags}, sets), name)


def cmd_train_base(args: argparse.Namespace) -> int:
    from terrasynth.train.diffusion import train_controlnet_base

    cfg = _section(args, "base", {"max_minutes": args.max_minutes, "seed": args.seed})
    out = train_controlnet_base(cfg, args.data, args.out, init_from=args.init_from, resume=not args.restart)
    print(f"base model written to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from terrasynth.train.diffusion import train_controlnet

    cfg = _section(args, "controlnet", {"max_minutes": args.max_minutes, "seed": args.seed, "prompt": args.prompt})
    out = train_controlnet(cfg, args.data, args.base, args.out, init_from=args.init_from, resume=not args.restart)
    print(f"ControlNet generator written to {out} (use: terrasynth synthesize --generator {out} ...)")
    return 0
