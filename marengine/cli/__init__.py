"""Command line: marengine train | demo | sample | evaluate | edit | serve | cache-latents | check-data | export-onnx |
doctor | train-vq.

Each sub-command lives in its own module and registers its parser here. Every error a
user can cause ends as one line `marengine CMD: error: ...` and exit status 2
(`-v` shows the traceback); training flags are generated from `TrainConfig`, so defaults
live in one place, and every flag's --help shows its default (common.add_command). The
commands that generate load their model through common.load_pipeline (MARPipeline).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Sequence

from ..options import ArgumentParser
from . import bench, data, doctor, edit, evaluate, export, sample, serve, train, vq
from .common import apply_threads

COMMANDS = (train, sample, evaluate, edit, serve, data, export, bench, doctor, vq)


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="marengine", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for module in COMMANDS:
        module.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        apply_threads(args)  # --threads of the commands that compute, before any work
        return args.fn(args)
    except (ValueError, TypeError, KeyError, RuntimeError, ImportError, OSError) as e:
        if args.verbose:
            raise
        print(f"marengine {args.cmd}: error: {describe(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marengine {args.cmd}: interrupted", file=sys.stderr)
        return 130


def describe(e: BaseException) -> str:
    """One line for an exception; a full disk or a read-only folder says so plainly."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on the device{f' writing {e.filename}' if e.filename else ''}: free space and rerun"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM) and e.filename:
        return f"cannot write {e.filename}: permission denied or read-only; choose another output path"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
