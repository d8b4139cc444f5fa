"""The paper's Table 1 on the digits: causal AR (raster order, random order) and MAR, each under
cross-entropy (over the digits VQ tokenizer's codes) and under Diffusion Loss, judged by the
digits judge (marengine.evaluation.digits); and sampling speed, causal AR with its kv-cache
vs MAR at several iteration counts, measured side by side.

    python benchmarks/bench_family.py --out runs/family          # everything (long on a CPU: ~6 demos)
    python benchmarks/bench_family.py --out runs/family --skip-train   # re-judge / re-time cached models

Every member trains with the demo's recipe (`marengine demo`: 800 steps of batch 128, lr 1e-3
scaled, warmup 100, EMA 0.999 with warm-up) and the same seed; the cross-entropy members read
the codes of a VQ tokenizer trained once on the digits (`marengine train-vq`, cached in
OUT/vq). Trained models are cached under OUT/<model>_<loss>/ (training checkpoint, EMA folder,
train.json with the wall time) and reused when present. Samples: the demo's settings
(cfg 2, linear schedule, temperature 1), `--per-class` per digit, seed 0, for every row:

    row                 attention      order    tokens/step   model
    AR, raster          causal         raster   1             ar_raster_digits (kv-cache)
    AR, random          causal         random   1             ar_random_digits (kv-cache)
    MAR, 1 per step     bidirectional  random   1             mar_digits, num_iter = 16
    MAR, >1 per step    bidirectional  random   4             mar_digits, num_iter = 4 (L/4, as 64 of 256)

Speed: milliseconds per image to generate a batch with each trained Diffusion-Loss (and CE) model
(the head on its native kernel, without the x_0 clipping the judged samples use):
AR with its kv-cache, AR recomputing the prefix (no cache), MAR at num_iter 16, 8, 4, 2; the
runs are interleaved round-robin (repeats) so that they share the machine's conditions, and the
median is kept. Training cost: milliseconds per training step of every member x loss (the demo's
batch, AdamW), interleaved the same way. Prints the tables and writes OUT/bench_family.json (a
partial run, e.g. --skip-train --no-judge, updates it) and OUT/table1.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marengine.evaluation.digits import evaluate
from marengine.models.loading import load_model
from marengine.models.tokenizers import build_tokenizer
from marengine.sampling.engine import SampleSettings, generate
from marengine.training.config import DEMO
from marengine.training.trainer import Trainer
from marengine.training.vq import train_vq

MEMBERS = ("ar_raster_digits", "ar_random_digits", "mar_digits")
LOSSES = ("ce", "diffusion")
# Table 1 rows: (label, attention, order, tokens per step, model, num_iter)
ROWS = (
    ("AR, raster", "causal", "raster", "1", "ar_raster_digits", 16),
    ("AR, random", "causal", "random", "1", "ar_random_digits", 16),
    ("MAR, 1 per step", "bidirect.", "random", "1", "mar_digits", 16),
    ("MAR, >1 per step", "bidirect.", "random", "4", "mar_digits", 4),
)
PASS_ACCURACY = 0.9  # the demo's quality gate (python_tests/test_demo.py)


def train_member(out: Path, model: str, loss: str, vq: Path, steps: int) -> dict[str, Any]:
    """Train (or reuse) one member with the demo recipe; {"seconds", "steps", "final_loss"}."""
    folder = out / f"{model}_{loss}"
    info = folder / "train.json"
    if info.is_file() and (folder / "ema" / "config.json").is_file():
        return json.loads(info.read_text())
    cfg = dataclasses.replace(
        DEMO,
        model=model,
        loss=loss,
        tokenizer="vq" if loss == "ce" else "pixel",
        vq_ckpt=str(vq.resolve()) if loss == "ce" else None,
        out_dir=str(folder),
        max_steps=steps,
        progress=False,
        overwrite=True,
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    losses = result["losses"]
    rec = {
        "seconds": time.perf_counter() - t0,
        "steps": result["step"],
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }
    info.write_text(json.dumps(rec, indent=1))
    return rec


def load(out: Path, model: str, loss: str):
    loaded = load_model(out / f"{model}_{loss}" / "ema")
    return loaded.model, build_tokenizer(loaded.tokenizer_spec)


def judge(model, tokenizer, num_iter: int, per_class: int, settings: dict[str, Any]) -> dict[str, Any]:
    labels = np.repeat(np.arange(10), per_class)
    s = SampleSettings(num_iter=num_iter, seed=0, batch_size=250, **settings)
    t0 = time.perf_counter()
    images = generate(model, tokenizer, labels, s)
    seconds = time.perf_counter() - t0
    report = evaluate(images, labels)
    return {
        "accuracy": report.accuracy,
        "fd": report.fd_samples,
        "fd_real": report.fd_real,
        "judge_accuracy_on_real": report.classifier_accuracy,
        "sample_seconds": seconds,
        "passes": report.accuracy >= PASS_ACCURACY,
    }


def timed_generate(model, tokenizer, num_iter: int, batch: int, settings: dict[str, Any], **kw: Any) -> float:
    labels = torch.arange(batch) % 10
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = model.sample_tokens(
            batch,
            num_iter,
            settings["cfg"],
            settings["cfg_schedule"],
            labels,
            settings["temperature"],
            generator=gen,
            backend="auto",  # the native head where built (x_0 clipping would force the torch reference)
            **kw,
        )
        tokenizer.decode(latents.float())
    return time.perf_counter() - t0


def speed(out: Path, loss: str, batch: int, repeats: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Seconds per image of each way to sample, interleaved round-robin; the median of `repeats`."""
    ar, tok = load(out, "ar_raster_digits", loss)
    mar, mtok = load(out, "mar_digits", loss)
    cases: list[tuple[str, Any]] = [
        ("AR raster, kv-cache (16 steps)", lambda: timed_generate(ar, tok, 16, batch, settings)),
        ("AR raster, no cache (16 steps)", lambda: timed_generate(ar, tok, 16, batch, settings, use_cache=False)),
    ]
    for n in (16, 8, 4, 2):
        cases.append((f"MAR, {n} steps", lambda n=n: timed_generate(mar, mtok, n, batch, settings)))
    for _, fn in cases:  # warm-up (native kernels, allocator)
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            times[name].append(fn())
    base = statistics.median(times[cases[0][0]])
    rows = []
    for name, _ in cases:
        med = statistics.median(times[name])
        rows.append({"loss": loss, "case": name, "ms_per_image": 1e3 * med / batch, "vs_ar_kv_cache": med / base})
    return rows


def train_speed(out: Path, steps: int, batch: int) -> list[dict[str, Any]]:
    """Milliseconds per training step (demo batch, AdamW) of every member x loss, interleaved
    round-robin so that all share the machine's conditions; the median of `steps` after 2 warm-up."""
    from marengine.models.family import make_model
    from marengine.models.tokenizers import PixelTokenizer
    from marengine.training.data import DigitsDataset
    from marengine.training.factory import param_groups

    images = DigitsDataset("train").images[:batch]
    labels = DigitsDataset("train").labels[:batch]
    latents = PixelTokenizer(1, 2).encode(images).sample()
    codes = build_tokenizer({"kind": "vq", "ckpt": str(out / "vq"), "codebook_size": 128, "stride": 2}).encode(images)
    runs = []
    for model_name in MEMBERS:
        for loss in LOSSES:
            torch.manual_seed(0)
            model = make_model(model_name, loss).train()
            opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4, betas=(0.9, 0.95))
            x = codes.sample() if loss == "ce" else latents
            runs.append((f"{model_name}|{loss}", model, opt, x, torch.Generator().manual_seed(0), []))
    for i in range(steps + 2):
        for _, model, opt, x, gen, times in runs:
            t0 = time.perf_counter()
            loss = model(x, labels, generator=gen)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    base = statistics.median(next(r for r in runs if r[0] == "mar_digits|diffusion")[5])
    return [
        {"model": name, "ms_per_step": 1e3 * statistics.median(t), "vs_mar_diffusion": statistics.median(t) / base}
        for name, _, _, _, _, t in runs
    ]


def table1_markdown(results: dict[str, dict[str, Any]]) -> str:
    head = (
        "| | attention | order | tokens/step | CE: judge acc. | CE: FD | Diff. Loss: judge acc. | Diff. Loss: FD |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for label, attn, order, per_step, _, _ in ROWS:
        cells = []
        for loss in LOSSES:
            r = results.get(f"{label}|{loss}")
            cells += ["n/a", "n/a"] if r is None else [f"{100 * r['accuracy']:.1f}%", f"{r['fd']:.2f}"]
        lines.append(f"| {label} | {attn} | {order} | {per_step} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/family", help="cache of trained models and the results")
    ap.add_argument("--steps", type=int, default=DEMO.max_steps, help="training steps (the demo's 800)")
    ap.add_argument("--vq-steps", type=int, default=2000)
    ap.add_argument("--per-class", type=int, default=50, help="samples per digit for the judge")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--speed-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true", help="only judge and time models already in --out")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--train-speed-steps", type=int, default=10, help="0: do not time training steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"cfg": args.cfg, "cfg_schedule": "linear", "temperature": args.temperature}
    saved = out / "bench_family.json"
    record: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}  # partial runs update it
    record.update(threads=torch.get_num_threads(), settings=settings, per_class=args.per_class)

    vq = out / "vq"
    if not (vq / "config.json").is_file():
        t0 = time.perf_counter()
        report = train_vq(vq, steps=args.vq_steps)
        record["vq"] = {"seconds": time.perf_counter() - t0, "heldout_mse": report.heldout_mse}
        print(report)
    train: dict[str, Any] = {}
    for model in MEMBERS:
        for loss in LOSSES:
            if args.skip_train and not (out / f"{model}_{loss}" / "ema").is_dir():
                continue
            train[f"{model}|{loss}"] = rec = train_member(out, model, loss, vq, args.steps)
            done = f"{rec['steps']} steps in {rec['seconds']:.0f} s, loss {rec['final_loss']:.4f}"
            print(f"trained {model} / {loss}: {done}")
    record["train"] = train

    results: dict[str, dict[str, Any]] = {}
    for label, _, _, _, model, num_iter in ROWS:
        for loss in LOSSES:
            if f"{model}|{loss}" not in train or args.no_judge:
                continue
            m, tok = load(out, model, loss)
            results[f"{label}|{loss}"] = r = judge(m, tok, num_iter, args.per_class, settings)
            print(
                f"{label:<17} {loss:<9} judge accuracy {100 * r['accuracy']:5.1f}%  FD {r['fd']:6.2f} "
                f"(real-vs-real floor {r['fd_real']:.2f})  {'passes' if r['passes'] else 'FAILS'} the 90% gate"
            )
    if results:
        record["table1"] = results
        md = table1_markdown(results)
        (out / "table1.md").write_text(md)
        print("\n" + md)
    if args.train_speed_steps:
        record["train_speed"] = rows = train_speed(out, args.train_speed_steps, DEMO.batch_size)
        print(f"training step, batch {DEMO.batch_size}, median of {args.train_speed_steps} (interleaved)")
        for r in rows:
            print(f"{r['model']:<28} {r['ms_per_step']:>9.1f} ms/step {r['vs_mar_diffusion']:>6.2f}x MAR (diffusion)")

    if not args.no_speed:
        rows = []
        for loss in LOSSES:
            if {f"ar_raster_digits|{loss}", f"mar_digits|{loss}"} <= set(train):
                rows += speed(out, loss, args.speed_batch, args.repeats, settings)
        record["speed"] = rows
        print(
            f"sampling speed, batch {args.speed_batch}, {torch.get_num_threads()} thread(s), median of {args.repeats}"
        )
        print(f"{'loss':<10} {'case':<32} {'ms/image':>10} {'vs AR kv-cache':>15}")
        for r in rows:
            print(f"{r['loss']:<10} {r['case']:<32} {r['ms_per_image']:>10.2f} {r['vs_ar_kv_cache']:>14.2f}x")
    saved.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
