"""Timing helpers: warm-up, repeats, percentiles, interleaved round-robin comparison, a
per-stage stopwatch and peak memory.

On the CPU time is `time.perf_counter`; on a GPU it is CUDA events on the current stream
with a synchronize before the reading, so a measurement covers the device's work and not
only the launches.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

PERCENTILES = (50, 90, 99)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's)."""
    if not samples:
        return math.nan
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize(samples: list[float]) -> dict[str, float]:
    """n, mean, min, max and p50/p90/p99 of a list of seconds (p99 of a few repeats is close to the max)."""
    out: dict[str, float] = {"n": len(samples)}
    out["mean"] = sum(samples) / len(samples) if samples else math.nan
    out["min"] = min(samples) if samples else math.nan
    out["max"] = max(samples) if samples else math.nan
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(samples, q)
    return out


def latency_metrics(batch1_s: list[float], batch_s: list[float], batch: int) -> dict[str, Any]:
    """Batch-1 latency beside batch throughput: p50/p99 (and mean) seconds per image over
    single-image generations `batch1_s`, and images/s of generations of `batch` images
    (`batch_s`, seconds per batch, at their median)."""
    one, many = summarize(batch1_s), summarize(batch_s)
    return {
        "s_per_image_b1_p50": one["p50"],
        "s_per_image_b1_p99": one["p99"],
        "s_per_image_b1_mean": one["mean"],
        "b1_runs": len(batch1_s),
        "images_per_s_batch": batch / many["p50"] if batch_s else math.nan,
        "s_per_image_batch_p50": many["p50"] / batch if batch_s else math.nan,
        "samples_b1_s": list(batch1_s),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Seconds taken by one call: perf_counter on the CPU, CUDA events (+ synchronize) on a GPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


def interleaved(
    variants: dict[str, Callable[[], Any]],
    device: torch.device | str,
    *,
    warmup: int = 1,
    repeats: int = 5,
    on_round: Callable[[int], None] | None = None,
    block: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, measured round-robin: each round runs every variant
    once, the order rotated from round to round, so that a change in machine load (or clock)
    hits all variants alike and their ratios are side by side. `warmup` untimed rounds first.

    block > 1: each round runs a block of `block` timed calls per variant, each block after
    `warmup` untimed calls (instead of warm-up rounds first), ceil(repeats / block) rounds: so
    that one runtime's idle spinning threads do not land in another's timing."""
    timer = Timer(device)
    names = list(variants)
    for _ in range(warmup if block == 1 else 0):
        for name in names:
            timer(variants[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(-(-repeats // block)):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            for _ in range(warmup if block > 1 else 0):
                timer(variants[name])
            for _ in range(block):
                seconds, _ = timer(variants[name])
                times[name].append(seconds)
        if on_round is not None:
            on_round(r)
    return times


class StageClock:
    """Accumulates the time spent in named stages of one run (backbone, head, decode, ...).

    `wrap(stage, fn)` returns fn timed on every call. On a GPU each call is bracketed by CUDA
    events and the elapsed times are read at `totals()` (after one synchronize), so the
    stages cost no extra host syncs; on the CPU perf_counter brackets each call."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._events: list[tuple[str, Any, Any]] = []

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.calls[stage] = self.calls.get(stage, 0) + 1
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self._events.append((stage, start, end))
                return out
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            return out

        return timed

    def totals(self) -> dict[str, float]:
        """Seconds per stage (synchronizes the GPU first)."""
        if self.cuda and self._events:
            torch.cuda.synchronize(self.device)
            for stage, start, end in self._events:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + start.elapsed_time(end) / 1e3
            self._events.clear()
        return dict(self.seconds)


# ---------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim), so that the resident set at
    the start of a measurement is what the process really holds."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block of work, beyond what was held when it began.

    GPU: `torch.cuda.max_memory_allocated` after a reset of the peak statistics, minus the
    memory allocated at the start (tensors of the caching allocator; the cache itself and
    the CUDA context are not counted).
    CPU: the process's peak resident set (VmHWM, reset at the start through
    /proc/self/clear_refs where Linux allows it) minus its resident set at the start, after
    freed heap memory was handed back (malloc_trim): the host memory the block touched on
    top of what the process held (weights, code, caches). Where the peak cannot be
    reset, the growth of getrusage's ru_maxrss, a lower bound (0 when an earlier block
    peaked higher). `method` names which measure was used."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated - allocated at start"
        elif _trim_heap() is None and _reset_peak_rss() and _status_kib("VmRSS") is not None:
            self._start = _status_kib("VmRSS") * 1024
            self.method = "VmHWM (reset) - VmRSS at start"
        else:
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth (lower bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(0, peak - self._start)
