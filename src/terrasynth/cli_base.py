"""What the ``terrasynth`` entry point and every command module share.

``terrasynth.cli`` imports the command modules and each command module imports these
helpers; keeping them here (and not in ``cli``) means no command module imports ``cli``
back, so there is no import cycle between the entry point and its commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit 2) like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


class CLI:
    """What a command module sees: the root parser and named command groups."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.root = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=OneLineParser)
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def group(self, name: str, help: str = "") -> argparse._SubParsersAction:
        """Sub-commands under ``terrasynth NAME ...`` (created on first use)."""
        if name not in self._groups:
            p = self.root.add_parser(name, help=help, description=help)
            p.set_defaults(func=lambda args, p=p: p.print_help() or 0)
            self._groups[name] = p.add_subparsers(title="commands", dest="subcommand", metavar="COMMAND")
        return self._groups[name]

    def command(self, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        """A top-level command ``terrasynth NAME`` (``description``, for ``--help``, defaults to ``help``)."""
        return self.root.add_parser(name, help=help, description=description or help)


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeated ``--set KEY=VALUE`` (applied last)."""
    p.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.steps=100 (repeatable)",
    )  # fmt: skip


# ---- argument types: a bad value is argparse's one-line usage error (exit 2), never a traceback ----


def seed(text: str) -> int:
    """``--seed``: a non-negative integer (numpy and torch refuse negative seeds deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected a whole number >= 0, e.g. 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: seeds must be >= 0; e.g. use {-value}")
    return value


def out_dir(text: str) -> Path:
    """``--out DIR`` of a command that writes a directory: an existing regular file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is an existing file, not a directory; choose a new directory name for --out"
        )
    return path


def out_file(text: str) -> Path:
    """``--out FILE`` of a command that writes one file: an existing directory is refused."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing directory; give a file name for --out")
    return path


# ---- outputs never hold inputs ----------------------------------------------------------------

# Arguments that name what a command reads (``--config`` files are read before anything is written
# and may live in the run they configure, so they are not listed).
INPUT_ARGS = ("images", "masks", "data", "labels", "generator", "model", "base", "init_from", "real", "samples",
              "landcover", "imagery", "catalog", "area_file", "encoder_weights", "run", "segmenter", "synthetic",
              "hardness", "inception_weights")  # fmt: skip


def _fixed_prefix(text: str) -> Path:
    """The part of a path or glob before its first wildcard (``img/*.png`` -> ``img``)."""
    parts = Path(text).parts
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return Path(*parts[:i]) if i else Path(".")
    return Path(text)


def check_out_not_over_inputs(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that is, or contains, one of the command's inputs.

    Writing there would mix outputs into the inputs, and ``--overwrite`` would delete them
    (``data import-pairs ds/images ds/labels --out ds --overwrite`` once wiped its own inputs
    and then failed). Checked for every command, before anything is read or written.
    """
    from terrasynth.errors import UserError

    out = getattr(args, "out", None)
    if out is None:
        return
    out_path = Path(out).resolve()
    for name in INPUT_ARGS:
        values = getattr(args, name, None)
        if values is None or isinstance(values, bool):
            continue
        for value in values if isinstance(values, list) else [values]:
            inp = _fixed_prefix(str(value)).resolve()
            if inp == out_path or out_path in inp.parents:
                flag = name if name in ("images", "masks", "run") else "--" + name.replace("_", "-")
                how = "is" if inp == out_path else "is inside"
                raise UserError(
                    f"--out {out}: the input {flag} {value} {how} it; writing there would mix outputs into the "
                    "inputs (and --overwrite would delete them): choose an --out outside the inputs"
                )
