"""`marengine serve`: an HTTP image server with continuous batching (marengine/serve)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from ..checks import check_float, check_int
from ..config import SERVE_DEFAULTS as D
from ..options import add_sampling_options, arg
from .common import add_backend_options, add_model_options, add_threads_option, sample_settings

log = logging.getLogger("marengine.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..pipeline import MARPipeline
    from ..pipeline.batching import batch_invariant_blas
    from ..serve.server import build_server, read_class_names, run

    if not batch_invariant_blas():  # before any matrix product: MKL reads it once
        log.warning("MKL's strict reproducibility is off: served images may differ in the last bits from alone")
    settings = sample_settings(args)  # every setting checked before the model is read
    settings = replace(settings, batch_size=max(settings.batch_size, args.max_n))
    pipe = MARPipeline.from_pretrained(
        args.checkpoint,
        device=args.device,
        config=args.model,
        vae_ckpt=args.vae_ckpt,
        use_ema=not args.no_ema,
        settings=settings,
    )
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve images over HTTP with continuous batching")
    add_model_options(p)
    add_threads_option(p)
    p.add_argument("--host", default=D.host, help=f"address to listen on (default {D.host}: this machine only)")
    p.add_argument("--port", type=arg(check_int, "--port", lo=0, hi=65535), default=D.port, help=f"default {D.port}")
    p.add_argument(
        "--max-batch-rows",
        type=arg(check_int, "--max-batch-rows", lo=1),
        default=D.max_batch_rows,
        help=f"backbone rows per iteration, an image with CFG takes 2 (default {D.max_batch_rows})",
    )
    p.add_argument(
        "--max-queue",
        type=arg(check_int, "--max-queue", lo=0),
        default=D.max_queue,
        help=f"waiting requests; more get 429 (default {D.max_queue})",
    )
    p.add_argument(
        "--max-n", type=arg(check_int, "--max-n", lo=1), default=D.max_n, help=f"images per request (default {D.max_n})"
    )
    p.add_argument(
        "--max-body-bytes",
        type=arg(check_int, "--max-body-bytes", lo=1),
        default=D.max_body_bytes,
        help=f"largest request body; more get 413 (default {D.max_body_bytes})",
    )
    p.add_argument(
        "--body-timeout",
        type=arg(check_float, "--body-timeout", lo=0.001),
        default=D.body_timeout,
        help=f"seconds for a body to arrive; slower clients get 408 (default {D.body_timeout:g})",
    )
    p.add_argument(
        "--request-timeout",
        type=arg(check_float, "--request-timeout", lo=0.001),
        default=D.request_timeout,
        help=f"seconds a request may wait and run; then 504 (default {D.request_timeout:g})",
    )
    p.add_argument(
        "--shutdown-grace",
        type=arg(check_float, "--shutdown-grace", lo=0.001),
        default=D.shutdown_grace,
        help=f"seconds in-flight requests get to finish on SIGTERM/SIGINT (default {D.shutdown_grace:g})",
    )
    p.add_argument(
        "--static-batching-window",
        type=arg(check_float, "--static-batching-window", lo=0.0),
        default=None,
        help="a baseline for benchmarks: static batches that start when full or after this many seconds "
        "and run to their end (default: off, continuous batching)",
    )
    p.add_argument("--class-names", default=None, help="a text file naming class i on line i (default: labels only)")
    add_sampling_options(p, batch_flag="--sample-batch-size")
    add_backend_options(p)
    p.set_defaults(fn=cmd_serve)
