"""The ``terrasynth`` command line: thin commands that parse, load a config and call one library function.

Each command family lives in its own module under ``terrasynth.commands`` and adds its
parsers in ``register(cli)``. User errors (:class:`~terrasynth.errors.UserError`) print
one line and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Sequence

import terrasynth
from terrasynth.cli_base import CLI, OneLineParser, add_config_args, check_out_not_over_inputs  # noqa: F401
from terrasynth.errors import UserError
from terrasynth.io import os_user_error
from terrasynth.threads import configure_threads

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = [
    "terrasynth.commands.data",
    "terrasynth.commands.spade",
    "terrasynth.commands.controlnet",
    "terrasynth.commands.synthesize",
    "terrasynth.commands.realism",
    "terrasynth.commands.segment",
    "terrasynth.commands.acquire",
    "terrasynth.commands.landcover",
    "terrasynth.commands.pipeline",
]

log = logging.getLogger("terrasynth")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="terrasynth",
        description="Synthetic, labelled Earth-observation training data, and the proof of whether it helps.",
    )
    parser.add_argument("--version", action="version", version=f"terrasynth {terrasynth.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    cli = CLI(parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("rasterio", "matplotlib", "PIL", "urllib3", "fsspec", "h5py", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # GDAL reports damaged files as warnings first ("Bogus StripByteCounts ...") and then fails;
    # the error line already names the file, so its warnings only break the one-line contract.
    if verbose < 2:
        logging.getLogger("rasterio").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.quiet:
        from functools import partialmethod

        from tqdm import tqdm

        # tqdm reads TQDM_DISABLE when it is imported: disable bars on the class too, and keep the
        # variable for code that passes ``disable=`` itself (acquire reads it) and for worker processes.
        os.environ["TQDM_DISABLE"] = "1"
        tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # type: ignore[method-assign]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    configure_threads()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        check_out_not_over_inputs(args)
        rc = args.func(args)
        return int(rc or 0)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"terrasynth: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `terrasynth data info DIR | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A full disk or quota can strike in any library's write (torch.save, tensorboard, ...).
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"terrasynth: error: {os_user_error(exc.filename or 'output', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        # Bars still open would redraw (or print their last state from __del__) after this line.
        _silence_progress_bars()
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"terrasynth: {what}; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if in_main_thread and previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler, ``docker stop``) unwinds exactly like Ctrl-C: atomic writes
    remove their temporary files on the way out and the same command resumes."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _silence_progress_bars() -> None:
    """Close every live tqdm bar before the final line; a disabled bar never prints again."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    classes, bars = [std.tqdm], []
    while classes:  # tqdm.auto's class and other subclasses may keep their own instance set
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        bars.extend(cls.__dict__.get("_instances", ()))
    for bar in bars:
        try:
            if not bar.disable:
                bar.close()  # ends its line with a newline, before our message
            bar.disable = True
        except Exception:  # noqa: BLE001 - a half-built bar must not hide the interrupt
            pass
    sys.stderr.flush()
