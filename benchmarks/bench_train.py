"""Training-step throughput (images/s): eager in the official style vs the engine's fastest mode,
measured side by side in one run.

    python benchmarks/bench_train.py                       # CPU: mar_digits, fp32 eager vs compiled
    python benchmarks/bench_train.py --preset mar_base --batch-size 64 --img-size 256   # GPU: MAR-B shaped

Modes
  official : eager, fp16 autocast + GradScaler on GPU (the official recipe), fp32 on CPU; AdamW (for-each)
  engine   : bf16 autocast on GPU, torch.compile'd head MLP and transformer blocks, fused AdamW, TF32
  eager    : the engine's precision without compile (to separate the two effects)
Random latents and labels stand in for data. Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from marengine.config import MARConfig
from marengine.models import MAR
from marengine.training.factory import param_groups


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
    fwd = model
    c, s = model.vae_embed_dim, model.seq_h * model.patch_size
    x = torch.randn(args.batch_size, c, s, s, device=device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    gen = torch.Generator(device).manual_seed(0)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = fwd(x, y, generator=gen)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
    med = statistics.median(times)
    return {
        "mode": mode,
        "ms_per_step": 1e3 * med,
        "imgs_per_s": args.batch_size / med,
        "mean_loss": sum(losses) / len(losses),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mar_digits")
    ap.add_argument("--img-size", type=int, default=0, help="override the preset's image size")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["official", "eager", "engine"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = [run_mode(m, args, device) for m in args.modes]
    base = rows[0]["imgs_per_s"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.preset} batch {args.batch_size} on {name}")
    print(f"{'mode':<10} {'ms/step':>10} {'img/s':>10} {'vs ' + rows[0]['mode']:>12} {'mean loss':>10}")
    for r in rows:
        r["speedup"] = r["imgs_per_s"] / base
        print(
            f"{r['mode']:<10} {r['ms_per_step']:>10.1f} {r['imgs_per_s']:>10.1f} {r['speedup']:>11.2f}x "
            f"{r['mean_loss']:>10.4f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "preset": args.preset, "batch_size": args.batch_size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
