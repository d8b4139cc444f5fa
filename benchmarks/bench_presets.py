"""Fast sampling, knob by knob: how much faster, and at what quality, is each training-free
knob alone and the `fast` preset against the `official` sampler?

On the trained digits models (16 and 64 tokens), every variant generates the same images
(same labels, same seed) in round-robin repeats (so the ratios are measured side by side)
and the last images go to the digits judge (accuracy, Frechet distance). On a random-weight
MAR-B shape (its released 6x1024 head, 100 diffusion steps) only the time is measured, at
64 iterations with CFG: on the CPU with --tokens (default 64 in --full: a full 256-token
MAR-B image costs minutes per variant here; pass --tokens 256 for the real size), one round,
official and fast only unless --variants says otherwise (the suite's time budget).

    python benchmarks/bench_presets.py --quick --out presets.json
    python benchmarks/bench_presets.py --models mar_base --tokens 256 --repeats 1 --variants all
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import random_model, trained_digits  # noqa: E402
from marengine.bench.script import Table, add_cache_dir_arg, add_common_args, finish, start  # noqa: E402
from marengine.bench.timing import interleaved, summarize  # noqa: E402
from marengine.config import SAMPLING_PRESETS  # noqa: E402
from marengine.evaluation.digits import evaluate  # noqa: E402
from marengine.models.tokenizers import to_uint8  # noqa: E402
from marengine.sampling.engine import SampleSettings, generate_latents  # noqa: E402

FAST = SAMPLING_PRESETS["fast"]
# name -> SampleSettings fields on top of the point's (the official sampler unless changed)
VARIANTS: dict[str, dict[str, Any]] = {
    "official": {},
    "dpm++2m 10 steps": {"sampler": "dpm++2m", "steps": 10},  # a few-step solver alone
    f"steps {FAST.steps}": {"steps": FAST.steps},  # DiSA-style step annealing alone (the preset's)
    "cache": {"cache": FAST.cache},  # backbone reuse alone (the preset's)
    "fast": {"preset": "fast"},  # all of the preset together
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--models", default=None, help="comma-separated subset of digits8, digits16, mar_base")
    p.add_argument("--images", type=int, default=None, help="digits images per variant (default: 200, quick 20)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 2, quick 1)")
    p.add_argument("--tokens", type=int, default=None, help="MAR-B tokens per image (default: 256 on a GPU, 64 CPU)")
    add_cache_dir_arg(p)
    p.add_argument(
        "--variants",
        default=None,
        help=f"'all' or a comma-separated subset of: {', '.join(VARIANTS)} (default: all; the MAR-B shape on a "
        "CPU outside --quick: official,fast, the suite's time budget)",
    )
    args = p.parse_args(argv)
    if args.variants == "all":
        args.variants = list(VARIANTS)
    elif args.variants is not None:
        args.variants = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown or "official" not in args.variants:
            p.error(f"--variants must include official and name only {', '.join(VARIANTS)}; got {args.variants}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = start("presets", args)
    if ctx is None:
        return 0
    quick = ctx.mode == "quick"
    models = (args.models or ("digits8,mar_base" if quick else "digits8,digits16,mar_base")).split(",")
    repeats = args.repeats or (1 if quick else 2)
    for name in models:
        if name.startswith("digits"):
            chosen = args.variants or list(VARIANTS)
            digits(ctx, name, args.images or (20 if quick else 200), repeats, args.cache_dir, chosen)
        elif name == "mar_base":
            cpu = ctx.device.type != "cuda"
            tokens = args.tokens or (256 if not cpu else (16 if quick else 64))
            # on the CPU one MAR-B image at 64 iterations takes a minute or more per variant: one
            # untimed-warm-up-free round unless --repeats asks for more (the suite's time budget)
            shape_repeats = args.repeats or (1 if cpu else repeats)
            chosen = args.variants or (["official", "fast"] if cpu and not quick else list(VARIANTS))
            mar_shape(ctx, name, tokens, 4 if quick else 64, shape_repeats, chosen, warmup=not (quick or cpu))
        else:
            raise SystemExit(f"bench_presets: unknown model {name!r}; choose among digits8, digits16, mar_base")
    return finish(ctx, args.out)


def _table(title: str, quality: bool) -> Table:
    cols = [("variant", "variant", "", 18), ("s/img p50", "p50", ".4g", 9), ("speed-up", "speedup", ".2f", 8)]
    if quality:
        cols += [("accuracy", "accuracy", ".1%", 8), ("FD", "fd", ".3g", 6), ("FD ratio", "fd_ratio", ".2f", 8)]
    return Table(cols, title)


def digits(ctx, name: str, n: int, repeats: int, cache_dir: Path, chosen: list[str]) -> None:
    model, tokenizer, info = trained_digits(name, ctx.mode, cache_dir)
    model, tokenizer = model.to(ctx.device), tokenizer.to(ctx.device)
    labels = np.repeat(np.arange(10), -(-n // 10))[:n]
    base = {"num_iter": min(16, model.seq_len), "cfg": 2.0, "temperature": 1.0, "batch_size": n}
    images: dict[str, np.ndarray] = {}

    def run(variant: str) -> Any:
        s = SampleSettings(**{**base, **VARIANTS[variant]})
        lat = generate_latents(model, labels, s, bounded=bool(getattr(tokenizer, "bounded", False)))
        images[variant] = to_uint8(tokenizer.decode(lat)).cpu().numpy()

    times = interleaved({v: (lambda v=v: run(v)) for v in chosen}, ctx.device, warmup=1, repeats=repeats)
    ref = summarize(times["official"])["p50"]
    judged = {}
    for v in chosen:
        with warnings.catch_warnings():  # few samples make the covariances singular: the floor shares that bias
            warnings.filterwarnings("ignore", message="Matrix is singular")
            judged[v] = evaluate(images[v], labels)
    table = _table(
        f"presets on {name} ({model.seq_len} tokens, {n} images, {base['num_iter']} iterations, cfg 2; "
        f"trained {info['train_steps']} steps)",
        quality=True,
    )
    for v in chosen:
        t = summarize(times[v])
        r = judged[v]
        row = {"variant": v, "p50": t["p50"] / n, "speedup": ref / t["p50"], "accuracy": r.accuracy,
               "fd": r.fd_samples, "fd_ratio": r.fd_samples / judged["official"].fd_samples}  # fmt: skip
        table.add(row)
        ctx.record(
            f"{name}/{v}",
            {
                "model": name,
                "variant": v,
                "settings": {**base, **VARIANTS[v]},
                "images": n,
                "repeats": repeats,
                "seq_len": model.seq_len,
                "weights": f"trained ({info['train_steps']} steps)",
            },  # fmt: skip
            {
                "s_per_image": t["p50"] / n,
                "speedup_vs_official": ref / t["p50"],
                "accuracy": r.accuracy,
                "fd_samples": r.fd_samples,
                "fd_ratio_vs_official": row["fd_ratio"],
                "fd_real_floor": r.fd_real,
                "accuracy_points_vs_official": 100 * (r.accuracy - judged["official"].accuracy),
            },  # fmt: skip
            {"s_per_image": "s"},
        )


def mar_shape(
    ctx, name: str, tokens: int, iterations: int, repeats: int, chosen: list[str], warmup: bool = True
) -> None:
    """Time only: the `chosen` variants on a random-weight MAR shape, `iterations` MAR iterations (64 is the
    acceptance point; --quick runs 4 without warm-up, to check the path in CI)."""
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise SystemExit(f"bench_presets: --tokens must be a square (64, 256, ...), got {tokens}")
    model = random_model(name, ctx.device, img_size=16 * side)  # the released 6x1024 head, 100 steps
    num_iter = min(iterations, model.seq_len)
    labels = [207]  # batch 1 on the CPU: one image is already minutes at 256 tokens
    base = {"num_iter": num_iter, "cfg": 2.9, "temperature": 1.0, "batch_size": 1}

    def run(variant: str) -> Any:
        return generate_latents(model, labels, SampleSettings(**{**base, **VARIANTS[variant]}))

    variants = {v: (lambda v=v: run(v)) for v in chosen}
    times = interleaved(variants, ctx.device, warmup=1 if warmup and tokens <= 64 else 0, repeats=repeats)
    ref = summarize(times["official"])["p50"]
    size = "the real size" if tokens == 256 else f"{tokens} tokens (the real one has 256)"
    table = _table(
        f"presets on the {name} shape (random weights, {size}, batch 1, {num_iter} iterations, "
        f"cfg 2.9, {model.diffloss.gen_tables.num_steps} official diffusion steps)",
        quality=False,
    )
    for v in chosen:
        t = summarize(times[v])
        table.add({"variant": v, "p50": t["p50"], "speedup": ref / t["p50"]})
        ctx.record(
            f"{name}/{v}",
            {
                "model": name,
                "variant": v,
                "settings": {**base, **VARIANTS[v]},
                "tokens": tokens,
                "repeats": repeats,
                "weights": "random N(0, 0.02)",
            },  # fmt: skip
            {"s_per_image": t["p50"], "speedup_vs_official": ref / t["p50"], **{f"s_{k}": x for k, x in t.items()}},
            {"s_per_image": "s"},
            "" if tokens == 256 else f"reduced to {tokens} tokens on this device",
        )


if __name__ == "__main__":
    sys.exit(main())
