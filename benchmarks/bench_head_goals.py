"""Does the CUDA head sampler meet its goals? (issue 12; run by scripts/gpu_check.sh)

Goals, on the MAR-B head (width 1024, depth 6), 100 diffusion steps, temperature 1, no CFG, so
the network runs M = N rows per step:
    M = 32     native >= 50x faster than the official eager fp16 head
    M = 512    native >= 20x faster than the official eager fp16 head
    M >= 4096  native bf16 at >= 60% of the GPU's dense bf16 peak (measured here: an 8192^3
               torch.matmul), counting (10 depth + 4) width^2 FLOPs per row and step
"Official eager fp16" is the reference backend (one Python iteration per step, the official
structure) under torch.autocast(float16), as the official sampler runs. Native runs each
weight dtype (fp32, bf16, fp16); the head's first-use self-check falls in the warm-up.
Timings: CUDA events around each call (perf_counter on a CPU), the backends interleaved round-robin,
median of --repeats after --warmup rounds. --out writes the suite's records; --json the goals summary
(what scripts/gpu_check.sh reads).

    python benchmarks/bench_head_goals.py --json out.json               # goals (CUDA)
    python benchmarks/bench_head_goals.py --e2e --json out.json         # + MAR-B sample_tokens
    python benchmarks/bench_head_goals.py --rows "" --e2e               # end to end only
    python benchmarks/bench_head_goals.py --device cpu --rows 8 --steps 5 --head 64x2   # dry run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import random_head  # noqa: E402
from marengine.bench.script import Table, add_common_args, add_rounds_args, print_table, run_main  # noqa: E402
from marengine.bench.timing import Timer, interleaved, summarize  # noqa: E402
from marengine.models.diffloss import DiffLoss  # noqa: E402
from marengine.ops import native  # noqa: E402

LOWP = {"fp16": torch.float16, "bf16": torch.bfloat16}
GOALS = {32: 50.0, 512: 20.0}  # rows -> speedup over eager fp16
PEAK_GOAL, PEAK_ROWS = 0.60, 4096
Z_CHANNELS, CHANNELS = 768, 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, device="cuda")
    p.add_argument("--head", default="1024x6", help="WIDTHxDEPTH (default 1024x6)")
    p.add_argument("--rows", default="32,512,4096", help="network rows M (= chain rows, no CFG; default %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="diffusion steps (default 100)")
    p.add_argument("--dtypes", default="fp32,bf16,fp16", help="native weight dtypes (default fp32,bf16,fp16)")
    add_rounds_args(p, warmup=2, repeats=5, what="per measurement")
    p.add_argument("--e2e", action="store_true", help="also time MAR-B sample_tokens end to end")
    p.add_argument("--e2e-model", default="mar_base", help="MARConfig preset of the end-to-end run (default mar_base)")
    p.add_argument("--e2e-batch", type=int, default=16, help="images of the end-to-end run (default 16)")
    p.add_argument("--e2e-iters", type=int, default=64, help="masked-AR iterations (official: 64, the default)")
    p.add_argument("--json", type=Path, default=None, help="write the goals summary here (default: none)")
    return p.parse_args(argv)


def median_ms(fns: dict[str, Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms per call of each function, interleaved round-robin."""
    times = interleaved(fns, device, warmup=warmup, repeats=repeats)
    return {k: 1e3 * summarize(v)["p50"] for k, v in times.items()}


def head_call(dl: DiffLoss, z, x_T, backend: str, dtype: str):
    ctx = (lambda: torch.autocast(z.device.type, dtype=LOWP[dtype])) if dtype in LOWP else nullcontext
    gen = torch.Generator(device=z.device)

    def run():
        gen.manual_seed(0)
        with ctx(), torch.inference_mode():
            return dl.sample(z, 1.0, 1.0, noise=x_T, generator=gen, backend=backend)

    return run


def bf16_peak_tflops(device: torch.device, n: int = 8192) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms({"mm": lambda: torch.matmul(a, b)}, device, 3, 10)["mm"]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def barrier_us(device: torch.device) -> float | None:
    """Latency of one grid barrier of the persistent kernel (test-only stage operator)."""
    try:
        op = torch.ops.marengine_stages.grid_barrier
    except (AttributeError, RuntimeError):
        return None
    like = torch.empty(1, device=device)
    op(like, 100, 0)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    op(like, 5000, 0)  # 2 barriers per round; returns after a sync
    return (time.perf_counter() - t0) * 1e6 / 10000


def head_goals(ctx, args, results: dict) -> list[tuple[str, str, str, str]]:
    width, depth = (int(v) for v in args.head.lower().split("x"))
    dl = random_head(width, depth, args.steps, ctx.device, Z_CHANNELS, CHANNELS)
    dtypes = [d for d in args.dtypes.split(",") if d]
    peak = bf16_peak_tflops(ctx.device)
    results.update(peak_bf16_tflops=peak, grid_barrier_us=barrier_us(ctx.device), head=f"{width}x{depth}", rows={})
    table = Table(
        [("M", "rows", "", 6), ("GFLOP", "gflop", ".1f", 8), ("eager fp16 ms", "eager_fp16_ms", ".2f", 14)]
        + [(f"native {d} ms", f"native_{d}_ms", ".2f", 16) for d in dtypes]
    )
    goals = []
    for m in (int(v) for v in args.rows.split(",")):
        gflop = (10 * depth + 4) * width**2 * m * args.steps / 1e9
        g = torch.Generator().manual_seed(1)
        z = torch.randn(m, Z_CHANNELS, generator=g).to(ctx.device)
        x_T = torch.randn(m, CHANNELS, generator=g).to(ctx.device)
        fns = {"eager_fp16_ms": head_call(dl, z, x_T, "torch", "fp16")}
        fns |= {f"native_{d}_ms": head_call(dl, z, x_T, "native", d) for d in dtypes}
        row = {"gflop": gflop, **median_ms(fns, ctx.device, args.warmup, args.repeats)}
        results["rows"][m] = row
        table.add({"rows": m, **row})
        for key, ms in row.items():
            if key.endswith("_ms"):
                params = {"width": width, "depth": depth, "rows": m, "steps": args.steps, "cfg": False}
                params |= {"backend": key.removesuffix("_ms"), "threads": ctx.threads}
                metrics = {"ms": ms, "speedup_vs_eager_fp16": row["eager_fp16_ms"] / ms, "gflops": gflop / ms * 1e3}
                ctx.record(f"{width}x{depth}/M{m}/{key.removesuffix('_ms')}", params, metrics, {"ms": "ms"})
        best = min(row[f"native_{d}_ms"] for d in dtypes if d != "fp32") if len(dtypes) > 1 else None
        if m in GOALS and best:
            x = row["eager_fp16_ms"] / best
            goals.append((f"M={m}: native (best low precision) vs eager fp16", f"{x:.1f}x", f">= {GOALS[m]:.0f}x",
                          "MET" if x >= GOALS[m] else "MISSED"))  # fmt: skip
        if m >= PEAK_ROWS and peak and "bf16" in dtypes:
            frac = gflop / row["native_bf16_ms"] / 1e3 / peak
            goals.append((f"M={m}: native bf16 / dense bf16 peak ({peak:.0f} TFLOP/s)", f"{100 * frac:.0f}%",
                          f">= {100 * PEAK_GOAL:.0f}%", "MET" if frac >= PEAK_GOAL else "MISSED"))  # fmt: skip
    return goals


def e2e(ctx, args, results: dict) -> None:
    """MAR sample_tokens (random weights; MAR-B by default), official settings: autocast fp16 +
    reference head against autocast bf16 + native head."""
    from marengine.bench.models import random_model

    device = ctx.device
    model = random_model(args.e2e_model, device)
    labels = torch.arange(args.e2e_batch, device=device) % model.num_classes
    n, iters = args.e2e_batch, args.e2e_iters
    out: dict[str, Any] = {}
    timer = Timer(device)
    for name, backend, dtype in [("official_fp16_torch_head", "torch", torch.float16),
                                 ("engine_bf16_native_head", "auto", torch.bfloat16)]:  # fmt: skip

        def run(num_iter=iters):
            with torch.autocast(device.type, dtype=dtype):
                model.sample_tokens(n, num_iter, 3.0, "linear", labels, 1.0,
                                    generator=torch.Generator(device).manual_seed(0), backend=backend)  # fmt: skip

        run(2)  # warm-up: kernels, self-check, allocator
        out[name], _ = timer(run)
        print(f"e2e {name}: {out[name]:.2f} s for {n} images, {iters} iterations ({n / out[name]:.2f} images/s)",
              flush=True)  # fmt: skip
        params = {"model": args.e2e_model, "batch": n, "num_iter": iters, "backend": backend, "dtype": str(dtype)}
        ctx.record(f"e2e/{name}", params, {"seconds": out[name], "images_per_s": n / out[name]}, {"seconds": "s"})
    out["speedup"] = out["official_fp16_torch_head"] / out["engine_bf16_native_head"]
    print(f"e2e speedup: {out['speedup']:.2f}x")
    results["e2e"] = dict(out, model=args.e2e_model, batch=n, iterations=iters)


def body(ctx, args: argparse.Namespace) -> None:
    if not native.available(ctx.device):
        raise SystemExit(
            f"the native sampler is not built for {ctx.device.type}: pip install --no-build-isolation -e ."
        )
    gpu = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    results: dict = {"torch": torch.__version__, "device": gpu, "steps": args.steps}
    goals = head_goals(ctx, args, results) if args.rows.strip() else []  # --rows "": end to end only
    if results.get("grid_barrier_us"):
        print(f"grid barrier: {results['grid_barrier_us']:.2f} us")
    if args.e2e:
        e2e(ctx, args, results)
    results["goals"] = [dict(zip(("goal", "measured", "target", "verdict"), g)) for g in goals]
    for g in results["goals"]:
        ctx.record(f"goal/{g['goal']}", {"kind": "goal"}, {"measured": g["measured"], "verdict": g["verdict"]})
    print_table(results["goals"], [("goal", "goal", "", 62), ("measured", "measured", "", 8),
                                   ("target", "target", "", 8), ("verdict", "verdict", "", 7)], "goals")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    return run_main("head_goals", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
