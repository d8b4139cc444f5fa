"""Training-step throughput (images/s): eager in the official style vs the engine's fastest mode,
measured side by side in one run.

    python benchmarks/bench_train.py                       # CPU: mar_digits, fp32 eager vs compiled
    python benchmarks/bench_train.py --preset mar_base --batch-size 64 --img-size 256   # GPU: MAR-B shaped

Modes
  official : eager, fp16 autocast + GradScaler on GPU (the official recipe), fp32 on CPU; AdamW (for-each)
  engine   : bf16 autocast on GPU, torch.compile'd head MLP and transformer blocks, fused AdamW, TF32
  eager    : the engine's precision without compile (to separate the two effects)
Random latents and labels stand in for data. Prints a table and writes the records (--out).

    python benchmarks/bench_train.py --quick --out train.json              # a tiny run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.script import Table, add_common_args, add_rounds_args, apply_quick, run_main  # noqa: E402
from marengine.bench.timing import Timer, summarize  # noqa: E402
from marengine.config import MARConfig  # noqa: E402
from marengine.models import MAR  # noqa: E402
from marengine.training.factory import param_groups  # noqa: E402

MODES = ("official", "eager", "engine")
QUICK = {"batch_size": 8, "repeats": 2, "warmup": 1, "no_compile": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default="mar_digits", help="MARConfig preset (default mar_digits)")
    p.add_argument("--img-size", type=int, default=0, help="override the preset's image size (default 0: keep it)")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step (default 128)")
    add_rounds_args(p, warmup=3, repeats=10, what="training steps per mode")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: all three")
    p.add_argument("--no-compile", action="store_true", help="engine mode without torch.compile")
    return apply_quick(p, p.parse_args(argv), QUICK)


def make(preset: str, device: torch.device, **over) -> MAR:
    torch.manual_seed(0)
    return MAR.from_config(MARConfig.from_name(preset, **over)).to(device).train()


def run_mode(mode: str, args, device: torch.device) -> dict:
    gpu = device.type == "cuda"
    over = {"img_size": args.img_size} if args.img_size else {}
    model = make(args.preset, device, **over)
    dtype = None
    if mode == "official":
        dtype = torch.float16 if gpu else None
    elif gpu:
        dtype = torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
    opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4, betas=(0.9, 0.95), fused=(mode != "official" and gpu))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if mode == "engine" and not args.no_compile:
        # compile the static-shape pieces in place (the masking gather/scatter is data-dependent)
        model.diffloss.net.compile()
        for blk in [*model.encoder_blocks, *model.decoder_blocks]:
            blk.compile(dynamic=True)
    c, s = model.vae_embed_dim, model.seq_h * model.patch_size
    x = torch.randn(args.batch_size, c, s, s, device=device)  # [B, C, H, W] latents
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    gen = torch.Generator(device).manual_seed(0)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, y, generator=gen)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    timer = Timer(device)
    for _ in range(args.warmup):
        step()
    runs = [timer(step) for _ in range(args.repeats)]
    med = summarize([t for t, _ in runs])["p50"]
    return {
        "mode": mode,
        "ms_per_step": 1e3 * med,
        "imgs_per_s": args.batch_size / med,
        "mean_loss": sum(loss for _, loss in runs) / len(runs),
    }


def body(ctx, args: argparse.Namespace) -> None:
    name = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "CPU"
    table = Table(
        [("mode", "mode", "", 10), ("ms/step", "ms_per_step", ".1f", 10), ("img/s", "imgs_per_s", ".1f", 10)]
        + [(f"vs {args.modes[0]}", "speedup", ".2f", 12), ("mean loss", "mean_loss", ".4f", 10)],
        f"{args.preset} batch {args.batch_size} on {name}",
    )
    base = None
    for mode in args.modes:
        r = run_mode(mode, args, ctx.device)
        base = base or r["imgs_per_s"]
        r["speedup"] = r["imgs_per_s"] / base
        params = {"preset": args.preset, "img_size": args.img_size or None, "batch_size": args.batch_size}
        params |= {"train_mode": mode, "compiled": mode == "engine" and not args.no_compile, "threads": ctx.threads}
        params |= {"warmup": args.warmup, "repeats": args.repeats}
        metrics = {k: r[k] for k in ("ms_per_step", "imgs_per_s", "speedup", "mean_loss")}
        ctx.record(f"{args.preset}/b{args.batch_size}/{mode}", params, metrics, {"ms_per_step": "ms"})
        table.add(r)


def main(argv: list[str] | None = None) -> int:
    return run_main("train", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
