"""Where the time of one generation goes: backbone, head, decode and everything else (the
loop's own work: masking, gathers, CFG bookkeeping, noise), per backend, summing to the
total; and the peak memory per image.

Each stage call is timed inside the generation (perf_counter on the CPU; CUDA events on a
GPU, read after one synchronize at the end), "other" is the total minus the stages; the
figures are those of the run with the median total (so that they add up). Peak
memory is measured on a separate run: on a GPU the peak of torch's allocated memory above
what was allocated before; on the CPU the peak resident set above the resident set before
(Linux VmHWM, reset for the run), i.e. the host memory the generation touched on top of
what the process already held. Both are divided by the batch size.

    python benchmarks/bench_stages.py --quick --out stages.json
    python benchmarks/bench_stages.py --models digits16 --backends official,engine-native
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import set_diffusion_steps  # noqa: E402
from marengine.bench.plan import CPU_REDUCED, ModelPlan, Point, build_setup  # noqa: E402
from marengine.bench.script import Table, add_cache_dir_arg, add_common_args, add_plan_args, run_main, select_models  # noqa: E402
from marengine.bench.timing import PeakMemory, StageClock, Timer  # noqa: E402
from marengine.bench.variants import BACKENDS, export_onnx_backbone, make_run, resolve_precision  # noqa: E402

STAGES = ("backbone", "head", "decode")


def plans(mode: str, device: torch.device) -> list[ModelPlan]:
    if mode == "quick":
        return [ModelPlan("digits8", [Point(2, 4, 5, 2.0)], repeats=2)]
    if device.type == "cuda":
        return [
            ModelPlan("digits16", [Point(64, 16, 50, 2.0)], repeats=3),
            ModelPlan("mar_base", [Point(64, 64, 100, 3.0)], repeats=2),
        ]
    return [
        ModelPlan("digits16", [Point(4, 16, 25, 2.0)], repeats=3),
        ModelPlan(
            "mar_base",
            [Point(1, 4, 10, 3.0)],
            overrides={"img_size": 64},
            note=CPU_REDUCED.format(name="MAR-B"),
            repeats=2,
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_plan_args(p, BACKENDS)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    add_cache_dir_arg(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main("stages", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    precision = resolve_precision(args.precision, ctx.device)
    wanted = [b for b in args.backends.split(",")]
    if set(wanted) - set(BACKENDS):
        raise SystemExit(f"bench_stages: unknown backends {sorted(set(wanted) - set(BACKENDS))}")
    for plan in select_models(plans(ctx.mode, ctx.device), args.models, "bench_stages", ctx.mode):
        run_plan(ctx, plan, args, precision, wanted)


def run_plan(ctx, plan: ModelPlan, args, precision: str, wanted: list[str]) -> None:
    setup = build_setup(plan, ctx.mode, ctx.device, args.cache_dir, precision)
    backends = [b for b in plan.backends if b in wanted]
    if "onnx-native" in backends and export_onnx_backbone(setup, setup.info["onnx_dir"], ctx.threads) is None:
        backends.remove("onnx-native")
    point = plan.points[0]
    set_diffusion_steps(setup.model, point.steps)
    timer = Timer(ctx.device)
    table = Table(
        ["backend", ("total s/img", "total_s_per_image", ".4f", 8)]
        + [(stage, f"{stage}_fraction", ".1%", 6) for stage in (*STAGES, "other")]
        + [("peak MiB/img", "peak_memory_mb_per_image", ".3f", 8)],
        f"stages {plan.model} {point.label} ({setup.info.get('weights')}, {precision}, {ctx.threads} threads)"
        + (f"\n  {plan.note}" if plan.note else ""),
    )
    for backend in backends:
        make_run(setup, backend, point.batch, point.num_iter, point.cfg)()  # warm-up
        per_run: list[dict[str, float]] = []
        calls: dict[str, int] = {}
        for _ in range(plan.repeats):
            clock = StageClock(ctx.device)
            total, _ = timer(make_run(setup, backend, point.batch, point.num_iter, point.cfg, clock=clock))
            stages = clock.totals()
            calls = dict(clock.calls)
            split = {s: stages.get(s, 0.0) for s in STAGES}
            split["other"] = total - sum(split.values())
            split["total"] = total
            per_run.append(split)
        with PeakMemory(ctx.device) as mem:
            make_run(setup, backend, point.batch, point.num_iter, point.cfg)()
        med = sorted(per_run, key=lambda r: r["total"])[(len(per_run) - 1) // 2]  # the median run, whole
        b = point.batch
        metrics = {f"{k}_s_per_image": v / b for k, v in med.items()}
        metrics |= {f"{k}_fraction": med[k] / med["total"] for k in (*STAGES, "other")}
        metrics["peak_memory_mb_per_image"] = mem.bytes / b / 2**20 if mem.bytes is not None else None
        metrics |= {f"{k}_calls": calls.get(k, 0) for k in STAGES}
        notes = plan.note
        if backend != "official" and calls.get("head", 0) == 0:
            notes += "; the loop did not call DiffLoss.sample: the head's time is counted in 'other'"
        params = {
            "model": plan.model,
            "weights": setup.info.get("weights"),
            "reduced": bool(plan.note),
            "seq_len": setup.model.seq_len,
            "backend": backend,
            "batch": b,
            "num_iter": point.num_iter,
            "diffusion_steps": point.steps,
            "cfg": point.cfg,
            "precision": precision,
            "threads": ctx.threads,
            "repeats": plan.repeats,
            "timing": "CUDA events per stage, one synchronize" if ctx.device.type == "cuda" else "perf_counter",
            "memory_method": mem.method,
        }
        units = {k: "s" for k in metrics if k.endswith("_s_per_image")} | {"peak_memory_mb_per_image": "MiB"}
        ctx.record(f"{plan.model}/{point.label}/{backend}", params, metrics, units, notes.strip("; "))
        table.add({"backend": backend, **metrics})


if __name__ == "__main__":
    sys.exit(main())
