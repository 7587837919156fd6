"""``terrasynth synthesize``: images for every label tile of a dataset from a trained generator;
``terrasynth filter``: the same synthetic dataset with the pixels a real-trained segmenter doubts ignored."""

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
    p.add_argument("--variants", type=variants_arg, default=1, metavar="K|MIN:MAX",
                   help="images per label tile (default 1; K > 1 names tiles <id>-v0 .. <id>-v<K-1>); MIN:MAX with "
                   "--hardness gives harder masks more, linear in hardness rank")  # fmt: skip
    p.add_argument("--hardness", metavar="RUN", help="segmenter run ('segment train' on the real data) that ranks the "
                   "label tiles by its loss on them, for --variants MIN:MAX (the labels need images)")  # fmt: skip
    p.add_argument("--steps", type=at_least_one(int, "a whole number >= 1 (e.g. 10)"), metavar="N", help="ControlNet: sampling steps instead of the run's own "
                   "(fewer = faster; docs/benchmarks.md measures what it costs)")  # fmt: skip
    p.add_argument("--guidance", type=at_least_one(float, "a number >= 1 (1 = no guidance, e.g. 2.0)"), metavar="G", help="ControlNet: classifier-free guidance scale "
                   "instead of the run's own (1 = one pass per step, half the time)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with another config")
    p.set_defaults(func=cmd_synthesize)

    p = cli.command(
        "filter",
        help="ignore the pixels of a synthetic dataset that a segmenter trained on real data finds implausible",
        description="FreeMask's filter: a synthetic pixel whose cross-entropy under the real-trained segmenter exceeds "
        "K x the mean loss of its class on the real train tiles becomes nodata (ignored in training). Writes a new "
        "dataset; resumable: rerun to continue.",
    )
    p.add_argument("--segmenter", required=True, metavar="RUN", help="run dir of 'segment train' on the real data")
    p.add_argument("--real", required=True, metavar="DIR", help="the real dataset it was trained on (its train split sets the bar)")
    p.add_argument("--synthetic", required=True, metavar="DIR", help="synthetic paired dataset to filter")
    p.add_argument("--out", type=out_dir, required=True, metavar="DIR", help="output filtered dataset")
    p.add_argument("--k", type=float, default=None, help="tolerance margin over the class mean loss (default 1.25, FreeMask's)")
    p.add_argument("--drop-tile-above", dest="drop_tile_above", type=float, metavar="SHARE",
                   help="also leave out tiles whose ignored share of labelled pixels exceeds this (default: keep all)")
    p.add_argument("--split", action="append", metavar="NAME", help="only these splits of --synthetic (repeatable; default all)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="segmenter weights (default best)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with another config")
    p.set_defaults(func=cmd_filter)


def at_least_one(kind: type, what: str):
    """An argparse type: ``kind(text)`` if it is >= 1, else a one-line error saying ``what`` is expected."""

    def parse(text: str):
        try:
            if kind(text) >= 1:
                return kind(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {what}")

    return parse


def variants_arg(text: str) -> int | tuple[int, int]:
    """``--variants 3`` -> 3; ``--variants 1:4`` -> (1, 4)."""
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 1:
        return parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1] and parts[1] >= 1:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(
        f"invalid variants {text!r}: expected a count >= 1 (e.g. 4) or MIN:MAX with 0 <= MIN <= MAX (e.g. 1:4)"
    )


def cmd_synthesize(args: argparse.Namespace) -> int:
    from terrasynth.data.dataset import describe
    from terrasynth.errors import UserError
    from terrasynth.synthesize import synthesize

    variants = args.variants
    if isinstance(variants, tuple):
        if not args.hardness:
            raise UserError(f"--variants {variants[0]}:{variants[1]}: a range needs --hardness RUN (a segmenter trained "
                            "on the real data) to rank the masks; or give one count, e.g. --variants 2")  # fmt: skip
        from terrasynth.synthesize_filter import hardness_variants, tile_hardness

        hardness = tile_hardness(args.hardness, args.labels, args.split)
        variants = hardness_variants(hardness, *variants)
    elif args.hardness:
        raise UserError(f"--hardness {args.hardness}: ranks masks for --variants MIN:MAX, but --variants is one count "
                        f"({variants}); give a range, e.g. --variants 1:{max(2, variants)}")  # fmt: skip
    sampling = {k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance)) if v is not None}
    ds = synthesize(
        args.generator, args.labels, args.out, seed=args.seed, batch_size=args.batch_size, splits=args.split,
        overwrite=args.overwrite, variants=variants, sampling=sampling or None,
    )  # fmt: skip
    if ds is not None:
        print(describe(ds))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from terrasynth.data.dataset import describe
    from terrasynth.synthesize_filter import DEFAULT_K, filter_synthetic

    ds = filter_synthetic(
        args.segmenter, args.real, args.synthetic, args.out,
        k=DEFAULT_K if args.k is None else args.k, drop_tile_above=args.drop_tile_above, which=args.checkpoint,
        splits=args.split, batch_size=args.batch_size, overwrite=args.overwrite,
    )  # fmt: skip
    f = ds.info.provenance["filter"]
    print(describe(ds))
    print(f"filtered  {f['ignored_pixels']:,} of {f['labelled_pixels']:,} labelled pixels ignored "
          f"({100 * f['ignored_pixels'] / max(1, f['labelled_pixels']):.1f}%), {f['tiles_dropped']} of {f['tiles_in']} tiles dropped")  # fmt: skip
    return 0
