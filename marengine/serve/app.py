"""The ASGI app (Starlette): a thin layer over GenerationEngine.

    POST /v1/images/generations   OpenAI images shape; "stream": true sends server-sent events
                                  (`preview` every k-th iteration, then `done` or `error`)
    POST /v1/images/edits         inpainting: the same with "image" and "mask" (protocol.py)
    GET  /health                  200 while serving, 503 while shutting down
    GET  /metrics                 Prometheus text

The engine's worker thread does all torch work; handlers wait on its futures, so the event
loop stays free. A client that disconnects cancels its request (its rows are freed at the
next iteration); bad requests get a 4xx with one line; a full queue answers 429 with
Retry-After; a request past its timeout answers 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..pipeline.engine import Cancelled, Done, GenerationEngine, Preview, QueueFull, Ticket
from . import metrics
from .protocol import BadRequest, ImageRequest, Limits, b64_images, parse_json, parse_request, png_bytes

log = logging.getLogger("marengine.serve")


@dataclass
class ServerOptions:
    max_n: int
    max_body_bytes: int
    body_timeout: float
    request_timeout: float
    shutdown_grace: float
    class_names: tuple[str, ...] = ()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


class ImageServer:
    """Routes and their state; `app` is the ASGI application."""

    def __init__(self, engine: GenerationEngine, options: ServerOptions) -> None:
        self.engine = engine
        self.options = options
        pipe = engine.pipe
        self.limits = Limits(
            max_n=options.max_n,
            max_rows=engine.max_batch_rows,
            request_timeout=options.request_timeout,
            image_size=pipe.image_size,
            image_channels=pipe.image_channels,
            num_classes=pipe.model.num_classes,
            seq_len=pipe.model.seq_len,
            class_names=list(options.class_names),
        )
        self.http = metrics.HttpCounters()
        self.stopping = False
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self.generations, methods=["POST"]),
                Route("/v1/images/edits", self.edits, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.stopping = True  # in-flight requests had their grace (uvicorn's graceful shutdown)
        await asyncio.to_thread(self.engine.shutdown, cancel=True, timeout=self.options.shutdown_grace)
        s = self.engine.stats
        log.info("engine stopped: %d completed, %d cancelled, %d failed", s.completed, s.cancelled, s.failed)

    # ---------------------------------------------------------------- endpoints
    async def health(self, request: Request) -> Response:
        s = self.engine.stats
        ok = self.engine.running and not self.stopping
        body = {
            "status": "ok" if ok else "stopping",
            "model": type(self.engine.pipe.model).__name__,
            "image_size": self.limits.image_size,
            "num_classes": self.limits.num_classes,
            "queue_depth": s.queue_depth,
            "active_requests": s.active_requests,
        }
        return self._count(request, JSONResponse(body, 200 if ok else 503))

    async def metrics(self, request: Request) -> Response:
        text = metrics.render(self.engine.stats, self.http)
        return self._count(request, PlainTextResponse(text, media_type=metrics.CONTENT_TYPE))

    async def generations(self, request: Request) -> Response:
        return self._count(request, await self._images(request, edit=False))

    async def edits(self, request: Request) -> Response:
        return self._count(request, await self._images(request, edit=True))

    # ---------------------------------------------------------------- internals
    def _count(self, request: Request, response: Response) -> Response:
        self.http.count(request.url.path, response.status_code)
        return response

    async def _images(self, request: Request, edit: bool) -> Response:
        try:
            body = parse_json(await self._body(request))
            req = parse_request(body, self.limits, edit=edit, default_seed=self.engine.pipe.settings.seed)
            ticket = await self._submit(req)
        except BadRequest as e:
            return error(e.status, str(e))
        except QueueFull as e:
            return error(429, f"{e}; retry later", {"Retry-After": str(math.ceil(e.retry_after))})
        except Cancelled as e:
            return error(503, f"{e}; retry on another server")
        except (ValueError, TypeError) as e:  # the engine's checks of the knobs against the model
            return error(400, " ".join(str(e).split()))
        if req.stream:
            return StreamingResponse(self._events(ticket, req), media_type="text/event-stream")
        return await self._result(request, ticket, req)

    async def _body(self, request: Request) -> bytes:
        """The body, at most max_body_bytes (413), within body_timeout seconds (408)."""
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise BadRequest(f"Content-Length must be a number of bytes, got {length[:20]!r}")
        if length is not None and int(length) > limit:
            raise BadRequest(f"the body is larger than {limit} bytes (Content-Length {length[:20]})", 413)
        chunks: list[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"the body is larger than {limit} bytes", 413)
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), self.options.body_timeout)
        except asyncio.TimeoutError:
            raise BadRequest(f"the body did not arrive within {self.options.body_timeout:g} s", 408) from None
        return b"".join(chunks)

    async def _submit(self, req: ImageRequest) -> Ticket:
        edit: dict[str, Any] = {}
        if req.image is not None:
            images = [req.image] * len(req.labels)
            tokens, known = await asyncio.to_thread(self.engine.pipe.edit_inputs, images, req.mask)
            edit = {"known_tokens": tokens, "known_mask": known}
        return self.engine.submit(
            req.labels, seed=req.seed, preview_every=req.preview_every, timeout=req.timeout, **req.knobs, **edit
        )

    async def _result(self, request: Request, ticket: Ticket, req: ImageRequest) -> Response:
        result = asyncio.wrap_future(ticket.future)
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even after a disconnect
        gone = asyncio.ensure_future(self._disconnected(request))
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not result.done():
            ticket.cancel("the client disconnected")
            self.http.disconnected()
            return error(499, "the client disconnected")
        gone.cancel()
        try:
            out = result.result()
        except TimeoutError:
            return error(504, f"the request ran past its timeout ({req.timeout:g} s)")
        except Cancelled as e:
            return error(503, str(e))
        except Exception as e:  # a failing step ended this request; the server goes on
            return error(500, f"generation failed: {' '.join(str(e).split())}")
        if req.response_format == "png":
            return Response(png_bytes(out.array[0]), media_type="image/png", headers={"X-Seed": str(req.seed)})
        data = await asyncio.to_thread(b64_images, out.array)
        return JSONResponse({"created": int(time.time()), "seed": req.seed, "data": data})

    @staticmethod
    async def _disconnected(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def _events(self, ticket: Ticket, req: ImageRequest) -> AsyncIterator[str]:
        """Server-sent events: `preview` {iteration, total, data}, then `done` or `error`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(ev: Any) -> None:  # from the engine's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        ticket.subscribe(deliver)
        try:
            while True:
                ev = await queue.get()
                if isinstance(ev, Preview):
                    data = await asyncio.to_thread(b64_images, ev.array)
                    yield _sse("preview", {"iteration": ev.iteration, "total": ev.total, "data": data})
                elif isinstance(ev, Done):
                    if ev.error is not None:
                        yield _sse("error", {"error": {"message": str(ev.error), "type": type(ev.error).__name__}})
                    else:
                        data = await asyncio.to_thread(b64_images, ev.output.array)
                        yield _sse("done", {"created": int(time.time()), "seed": req.seed, "data": data})
                    return
        finally:
            if not ticket.future.done():
                ticket.cancel("the client disconnected")
                self.http.disconnected()


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"
