"""How much faster is the native head sampler than the eager PyTorch reference?

Times `DiffLoss.sample` end to end (100 diffusion steps by default, temperature 1 with
per-step noise) with backend="torch" (the official structure: one Python iteration per
step) and backend="native" (one operator call), fp32 weights, and native with bf16 (or
fp16) weights via autocast; measured side by side, interleaved, in one run. Rows are the
chain rows N (with CFG the network runs 2N rows). Native calls run inside
`native.weights_frozen()`, as in the MAR loop (weights fingerprinted once, not per call).
The CPU kernel build that ran (MARENGINE_CPU_KERNELS forces one) is printed and recorded.

    python benchmarks/bench_head.py                                   # full grid (slow on 2 cores)
    python benchmarks/bench_head.py --rows 32,256 --heads 1024x3 --cfg off --json out.json
    python benchmarks/bench_head.py --rows 256 --dtype bf16 --no-reference
    python benchmarks/bench_head.py --quick --out head.json     # a tiny grid; records for the suite

FLOPs per chain row per step: (10 depth + 4) width^2, doubled with CFG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.models.diffloss import DiffLoss  # noqa: E402
from marengine.ops import native  # noqa: E402

LOWP = {"bf16": torch.bfloat16, "fp16": torch.float16}
Z_CHANNELS = 768


@dataclass
class Row:
    width: int
    depth: int
    rows: int
    cfg: bool
    steps: int
    gflop: float
    ms: dict[str, float | None] = field(default_factory=dict)
    load: float = 0.0  # 1-minute load average when the measurement started


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,32,256,1024,4096", help="chain rows N, comma-separated")
    p.add_argument("--heads", default="1024x3,1024x6,1280x8,1536x12", help="WIDTHxDEPTH, comma-separated")
    p.add_argument("--cfg", choices=["off", "on", "both"], default="both", help="classifier-free guidance")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--dtype", default="fp32,bf16", help="native weight dtypes: fp32, bf16, fp16 (comma-separated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
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
        help="skip a measurement whose estimated single run exceeds this many seconds",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--out", type=Path, default=None, help="write benchmark records here (marengine bench format)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="a tiny grid (unless given)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the grid above (default)")
    p.set_defaults(mode="full")
    p.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="on a shared machine: before each measurement wait (up to 15 min) until the 1-minute "
        "load average is below this",
    )
    args = p.parse_args()
    if args.mode == "quick":  # a tiny grid, for the options left at their defaults
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


QUICK = {"rows": "16", "heads": "128x2", "cfg": "on", "dtype": "fp32", "steps": 5, "repeat": 2}


def write_records(path: Path, results: list[Row], args: argparse.Namespace, device: torch.device) -> None:
    """One record per (head, rows, cfg, backend) in the suite's format (marengine.bench.records)."""
    from marengine.bench.machine import finish_info, machine_info
    from marengine.bench.records import Record
    from marengine.bench.records import write_records as write

    machine = finish_info(machine_info(str(device)))  # taken at the end: start and end loads alike
    recs = []
    for r in results:
        ref = r.ms.get("torch_fp32")
        for key, ms in r.ms.items():
            params = {"mode": args.mode, "device": str(device), "width": r.width, "depth": r.depth, "rows": r.rows}
            params |= {"cfg": r.cfg, "steps": r.steps, "backend": key, "threads": torch.get_num_threads()}
            if key.startswith("native") and device.type == "cpu":
                params["cpu_kernels"] = native._C.cpu_kernels()  # the kernel build (ISA) that ran
            metrics = {
                "ms": ms,
                "speedup_vs_torch_fp32": ref / ms if ref and ms else None,
                "gflop": r.gflop,
                "gflops": r.gflop / ms * 1e3 if ms else None,
                "loadavg_1min_at_start": r.load,
            }
            name = f"{r.width}x{r.depth}/rows{r.rows}/{'cfg' if r.cfg else 'nocfg'}/s{r.steps}/{key}"
            recs.append(Record("head", name, params, metrics, machine, {"ms": "ms", "gflops": "GFLOP/s"}))
    write(path, recs)
    print(f"wrote {len(recs)} records to {path}")


def make_head(width: int, depth: int, steps: int, device: torch.device) -> DiffLoss:
    torch.manual_seed(0)
    dl = DiffLoss(16, Z_CHANNELS, depth, width, str(steps))
    for m in dl.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.02)
            torch.nn.init.normal_(m.bias, std=0.02)
    return dl.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler(dl: DiffLoss, z: torch.Tensor, x_T: torch.Tensor, cfg: float, backend: str, dtype: str, hash_calls: bool):
    ctx = (lambda: torch.autocast(z.device.type, dtype=LOWP[dtype])) if dtype in LOWP else nullcontext
    # the MAR loop samples inside native.weights_frozen(): the head weights' bytes are
    # fingerprinted once per generation, not per head call (--fingerprint-every-call: per call)
    frozen = native.weights_frozen if backend == "native" and not hash_calls else nullcontext
    gen = torch.Generator(device=z.device)

    def run() -> torch.Tensor:
        gen.manual_seed(0)
        with ctx(), frozen():
            return dl.sample(z, 1.0, cfg, noise=x_T, generator=gen, backend=backend)

    return run


def time_side_by_side(fns: dict[str, callable], device: torch.device, warmup: int, repeat: int) -> dict[str, float]:
    """Median ms per function; repeats are interleaved so drifts in machine load hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def wait_quiet(threshold: float | None, max_wait_s: float = 900.0) -> None:
    if threshold is None:
        return
    t0 = time.time()
    while os.getloadavg()[0] >= threshold and time.time() - t0 < max_wait_s:
        time.sleep(5)


def measure(dl: DiffLoss, row: Row, args: argparse.Namespace, device: torch.device) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(row.rows * (2 if row.cfg else 1), Z_CHANNELS, generator=g).to(device)
    x_T = torch.randn(row.rows, 16, generator=g).to(device)
    cfg = args.cfg_scale if row.cfg else 1.0
    fns = {}
    if not args.no_reference and row.gflop / 80.0 <= args.max_seconds:  # ~80 GFLOP/s eager fp32
        fns["torch_fp32"] = sampler(dl, z, x_T, cfg, "torch", "fp32", args.fingerprint_every_call)
    if row.gflop / 150.0 <= args.max_seconds:
        for dt in args.dtype.split(","):
            fns[f"native_{dt}"] = sampler(dl, z, x_T, cfg, "native", dt, args.fingerprint_every_call)
    wait_quiet(args.quiet_load)
    row.load = os.getloadavg()[0]
    with torch.inference_mode():
        row.ms = time_side_by_side(fns, device, args.warmup, args.repeat) if fns else {}


def fmt(v: float | None) -> str:
    return "skipped" if v is None else f"{v:.1f}"


def print_table(rows: list[Row], dtypes: list[str], header: bool = True) -> None:
    head = f"{'head':>9} {'rows':>5} {'cfg':>3} {'GFLOP':>7} {'torch fp32 ms':>13} "
    head += " ".join(f"{'native ' + d + ' ms':>15} {'x':>6}" for d in dtypes) + f" {'GFLOP/s':>8}"
    if header:
        print(head)
    for r in rows:
        ref = r.ms.get("torch_fp32")
        line = f"{r.width:>5}x{r.depth:<3} {r.rows:>5} {'on' if r.cfg else 'off':>3} {r.gflop:>7.1f} {fmt(ref):>13} "
        for d in dtypes:
            v = r.ms.get(f"native_{d}")
            ratio = f"{ref / v:.2f}" if (ref and v) else "-"
            line += f"{fmt(v):>15} {ratio:>6} "
        best = min((v for k, v in r.ms.items() if k.startswith("native") and v), default=None)
        line += f"{r.gflop / best * 1e3:>8.0f}" if best else f"{'-':>8}"
        print(line, flush=True)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if not native.available(device):
        sys.exit(f"the native sampler is not built for {device.type}: pip install --no-build-isolation -e .")
    dtypes = args.dtype.split(",")
    heads = [tuple(int(v) for v in h.lower().split("x")) for h in args.heads.split(",")]
    cfgs = {"off": [False], "on": [True], "both": [False, True]}[args.cfg]
    load0 = os.getloadavg()
    if device.type == "cpu":
        print(f"native CPU kernels: {native._C.cpu_kernels()} (this CPU runs {native._C.cpu_kernels_supported()})")
    results: list[Row] = []
    for width, depth in heads:
        dl = make_head(width, depth, args.steps, device)
        for cfg in cfgs:
            for n in (int(v) for v in args.rows.split(",")):
                gflop = (10 * depth + 4) * width**2 * n * (2 if cfg else 1) * args.steps / 1e9
                row = Row(width, depth, n, cfg, args.steps, gflop)
                measure(dl, row, args, device)
                results.append(row)
                print_table([row], dtypes, header=len(results) == 1)
    print("\nsummary (ratios are torch fp32 ms / native ms, measured side by side):")
    print_table(results, dtypes)
    meta = dict(
        torch=torch.__version__,
        device=str(device),
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        cpu_kernels=native._C.cpu_kernels(),
        loadavg_before=load0,
        loadavg_after=os.getloadavg(),
        argv=sys.argv[1:],
    )
    print(f"\nloadavg before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f} (other work on the machine skews timings)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(meta=meta, results=[asdict(r) for r in results]), indent=2))
        print(f"wrote {args.json}")
    if args.out:
        write_records(args.out, results, args, device)


if __name__ == "__main__":
    main()
