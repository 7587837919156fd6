"""``terrasynth data ...``: dataset inspection (and, as they land, creation)."""

from __future__ import annotations

import argparse

from terrasynth.cli import CLI


def register(cli: CLI) -> None:
    data = cli.group("data", help="create and inspect terrasynth datasets")
    p = data.add_parser("info", help="print counts, splits and class frequencies of a dataset")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--verify", action="store_true", help="also check that every indexed file exists and reads")
    p.set_defaults(func=cmd_info)


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
