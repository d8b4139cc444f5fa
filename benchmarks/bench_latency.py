"""Batch-1 latency beside batch throughput, per sampling preset: how long does one image take
when it is asked for alone, and how many images per second does a full batch give?

For each sampling preset among `official`, `fast` and `turbo` that config.SAMPLING_PRESETS
holds (a preset added there appears here by itself), the engine generates (tokens, then the
tokenizer's decode) N single images, the presets interleaved round-robin so that they share
the machine's conditions, and reports the p50 and p99 seconds per image (numpy percentiles
over the N runs); then batches of --batch images, a few rounds, for images/s. Every run
reseeds the same seed, so all presets do the same work on every repeat.

Models: the trained digits models (16 and 64 tokens), and a random-weight MAR-B shape (its
released widths, depths and 6x1024 head; on the CPU at 64 tokens and 16 iterations, the
real 256 tokens and 64 iterations on a GPU).

    python benchmarks/bench_latency.py --quick --out latency.json
    python benchmarks/bench_latency.py --models digits16 --runs 50
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench import script  # noqa: E402
from marengine.bench.plan import ModelPlan, build_setup  # noqa: E402
from marengine.bench.timing import interleaved, latency_metrics, summarize  # noqa: E402
from marengine.bench.variants import make_preset_run  # noqa: E402
from marengine.config import SAMPLING_PRESETS  # noqa: E402

WANTED = ("official", "fast", "turbo")  # those of them that config.SAMPLING_PRESETS holds are measured


@dataclass
class LatencyPlan:
    model: str  # digits8 | digits16 (trained) or a preset name (random weights)
    num_iter: int
    cfg: float
    batch: int  # the throughput batch
    runs: int  # single-image generations per preset
    batch_repeats: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


MAR_B_CPU = (
    "reduced for a CPU: the released MAR-B widths, depths, heads and 6x1024 head, but 128 px images "
    "(64 tokens, released: 256) and 16 iterations (released: 64); a real MAR-B image takes minutes here"
)


def presets() -> list[str]:
    """The presets measured: official, fast and turbo, where config.SAMPLING_PRESETS has them."""
    return [p for p in WANTED if p in SAMPLING_PRESETS]


def plans(mode: str, device: torch.device, runs: int | None, batch: int | None) -> list[LatencyPlan]:
    if mode == "quick":
        out = [LatencyPlan("digits8", 8, 2.0, 10, 5)]
    elif device.type == "cuda":
        out = [LatencyPlan("digits16", 16, 2.0, 256, 50, 3), LatencyPlan("mar_base", 64, 2.9, 64, 20, 2)]
    else:
        out = [
            LatencyPlan("digits8", 16, 2.0, 64, 30, 2),
            LatencyPlan("digits16", 16, 2.0, 64, 20, 2),
            LatencyPlan("mar_base", 16, 2.9, 4, 3, overrides={"img_size": 128}, note=MAR_B_CPU),
        ]
    for plan in out:
        plan.runs = runs or plan.runs
        plan.batch = batch or plan.batch
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    script.add_common_args(p)
    script.add_models_arg(p)
    script.add_count_arg(p, "--runs", None, "single-image generations per preset (default: the plan's)", lo=2)
    script.add_count_arg(p, "--batch", None, "images per batch for the throughput (default: the plan's)")
    script.add_cache_dir_arg(p)
    return p.parse_args(argv)


def body(ctx, args: argparse.Namespace) -> None:
    for plan in script.select_models(
        plans(ctx.mode, ctx.device, args.runs, args.batch), args.models, "bench_latency", ctx.mode
    ):
        run_plan(ctx, plan, args.cache_dir)


def run_plan(ctx, plan: LatencyPlan, cache_dir: Path) -> None:
    setup = build_setup(ModelPlan(plan.model, [], overrides=plan.overrides), ctx.mode, ctx.device, cache_dir, "fp32")
    num_iter = min(plan.num_iter, setup.model.seq_len)
    names = presets()
    one = {p: make_preset_run(setup, p, 1, num_iter, plan.cfg) for p in names}
    many = {p: make_preset_run(setup, p, plan.batch, num_iter, plan.cfg) for p in names}
    batch1 = interleaved(one, ctx.device, warmup=1, repeats=plan.runs)
    batched = interleaved(many, ctx.device, warmup=0, repeats=plan.batch_repeats)
    title = f"latency {plan.model} ({setup.info.get('weights')}, L={setup.model.seq_len}, {num_iter} it, "
    title += f"cfg {plan.cfg}, {ctx.threads} threads): batch 1 over {plan.runs} runs, batch {plan.batch}"
    table = script.Table(
        [
            "preset",
            ("b1 s/img p50", "s_per_image_b1_p50", ".4f", 9),
            ("b1 p99", "s_per_image_b1_p99", ".4f", 8),
            ("b1 x official", "speedup_b1_vs_official", ".2f", 6),
            (f"b{plan.batch} img/s", "images_per_s_batch", ".2f", 8),
        ],
        title + (f"\n  {plan.note}" if plan.note else ""),
    )
    anchor = summarize(batch1["official"])["p50"] if "official" in batch1 else None
    for preset in names:
        metrics = latency_metrics(batch1[preset], batched[preset], plan.batch)
        metrics["speedup_b1_vs_official"] = anchor / metrics["s_per_image_b1_p50"] if anchor else None
        speed = SAMPLING_PRESETS[preset]
        params = {
            "model": plan.model,
            "weights": setup.info.get("weights"),
            "reduced": bool(plan.note),
            "seq_len": setup.model.seq_len,
            "preset": preset,
            "sampler": speed.sampler,
            "steps": speed.steps,
            "cache": speed.cache,
            "order": speed.order,
            "num_iter": num_iter,
            "cfg": plan.cfg,
            "batch": plan.batch,
            "runs": plan.runs,
            "batch_repeats": plan.batch_repeats,
            "threads": ctx.threads,
            "includes_decode": True,
        }
        units = {"s_per_image_b1_p50": "s", "s_per_image_b1_p99": "s", "s_per_image_b1_mean": "s"}
        units |= {"images_per_s_batch": "1/s", "s_per_image_batch_p50": "s", "speedup_b1_vs_official": "x"}
        ctx.record(f"{plan.model}/{preset}", params, metrics, units, plan.note)
        table.add({"preset": preset, **metrics})


def main(argv: list[str] | None = None) -> int:
    return script.run_main("latency", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
