"""The continuous-batching engine (pipeline/batching.py, pipeline/engine.py): requests at
different iterations share backbone and head calls, and each comes back bit for bit equal to
the same request sampled alone through MARPipeline; cancel, timeout, a full queue and
shutdown end requests cleanly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from serving_models import one_thread, strict_digits_pipeline  # noqa: F401 (one_thread: an autouse fixture)

from marengine.ops.dispatch import native_available
from marengine.pipeline.engine import Cancelled, Done, Preview, QueueFull

SCHEDULES = ("linear", "constant")
BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="no _C"))]


@pytest.fixture(scope="module")
def pipe():
    return strict_digits_pipeline()


def alone(pipe, labels, seed, **kw):
    return pipe(labels, seed=seed, progress=False, return_latents=True, **kw)


def assert_same(out, ref):
    np.testing.assert_array_equal(out.array, ref.array)
    assert torch.equal(out.latents, ref.latents), (out.latents - ref.latents).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_equal_alone(pipe, backend):
    """Different classes, seeds, num_iter, cfg (none, linear, constant) and sizes, through an
    engine too small to hold them all: rows join and leave at iteration boundaries."""
    reqs = [
        (
            [i % 10],
            100 + i,
            dict(num_iter=3 + i % 5, cfg=(1.0, 2.0, 3.5)[i % 3], cfg_schedule=("linear", "constant")[i % 2]),
        )
        for i in range(14)
    ]
    reqs += [([1, 2, 3], 7, dict(num_iter=4)), ([9, 9], 8, dict(num_iter=5, temperature=0.7, cfg=1.0))]
    engine = pipe.engine(max_batch_rows=12)
    try:
        tickets = [engine.submit(labels, seed=seed, backend=backend, **kw) for labels, seed, kw in reqs]
        outs = [t.result(timeout=120) for t in tickets]
    finally:
        engine.shutdown()
    total = sum(min(kw["num_iter"], pipe.model.seq_len) for _, _, kw in reqs)
    assert engine.stats.iterations < total / 2  # requests shared iterations
    for (labels, seed, kw), out in zip(reqs, outs):
        assert_same(out, alone(pipe, labels, seed, backend=backend, **kw))


def test_sampler_and_step_knobs_equal_alone(pipe):
    reqs = [
        ([4], 1, dict(sampler="ddim", steps=5)),
        ([5], 2, dict(sampler="ddim:0.5", steps="8-3")),
        ([6], 3, dict(sampler="dpm++2m", steps=4, temperature=0.5)),
        ([7], 4, dict(clip_denoised=False)),
    ]
    engine = pipe.engine(max_batch_rows=64)
    try:
        outs = [t.result(60) for t in [engine.submit(lab, seed=s, **kw) for lab, s, kw in reqs]]
    finally:
        engine.shutdown()
    for (labels, seed, kw), out in zip(reqs, outs):
        assert_same(out, alone(pipe, labels, seed, **kw))


def test_inpainting_equals_alone(pipe):
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True
    tokens, known = pipe.edit_inputs(img, mask)
    engine = pipe.engine()
    try:
        edit = engine.submit([3, 8], seed=5, known_tokens=tokens, known_mask=known)
        plain = engine.submit([1], seed=6)  # a request from scratch in the same batch
        out, out_plain = edit.result(60), plain.result(60)
    finally:
        engine.shutdown()
    ref = pipe.inpaint(img, mask, [3, 8], seed=5, return_latents=True, progress=False)
    assert_same(out, ref)
    np.testing.assert_array_equal(out.array[:, :, :4], img[:, :, :4])  # the known half is kept
    assert_same(out_plain, alone(pipe, [1], 6))


def test_stream_sends_previews_then_done(pipe):
    engine = pipe.engine()
    try:
        events = list(engine.submit([2], seed=3, num_iter=6, preview_every=2).stream(timeout=60))
    finally:
        engine.shutdown()
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.iteration for p in previews] == [2, 4] and all(p.total == 6 for p in previews)
    assert isinstance(events[-1], Done) and events[-1].error is None
    assert_same(events[-1].output, alone(pipe, [2], 3, num_iter=6))


def test_cancel_frees_rows_and_engine_keeps_serving(pipe):
    engine = pipe.engine(max_batch_rows=4)
    gate = threading.Event()
    try:
        big = engine.submit([1, 2], seed=0, num_iter=16)  # 4 rows: the engine is full
        big.subscribe(lambda ev: gate.set())
        waiting = engine.submit([3], seed=1, num_iter=2)
        big.cancel("client went away")
        with pytest.raises(Cancelled, match="client went away"):
            big.result(60)
        assert_same(waiting.result(60), alone(pipe, [3], 1, num_iter=2))
        assert gate.is_set()  # the cancelled request's stream got its Done
        assert engine.stats.cancelled == 1 and engine.stats.completed == 1
    finally:
        engine.shutdown()


def test_timeout_and_full_queue(pipe):
    engine = pipe.engine(max_batch_rows=2, max_queue=1, start=False)  # nothing runs until start()
    try:
        late = engine.submit([1], seed=0, timeout=0.01)
        with pytest.raises(QueueFull) as e:
            engine.submit([2], seed=0)
        assert e.value.retry_after >= 1
        threading.Event().wait(0.05)
        engine.start()
        with pytest.raises(TimeoutError):
            late.result(60)
        assert engine.submit([2], seed=0).result(60).array.shape == (1, 8, 8, 1)
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(labels=[10]), "class indices in"),
        (dict(labels=[1] * 17), "exceed the batch size"),
        (dict(labels=[1] * 9, max_rows=16), "backbone rows"),
        (dict(labels=[1], num_iter=0), "num_iter"),
        (dict(labels=[1], cfg=float("nan")), "cfg"),
        (dict(labels=[1], preset="fast"), "cache"),
        (dict(labels=[1], precision="bf16"), r"precision='fp32'"),
        (dict(labels=[1], token_steps="hf:boost=8"), r"token_steps='off'"),
        (dict(labels=[1], bogus=1), "unknown sampling option"),
        (dict(labels=[1], preview_every=-1), "preview_every"),
        (dict(labels=[1], timeout=0), "timeout"),
    ],
)
def test_bad_requests_refused_at_submit(pipe, kw, match):
    kw = dict(kw)
    engine = pipe.engine(max_batch_rows=kw.pop("max_rows", 64))
    try:
        with pytest.raises((ValueError, TypeError), match=match):
            engine.submit(kw.pop("labels"), **kw)
        assert engine.submit([1], seed=0, num_iter=2).result(60) is not None  # still serving
    finally:
        engine.shutdown()


def test_static_batching_baseline_equals_alone(pipe):
    engine = pipe.engine(max_batch_rows=4, static_window=0.05)
    try:
        reqs = [([i], i, dict(num_iter=2 + i)) for i in range(5)]
        outs = [t.result(60) for t in [engine.submit(lab, seed=s, **kw) for lab, s, kw in reqs]]
    finally:
        engine.shutdown()
    for (labels, seed, kw), out in zip(reqs, outs):
        assert_same(out, alone(pipe, labels, seed, **kw))
    with pytest.raises(ValueError, match="static_window"):
        pipe.engine(static_window=-1, start=False)


def test_shutdown_finishes_or_cancels(pipe):
    engine = pipe.engine(max_batch_rows=2)
    a, b = engine.submit([1], seed=0, num_iter=3), engine.submit([2], seed=0, num_iter=3)
    engine.shutdown()  # finishes both
    assert a.result(1) is not None and b.result(1) is not None and not engine.running
    with pytest.raises(Cancelled):
        engine.submit([1])
    engine = pipe.engine(start=False)
    never = engine.submit([4], seed=0)
    engine.shutdown()
    with pytest.raises(Cancelled, match="before it started"):
        never.result(1)
    engine = pipe.engine(max_batch_rows=2, start=False)
    c = engine.submit([3], seed=0)
    engine.start()
    engine.shutdown(cancel=True)
    assert not engine.running
    assert c.future.done()  # finished before the cancel landed, or cancelled: never left hanging
