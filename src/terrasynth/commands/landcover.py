"""``terrasynth landcover ...``: train the land-cover map generator, sample maps, measure realism."""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, add_config_args, out_dir, out_file, seed


def register(cli: CLI) -> None:
    g = cli.group("landcover", help="generate new land-cover maps (latent diffusion, or masked discrete diffusion)")

    p = g.add_parser("train", help="train the land-cover generator (generator: latent or discrete) on a dataset's maps")
    p.add_argument("--data", required=True, metavar="DIR", help="terrasynth dataset (label-only or paired)")
    p.add_argument("--out", type=out_dir, required=True, metavar="RUN", help="run directory (rerun the command to resume)")
    p.add_argument("--max-minutes", type=float, help="wall-time budget for both stages together")
    p.add_argument("--target-minutes", type=float, help="size both stages' steps by a speed probe to fit this")
    p.add_argument("--seed", type=seed)
    p.add_argument("--restart", action="store_true", help="start over instead of resuming from RUN/checkpoints")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = g.add_parser("sample", help="write N generated maps as a label-only synthetic dataset")
    p.add_argument("--model", required=True, metavar="RUN")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=out_dir, required=True, metavar="DIR")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--composition", metavar="CODE:SHARE,...", help="target class shares, e.g. 50:0.3,80:0.2")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (with --composition)")
    p.add_argument("--sampler", help="latent: ddim, dpmsolver++, unipc, euler, ...; discrete: matched, ancestral "
                   "(default: the run's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split name written into the index")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = g.add_parser("evaluate", help="realism metrics of generated maps against real ones (JSON)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="RUN", help="sample --n maps from this run")
    src.add_argument("--samples", metavar="DIR", help="an already sampled dataset")
    p.add_argument("--real", required=True, metavar="DIR", help="real dataset to compare with")
    p.add_argument("--real-split", default="val", help="split of --real to compare with ('all' for every tile)")
    p.add_argument("--train-split", default="train", help="split of --real checked for memorisation")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--composition", metavar="CODE:SHARE,...")
    p.add_argument("--guidance", type=float)
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", type=out_file, required=True, metavar="FILE.json")
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.train.landcover import LandcoverConfig, train_landcover

    flags = {"max_minutes": args.max_minutes, "target_minutes": args.target_minutes, "seed": args.seed}
    cfg = load_config(LandcoverConfig, args.config, flags, args.sets)
    run = train_landcover(cfg, Path(args.data), Path(args.out), resume=not args.restart)
    print(f"model written to {run / 'model'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from terrasynth.inference.landcover import load_landcover, parse_composition, sample_landcover

    comp = parse_composition(args.composition, load_landcover(args.model).scheme.codes) if args.composition else None
    ds = sample_landcover(
        Path(args.model), args.n, Path(args.out), seed=args.seed, batch_size=args.batch_size, composition=comp,
        guidance=args.guidance, sampler=args.sampler, steps=args.steps, split=args.split, overwrite=args.overwrite,
    )  # fmt: skip
    print(f"{len(ds)} maps written to {ds.root}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from terrasynth.data.dataset import Dataset
    from terrasynth.errors import UserError
    from terrasynth.evaluate.realism import as_maps, composition_error, realism_metrics
    from terrasynth.io import write_json_atomic
    from terrasynth.inference.landcover import generate_maps, load_landcover, parse_composition

    real = Dataset.open(args.real)
    real_splits = () if args.real_split == "all" else (args.real_split,)
    if real_splits and not real.split(*real_splits):
        raise UserError(f"{args.real}: no tiles in split {args.real_split!r}; pass --real-split all or another split")
    comp = None
    extra: dict = {}
    if args.model:
        model = load_landcover(Path(args.model))
        comp = parse_composition(args.composition, model.scheme.codes) if args.composition else None
        gen, s_per_map = generate_maps(
            model, args.n, seed=args.seed, composition=comp, guidance=args.guidance, sampler=args.sampler,
            steps=args.steps,
        )  # fmt: skip
        extra = {"seconds_per_map": s_per_map, "sampler": args.sampler or model.default_sampler,
                 "steps": args.steps or model.default_steps}  # fmt: skip
    else:
        gen = as_maps(Dataset.open(args.samples))
    train = as_maps(real, (args.train_split,)) if real.split(args.train_split) else None
    metrics = realism_metrics(real, gen, real.scheme, train=train, res=real.info.gsd or 10.0, real_splits=real_splits)
    if comp:
        metrics["composition"] = composition_error(gen, comp, real.scheme)
    metrics.update(extra)
    write_json_atomic(Path(args.out), metrics)
    print(json.dumps({k: metrics[k] for k in ("class_jsd", "landscape_worst_relative_error", "diversity", "memorisation")}))
    return 0
