"""``upres`` command line: a thin layer over the Python API. Every long-running command takes
``--quiet`` and prints its result path last. Errors that upres raises on purpose (``UpresError``)
and environment errors (``OSError``: permissions, disk space) print one line and exit 2;
per-file failures exit 1 after the other files are done; anything else is a bug and shows its
traceback. Building the parser imports no torch, so ``upres --help`` is fast."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from upres import __version__
from upres.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, note
from upres.cli.competition import add_auto, add_eval, add_fingerprint, add_make_set, add_predict, add_report
from upres.cli.images import add_convert, add_demo, add_models, add_upscale
from upres.cli.training import add_config, add_experiment, add_lr_find, add_train
from upres.errors import UpresError, bounded, os_problem


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upres", description="PSNR-first 4x single-image super-resolution (RRDBNet).")
    parser.add_argument("--version", action="version", version=f"upres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_upscale, add_convert, add_train, add_lr_find, add_auto, add_eval,
                add_predict, add_report, add_experiment, add_fingerprint, add_make_set,
                add_demo, add_models, add_config):
        add(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, like errors (not Python's file/line/source form)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    saved, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = saved


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may come after options: key=value words
        takes = args.command in ("train", "lr-find", "experiment")
        if not takes or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    if args.command != "config":  # OpenCV's own warnings repeat what upres reports by name
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    handler = _TqdmHandler()
    log = logging.getLogger("upres")
    log.addHandler(handler)
    log.propagate = False  # a handler a library adds to the root (OpenVINO's) would repeat them
    log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return args.func(args)
    except UpresError as err:
        print(f"error: {bounded(str(err))}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the environment: permissions, a vanished folder
        print(f"error: {bounded(os_problem(err))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        log.removeHandler(handler)
        log.propagate = True


class _TqdmHandler(logging.Handler):
    """upres's log lines on stderr, between progress bars (one rank speaks under torchrun)."""

    def emit(self, record: logging.LogRecord) -> None:
        if os.environ.get("RANK", "0") == "0":
            note(record.getMessage())


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
