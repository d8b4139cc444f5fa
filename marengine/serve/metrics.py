"""Prometheus text exposition (format 0.0.4) of the engine's and the server's counters."""

from __future__ import annotations

import collections
import threading

from ..pipeline.engine import LATENCY_BUCKETS, EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpCounters:
    """Responses by endpoint and status (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.disconnects = 0

    def count(self, path: str, status: int) -> None:
        with self._lock:
            self.responses[(path, status)] += 1

    def disconnected(self) -> None:
        with self._lock:
            self.disconnects += 1


def render(stats: EngineStats, http: HttpCounters) -> str:
    """The metrics page."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP marengine_{name} {help_}")
        out.append(f"# TYPE marengine_{name} {kind}")
        out.extend(f"marengine_{name}{labels} {value:g}" for labels, value in samples)

    recent = stats.occupancy[-100:]
    metric("queue_depth", "gauge", "Requests waiting for rows.", [("", stats.queue_depth)])
    metric("active_requests", "gauge", "Requests in the running batch.", [("", stats.active_requests)])
    metric("active_rows", "gauge", "Backbone rows in the running batch.", [("", stats.active_rows)])
    metric("max_batch_rows", "gauge", "Backbone rows an iteration takes at most.", [("", stats.max_batch_rows)])
    metric(
        "batch_occupancy",
        "gauge",
        "Mean fraction of max_batch_rows used over the last 100 iterations.",
        [("", sum(recent) / len(recent) if recent else 0.0)],
    )
    metric("iterations_total", "counter", "Batched iterations run.", [("", stats.iterations)])
    metric(
        "iterations_per_second",
        "gauge",
        "Iterations per second over the last 10 s.",
        [("", stats.iterations_per_second())],
    )
    metric("busy_seconds_total", "counter", "Seconds spent in batched iterations.", [("", stats.busy_seconds)])
    metric(
        "requests_total",
        "counter",
        "Requests by outcome.",
        [
            ('{outcome="completed"}', stats.completed),
            ('{outcome="failed"}', stats.failed),
            ('{outcome="cancelled"}', stats.cancelled),
            ('{outcome="rejected"}', stats.rejected),
        ],
    )
    cumulative, samples = 0, []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts):
        cumulative += count
        samples.append((f'{{le="{"+Inf" if bound == float("inf") else f"{bound:g}"}"}}', cumulative))
    out.append("# HELP marengine_request_latency_seconds Submit-to-result time of completed requests.")
    out.append("# TYPE marengine_request_latency_seconds histogram")
    out.extend(f"marengine_request_latency_seconds_bucket{lab} {v:g}" for lab, v in samples)
    out.append(f"marengine_request_latency_seconds_sum {stats.latency_sum:g}")
    out.append(f"marengine_request_latency_seconds_count {cumulative:g}")
    with http._lock:
        responses = sorted(http.responses.items())
        disconnects = http.disconnects
    metric(
        "http_responses_total",
        "counter",
        "HTTP responses by path and status.",
        [(f'{{path="{p}",status="{s}"}}', v) for (p, s), v in responses],
    )
    metric("client_disconnects_total", "counter", "Clients that left before their result.", [("", disconnects)])
    return "\n".join(out) + "\n"
