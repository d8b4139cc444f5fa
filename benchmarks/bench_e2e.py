"""End-to-end generation latency: seconds per image and images/s (p50/p90/p99 over repeats
after warm-up), the backends side by side in one run, interleaved round-robin:

  official       eager re-run of the official sampling semantics (the anchor; bench/official.py)
  engine-torch   the engine's loop, head sampler in PyTorch
  engine-native  the engine's loop, native head kernels
  onnx-native    the backbone on onnxruntime, the native head

A generation is `sample_tokens` + the tokenizer's decode, for the same labels and seed on
every backend. One-at-a-time sweeps around a base point (batch size, num_iter, diffusion
steps, CFG on/off) for the trained digits models (8x8: 16 tokens; 16x16: 64 tokens) and
for models shaped like MAR-B/L/H with random weights. On the CPU the MAR-B/L/H shapes run
at a reduced configuration that the records spell out (their widths, depths and heads are
the released ones; fewer tokens, iterations and steps); on a GPU at the real sizes.

    python benchmarks/bench_e2e.py --quick --out e2e.json
    python benchmarks/bench_e2e.py --models digits16 --backends official,engine-native
    python benchmarks/bench_e2e.py --device cuda --models mar_base      # real MAR-B sweeps
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.flops import generation_flops  # noqa: E402
from marengine.bench.models import set_diffusion_steps  # noqa: E402
from marengine.bench.plan import CPU_REDUCED, ModelPlan, Point, build_setup, sweep  # noqa: E402
from marengine.bench.script import (  # noqa: E402
    Table,
    add_cache_dir_arg,
    add_common_args,
    add_count_arg,
    add_plan_args,
    run_main,
    select_models,
)
from marengine.bench.timing import interleaved, summarize  # noqa: E402
from marengine.bench.variants import BACKENDS, export_onnx_backbone, make_run, resolve_precision  # noqa: E402


def plans(mode: str, device: torch.device) -> list[ModelPlan]:
    if mode == "quick":
        return [ModelPlan("digits8", sweep(Point(2, 4, 5, 2.0)), warmup=1, repeats=2)]
    if device.type == "cuda":  # the real sizes; the target point is MAR-B, 64 iterations, CFG, batch 256
        b = Point(256, 64, 100, 3.0)
        return [
            ModelPlan("digits16", sweep(Point(64, 16, 50, 2.0), batch=(1, 256), num_iter=(4, 64), steps=(25, 100))),
            ModelPlan("mar_base", sweep(b, batch=(1, 16, 64), num_iter=(16, 256), steps=(25, 50)), warmup=1, repeats=3),
            ModelPlan("mar_large", sweep(replace(b, batch=64)), warmup=1, repeats=3),
            ModelPlan("mar_huge", sweep(replace(b, batch=64)), warmup=1, repeats=3),
        ]
    big = Point(1, 4, 10, 3.0)  # the reduced MAR-B/L/H point (CPU_REDUCED says what it is)
    small = Point(4, 16, 25, 2.0)
    return [
        ModelPlan("digits8", sweep(small, batch=(1, 16), num_iter=(4,), steps=(50, 100)), repeats=3),
        ModelPlan("digits16", sweep(small, batch=(1, 16), num_iter=(4, 64), steps=(50, 100)), repeats=3),
        ModelPlan("mar_base", [big], overrides={"img_size": 64}, note=CPU_REDUCED.format(name="MAR-B"), repeats=3),
        *(
            ModelPlan(
                name,
                [big],
                backends=("official", "engine-native"),
                overrides={"img_size": 64},
                note=CPU_REDUCED.format(name=short) + "; the anchor and engine-native only, 2 repeats (time budget)",
                repeats=2,
            )
            for name, short in (("mar_large", "MAR-L"), ("mar_huge", "MAR-H"))
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_plan_args(p, BACKENDS)
    add_count_arg(p, "--repeats", None, "timed rounds per point (default: the plan's)")
    add_count_arg(p, "--warmup", None, "untimed rounds per point (default: the plan's)", lo=0)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    add_cache_dir_arg(p)
    p.add_argument("--temperature", type=float, default=1.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main("e2e", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    precision = resolve_precision(args.precision, ctx.device)
    wanted = set(args.backends.split(","))
    unknown = wanted - set(BACKENDS)
    if unknown:
        raise SystemExit(f"bench_e2e: unknown backends {sorted(unknown)}; choose among {BACKENDS}")
    for plan in select_models(plans(ctx.mode, ctx.device), args.models, "bench_e2e", ctx.mode):
        run_plan(ctx, plan, args, precision, wanted)


def run_plan(ctx, plan: ModelPlan, args, precision: str, wanted: set[str]) -> None:
    setup = build_setup(plan, ctx.mode, ctx.device, args.cache_dir, precision)
    model = setup.model
    backends = [b for b in plan.backends if b in wanted]
    if "onnx-native" in backends and export_onnx_backbone(setup, setup.info["onnx_dir"], ctx.threads) is None:
        backends.remove("onnx-native")
    cfg = model.config.to_dict()
    warmup = plan.warmup if args.warmup is None else args.warmup
    repeats = plan.repeats if args.repeats is None else args.repeats
    title = f"e2e {plan.model} ({setup.info.get('weights')}, L={model.seq_len}, {precision}, {ctx.threads} threads)"
    table = Table(
        ["point", "sweep", "backend", "s_per_image_p50", "s_per_image_p90", "s_per_image_p99", "images_per_s"]
        + ["speedup_vs_official"],
        title + (f"\n  {plan.note}" if plan.note else ""),
    )
    for point in plan.points:
        if point.num_iter > model.seq_len:
            print(f"e2e {plan.model}: {point.label} skipped: num_iter > the {model.seq_len} tokens of an image")
            continue
        set_diffusion_steps(model, point.steps)
        runs = {
            b: make_run(setup, b, point.batch, point.num_iter, point.cfg, args.temperature, seed=0) for b in backends
        }
        times = interleaved(runs, ctx.device, warmup=warmup, repeats=repeats)
        anchor = summarize(times["official"])["p50"] if "official" in times else None
        flops = generation_flops(cfg, point.num_iter, point.steps, point.cfg != 1.0)
        for backend in backends:
            s = summarize(times[backend])
            per_image = {f"s_per_image_p{q}": s[f"p{q}"] / point.batch for q in (50, 90, 99)}
            metrics = {
                **per_image,
                "images_per_s": point.batch / s["p50"],
                "s_per_batch_p50": s["p50"],
                "s_per_batch_mean": s["mean"],
                "speedup_vs_official": anchor / s["p50"] if anchor else None,
                "gflop_per_image": flops["total"] / 1e9,
                "samples_s": times[backend],
            }
            params = {
                "model": plan.model,
                "weights": setup.info.get("weights"),
                "reduced": bool(plan.note),
                "seq_len": model.seq_len,
                "config": cfg,
                "backend": backend,
                "batch": point.batch,
                "num_iter": point.num_iter,
                "diffusion_steps": point.steps,
                "cfg": point.cfg,
                "cfg_on": point.cfg != 1.0,
                "cfg_schedule": "linear",
                "temperature": args.temperature,
                "sweep": point.sweep,
                "precision": precision,
                "threads": ctx.threads,
                "warmup": warmup,
                "repeats": repeats,
                "includes_decode": True,
                "onnx_export_s": setup.info.get("onnx_export_s") if backend == "onnx-native" else None,
            }
            units = {k: "s" for k in per_image}
            units |= {"images_per_s": "1/s", "s_per_batch_p50": "s", "speedup_vs_official": "x"}
            ctx.record(f"{plan.model}/{point.label}/{backend}", params, metrics, units, plan.note)
            table.add({"point": point.label, "sweep": point.sweep, "backend": backend, **metrics})
    if "onnx_skipped" in setup.info:
        print(f"  onnx-native skipped: {setup.info['onnx_skipped']}")


if __name__ == "__main__":
    sys.exit(main())
