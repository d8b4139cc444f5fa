"""Run the image server on uvicorn (loopback by default)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import SERVE_DEFAULTS
from ..pipeline.engine import GenerationEngine
from ..pipeline.pipeline import MARPipeline
from .app import ImageServer, ServerOptions

log = logging.getLogger("marengine.serve")


def read_class_names(path: str | Path | None, num_classes: int) -> tuple[str, ...]:
    """One class name per line (line i names class i), or none."""
    if path is None:
        return ()
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for a model of {num_classes} classes; give one per line")
    return names


def build_server(
    pipe: MARPipeline,
    *,
    max_batch_rows: int = SERVE_DEFAULTS.max_batch_rows,
    max_queue: int = SERVE_DEFAULTS.max_queue,
    max_n: int = SERVE_DEFAULTS.max_n,
    max_body_bytes: int = SERVE_DEFAULTS.max_body_bytes,
    body_timeout: float = SERVE_DEFAULTS.body_timeout,
    request_timeout: float = SERVE_DEFAULTS.request_timeout,
    shutdown_grace: float = SERVE_DEFAULTS.shutdown_grace,
    class_names: tuple[str, ...] = (),
    static_window: float | None = None,
) -> ImageServer:
    """The app over a started engine (the caller runs it, e.g. with uvicorn)."""
    options = ServerOptions(max_n, max_body_bytes, body_timeout, request_timeout, shutdown_grace, class_names)
    for name in ("max_n", "max_body_bytes"):
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(options, name)}")
    for name in ("body_timeout", "request_timeout", "shutdown_grace"):
        if not getattr(options, name) > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {getattr(options, name)}")
    engine = GenerationEngine(pipe, max_batch_rows=max_batch_rows, max_queue=max_queue, static_window=static_window)
    return ImageServer(engine, options)


def run(server: ImageServer, host: str = SERVE_DEFAULTS.host, port: int = SERVE_DEFAULTS.port) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get shutdown_grace seconds, then are cancelled."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines; put it behind your load balancer", host)
    config = uvicorn.Config(
        server.app,
        host=host,
        port=port,
        timeout_graceful_shutdown=int(server.options.shutdown_grace),
        timeout_keep_alive=5,
        log_level="info",
        access_log=False,
    )
    uvicorn.Server(config).run()
