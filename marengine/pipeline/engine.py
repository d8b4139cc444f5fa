"""GenerationEngine: requests in, images out, with iteration-level continuous batching.

    engine = pipe.engine(max_batch_rows=64, max_queue=256)     # starts one worker thread
    ticket = engine.submit([3, 1], seed=7, num_iter=8)          # -> Ticket, at once
    out = ticket.result(timeout=60)                             # PipelineOutput
    for event in engine.submit([5], preview_every=2).stream():  # Preview ..., then Done
        ...
    engine.shutdown()

One worker thread does all torch work: at every iteration boundary it drops cancelled
and timed-out requests, admits waiting ones while their rows fit in max_batch_rows, and
runs one batched iteration (batching.batched_step) over all active requests. A finished
request is decoded and leaves; its image equals pipe(labels, seed=...) for the same
request alone (one sample_tokens call: n <= settings.batch_size).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..checks import check_finite_result, check_labels
from ..config import SERVE_DEFAULTS
from ..models.backbone_cache import CachePolicy
from ..models.tokenizers import to_uint8
from ..ops.precision import resolve_precision
from ..sampling.engine import SampleSettings
from .batching import LoopState, batched_step, start_loop
from .pipeline import MARPipeline, PipelineOutput
from .tickets import LATENCY_BUCKETS, Cancelled, Done, EngineStats, Preview, QueueFull, Ticket

# the speed knobs continuous batching cannot apply, with the value that turns each off
UNBATCHABLE = {"cache": "off", "token_steps": "off", "precision": "fp32"}


def refuse_unbatchable(s: SampleSettings, device: torch.device) -> None:
    """A ValueError naming every knob of `s` that continuous batching cannot apply: it runs the
    full backbone at every iteration (no reuse), one step count per head call, in fp32."""
    speed = s.speed()
    on = {
        "cache": CachePolicy.parse(speed.cache) is not None,
        "token_steps": speed.token_steps is not None,
        "precision": resolve_precision(speed.precision, device) != torch.float32,
    }
    names = [name for name, used in on.items() if used]
    if names:
        fixes = ", ".join(f"{name}={UNBATCHABLE[name]!r}" for name in names)
        raise ValueError(
            f"continuous batching runs the full backbone at every iteration, one head step count per call, in "
            f"fp32: {', '.join(names)} of preset {s.preset!r} do(es) not apply; choose preset 'official' or pass "
            f"{fixes}"
        )


__all__ = ["LATENCY_BUCKETS", "Cancelled", "Done", "EngineStats", "GenerationEngine", "Preview", "QueueFull", "Ticket"]


class GenerationEngine:
    """Continuous batching over a MARPipeline (see the module docstring)."""

    def __init__(
        self,
        pipeline: MARPipeline,
        *,
        max_batch_rows: int = SERVE_DEFAULTS.max_batch_rows,
        max_queue: int = SERVE_DEFAULTS.max_queue,
        static_window: float | None = None,
        start: bool = True,
    ) -> None:
        if not isinstance(max_batch_rows, int) or max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be a positive int, got {max_batch_rows!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        if static_window is not None and not (isinstance(static_window, (int, float)) and static_window >= 0):
            raise ValueError(f"static_window must be a number of seconds >= 0 (or None), got {static_window!r}")
        self.pipe = pipeline
        # None: continuous batching. A number: the static-batching baseline (benchmarks): a batch
        # starts when full or when its oldest request has waited this long, and runs to its end
        self.static_window = static_window
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue
        self.stats = EngineStats(max_batch_rows=max_batch_rows)
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._active: list[tuple[Ticket, LoopState]] = []
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ---------------------------------------------------------------- the caller's side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="marengine-engine", daemon=True)
            self._thread.start()

    def settings_for(self, settings: SampleSettings | None = None, **overrides: Any) -> SampleSettings:
        """The pipeline's settings (or `settings`) with overrides, checked."""
        s = settings or self.pipe.settings
        if not isinstance(s, SampleSettings):
            raise TypeError(f"settings must be a SampleSettings, got {type(s).__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SampleSettings)}
        if unknown:
            raise ValueError(f"unknown sampling option(s) {sorted(unknown)}")
        return replace(s, **overrides) if overrides else s

    def submit(
        self,
        labels: Any,
        settings: SampleSettings | None = None,
        *,
        known_tokens: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        preview_every: int = 0,
        timeout: float | None = None,
        **overrides: Any,
    ) -> Ticket:
        """Queue one request (all checks now: a bad request raises here, not in the worker).
        known_tokens [N, L, C] / known_mask [N, L]: editing (every image the same number of
        known tokens). preview_every: a Preview every k-th iteration (0: none); timeout:
        seconds from now after which the request is dropped with TimeoutError."""
        s = self.settings_for(settings, **overrides)
        labels = check_labels(labels, self.pipe.model.num_classes)
        if not labels:
            raise ValueError("a request needs at least one label")
        if len(labels) > s.batch_size:
            raise ValueError(f"{len(labels)} images exceed the batch size {s.batch_size}: split the request")
        if not isinstance(preview_every, int) or isinstance(preview_every, bool) or preview_every < 0:
            raise ValueError(f"preview_every must be an int >= 0, got {preview_every!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        rows = len(labels) * (2 if s.cfg != 1.0 else 1)
        if rows > self.max_batch_rows:
            raise ValueError(
                f"the request needs {rows} backbone rows (n x 2 with CFG) but the engine takes at most "
                f"{self.max_batch_rows}; ask for fewer images"
            )
        # a dry start checks every knob the loop will see (cheap: no backbone or head call)
        self._state(labels, s, torch.Generator(device=self.pipe.device), known_tokens, known_mask)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        t = Ticket(next(self._ids), labels, s, rows, preview_every, deadline, known_tokens, known_mask)
        with self._cv:
            if self._stopping:
                raise Cancelled("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"the queue is full ({self.max_queue} waiting)", self.retry_after())
            self._waiting.append(t)
            self.stats.queue_depth = len(self._waiting)
            self._cv.notify()
        return t

    def retry_after(self) -> float:
        """A guess at when a queue slot frees: the mean latency of recent requests (>= 1 s)."""
        recent = self.stats.latencies[-50:]
        return max(1.0, float(np.mean(recent)) if recent else 1.0)

    def shutdown(self, *, cancel: bool = False, timeout: float | None = 30.0) -> None:
        """Stop taking requests; finish the active and waiting ones (cancel=True: drop them
        with Cancelled), then stop the worker."""
        with self._cv:
            self._stopping = True
            if cancel:
                for t in list(self._waiting) + [t for t, _ in self._active]:
                    t.cancel("the engine shut down")
            self._cv.notify()
            never_started = self._thread is None
            orphans = list(self._waiting) if never_started else []
            if never_started:
                self._waiting.clear()
        for t in orphans:  # no worker will ever take them: end them now
            self._end(t, None, Cancelled("the engine shut down before it started"))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- the worker
    def _loop_args(self, s: SampleSettings, gen: torch.Generator) -> tuple:
        model = self.pipe.model
        num_iter = min(s.num_iter, model.seq_len)  # as generate_latents (which also warns)
        clip = s.clip_denoised if s.clip_denoised is not None else bool(getattr(self.pipe.tokenizer, "bounded", False))
        opts = s.options(model)
        refuse_unbatchable(s, self.pipe.device)
        return (num_iter, s.cfg, s.cfg_schedule, s.temperature, gen), dict(
            backend=opts["backend"],
            clip_denoised=clip,
            sampler=opts["sampler"],
            steps=opts["steps"],
            order=opts["order"],
        )

    def _state(
        self, labels: list[int], s: SampleSettings, gen: torch.Generator, known_tokens: Any, known_mask: Any
    ) -> LoopState:
        args, kw = self._loop_args(s, gen)
        if known_mask is not None:
            kw.update(known_tokens=known_tokens, known_mask=known_mask)
        return start_loop(self.pipe.model, labels, *args, **kw)

    def _start(self, t: Ticket) -> LoopState:
        gen = torch.Generator(device=self.pipe.device).manual_seed(t.settings.seed)
        return self._state(t.labels, t.settings, gen, t.known_tokens, t.known_mask)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._active and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._waiting and not self._active:
                    return
                self._drop_ended()
                hold = self._static_hold()
                if hold > 0:
                    self._cv.wait(hold)
                    continue
                self._admit()
            if self._active:
                try:
                    self._iterate()
                except Exception as e:  # a safety net: the worker never dies with requests in it
                    with self._cv:
                        ended, self._active = self._active, []
                    for t, _ in ended:
                        if not t.future.done():
                            self._end(t, None, e)

    def _drop_ended(self) -> None:
        now = time.monotonic()
        for t in list(self._waiting):
            if t.cancel_reason or (t.deadline is not None and now > t.deadline):
                self._waiting.remove(t)
                self._end(t, None, self._why(t))
        for t, s in list(self._active):
            if t.cancel_reason or (t.deadline is not None and now > t.deadline):
                self._active.remove((t, s))
                self._end(t, None, self._why(t))
        self.stats.queue_depth = len(self._waiting)

    def _why(self, t: Ticket) -> BaseException:
        if t.cancel_reason:
            return Cancelled(t.cancel_reason)
        return TimeoutError("the request ran past its timeout")

    def _static_hold(self) -> float:
        """Seconds the static baseline still waits before it starts a batch (0: go on)."""
        if self.static_window is None or self._active or not self._waiting or self._stopping:
            return 0.0
        rows = sum(t.rows for t in self._waiting)
        age = time.monotonic() - self._waiting[0].submitted
        return 0.0 if rows >= self.max_batch_rows else max(0.0, self.static_window - age)

    def _admit(self) -> None:
        if self.static_window is not None and self._active:
            return  # a static batch runs to its end before the next one starts
        used = sum(t.rows for t, _ in self._active)
        while self._waiting and used + self._waiting[0].rows <= self.max_batch_rows:
            t = self._waiting.popleft()
            try:
                state = self._start(t)
            except Exception as e:  # checked at submit; anything left fails this request only
                self._end(t, None, e)
                continue
            t.started = time.monotonic()
            self._active.append((t, state))
            used += t.rows
        self.stats.queue_depth = len(self._waiting)
        self.stats.active_requests = len(self._active)
        self.stats.active_rows = used

    def _iterate(self) -> None:
        running = [(t, s) for t, s in self._active if not s.done]
        began = time.perf_counter()
        try:
            batched_step([s for _, s in running])
        except Exception as e:  # a failing step ends the requests in it, never the engine
            with self._cv:
                for pair in running:
                    self._active.remove(pair)
                    self._end(pair[0], None, e)
            return
        self.stats.busy_seconds += time.perf_counter() - began
        self.stats.iterations += 1
        self.stats.iteration_times.append(time.monotonic())
        self._record(self.stats.occupancy, self.stats.active_rows / self.max_batch_rows)
        finished = []
        for t, s in self._active:
            if s.done:
                finished.append((t, s))
            elif t.preview_every and s.iterations_done % t.preview_every == 0:
                t._emit(Preview(s.iterations_done, s.total_iterations, self._decode(s)))
        with self._cv:
            for pair in finished:
                self._active.remove(pair)
            self.stats.active_requests = len(self._active)
            self.stats.active_rows = sum(t.rows for t, _ in self._active)
        for t, s in finished:
            try:  # as the plain loop: non-finite latents fail the request, naming the setting
                check_finite_result(bool(torch.isfinite(s.tokens).all()), "latents", s.cfg, s.temperature)
                out = PipelineOutput(self._decode(s), list(t.labels), s.latents())
            except Exception as e:
                self._end(t, None, e)
                continue
            self._end(t, out, None)

    def _decode(self, s: LoopState) -> np.ndarray:
        with torch.no_grad():
            return to_uint8(self.pipe.tokenizer.decode(s.latents())).cpu().numpy()

    def _end(self, t: Ticket, out: PipelineOutput | None, error: BaseException | None) -> None:
        if error is None:
            self.stats.completed += 1
            latency = time.monotonic() - t.submitted
            self._record(self.stats.latencies, latency)
            self.stats.latency_sum += latency
            self.stats.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
            t.future.set_result(out)
        else:
            if isinstance(error, (Cancelled, TimeoutError)):
                self.stats.cancelled += 1
            else:
                self.stats.failed += 1
            t.future.set_exception(error)
        t._emit(Done(out, error))

    @staticmethod
    def _record(values: list[float], v: float) -> None:
        values.append(v)
        if len(values) > 10_000:
            del values[:5_000]
