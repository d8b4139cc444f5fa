"""`marengine serve` (marengine/serve): uvicorn on 127.0.0.1 and a free port, driven by httpx.
Concurrent requests come back equal to the same requests sampled alone; bad and hostile
requests get 4xx and the server keeps serving; a full queue answers 429; a client that
leaves frees its rows; shutdown ends cleanly. Every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from serving_models import one_thread, strict_digits_pipeline  # noqa: F401 (one_thread: an autouse fixture)

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from marengine.serve.server import build_server  # noqa: E402

GEN = "/v1/images/generations"


@pytest.fixture(scope="module")
def pipe():
    return strict_digits_pipeline(num_iter=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(pipe, **kw):
    """uvicorn in a thread on 127.0.0.1; yields (base url, ImageServer, uvicorn.Server)."""
    server = build_server(pipe, **kw)
    port = free_port()
    config = uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10)
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=userver.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not userver.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server, userver
    finally:
        userver.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def served(pipe):
    with live_server(pipe, max_batch_rows=24, max_queue=100, max_n=4, max_body_bytes=20_000) as s:
        yield s


def images_of(body: dict) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))) for d in body["data"]])


def alone(pipe, label: int, n: int, seed: int, **kw) -> np.ndarray:
    return pipe([label] * n, seed=seed, progress=False, **kw).array[..., 0]


def test_fifty_concurrent_requests_equal_alone(pipe, served):
    url, server, _ = served
    reqs = [
        dict(prompt=str(i % 10), seed=1000 + i, n=1 + i % 3, num_iter=2 + i % 4, cfg=(1.0, 2.0, 3.0)[i % 3])
        for i in range(50)
    ]

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*[client.post(GEN, json=r) for r in reqs])

    before = server.engine.stats.iterations
    responses = asyncio.run(asyncio.wait_for(run(), 120))
    assert [r.status_code for r in responses] == [200] * 50
    assert server.engine.stats.iterations - before < sum(r["num_iter"] for r in reqs) / 3  # batched
    for r, resp in zip(reqs, responses):
        body = resp.json()
        assert body["seed"] == r["seed"] and len(body["data"]) == r["n"]
        kw = dict(num_iter=r["num_iter"], cfg=r["cfg"])
        np.testing.assert_array_equal(images_of(body), alone(pipe, int(r["prompt"]), r["n"], r["seed"], **kw))


def test_png_stream_edit_health_metrics(pipe, served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=60) as c:
        png = c.post(GEN, json=dict(prompt=7, seed=3, response_format="png"))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), alone(pipe, 7, 1, 3)[0])

        with c.stream("POST", GEN, json=dict(prompt="2", seed=4, stream=True, preview_every=1, num_iter=3)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            chunks = [e for e in r.read().decode().split("\n\n") if e]
        events = [(e.split("\n")[0], json.loads(e.split("data: ", 1)[1])) for e in chunks]
        assert [name for name, _ in events] == ["event: preview", "event: preview", "event: done"]
        assert [p["iteration"] for _, p in events[:2]] == [1, 2]
        np.testing.assert_array_equal(images_of(events[-1][1]), alone(pipe, 2, 1, 4, num_iter=3))

        img = np.random.default_rng(0).integers(0, 256, (8, 8, 1)).astype(np.uint8)
        mask = np.full((8, 8, 4), 255, np.uint8)
        mask[:, 4:, 3] = 0  # transparent: fill the right half
        edit = c.post(
            "/v1/images/edits", json=dict(prompt=5, n=2, seed=6, image=b64png(img[..., 0]), mask=b64png(mask))
        )
        assert edit.status_code == 200, edit.text
        fill = np.zeros((8, 8), bool)
        fill[:, 4:] = True
        ref = pipe.inpaint(np.stack([img, img]), fill, [5, 5], seed=6, progress=False).array[..., 0]
        np.testing.assert_array_equal(images_of(edit.json()), ref)

        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        text = c.get("/metrics").text
        for name in ("queue_depth", "batch_occupancy", "iterations_per_second", "request_latency_seconds_bucket"):
            assert f"marengine_{name}" in text
        assert 'marengine_request_latency_seconds_bucket{le="+Inf"}' in text


def b64png(a: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    (dict(prompt=1, n=10_000), 400, "n must be in"),
    (dict(prompt=1, n=-1), 400, "n must be in"),
    (dict(prompt=1, cfg=float("nan")), 400, "not a JSON number"),
    (dict(prompt=1, temperature="hot"), 400, "temperature"),
    (dict(prompt=1, num_iter=0), 400, "num_iter"),
    (dict(prompt=1, num_iter=10**12), 400, "num_iter must be in [1, 16]"),
    (dict(prompt=1, steps=[5] * 100), 400, "entries"),
    (dict(prompt="eleven"), 400, "unknown class"),
    (dict(prompt=10), 400, "unknown class"),
    (dict(prompt=True), 400, "boolean"),
    (dict(n=1), 400, "'prompt' is required"),
    (dict(prompt=1, response_format="url"), 400, "response_format"),
    (dict(prompt=1, n=2, response_format="png"), 400, "one image"),
    (dict(prompt=1, size="1024x1024"), 400, "size must be"),
    (dict(prompt=1, preset="fast"), 400, "cache"),
    (dict(prompt=1, backdoor=1), 400, "unknown field"),
    (dict(prompt=1, timeout=1e9), 400, "timeout"),
    (dict(prompt=1, image="x"), 400, "unknown field"),
]


@pytest.mark.parametrize("body, status, match", BAD)
def test_bad_requests_get_4xx_and_server_keeps_serving(served, body, status, match):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=30) as c:
        raw = json.dumps(body, allow_nan=True)
        r = c.post(GEN, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status and match in r.json()["error"]["message"], r.text
        assert c.post(GEN, json=dict(prompt=1, seed=0, num_iter=2)).status_code == 200


def test_fast_preset_without_backbone_reuse_equals_alone(pipe, served):
    url, _, _ = served
    body = dict(prompt=6, seed=2, preset="fast", cache="off", precision="fp32")
    r = httpx.post(url + GEN, json=body, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        images_of(r.json()), alone(pipe, 6, 1, 2, preset="fast", cache="off", precision="fp32")
    )


def test_hostile_bodies(served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post(GEN, content=b"{" * 10).status_code == 400  # not JSON
        assert c.post(GEN, content=b"[1, 2]").status_code == 400  # not an object
        deep = c.post(GEN, content=b"[" * 9000 + b"]" * 9000)  # under the size limit, too deep to parse
        assert deep.status_code == 400 and "nests too deeply" in deep.json()["error"]["message"]
        big = c.post(GEN, content=b" " * 50_000)  # over max_body_bytes
        assert big.status_code == 413 and "larger than" in big.json()["error"]["message"]

        def chunks():
            yield b'{"prompt": 1, "pad": "'
            yield b"x" * 30_000
            yield b'"}'

        assert c.post(GEN, content=chunks()).status_code == 413  # chunked, no Content-Length
        bad_edit = c.post("/v1/images/edits", json=dict(prompt=1, image="bm90IGEgcG5n", mask="bm90"))
        assert bad_edit.status_code == 400 and "base64 image" in bad_edit.json()["error"]["message"]
        assert c.get(GEN).status_code == 405
        assert c.post(GEN, json=dict(prompt=1, seed=0, num_iter=2)).status_code == 200


def test_slow_client_gets_408(pipe):
    with live_server(pipe, body_timeout=0.3) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            reply = s.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408")
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/health").status_code == 200


def test_full_queue_answers_429_with_retry_after(pipe):
    with live_server(pipe, max_batch_rows=2, max_queue=1) as (url, server, _):

        async def run():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = dict(prompt=1, seed=0, num_iter=16, cfg=2.0, steps=300)  # 2 rows: one runs, one waits
                return await asyncio.gather(*[client.post(GEN, json=body) for _ in range(8)])

        codes = [r.status_code for r in asyncio.run(asyncio.wait_for(run(), 60))]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        full = [r for r in asyncio.run(asyncio.wait_for(run(), 60)) if r.status_code == 429]
        assert full and int(full[0].headers["retry-after"]) >= 1
        assert server.engine.stats.rejected >= 1


def test_disconnect_frees_rows(pipe):
    with live_server(pipe, max_batch_rows=2) as (url, server, _):
        engine = server.engine
        slow = dict(prompt=1, seed=0, num_iter=16, cfg=2.0, steps=1000)  # many head steps: long enough to leave
        with httpx.Client(base_url=url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post(GEN, json=slow)
        deadline = time.monotonic() + 30
        while engine.stats.cancelled < 1:
            assert time.monotonic() < deadline, "the disconnected request was not cancelled"
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post(GEN, json=dict(prompt=2, seed=0, num_iter=2, cfg=2.0)).status_code == 200
            assert "marengine_client_disconnects_total 1" in c.get("/metrics").text
        assert engine.stats.active_rows <= 2


def test_stream_disconnect_frees_rows(pipe):
    with live_server(pipe, max_batch_rows=2) as (url, server, _):
        slow = dict(prompt=1, seed=0, num_iter=16, cfg=2.0, steps=300, stream=True, preview_every=1)
        with httpx.Client(base_url=url, timeout=30) as c:
            with c.stream("POST", GEN, json=slow) as r:
                first = next(r.iter_lines())  # the first preview's event line, then leave
        assert first == "event: preview"
        deadline = time.monotonic() + 30
        while server.engine.stats.cancelled < 1:
            assert time.monotonic() < deadline, "the disconnected stream's request was not cancelled"
            time.sleep(0.05)
        assert server.engine.stats.completed == 0
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post(GEN, json=dict(prompt=2, seed=0, num_iter=2, cfg=2.0)).status_code == 200


def test_request_timeout_answers_504(pipe):
    with live_server(pipe) as (url, _, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post(GEN, json=dict(prompt=1, seed=0, num_iter=16, steps=1000, timeout=0.2))
            assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
            assert c.post(GEN, json=dict(prompt=1, seed=0, num_iter=2)).status_code == 200


def test_shutdown_finishes_in_flight_requests(pipe):
    results: list[int] = []
    with live_server(pipe) as (url, server, userver):

        def client():
            with httpx.Client(base_url=url, timeout=60) as c:
                results.append(c.post(GEN, json=dict(prompt=3, seed=0, num_iter=16, steps=200)).status_code)

        t = threading.Thread(target=client)
        t.start()
        deadline = time.monotonic() + 20
        while server.engine.stats.active_requests < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        userver.should_exit = True  # as SIGTERM: stop accepting, let in-flight requests finish
        t.join(60)
    assert results == [200]
    assert not server.engine.running


@pytest.mark.slow  # a marengine serve process
def test_cli_serves_and_stops_on_sigterm(pipe, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    folder = pipe.save_pretrained(tmp_path / "model")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "marengine", "serve", "--checkpoint", str(folder), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--num-iter", "4", "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not come up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        r = httpx.post(url + GEN, json=dict(prompt=4, seed=9, n=2, cfg=2.5), timeout=60)
        assert r.status_code == 200
        np.testing.assert_array_equal(images_of(r.json()), alone(pipe, 4, 2, 9, num_iter=4, cfg=2.5))
        proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "engine stopped: 1 completed, 0 cancelled, 0 failed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "marengine", "serve", "--checkpoint", str(tmp_path / "missing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("marengine serve: error:"), bad.stderr
