"""Load test of `marengine serve`: continuous batching against two baselines, on loopback.

Each mode runs a `marengine serve` process on 127.0.0.1 and a free port:
  one         one request at a time (max-batch-rows = one request's rows), FIFO queue
  static      static batches: a batch starts when full or when its oldest request has waited
              --static-window seconds, and runs to its end before the next one starts
  continuous  iteration-level continuous batching (requests join and leave every iteration)
An async httpx client sends the same open-loop Poisson arrivals to each (rates given as
multiples of one-at-a-time's measured capacity), and the script prints throughput and
p50/p90/p99 latency (arrival to response) per mode and rate, the continuous/one throughput
ratio and the continuous/static p99 ratio. Every phase has a deadline; the servers are
stopped at the end (SIGTERM, then SIGKILL), so the script ends by itself.

    python benchmarks/bench_serve.py                       # random-weight mar_digits, ~3 min
    python benchmarks/bench_serve.py --checkpoint runs/demo/ema --out serve.json
    python benchmarks/bench_serve.py --quick               # 8 requests at 2x, 4 iterations
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.script import Table, add_common_args, add_count_arg, apply_quick, run_main  # noqa: E402
from marengine.bench.timing import summarize  # noqa: E402
from marengine.checks import CFG_BOUNDS, arg, check_float  # noqa: E402
from marengine.config import HEAD_BACKENDS  # noqa: E402
from marengine.schedules import CFG_SCHEDULES  # noqa: E402

GEN = "/v1/images/generations"
QUICK = {"rates": "2", "requests": 8, "num_iter": 4, "phase_timeout": 60.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, device="cpu", threads=1)  # the servers' device and torch threads (each)
    p.add_argument("--checkpoint", default=None, help="a digits model (default: mar_digits with random weights)")
    p.add_argument(
        "--rates",
        default="0.5,2,4,8",
        help="arrival rates as multiples of one-at-a-time's capacity (default %(default)s)",
    )
    add_count_arg(p, "--requests", 48, "requests per mode and rate")
    add_count_arg(p, "--num-iter", 16, "iterations per image")
    p.add_argument(
        "--cfg",
        type=arg(check_float, "--cfg", **CFG_BOUNDS),
        default=2.0,
        help="guidance scale (default 2.0; CFG doubles the rows)",
    )
    p.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, default="linear", help="(default linear)")
    p.add_argument(
        "--backend",
        choices=HEAD_BACKENDS,
        default="torch",
        help="head sampler of every mode (default torch: it takes a guidance scale per row; the native "
        "kernel takes one per call, so rows at different iterations of a linear schedule split its calls)",
    )
    add_count_arg(p, "--max-batch-rows", 64, "rows of the batched modes")
    p.add_argument("--static-window", type=float, default=0.25, help="the static baseline's wait (default 0.25 s)")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="seconds one mode x rate may take (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0)")
    return apply_quick(p, p.parse_args(argv), QUICK)


def digits_checkpoint(folder: Path) -> Path:
    """mar_digits (its full size) with random weights, saved as a pretrained folder: serving
    speed does not depend on what the weights learned."""
    from marengine.bench.models import random_model
    from marengine.models.tokenizers import PixelTokenizer
    from marengine.pipeline import MARPipeline

    model = random_model("mar_digits")
    return MARPipeline(model, PixelTokenizer(1, 2)).save_pretrained(folder / "mar_digits_random")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(checkpoint: Path, args: argparse.Namespace, rows: int, static: bool, device: str, threads: int):
    """A `marengine serve` process on loopback; yields its URL; always stopped."""
    port = free_port()
    cmd = [sys.executable, "-m", "marengine", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    cmd += ["--device", device, "--max-batch-rows", str(rows), "--max-queue", "100000", "--max-n", "1"]
    cmd += ["--num-iter", str(args.num_iter), "--cfg", str(args.cfg), "--cfg-schedule", args.cfg_schedule]
    cmd += ["--backend", args.backend, "--request-timeout", str(args.phase_timeout)]
    if static:
        cmd += ["--static-batching-window", str(args.static_window)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {' '.join(cmd)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not come up within 120 s")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def closed_loop(url: str, n: int) -> float:
    """Mean seconds per request, one after the other (after one warm-up request)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        await c.post(GEN, json={"prompt": 0, "seed": 0})
        began = time.perf_counter()
        for i in range(n):
            r = await c.post(GEN, json={"prompt": i % 10, "seed": i})
            r.raise_for_status()
        return (time.perf_counter() - began) / n


async def open_loop(url: str, arrivals: np.ndarray, timeout: float) -> dict[str, float]:
    """Send request i at arrivals[i] seconds (open loop); latency = response time - arrival."""
    limits = httpx.Limits(max_connections=len(arrivals) + 8, max_keepalive_connections=len(arrivals) + 8)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        await c.post(GEN, json={"prompt": 0, "seed": 0})  # warm-up
        start = time.perf_counter()
        done: list[float] = []
        latencies: list[float] = []

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
            try:
                r = await c.post(GEN, json={"prompt": int(i % 10), "seed": int(i)})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            now = time.perf_counter()
            if ok:
                latencies.append(now - start - arrivals[i])
                done.append(now - start)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(len(arrivals))]), timeout)
    lat = summarize(latencies)  # nan percentiles when nothing completed
    span = max(done) if done else float("nan")
    return {
        "completed": len(done),
        "failed": len(arrivals) - len(done),  # errors and requests past the deadline
        "throughput": len(done) / span if done else 0.0,
        **{f"p{q}": lat[f"p{q}"] for q in (50, 90, 99)},
    }


def body(ctx, args: argparse.Namespace) -> None:
    factors = [float(f) for f in args.rates.split(",")]
    rows_one = 2 if args.cfg != 1.0 else 1
    rng = np.random.default_rng(args.seed)
    gaps = rng.exponential(1.0, args.requests)  # unit-rate Poisson gaps, scaled per rate
    modes = {
        "one": (rows_one, False),
        "static": (args.max_batch_rows, True),
        "continuous": (args.max_batch_rows, False),
    }
    results: dict[str, dict[float, dict[str, Any]]] = {m: {} for m in modes}
    capacity = None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else digits_checkpoint(Path(tmp))
        for mode, (rows, static) in modes.items():
            with server(ckpt, args, rows, static, str(ctx.device), ctx.threads) as url:
                if capacity is None:
                    capacity = 1.0 / asyncio.run(closed_loop(url, 8))
                    print(f"one at a time: {1 / capacity * 1000:.0f} ms per request, capacity {capacity:.2f} req/s")
                for f in factors:
                    rate = f * capacity
                    arrivals = np.cumsum(gaps) / rate
                    results[mode][f] = r = asyncio.run(open_loop(url, arrivals, args.phase_timeout))
                    print(
                        f"  {mode:10s} rate {f:4g}x ({rate:6.2f}/s): {r['completed']:3d} done, "
                        f"{r['throughput']:6.2f} req/s, p50 {r['p50']:.2f} s, p90 {r['p90']:.2f} s, "
                        f"p99 {r['p99']:.2f} s",
                        flush=True,
                    )
                    params = {"serving_mode": mode, "rate_factor": f, "rate_per_s": rate, "max_batch_rows": rows}
                    params |= {"requests": args.requests, "num_iter": args.num_iter, "cfg": args.cfg}
                    params |= {"cfg_schedule": args.cfg_schedule, "backend": args.backend, "threads": ctx.threads}
                    units = {"throughput": "req/s", "p50": "s", "p90": "s", "p99": "s"}
                    ctx.record(f"{mode}/rate{f:g}x", params, {**r, "capacity_one": capacity}, units)
    print(
        f"\nrequests: {args.requests} per point; num_iter {args.num_iter}, cfg {args.cfg} ({args.cfg_schedule}), "
        f"head backend {args.backend}, max rows {args.max_batch_rows}, static window {args.static_window} s"
    )
    cols: list[Any] = [("rate", "rate", "", 6)]
    for m in modes:
        cols += [(f"{m} req/s", f"{m}_throughput", ".2f", 7)]
        cols += [(q, f"{m}_{q}", ".2f", 5) for q in ("p50", "p90", "p99")]
    table = Table(cols + [("cont/one thr", "thr", ".2f", 12), ("cont/static p99", "p99", ".2f", 15)])
    for f in factors:
        row: dict[str, Any] = {"rate": f"{f:g}x"}
        for m in modes:
            row |= {f"{m}_{k}": results[m][f][k] for k in ("throughput", "p50", "p90", "p99")}
        row["thr"] = results["continuous"][f]["throughput"] / max(results["one"][f]["throughput"], 1e-9)
        row["p99"] = results["continuous"][f]["p99"] / max(results["static"][f]["p99"], 1e-9)
        table.add(row)


def main(argv: list[str] | None = None) -> int:
    return run_main("serve", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
