"""The paper's Table 1 on the digits: causal AR (raster order, random order) and MAR, each under
cross-entropy (over the digits VQ tokenizer's codes) and under Diffusion Loss, judged by the
digits judge (marengine.evaluation.digits); and sampling speed, causal AR with its kv-cache
vs MAR at several iteration counts, measured side by side.

    python benchmarks/bench_family.py --dir runs/family          # everything (long on a CPU: ~6 demos)
    python benchmarks/bench_family.py --dir runs/family --skip-train   # re-judge / re-time cached models
    python benchmarks/bench_family.py --quick --out family.json  # a few training steps (runs/family-quick)

Every member trains with the demo's recipe (`marengine demo`: 800 steps of batch 128, lr 1e-3
scaled, warmup 100, EMA 0.999 with warm-up) and the same seed; the cross-entropy members read
the codes of a VQ tokenizer trained once on the digits (`marengine train-vq`, cached in
DIR/vq). Trained models are cached under DIR/<model>_<loss>/ (training checkpoint, EMA folder,
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
batch, AdamW), interleaved the same way. Prints the tables and writes DIR/bench_family.json (a
partial run, e.g. --skip-train --no-judge, updates it) and DIR/table1.md; --out writes the records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import fit  # noqa: E402
from marengine.bench.script import Table, add_common_args, add_rounds_args, apply_quick, run_main  # noqa: E402
from marengine.bench.timing import Timer, interleaved, summarize  # noqa: E402
from marengine.evaluation.digits import evaluate  # noqa: E402
from marengine.models.loading import load_model  # noqa: E402
from marengine.models.tokenizers import build_tokenizer  # noqa: E402
from marengine.sampling.engine import SampleSettings, generate  # noqa: E402
from marengine.training.config import DEMO  # noqa: E402
from marengine.training.vq import train_vq  # noqa: E402

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
QUICK = {
    "dir": "runs/family-quick",  # quick models never stand in for the real ones
    "steps": 10,
    "vq_steps": 20,
    "per_class": 2,
    "speed_batch": 4,
    "repeats": 1,
    "train_speed_steps": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, device="cpu")
    p.add_argument("--dir", default="runs/family", help="cache of trained models and the results (default %(default)s)")
    p.add_argument("--steps", type=int, default=DEMO.max_steps, help="training steps (default: the demo's 800)")
    p.add_argument("--vq-steps", type=int, default=2000, help="VQ tokenizer training steps (default 2000)")
    p.add_argument("--per-class", type=int, default=50, help="samples per digit for the judge (default 50)")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale (default 2.0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--speed-batch", type=int, default=64, help="images per timed generation (default 64)")
    add_rounds_args(p, warmup=1, repeats=3, what="of the sampling-speed cases")
    p.add_argument("--skip-train", action="store_true", help="only judge and time models already in --dir")
    p.add_argument("--no-speed", action="store_true", help="do not time sampling")
    p.add_argument("--no-judge", action="store_true", help="do not judge samples")
    p.add_argument("--train-speed-steps", type=int, default=10, help="timed training steps (default 10; 0: none)")
    return apply_quick(p, p.parse_args(argv), QUICK)


def train_member(out: Path, model: str, loss: str, vq: Path, steps: int) -> dict[str, Any]:
    """Train (or reuse) one member with the demo recipe; {"seconds", "steps", "final_loss"}."""
    folder = out / f"{model}_{loss}"
    info = folder / "train.json"
    if info.is_file() and (folder / "ema" / "config.json").is_file():
        return json.loads(info.read_text())
    result, seconds = fit(
        dataclasses.replace(
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
    )
    losses = result["losses"]
    rec = {
        "seconds": seconds,
        "steps": result["step"],
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }
    info.write_text(json.dumps(rec, indent=1))
    return rec


def load(out: Path, model: str, loss: str, device: torch.device):
    loaded = load_model(out / f"{model}_{loss}" / "ema", device=device)
    return loaded.model, build_tokenizer(loaded.tokenizer_spec).to(device)


def judge(model, tokenizer, num_iter: int, per_class: int, settings: dict[str, Any]) -> dict[str, Any]:
    labels = np.repeat(np.arange(10), per_class)
    s = SampleSettings(num_iter=num_iter, seed=0, batch_size=250, **settings)
    seconds, images = Timer("cpu")(lambda: generate(model, tokenizer, labels, s))
    report = evaluate(images, labels)
    return {
        "accuracy": report.accuracy,
        "fd": report.fd_samples,
        "fd_real": report.fd_real,
        "judge_accuracy_on_real": report.classifier_accuracy,
        "sample_seconds": seconds,
        "passes": report.accuracy >= PASS_ACCURACY,
    }


def generation(model, tokenizer, num_iter: int, batch: int, settings: dict[str, Any], **kw: Any):
    """A callable generating `batch` images (tokens, then decode), reseeded on every call."""
    labels = torch.arange(batch, device=model.fake_latent.device) % 10

    def run() -> None:
        with torch.no_grad():
            latents = model.sample_tokens(
                batch,
                num_iter,
                settings["cfg"],
                settings["cfg_schedule"],
                labels,
                settings["temperature"],
                generator=torch.Generator(labels.device).manual_seed(0),
                backend="auto",  # the native head where built (x_0 clipping would force the torch reference)
                **kw,
            )
            tokenizer.decode(latents.float())

    return run


def speed(ctx, out: Path, loss: str, args: argparse.Namespace, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Seconds per image of each way to sample, interleaved round-robin; the median of the repeats."""
    batch = args.speed_batch
    ar, tok = load(out, "ar_raster_digits", loss, ctx.device)
    mar, mtok = load(out, "mar_digits", loss, ctx.device)
    cases = {
        "AR raster, kv-cache (16 steps)": generation(ar, tok, 16, batch, settings),
        "AR raster, no cache (16 steps)": generation(ar, tok, 16, batch, settings, use_cache=False),
    }
    cases |= {f"MAR, {n} steps": generation(mar, mtok, n, batch, settings) for n in (16, 8, 4, 2)}
    times = interleaved(cases, ctx.device, warmup=args.warmup, repeats=args.repeats)
    base = summarize(times[next(iter(cases))])["p50"]
    rows = []
    for name, t in times.items():
        med = summarize(t)["p50"]
        rows.append({"loss": loss, "case": name, "ms_per_image": 1e3 * med / batch, "vs_ar_kv_cache": med / base})
    return rows


def train_speed(ctx, out: Path, steps: int, batch: int) -> list[dict[str, Any]]:
    """Milliseconds per training step (demo batch, AdamW) of every member x loss, interleaved
    round-robin so that all share the machine's conditions; the median of `steps` after 2 warm-up."""
    from marengine.models.family import make_model
    from marengine.models.tokenizers import PixelTokenizer
    from marengine.training.data import DigitsDataset
    from marengine.training.factory import param_groups

    images = DigitsDataset("train").images[:batch]
    labels = DigitsDataset("train").labels[:batch].to(ctx.device)
    latents = PixelTokenizer(1, 2).encode(images).sample().to(ctx.device)
    codes = build_tokenizer({"kind": "vq", "ckpt": str(out / "vq"), "codebook_size": 128, "stride": 2}).encode(images)

    def step_of(model_name: str, loss: str):
        torch.manual_seed(0)
        model = make_model(model_name, loss).to(ctx.device).train()
        opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4, betas=(0.9, 0.95))
        x = codes.sample().to(ctx.device) if loss == "ce" else latents
        gen = torch.Generator(ctx.device).manual_seed(0)

        def step() -> None:
            model(x, labels, generator=gen).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    runs = {f"{m}|{loss}": step_of(m, loss) for m in MEMBERS for loss in LOSSES}
    times = {k: summarize(v)["p50"] for k, v in interleaved(runs, ctx.device, warmup=2, repeats=steps).items()}
    base = times["mar_digits|diffusion"]
    return [{"model": k, "ms_per_step": 1e3 * t, "vs_mar_diffusion": t / base} for k, t in times.items()]


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


def body(ctx, args: argparse.Namespace) -> None:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"cfg": args.cfg, "cfg_schedule": "linear", "temperature": args.temperature}
    saved = out / "bench_family.json"
    record: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}  # partial runs update it
    record.update(threads=ctx.threads, settings=settings, per_class=args.per_class)
    vq = out / "vq"
    if not (vq / "config.json").is_file():
        seconds, report = Timer("cpu")(lambda: train_vq(vq, steps=args.vq_steps))
        record["vq"] = {"seconds": seconds, "heldout_mse": report.heldout_mse}
        print(report)
    train: dict[str, Any] = {}
    for model in MEMBERS:
        for loss in LOSSES:
            if args.skip_train and not (out / f"{model}_{loss}" / "ema").is_dir():
                continue
            train[f"{model}|{loss}"] = rec = train_member(out, model, loss, vq, args.steps)
            done = f"{rec['steps']} steps in {rec['seconds']:.0f} s, loss {rec['final_loss']:.4f}"
            print(f"trained {model} / {loss}: {done}")
            ctx.record(f"train/{model}/{loss}", {"model": model, "loss": loss, "kind": "train"}, rec, {"seconds": "s"})
    record["train"] = train
    results: dict[str, dict[str, Any]] = {}
    judged = Table(
        [("row", "row", "", 17), ("loss", "loss", "", 9), "accuracy", ("FD", "fd", ".2f", 6)]
        + [("FD floor", "fd_real", ".2f", 8), ("90% gate", "gate", "", 8)]
    )
    for label, _, _, _, model, num_iter in ROWS:
        for loss in LOSSES:
            if f"{model}|{loss}" not in train or args.no_judge:
                continue
            m, tok = load(out, model, loss, ctx.device)
            results[f"{label}|{loss}"] = r = judge(m, tok, num_iter, args.per_class, settings)
            params = {"row": label, "model": model, "loss": loss, "num_iter": num_iter, "kind": "judge", **settings}
            ctx.record(f"judge/{label}/{loss}", params, r, {"sample_seconds": "s"})
            judged.add({"row": label, "loss": loss, **r, "gate": "passes" if r["passes"] else "FAILS"})
    if results:
        record["table1"] = results
        md = table1_markdown(results)
        (out / "table1.md").write_text(md)
        print("\n" + md)
    if args.train_speed_steps:
        record["train_speed"] = rows = train_speed(ctx, out, args.train_speed_steps, DEMO.batch_size)
        table = Table(
            [("model", "model", "", 28), ("ms/step", "ms_per_step", ".1f", 9)]
            + [("x MAR (diffusion)", "vs_mar_diffusion", ".2f", 17)],
            f"training step, batch {DEMO.batch_size}, median of {args.train_speed_steps} (interleaved)",
        )
        for r in rows:
            params = {
                "model": r["model"],
                "batch": DEMO.batch_size,
                "steps": args.train_speed_steps,
                "kind": "train_speed",
            }
            ctx.record(f"train_speed/{r['model']}", params, r, {"ms_per_step": "ms"})
            table.add(r)
    if not args.no_speed:
        rows = []
        for loss in LOSSES:
            if {f"ar_raster_digits|{loss}", f"mar_digits|{loss}"} <= set(train):
                rows += speed(ctx, out, loss, args, settings)
        record["speed"] = rows
        table = Table(
            [("loss", "loss", "", 10), ("case", "case", "", 32), ("ms/image", "ms_per_image", ".2f", 10)]
            + [("vs AR kv-cache", "vs_ar_kv_cache", ".2f", 15)],
            f"sampling speed, batch {args.speed_batch}, {ctx.threads} thread(s), median of {args.repeats}",
        )
        for r in rows:
            params = {"loss": r["loss"], "case": r["case"], "batch": args.speed_batch, "kind": "speed", **settings}
            ctx.record(f"speed/{r['loss']}/{r['case']}", params, r, {"ms_per_image": "ms"})
            table.add(r)
    saved.write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    return run_main("family", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
