"""Achieved versus peak (gpt-fast's line): the GFLOP/s the head sampler and the backbone reach,
from counted FLOPs (marengine.bench.flops), against the peak this same run measures for a
plain square matmul of that dtype on that device, and on a GPU also against the device's
dense bf16 peak from its spec sheet.

    python benchmarks/bench_roofline.py --quick --out roofline.json
    python benchmarks/bench_roofline.py --device cuda          # MAR-B head and backbone at real sizes
    python benchmarks/bench_roofline.py --device cpu --head-rows 256 --head-preset mar_large
The native head's row names the CPU kernel build that ran (e.g. [avx512_amx]).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.flops import backbone_flops, head_flops  # noqa: E402
from marengine.bench.models import random_model  # noqa: E402
from marengine.bench.script import add_common_args, print_table, run_main  # noqa: E402
from marengine.bench.timing import interleaved, summarize  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# dense (no sparsity) bf16 tensor-core peaks from the vendors' spec sheets, TFLOP/s; matched by
# a substring of torch.cuda.get_device_name() (first match wins, so specific names come first)
GPU_BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX A6000", 154.8),
]


def device_bf16_peak(name: str | None) -> float | None:
    """Spec-sheet dense bf16 peak of a GPU in GFLOP/s, or None for an unknown device."""
    for key, tflops in GPU_BF16_PEAK_TFLOPS:
        if name and key in name:
            return tflops * 1e3
    return None


@dataclass
class Plan:
    dtypes: tuple[str, ...]  # matmul peaks measured, and the dtypes head and backbone run in
    matmul_sizes: tuple[int, ...]
    head_preset: str
    head_rows: int  # chain rows (tokens); the network sees twice as many with CFG
    head_steps: int
    backbone_preset: str
    backbone_overrides: dict
    backbone_batch: int
    repeats: int
    note: str = ""


def plan(mode: str, device: torch.device) -> Plan:
    if mode == "quick":
        return Plan(("fp32",), (256, 512), "mar_digits", 32, 5, "mar_digits", {}, 4, 3, "quick: tiny shapes")
    if device.type == "cuda":
        return Plan(("fp32", "bf16"), (4096, 8192), "mar_base", 4096, 100, "mar_base", {}, 128, 5)
    return Plan(
        ("fp32", "bf16"),
        (1024, 2048),
        "mar_base",
        64,
        10,
        "mar_base",
        {"img_size": 64},
        2,
        3,
        "CPU: MAR-B head (6x1024) on 64 tokens with CFG and 10 diffusion steps; MAR-B backbone on 16-token "
        "images (64 px latents) with the 64 buffer tokens, batch 2 (one image with CFG), half the tokens known; "
        "fp32 (the engine's CPU default) and bf16 (autocast; the native head then runs bf16 weights); the matmul "
        "peak is timed in the same interleaved rounds as head and backbone",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--head-rows", type=int, default=None, help="head chain rows (default: the plan's; CPU 64)")
    p.add_argument("--head-steps", type=int, default=None, help="head diffusion steps (default: the plan's; CPU 10)")
    p.add_argument("--head-preset", default=None, help="head size preset, e.g. mar_large (default: the plan's)")
    return p.parse_args(argv)


def matmul(ctx, dtype: str, n: int):
    """An n x n x n matmul of `dtype` on the device, as a callable."""
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g).to(ctx.device, DTYPES[dtype])
    b = torch.randn(n, n, generator=g).to(ctx.device, DTYPES[dtype])
    return lambda: a @ b


def matmul_peak(ctx, dtype: str, sizes: tuple[int, ...], repeats: int) -> int:
    """The size (of `sizes`) at which an n x n x n matmul reaches the most GFLOP/s (TF32 off
    for fp32: the plain fp32 peak); each size is recorded."""
    best, best_n = 0.0, sizes[0]
    torch.backends.cuda.matmul.allow_tf32 = False
    for n in sizes:
        s = summarize(interleaved({"mm": matmul(ctx, dtype, n)}, ctx.device, warmup=2, repeats=repeats)["mm"])
        gflops = 2 * n**3 / s["p50"] / 1e9
        ctx.record(
            f"matmul/{dtype}/n{n}",
            {"kind": "matmul", "dtype": dtype, "n": n, "threads": ctx.threads, "interleaved": False},
            {"gflops": gflops, "seconds_p50": s["p50"]},
            {"gflops": "GFLOP/s", "seconds_p50": "s"},
        )
        if gflops > best:
            best, best_n = gflops, n
    return best_n


def main(argv: list[str] | None = None) -> int:
    return run_main("roofline", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    p = plan(ctx.mode, ctx.device)
    for key in ("head_rows", "head_steps", "head_preset"):
        if getattr(args, key) is not None:
            setattr(p, key, getattr(args, key))
    from marengine.ops import native

    gpu_peak = device_bf16_peak(ctx.machine.get("gpu")) if ctx.device.type == "cuda" else None
    peak_n = {dt: matmul_peak(ctx, dt, p.matmul_sizes, p.repeats) for dt in p.dtypes}
    head_model = random_model(p.head_preset, ctx.device)
    bb_model = head_model if p.backbone_preset == p.head_preset and not p.backbone_overrides else None
    bb_model = bb_model or random_model(p.backbone_preset, ctx.device, **p.backbone_overrides)
    cfg_h, cfg_b = head_model.config.to_dict(), bb_model.config.to_dict()
    g = torch.Generator().manual_seed(0)
    rows_net = 2 * p.head_rows  # CFG: conditional and unconditional rows
    z = torch.randn(rows_net, cfg_h["decoder_embed_dim"], generator=g).to(ctx.device)
    from marengine.diffusion.schedule import make_tables

    head_model.diffloss.gen_tables = make_tables(str(p.head_steps))
    L = bb_model.seq_len
    tokens = torch.randn(p.backbone_batch, L, bb_model.token_embed_dim, generator=g).to(ctx.device)
    known = torch.stack([torch.randperm(L, generator=g)[: L // 2].sort().values for _ in range(p.backbone_batch)])
    known = known.to(ctx.device)
    ce = torch.randn(p.backbone_batch, cfg_b["encoder_embed_dim"], generator=g).to(ctx.device)
    flops_head = head_flops(cfg_h, p.head_rows, p.head_steps, guided=True)
    flops_bb = p.backbone_batch * backbone_flops(cfg_b, L // 2)
    rows = []
    for dt in p.dtypes:
        amp = (lambda: torch.autocast(ctx.device.type, dtype=DTYPES[dt])) if dt != "fp32" else nullcontext

        def head_run(backend: str):
            def run():
                with torch.no_grad(), amp():
                    return head_model.diffloss.sample(
                        z, 1.0, 3.0, generator=torch.Generator(ctx.device).manual_seed(0), backend=backend
                    )

            return run

        def backbone_run():
            with torch.no_grad(), amp():
                return bb_model.backbone(tokens, known, ce)

        # the peak is measured in the same rounds as the networks, so that load on a shared machine hits both
        n = peak_n[dt]
        runs = {"matmul/peak": matmul(ctx, dt, n), "head/torch": head_run("torch"), "backbone/eager": backbone_run}
        if native.available(ctx.device):
            runs["head/native"] = head_run("native")
        with native.weights_frozen():  # as in the MAR loop: head weights fingerprinted once, not per call
            times = interleaved(runs, ctx.device, warmup=1, repeats=p.repeats)
        peak = 2 * n**3 / summarize(times.pop("matmul/peak"))["p50"] / 1e9
        ctx.record(
            f"matmul/{dt}/n{n}/interleaved",
            {"kind": "matmul", "dtype": dt, "n": n, "threads": ctx.threads, "interleaved": True},
            {"gflops": peak},
            {"gflops": "GFLOP/s"},
        )
        rows.append({"what": f"matmul {dt} n={n} (peak)", "gflops": peak})
        for name, samples in times.items():
            s = summarize(samples)
            flops = flops_head if name.startswith("head") else flops_bb
            gflops = flops / s["p50"] / 1e9
            part, backend = name.split("/")
            metrics = {
                "gflop": flops / 1e9,
                "seconds_p50": s["p50"],
                "gflops": gflops,
                "peak_matmul_gflops": peak,
                "fraction_of_matmul_peak": gflops / peak,
                "device_bf16_peak_gflops": gpu_peak,
                "fraction_of_device_bf16_peak": gflops / gpu_peak if gpu_peak else None,
            }
            shape = (
                {"preset": p.head_preset, "rows": p.head_rows, "net_rows": rows_net, "steps": p.head_steps, "cfg": True}
                if part == "head"
                else {"preset": p.backbone_preset, "batch": p.backbone_batch, "seq_len": L, "known": L // 2}
            )
            params = {"kind": part, "backend": backend, "dtype": dt, "threads": ctx.threads, **shape}
            isa = native._C.cpu_kernels() if backend == "native" and ctx.device.type == "cpu" else None
            if isa:  # which build of the CPU kernels ran (MARENGINE_CPU_KERNELS forces one)
                params["cpu_kernels"] = isa
            if part == "backbone":
                params["config_overrides"] = p.backbone_overrides
            units = {"gflops": "GFLOP/s", "peak_matmul_gflops": "GFLOP/s", "seconds_p50": "s", "gflop": "GFLOP"}
            ctx.record(f"{part}/{backend}/{dt}", params, metrics, units, p.note)
            rows.append({"what": f"{part} {backend} {dt}" + (f" [{isa}]" if isa else ""), **metrics})
    print_table(
        rows,
        ["what", "gflop", "seconds_p50", "gflops", ("of matmul peak", "fraction_of_matmul_peak", ".1%", 0)]
        + [("of device bf16 peak", "fraction_of_device_bf16_peak", ".2%", 0)],
        f"roofline ({ctx.device}, {ctx.threads} threads)" + (f"\n  {p.note}" if p.note else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
