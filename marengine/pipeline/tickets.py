"""What the engine hands its callers: tickets (result / stream / cancel), their events
(Preview, Done), the errors that end a request (Cancelled, QueueFull) and the engine's
counters (EngineStats, read by /metrics)."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..sampling.engine import SampleSettings
from .pipeline import PipelineOutput

log = logging.getLogger("marengine.engine")


class QueueFull(RuntimeError):
    """The waiting queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(RuntimeError):
    """The request was cancelled (by its caller, a disconnect or shutdown)."""


@dataclass
class Preview:
    """A partial image: the tokens known after `iteration` of `total` iterations."""

    iteration: int
    total: int
    array: np.ndarray  # uint8 [N, H, W, C]


@dataclass
class Done:
    """The request's last event: its output, or the error that ended it."""

    output: PipelineOutput | None
    error: BaseException | None = None


@dataclass(eq=False)
class Ticket:
    """A submitted request: result(), stream(), cancel()."""

    id: int
    labels: list[int]
    settings: SampleSettings
    rows: int
    preview_every: int
    deadline: float | None
    known_tokens: torch.Tensor | None = None
    known_mask: torch.Tensor | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancel_reason: str | None = None
    _listeners: list[Callable[[Any], None]] = field(default_factory=list)
    _events: collections.deque = field(default_factory=collections.deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Ask the engine to drop this request at the next iteration boundary (frees its rows)."""
        self.cancel_reason = self.cancel_reason or reason

    def result(self, timeout: float | None = None) -> PipelineOutput:
        """The output; raises the error that ended the request (Cancelled, TimeoutError, ...)."""
        return self.future.result(timeout)

    def subscribe(self, fn: Callable[[Any], None]) -> None:
        """fn(event) for every Preview and the final Done, called from the worker thread
        (events sent before subscribing are replayed first)."""
        with self._lock:
            for ev in self._events:
                fn(ev)
            self._listeners.append(fn)

    def stream(self, timeout: float | None = None) -> Iterator[Preview | Done]:
        """Previews as they come, then Done (blocking; timeout per event)."""
        import queue

        q: queue.Queue = queue.Queue()
        self.subscribe(q.put)
        while True:
            ev = q.get(timeout=timeout)
            yield ev
            if isinstance(ev, Done):
                return

    def _emit(self, ev: Any) -> None:
        with self._lock:
            self._events.append(ev)
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(ev)
            except Exception:  # a listener's failure is its own: the engine goes on
                log.exception("a listener of request %d failed", self.id)


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)  # seconds


@dataclass
class EngineStats:
    """Counters for /metrics (read without locking: a snapshot may be a step old)."""

    queue_depth: int = 0
    active_requests: int = 0
    active_rows: int = 0
    max_batch_rows: int = 0
    iterations: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    busy_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests (last 10k)
    occupancy: list[float] = field(default_factory=list)  # active rows / max rows per iteration (last 10k)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # per bucket, +Inf
    latency_sum: float = 0.0
    iteration_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))

    def iterations_per_second(self, window: float = 10.0) -> float:
        """Iterations in the last `window` seconds, per second."""
        now = time.monotonic()
        return sum(1 for t in list(self.iteration_times) if now - t <= window) / window
