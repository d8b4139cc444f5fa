"""How much faster is the native head sampler than the eager PyTorch reference?

Times `DiffLoss.sample` end to end (100 diffusion steps by default, temperature 1 with
per-step noise) with backend="torch" (the official structure: one Python iteration per
step) and backend="native" (one operator call), fp32 weights, and native with bf16 (or
fp16) weights via autocast; measured side by side, interleaved, in one run. Rows are the
chain rows N (with CFG the network runs 2N rows). Native calls run inside
`native.weights_frozen()`, as in the MAR loop (weights fingerprinted once, not per call).
The CPU kernel build that ran (MARENGINE_CPU_KERNELS forces one) is printed and recorded.

    python benchmarks/bench_head.py                                   # full grid (slow on 2 cores)
    python benchmarks/bench_head.py --rows 32,256 --heads 1024x3 --cfg off --out out.json
    python benchmarks/bench_head.py --rows 256 --dtype bf16 --no-reference
    python benchmarks/bench_head.py --quick --out head.json     # a tiny grid; records for the suite

FLOPs per chain row per step: (10 depth + 4) width^2, doubled with CFG.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import random_head  # noqa: E402
from marengine.bench.script import (
    Table,
    add_common_args,
    add_count_arg,
    add_rounds_args,
    apply_quick,
    print_table,
    run_main,
)  # noqa: E402
from marengine.bench.timing import interleaved, summarize  # noqa: E402
from marengine.models.diffloss import DiffLoss  # noqa: E402
from marengine.ops import native  # noqa: E402

LOWP = {"bf16": torch.bfloat16, "fp16": torch.float16}
Z_CHANNELS = 768
QUICK = {"rows": "16", "heads": "128x2", "cfg": "on", "dtype": "fp32", "steps": 5, "repeats": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--rows", default="1,32,256,1024,4096", help="chain rows N, comma-separated (default %(default)s)")
    p.add_argument(
        "--heads", default="1024x3,1024x6,1280x8,1536x12", help="WIDTHxDEPTH, comma-separated (default %(default)s)"
    )
    p.add_argument(
        "--cfg", choices=["off", "on", "both"], default="both", help="classifier-free guidance (default both)"
    )
    p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale with CFG on (default 4.0)")
    p.add_argument("--dtype", default="fp32,bf16", help="native weight dtypes: fp32, bf16, fp16 (default fp32,bf16)")
    add_count_arg(p, "--steps", 100, "diffusion steps")
    add_rounds_args(p, warmup=1, repeats=3, what="per measurement (median reported)")
    p.add_argument("--no-reference", action="store_true", help="time the native sampler only")
    p.add_argument(
        "--fingerprint-every-call",
        action="store_true",
        help="native: hash the head weights' bytes on every call (default off: once, as inside the MAR loop's "
        "weights_frozen block)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=90.0,
        help="skip a measurement whose estimated single run exceeds this many seconds (default 90)",
    )
    p.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="on a shared machine: before each measurement wait (up to 15 min) until the 1-minute "
        "load average is below this (default: do not wait)",
    )
    return apply_quick(p, p.parse_args(argv), QUICK)


def sampler(dl: DiffLoss, z: torch.Tensor, x_T: torch.Tensor, cfg: float, backend: str, dtype: str):
    ctx = (lambda: torch.autocast(z.device.type, dtype=LOWP[dtype])) if dtype in LOWP else nullcontext
    gen = torch.Generator(device=z.device)

    def run() -> torch.Tensor:
        gen.manual_seed(0)
        with ctx():
            return dl.sample(z, 1.0, cfg, noise=x_T, generator=gen, backend=backend)

    return run


def wait_quiet(threshold: float | None, max_wait_s: float = 900.0) -> None:
    if threshold is None:
        return
    t0 = time.time()
    while os.getloadavg()[0] >= threshold and time.time() - t0 < max_wait_s:
        time.sleep(5)


def measure(ctx, dl: DiffLoss, rows: int, cfg_on: bool, gflop: float, args: argparse.Namespace) -> dict[str, Any]:
    """Median ms per call of each backend x dtype, interleaved round-robin (None: skipped)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(rows * (2 if cfg_on else 1), Z_CHANNELS, generator=g).to(ctx.device)
    x_T = torch.randn(rows, 16, generator=g).to(ctx.device)
    cfg = args.cfg_scale if cfg_on else 1.0
    fns: dict[str, Callable[[], Any]] = {}
    if not args.no_reference and gflop / 80.0 <= args.max_seconds:  # ~80 GFLOP/s eager fp32
        fns["torch_fp32"] = sampler(dl, z, x_T, cfg, "torch", "fp32")
    if gflop / 150.0 <= args.max_seconds:
        for dt in args.dtype.split(","):
            fns[f"native_{dt}"] = sampler(dl, z, x_T, cfg, "native", dt)
    wait_quiet(args.quiet_load)
    load = os.getloadavg()[0]
    # The MAR loop samples inside one native.weights_frozen() per generation: the head weights'
    # bytes are fingerprinted once (here: in the first warm-up call), not per head call.
    # --fingerprint-every-call: no such scope, every native call fingerprints the weights.
    frozen = nullcontext() if args.fingerprint_every_call else native.weights_frozen()
    with torch.inference_mode(), frozen:
        times = interleaved(fns, ctx.device, warmup=args.warmup, repeats=args.repeats) if fns else {}
    return {"load": load, "ms": {k: 1e3 * summarize(v)["p50"] for k, v in times.items()}}


def columns(dtypes: list[str]) -> list[Any]:
    cols: list[Any] = [("head", "head", "", 9), ("rows", "rows", "", 5), ("cfg", "cfg", "", 3), "gflop"]
    cols.append(("torch fp32 ms", "torch_fp32", ".1f", 13))
    for d in dtypes:
        cols += [(f"native {d} ms", f"native_{d}", ".1f", 15), ("x", f"x_{d}", ".2f", 6)]
    return cols + [("GFLOP/s", "gflops", ".0f", 8)]


def body(ctx, args: argparse.Namespace) -> None:
    if not native.available(ctx.device):
        raise SystemExit(
            f"the native sampler is not built for {ctx.device.type}: pip install --no-build-isolation -e ."
        )
    dtypes = args.dtype.split(",")
    heads = [tuple(int(v) for v in h.lower().split("x")) for h in args.heads.split(",")]
    cfgs = {"off": [False], "on": [True], "both": [False, True]}[args.cfg]
    isa = native._C.cpu_kernels() if ctx.device.type == "cpu" else None  # the kernel build (ISA) that ran
    if isa:
        print(f"native CPU kernels: {isa} (this CPU runs {native._C.cpu_kernels_supported()})")
    table, results = Table(columns(dtypes)), []
    for width, depth in heads:
        dl = random_head(width, depth, args.steps, ctx.device, Z_CHANNELS)
        for cfg in cfgs:
            for n in (int(v) for v in args.rows.split(",")):
                gflop = (10 * depth + 4) * width**2 * n * (2 if cfg else 1) * args.steps / 1e9
                m = measure(ctx, dl, n, cfg, gflop, args)
                ref = m["ms"].get("torch_fp32")
                row = {"head": f"{width}x{depth}", "rows": n, "cfg": "on" if cfg else "off", "gflop": gflop, **m["ms"]}
                best = min((v for k, v in m["ms"].items() if k.startswith("native")), default=None)
                row["gflops"] = gflop / best * 1e3 if best else None
                for key, ms in m["ms"].items():
                    row[f"x_{key.removeprefix('native_')}"] = ref / ms if ref and key.startswith("native") else None
                    params = {"width": width, "depth": depth, "rows": n, "cfg": cfg, "steps": args.steps}
                    params |= {"backend": key, "threads": ctx.threads}
                    if key.startswith("native") and isa:
                        params["cpu_kernels"] = isa
                    metrics = {
                        "ms": ms,
                        "speedup_vs_torch_fp32": ref / ms if ref else None,
                        "gflop": gflop,
                        "gflops": gflop / ms * 1e3,
                        "loadavg_1min_at_start": m["load"],
                    }
                    name = f"{width}x{depth}/rows{n}/{'cfg' if cfg else 'nocfg'}/s{args.steps}/{key}"
                    ctx.record(name, params, metrics, {"ms": "ms", "gflops": "GFLOP/s"})
                table.add(row)
                results.append(row)
    print_table(results, columns(dtypes), "summary (x: torch fp32 ms / native ms, measured side by side)")


def main(argv: list[str] | None = None) -> int:
    return run_main("head", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
