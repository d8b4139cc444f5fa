"""`marengine bench`: the latency benchmark suite (report.md, records.json, plots/*.png)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..bench.suite import NAMES
from .common import add_command, add_output_options


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.suite import run_suite

    command = "marengine " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "marengine bench"
    only = args.only.split(",") if args.only is not None else None  # "" is an error, not "all"
    out = run_suite(args.mode, args.device, args.out, args.threads, only, command=command)
    failed = [r for r in out["runs"] if r["status"] != "ok"]
    print(f"\nmarengine bench: {args.mode} suite on {out['runs'][0]['device']} in {out['wall_s'] / 60:.1f} min")
    print(f"  report:  {out['report']}\n  records: {out['records']}")
    for p in out["plots"]:
        print(f"  plot:    {p}")
    if failed:
        names = ", ".join(f"{r['name']} ({r['status']}; log {out['out'] / r['log']})" for r in failed)
        raise RuntimeError(f"benchmarks failed: {names}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", "run the latency benchmark suite: report.md, records.json and plots", cmd_bench)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="CI: every benchmark once on tiny shapes (the digits model trained 8 steps, MAR-B shapes on 16 tokens); "
        "about 1.2 min of CPU time: ~1.5 min on an idle 2-core CPU at --threads 1, several times longer on a busy "
        "machine (14.5 min at load average ~10 with 2 threads; the report then carries a warning)",
    )
    full = "the full suite (default): ~16 min on an idle 2-core CPU (it trains the two digits models once)"
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help=full)
    p.set_defaults(mode="full")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run; auto: cuda if torch sees a GPU"
    )
    add_output_options(
        p,
        "output folder (reused: trained models are cached there)",
        required=False,
        default="runs/bench",
        overwrite=False,
        threads_default="every core this process may use; each benchmark script gets the same",
    )
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(NAMES)} (default: all)")
