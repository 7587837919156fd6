"""``terrasynth data acquire``: real WorldCover (and NAIP) tiles from STAC or local COGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from terrasynth.cli_base import CLI, add_config_args, out_dir, seed
from terrasynth.errors import UserError


def register(cli: CLI) -> None:
    data = cli.group("data", help="create and inspect terrasynth datasets")
    p = data.add_parser(
        "acquire",
        help="tile real land cover (and imagery) from STAC or local COGs into a dataset",
        description="Tile ESA WorldCover alone (--product landcover) or NAIP RGB paired with WorldCover warped "
        "onto the same grid (--product pairs), from the Planetary Computer, any STAC API, a static STAC "
        "catalog or local files. Windowed reads only; resumable: rerun the same command to finish.",
    )  # fmt: skip
    src = p.add_argument_group("sources")
    src.add_argument("--source", choices=["planetary-computer", "stac", "static", "local"], help="default: local")
    src.add_argument("--landcover", action="append", metavar="PATH_OR_GLOB", help="local WorldCover files (repeatable)")
    src.add_argument("--imagery", action="append", metavar="PATH_OR_GLOB", help="local NAIP files (repeatable)")
    src.add_argument("--catalog", metavar="PATH", help="static STAC catalog.json for --source static")
    src.add_argument("--stac-url", metavar="URL", help="STAC API root for --source stac")
    src.add_argument("--imagery-collection", metavar="ID", help="default: naip (asset image)")
    src.add_argument("--imagery-asset", metavar="KEY")
    src.add_argument("--landcover-collection", metavar="ID", help="default: esa-worldcover (asset map)")
    src.add_argument("--landcover-asset", metavar="KEY")
    src.add_argument("--landcover-version", metavar="V", help="esa_worldcover:product_version (default 2.0.0 = 2021)")
    src.add_argument("--remap", metavar="NAME|YAML",
                     help="land cover in another scheme: a remap onto worldcover (e.g. a YAML mapping its codes)")
    src.add_argument("--datetime", metavar="RANGE", help="imagery dates, e.g. 2021-01-01/2022-12-31")
    src.add_argument("--state", metavar="XX", help="NAIP state, e.g. ny (the new-york preset sets it)")
    src.add_argument("--max-items", type=int, metavar="N", help="at most N STAC items per collection")
    area = p.add_argument_group("area (EPSG:4326; default: the whole local files)")
    area.add_argument("--bbox", metavar="W,S,E,N")
    area.add_argument("--area-file", metavar="GEOJSON")
    area.add_argument("--area", metavar="NAME", help="preset: new-york, sao-tome")
    grid = p.add_argument_group("product and grid")
    grid.add_argument("--product", choices=["pairs", "landcover"], help="default: pairs")
    grid.add_argument("--tile", type=int, metavar="N", help="tile size in pixels (default 512)")
    grid.add_argument("--stride", type=int, metavar="N", help="tile stride in pixels (default: --tile)")
    grid.add_argument("--edge", choices=["drop", "shift"], help="incomplete edge tiles: drop, or shift inside (default drop)")
    grid.add_argument("--gsd", metavar="M|native", help="metres per pixel (pairs default 1; landcover default native)")
    grid.add_argument("--crs", metavar="CRS", help="landcover only: target CRS, e.g. EPSG:32632 (default: UTM of the area)")
    flt = p.add_argument_group("filters and splits")
    flt.add_argument("--max-nodata", type=float, metavar="F", help="drop tiles with a larger nodata share (default 0.05)")
    flt.add_argument("--max-class-fraction", action="append", metavar="CODES:F",
                     help="drop tiles where these codes exceed share F, e.g. 80:0.5 (water) or 0+80:0.5; repeatable")
    flt.add_argument("--min-class-fraction", action="append", metavar="CODES:F",
                     help="drop tiles where these codes are below share F, e.g. 50:0.05; repeatable")
    flt.add_argument("--max-tiles", type=int, metavar="N", help="stop after N tiles (sampled over the whole area)")
    flt.add_argument("--block-size", type=float, metavar="M", help="split block side in metres (default 4 tile widths on geographic grids, 10 on projected)")
    flt.add_argument("--split", metavar="TRAIN,VAL,TEST", help="split fractions (default 0.8,0.1,0.1)")
    flt.add_argument("--seed", type=seed)
    run = p.add_argument_group("run")
    run.add_argument("--out", type=out_dir, required=True, metavar="DIR")
    run.add_argument("--name", help="dataset name (default: the --out folder name)")
    run.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
    run.add_argument("--retries", type=int, metavar="N", help="retries of transient read errors (default 4)")
    run.add_argument("--overwrite", action="store_true", help="replace a dataset made with another config")
    add_config_args(p)
    p.set_defaults(func=cmd_acquire)


def _fractions(items: list[str] | None, flag: str) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        codes, sep, frac = item.rpartition(":")
        try:
            out[codes] = float(frac)
        except ValueError:
            sep = ""
        if not sep or not codes:
            raise UserError(f"{flag} {item!r}: expected CODES:FRACTION, e.g. 80:0.5 or 0+80:0.5")
    return out


def _gsd(text: str | None) -> float | str | None:
    if text is None or text == "native":
        return text
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--gsd {text!r}: expected metres (e.g. 1 or 10) or 'native'") from None


def cmd_acquire(args: argparse.Namespace) -> int:
    from terrasynth.config import load_config
    from terrasynth.data.acquire import AcquireConfig, acquire
    from terrasynth.data.dataset import describe
    from terrasynth.geo.area import parse_bbox

    split = None
    if args.split:
        try:
            split = tuple(float(x) for x in args.split.split(","))
        except ValueError:
            raise UserError(f"--split {args.split!r}: expected three fractions, e.g. 0.8,0.1,0.1") from None
    plain = ("source", "landcover", "imagery", "catalog", "stac_url", "imagery_collection", "imagery_asset",
             "landcover_collection", "landcover_asset", "landcover_version", "remap", "datetime", "state", "max_items",
             "area_file", "area", "product", "tile", "stride", "edge", "crs", "max_nodata", "max_tiles", "block_size",
             "seed", "workers", "retries", "name")  # fmt: skip
    flags = {k: getattr(args, k) for k in plain} | {
        "bbox": parse_bbox(args.bbox) if args.bbox else None, "gsd": _gsd(args.gsd), "split_fractions": split,
        "max_class_fraction": _fractions(args.max_class_fraction, "--max-class-fraction"),
        "min_class_fraction": _fractions(args.min_class_fraction, "--min-class-fraction"),
    }  # fmt: skip
    cfg = load_config(AcquireConfig, args.config, flags, args.sets)
    ds = acquire(cfg, Path(args.out), overwrite=args.overwrite)
    print(describe(ds))
    return 0
