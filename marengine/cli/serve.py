"""`marengine serve`: an HTTP image server with continuous batching (marengine/serve)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..checks import check_float, check_int
from ..config import SERVE_DEFAULTS as D
from .common import add_checked, add_command, add_pipeline_options, add_threads_option, load_pipeline, sample_settings

log = logging.getLogger("marengine.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..pipeline.batching import batch_invariant_blas
    from ..serve.server import build_server, read_class_names, run

    if not batch_invariant_blas():  # before any matrix product: MKL reads it once
        log.warning("MKL's strict reproducibility is off: served images may differ in the last bits from alone")
    settings = sample_settings(args)  # every setting checked before the model is read
    pipe = load_pipeline(args, replace(settings, batch_size=max(settings.batch_size, args.max_n)))
    server = build_server(
        pipe,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        max_n=args.max_n,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        request_timeout=args.request_timeout,
        shutdown_grace=args.shutdown_grace,
        class_names=read_class_names(args.class_names, pipe.model.num_classes),
        static_window=args.static_batching_window,
    )
    print(f"marengine serve: http://{args.host}:{args.port}  (POST /v1/images/generations, GET /health)", flush=True)
    run(server, args.host, args.port)
    return 0


def _add_setting(p: argparse.ArgumentParser, flag: str, check: Callable[..., Any], help: str, **bounds: float) -> None:
    """A numeric flag whose default is SERVE_DEFAULTS' field of the same name, checked by `check` within `bounds`."""
    default = getattr(D, flag.removeprefix("--").replace("-", "_"))
    shown = f"{default:g}" if isinstance(default, float) else f"{default}"
    add_checked(p, flag, check, default, f"{help} (default {shown})", **bounds)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", "serve images over HTTP with continuous batching", cmd_serve)
    add_pipeline_options(p, batch_flag="--sample-batch-size")
    add_threads_option(p)
    p.add_argument("--host", default=D.host, help=f"address to listen on (default {D.host}: this machine only)")
    _add_setting(p, "--port", check_int, "port to listen on", lo=0, hi=65535)
    _add_setting(p, "--max-batch-rows", check_int, "backbone rows per iteration, an image with CFG takes 2", lo=1)
    _add_setting(p, "--max-queue", check_int, "waiting requests; more get 429", lo=0)
    _add_setting(p, "--max-n", check_int, "images per request", lo=1)
    _add_setting(p, "--max-body-bytes", check_int, "largest request body; more get 413", lo=1)
    _add_setting(p, "--body-timeout", check_float, "seconds for a body to arrive; slower clients get 408", lo=0.001)
    _add_setting(p, "--request-timeout", check_float, "seconds a request may wait and run; then 504", lo=0.001)
    _add_setting(
        p, "--shutdown-grace", check_float, "seconds in-flight requests get to finish on SIGTERM/SIGINT", lo=0.001
    )
    add_checked(
        p,
        "--static-batching-window",
        check_float,
        None,
        "a baseline for benchmarks: static batches that start when full or after this many seconds "
        "and run to their end (default: off, continuous batching)",
        lo=0.0,
    )
    p.add_argument("--class-names", default=None, help="a text file naming class i on line i (default: labels only)")
