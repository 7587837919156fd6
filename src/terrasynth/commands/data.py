"""``terrasynth data ...``: create (import pairs, procedural world) and inspect datasets."""

from __future__ import annotations

import argparse

from terrasynth.cli_base import CLI, add_config_args, out_dir, seed


def register(cli: CLI) -> None:
    data = cli.group("data", help="create and inspect terrasynth datasets")
    p = data.add_parser("info", help="print counts, splits and class frequencies of a dataset")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--verify", action="store_true", help="also check that every indexed file exists and reads")
    p.set_defaults(func=cmd_info)

    p = data.add_parser(
        "import-pairs",
        help="import image/mask pairs (PNG, JPEG, TIFF) into a tiled dataset",
        description="Import image/mask pairs matched by file stem, tile them and assign splits per source image, "
        "per spatial block or per group of images (a region named in the file stem) so that no two splits share "
        "pixels. Resumable: rerun to continue.",
    )
    p.add_argument("images", metavar="IMAGES", help="directory or glob of RGB images")
    p.add_argument("masks", metavar="MASKS", help="directory or glob of masks (single-band codes or RGB colours)")
    p.add_argument("--scheme", help="class scheme of the masks: name (worldcover, dronedeploy, loveda, flair) or YAML path")
    p.add_argument("--remap", help="remap onto another scheme, e.g. flair_to_worldcover (name or YAML path)")
    p.add_argument("--tile", type=int, help="tile size in pixels (default 64)")
    p.add_argument("--stride", type=int, help="step between tiles in pixels (default: the tile size)")
    p.add_argument("--gsd", type=float, help="ground sample distance of the source images, m/px")
    p.add_argument("--resize-to-gsd", dest="resize_to_gsd", type=float, help="resample to this GSD (needs --gsd)")
    p.add_argument("--split-by", dest="split_by", choices=["image", "block", "group"], help="split unit (default image)")
    p.add_argument("--block-size", dest="block_size", type=int, help="block side in pixels for --split-by block")
    p.add_argument("--group-pattern", dest="group_pattern", metavar="REGEX",
                   help="--split-by group: regex on each image's file stem whose first capture group names its "
                   "group, e.g. '^(tile\\d+)_' (tile3_part1.jpg is in group tile3)")
    p.add_argument("--val-groups", dest="val_groups", type=name_list, metavar="G1,G2",
                   help="--split-by group: groups for the val split (the rest is train; default: whole groups "
                   "drawn with the ratios and --seed). Either flag replaces both of the config's lists")
    p.add_argument("--test-groups", dest="test_groups", type=name_list, metavar="G1,G2",
                   help="--split-by group: groups for the test split")
    p.add_argument("--mask-format", dest="mask_format", choices=["auto", "index", "rgb"], help="default auto")
    p.add_argument("--bands", type=band_list, metavar="R,G,B",
                   help="source band (1-based) for red, green and blue, e.g. 1,1,1 for grey images or 3,2,1 for BGR "
                   "(default: the first three; band 1 copied, with a warning, for one- and two-band images)")
    p.add_argument("--seed", type=seed, help="seed of the split shuffle (default 0)")
    p.add_argument("--out", type=out_dir, required=True, metavar="DIR", help="output dataset directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    add_config_args(p)
    p.set_defaults(func=cmd_import_pairs)

    p = data.add_parser(
        "world",
        help="generate the procedural world: WorldCover land cover + aerial RGB, no download needed",
        description="Generate paired WorldCover-coded land-cover tiles and RGB images from a seed "
        "(same seed, same bytes). Knobs for season, illumination, haze and noise simulate domain shift.",
    )
    p.add_argument("--tiles", type=int, help="number of tiles (default 2000)")
    p.add_argument("--size", type=int, help="tile side in pixels (default 64)")
    p.add_argument("--seed", type=seed, help="world seed (default 0)")
    p.add_argument("--gsd", type=float, help="nominal ground sample distance in m/px (default 10)")
    p.add_argument("--season", choices=["spring", "summer", "autumn", "winter", "dry"], help="default summer")
    p.add_argument("--sun-elevation", dest="sun_elevation", type=float, help="degrees (default 45)")
    p.add_argument("--sun-azimuth", dest="sun_azimuth", type=float, help="degrees from north (default 315)")
    p.add_argument("--brightness", type=float, help="illumination gain (default 1.0)")
    p.add_argument("--haze", type=float, help="0 clear .. 1 opaque (default 0)")
    p.add_argument("--noise", type=float, help="sensor noise std in DN (default 3)")
    p.add_argument("--blur", type=float, help="optical blur std in px (default 0.6)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering regions (default 1)")
    p.add_argument("--out", type=out_dir, required=True, metavar="DIR", help="output dataset directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--preview", metavar="PNG", help="also write a preview grid of tiles to this PNG")
    add_config_args(p)
    p.set_defaults(func=cmd_world)


def band_list(text: str) -> list[int]:
    """``--bands 3,2,1`` -> [3, 2, 1]."""
    try:
        bands = [int(b) for b in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) != 3 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"invalid bands {text!r}: expected three band numbers from 1, e.g. 1,1,1")
    return bands


def name_list(text: str) -> list[str]:
    """``--test-groups tile5,tile8`` -> ['tile5', 'tile8']."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"invalid group list {text!r}: expected names separated by commas")
    return names


def cmd_info(args: argparse.Namespace) -> int:
    from terrasynth.data.dataset import Dataset, describe
    from terrasynth.errors import UserError

    ds = Dataset.open(args.dataset)
    print(describe(ds))
    if args.verify:
        problems = ds.verify()
        if problems:
            raise UserError(f"{ds.root}: {len(problems)} problem(s), first: {problems[0]}; rebuild the dataset")
        print(f"verified  {len(ds)} tiles: index and files agree")
    return 0


def cmd_import_pairs(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.data.dataset import describe
    from terrasynth.data.importers import PairImportConfig, import_pairs

    flags = {k: getattr(args, k) for k in ("scheme", "remap", "tile", "stride", "gsd", "resize_to_gsd", "split_by",
                                           "block_size", "group_pattern", "mask_format", "seed", "bands")}  # fmt: skip
    if args.val_groups is not None or args.test_groups is not None:
        # Both lists replace the config file's: naming only test groups means no val groups.
        flags["groups"] = {"val": args.val_groups or [], "test": args.test_groups or []}
    cfg = load_config(PairImportConfig, args.config, flags, args.sets)
    ds = import_pairs(args.images, args.masks, cfg, args.out, overwrite=args.overwrite)
    print(describe(ds))
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.data.dataset import describe
    from terrasynth.data.world import WorldConfig, generate_world

    keys = ("tiles", "size", "seed", "gsd", "season", "sun_elevation", "sun_azimuth", "brightness", "haze", "noise",
            "blur")  # fmt: skip
    cfg = load_config(WorldConfig, args.config, {k: getattr(args, k) for k in keys}, args.sets)
    ds = generate_world(cfg, args.out, workers=args.workers, overwrite=args.overwrite)
    print(describe(ds))
    if args.preview:
        from terrasynth.data.preview import dataset_preview

        print(f"preview   {dataset_preview(ds, args.preview, n=16)}")
    return 0
