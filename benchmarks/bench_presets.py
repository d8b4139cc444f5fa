"""Fast sampling, knob by knob: how much faster, and at what quality, is each training-free
knob alone and the `fast` and `turbo` presets against the `official` preset, and against the
official code itself (the eager anchor of its sampling, bench/official.py: "official code")?

On the trained digits models (16 and 64 tokens), every variant generates the same images
(same labels, same seed) in round-robin repeats (so the ratios are measured side by side)
and the last images go to the digits judge (accuracy, Frechet distance). On a random-weight
MAR-B shape (its released 6x1024 head, 100 diffusion steps) only the time is measured, end
to end (tokens, then a random-weight KL-16 VAE decode), batch 1, at 64 iterations with CFG
2.9: on the CPU with --tokens (default 64 in --full: a full 256-token MAR-B image costs
minutes per variant here; pass --tokens 256 for the real size), one round, the presets only
unless --variants says otherwise (the suite's time budget).

    python benchmarks/bench_presets.py --quick --out presets.json
    python benchmarks/bench_presets.py --models mar_base --tokens 256 --repeats 1 --variants all

--search sweeps the knobs together (generation order, head sampler and steps with their
annealing shape, per-token head steps, backbone reuse with its refresh and warm-up, matmul
precision) on both digits models: first each knob alone, then the crossing of the levels that
kept quality (plus the next, more aggressive one). Every point is timed side by side with `official` and judged with
the digits judge (accuracy, FD); it prints the Pareto front (speed-up vs FD ratio, the worst of
the two models), draws it (--plot-dir) and names the fastest point within each budget:

    python benchmarks/bench_presets.py --search --images 300 --out search.json --plot-dir plots
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench import official  # noqa: E402
from marengine.bench.models import random_model, random_vae_tokenizer, trained_digits  # noqa: E402
from marengine.bench.pareto import fastest_within, pareto_front  # noqa: E402
from marengine.bench.plots import pareto as plot_pareto  # noqa: E402
from marengine.bench.script import Table, add_cache_dir_arg, add_common_args, add_count_arg, add_models_arg, run_main  # noqa: E402
from marengine.bench.timing import interleaved, summarize  # noqa: E402
from marengine.config import SAMPLING_PRESETS  # noqa: E402
from marengine.evaluation.digits import evaluate  # noqa: E402
from marengine.models.backbone_cache import CachePolicy  # noqa: E402
from marengine.models.tokenizers import to_uint8  # noqa: E402
from marengine.sampling.engine import SampleSettings, generate_latents  # noqa: E402

FAST = SAMPLING_PRESETS["fast"]
CODE = "official code"  # the eager anchor of the official code's sampling (bench/official.py), not a preset
# name -> SampleSettings fields on top of the point's (the official sampler unless changed)
VARIANTS: dict[str, dict[str, Any]] = {
    CODE: {},
    "official": {},
    "dpm++2m 10 steps": {"sampler": "dpm++2m", "steps": 10},  # a few-step solver alone
    f"steps {FAST.steps}": {"steps": FAST.steps},  # DiSA-style step annealing alone (the preset's)
    "cache": {"cache": FAST.cache},  # backbone reuse alone (the preset's)
    "fast": {"preset": "fast"},  # all of the preset together
    **({"turbo": {"preset": "turbo"}} if "turbo" in SAMPLING_PRESETS else {}),  # the measured-loss preset
}

# --search: per knob, its levels as SampleSettings fields; the first level of each is official's
SEARCH_AXES: dict[str, list[dict[str, Any]]] = {
    "order": [{}, {"order": "lattice"}, {"order": "halton"}],
    "head": [
        {},
        {"steps": "25-6"},
        {"steps": "15-4"},
        {"steps": "15-4:cos"},
        {"steps": "10-3"},
        {"steps": "8-2"},
        {"steps": "6-2"},
        {"sampler": "dpm++2m", "steps": "10-5"},
    ],
    "cache": [
        {},
        {"cache": "refresh=3,warmup=2"},
        {"cache": "refresh=5,warmup=2"},
        {"cache": "refresh=8,warmup=2"},
        {"cache": "refresh=12,warmup=1"},
    ],
    "token": [{}, {"token_steps": "hf:boost=12,frac=0.25"}],  # GtR-style: more steps where neighbours vary
    "precision": [{}, {"precision": "auto"}],
}
# the budgets a preset is chosen within (worst of the digits models): `fast` keeps a margin
# inside the run-to-run spread the acceptance allows (1 accuracy point, FD x1.1); `turbo` states its loss
BUDGETS = {
    "fast (no measurable loss)": {"accuracy_drop": 0.5, "fd_ratio": 1.05},
    "turbo (stated loss)": {"accuracy_drop": 2.0, "fd_ratio": 1.5},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_models_arg(p, "digits8, digits16, mar_base")
    add_count_arg(p, "--images", None, "digits images per variant (default: 200, quick 20)")
    add_count_arg(p, "--repeats", None, "timed rounds (default: 2, quick 1; the MAR-B shape on a CPU: 1)")
    p.add_argument("--tokens", type=int, default=None, help="MAR-B tokens per image (default: 256 on a GPU, 64 CPU)")
    add_cache_dir_arg(p)
    p.add_argument("--search", action="store_true", help="sweep the knobs together on both digits models (see above)")
    add_count_arg(p, "--search-max", 24, "at most this many crossed points in the second stage")
    p.add_argument("--plot-dir", type=Path, default=None, help="--search: draw the Pareto front here (pareto.png)")
    p.add_argument(
        "--variants",
        default=None,
        help=f"'all' or a comma-separated subset of: {', '.join(VARIANTS)} (default: all; the MAR-B shape on a "
        "CPU: the official, fast and turbo presets, the suite's time budget)",
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
    return run_main("presets", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    quick = ctx.mode == "quick"
    if args.search:
        search(ctx, args.images or (20 if quick else 200), args.cache_dir, args.search_max, args.plot_dir)
        return
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
            presets = [v for v in ("official", "fast", "turbo") if v in VARIANTS]
            chosen = args.variants or (presets if cpu else list(VARIANTS))
            mar_shape(ctx, name, tokens, 4 if quick else 64, shape_repeats, chosen, warmup=not (quick or cpu))
        else:
            raise SystemExit(f"bench_presets: unknown model {name!r}; choose among digits8, digits16, mar_base")


def _table(title: str, quality: bool) -> Table:
    cols = [("variant", "variant", "", 18), ("s/img p50", "p50", ".4g", 9), ("speed-up", "speedup", ".2f", 8),
            ("vs code", "vs_code", ".2f", 7)]  # fmt: skip
    if quality:
        cols += [("accuracy", "accuracy", ".1%", 8), ("FD", "fd", ".3g", 6), ("FD ratio", "fd_ratio", ".2f", 8)]
    return Table(cols, title)


def _latents(model, labels: Any, base: dict[str, Any], variant: str, bounded: bool) -> Any:
    """One generation of `variant`: the official code's anchor, or the engine with its settings."""
    if variant == CODE:
        gen = torch.Generator(device=model.fake_latent.device).manual_seed(0)
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=model.fake_latent.device)
        return official.sample_tokens(
            model, len(labels_t), base["num_iter"], base["cfg"], "linear", labels_t, base["temperature"], generator=gen
        )
    return generate_latents(model, labels, SampleSettings(**{**base, **VARIANTS[variant]}), bounded=bounded)


def _judge(images: np.ndarray, labels: np.ndarray):
    """The digits judge's verdict (accuracy, FD) on uint8 images of `labels`."""
    with warnings.catch_warnings():  # few samples make the covariances singular: the floor shares that bias
        warnings.filterwarnings("ignore", message="Matrix is singular")
        return evaluate(images, labels)


def _speedups(times: dict[str, list[float]], v: str) -> dict[str, float]:
    t = summarize(times[v])["p50"]
    out = {"speedup": summarize(times["official"])["p50"] / t}
    if CODE in times:
        out["vs_code"] = summarize(times[CODE])["p50"] / t
    return out


def _params(model: str, variant: str, base: dict[str, Any], repeats: int, **more: Any) -> dict[str, Any]:
    """A record's parameters: the model, the variant with its settings, the rounds, and `more`."""
    return {"model": model, "variant": variant, "settings": {**base, **VARIANTS[variant]}, "repeats": repeats, **more}


class _Digits:
    """One trained digits model with its fixed labels: images and the judge's verdict for a point."""

    def __init__(self, ctx, name: str, n: int, cache_dir: Path) -> None:
        self.name = name
        model, tokenizer, self.info = trained_digits(name, ctx.mode, cache_dir)
        self.model, self.tokenizer = model.to(ctx.device), tokenizer.to(ctx.device)
        self.labels = np.repeat(np.arange(10), -(-n // 10))[:n]
        self.base = {"num_iter": min(16, model.seq_len), "cfg": 2.0, "temperature": 1.0, "batch_size": n}

    @property
    def bounded(self) -> bool:
        return bool(getattr(self.tokenizer, "bounded", False))

    def decode(self, latents: Any) -> np.ndarray:
        return to_uint8(self.tokenizer.decode(latents.float())).cpu().numpy()

    def images(self, fields: dict[str, Any], seed: int = 0) -> np.ndarray:
        """The images of the engine with SampleSettings `fields` on top of the base point."""
        s = SampleSettings(**{**self.base, **fields, "seed": seed})
        return self.decode(generate_latents(self.model, self.labels, s, bounded=self.bounded))

    def variant_images(self, variant: str) -> np.ndarray:
        """The images of a named VARIANTS entry (the official code's anchor included)."""
        return self.decode(_latents(self.model, self.labels, self.base, variant, self.bounded))

    def judge(self, images: np.ndarray):
        return _judge(images, self.labels)


def digits(ctx, name: str, n: int, repeats: int, cache_dir: Path, chosen: list[str]) -> None:
    j = _Digits(ctx, name, n, cache_dir)
    model, base, info = j.model, j.base, j.info
    images: dict[str, np.ndarray] = {}

    def run(variant: str) -> Any:
        images[variant] = j.variant_images(variant)

    times = interleaved({v: (lambda v=v: run(v)) for v in chosen}, ctx.device, warmup=1, repeats=repeats)
    judged = {v: j.judge(images[v]) for v in chosen}
    table = _table(
        f"presets on {name} ({model.seq_len} tokens, {n} images, {base['num_iter']} iterations, cfg 2; "
        f"trained {info['train_steps']} steps)",
        quality=True,
    )
    for v in chosen:
        t = summarize(times[v])
        r = judged[v]
        row = {"variant": v, "p50": t["p50"] / n, **_speedups(times, v), "accuracy": r.accuracy,
               "fd": r.fd_samples, "fd_ratio": r.fd_samples / judged["official"].fd_samples}  # fmt: skip
        table.add(row)
        ctx.record(
            f"{name}/{v}",
            _params(
                name,
                v,
                base,
                repeats,
                images=n,
                seq_len=model.seq_len,
                weights=f"trained ({info['train_steps']} steps)",
            ),  # fmt: skip
            {
                "s_per_image": t["p50"] / n,
                "speedup_vs_official": row["speedup"],
                "speedup_vs_official_code": row.get("vs_code"),
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
    acceptance point; --quick runs 4 without warm-up, to check the path in CI), end to end: the tokens,
    then the KL-16 VAE's decode (random weights: the decode's cost without the checkpoint)."""
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise SystemExit(f"bench_presets: --tokens must be a square (64, 256, ...), got {tokens}")
    model = random_model(name, ctx.device, img_size=16 * side)  # the released 6x1024 head, 100 steps
    vae = random_vae_tokenizer(ctx.device)
    num_iter = min(iterations, model.seq_len)
    labels = [207]  # batch 1 on the CPU: one image is already minutes at 256 tokens
    base = {"num_iter": num_iter, "cfg": 2.9, "temperature": 1.0, "batch_size": 1}

    def run(variant: str) -> Any:
        return vae.decode(_latents(model, labels, base, variant, bounded=False).float())

    variants = {v: (lambda v=v: run(v)) for v in chosen}
    times = interleaved(variants, ctx.device, warmup=1 if warmup and tokens <= 64 else 0, repeats=repeats)
    size = "the real size" if tokens == 256 else f"{tokens} tokens (the real one has 256)"
    table = _table(
        f"presets on the {name} shape (random weights, {size}, batch 1, {num_iter} iterations, "
        f"cfg 2.9, {model.diffloss.gen_tables.num_steps} official diffusion steps)",
        quality=False,
    )
    for v in chosen:
        t = summarize(times[v])
        row = {"variant": v, "p50": t["p50"], **_speedups(times, v)}
        table.add(row)
        ctx.record(
            f"{name}/{v}",
            _params(name, v, base, repeats, tokens=tokens, weights="random N(0, 0.02)"),
            {
                "s_per_image": t["p50"],
                "speedup_vs_official": row["speedup"],
                "speedup_vs_official_code": row.get("vs_code"),
                **{f"s_{k}": x for k, x in t.items()},
            },  # fmt: skip
            {"s_per_image": "s"},
            "" if tokens == 256 else f"reduced to {tokens} tokens on this device",
        )


# ---------------------------------------------------------------- --search
def _short(fields: dict[str, Any]) -> str:
    """A point's name from its non-official knobs, e.g. 'lattice+s15-4+r5w2+auto'."""
    parts = [fields[k] for k in ("order", "sampler") if k in fields]
    if "steps" in fields:
        parts.append(f"s{fields['steps']}")
    if "cache" in fields:
        policy = CachePolicy.parse(fields["cache"])
        parts.append(f"r{policy.refresh_every}w{policy.warmup}")
    if "token_steps" in fields:
        parts.append(fields["token_steps"].replace("hf:boost=", "hf").replace(",frac=", "/"))
    if "precision" in fields:
        parts.append(fields["precision"])
    return "+".join(parts) or "official"


def _measure(ctx, judges: list[_Digits], points: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each point timed side by side with official (one interleaved round per model) and judged:
    its worst speed-up, FD ratio and accuracy drop (points) over the models."""
    out: dict[str, dict[str, float]] = {name: {} for name in points}
    for j in judges:
        images: dict[str, np.ndarray] = {}
        fns = {name: (lambda name=name, f=f: images.__setitem__(name, j.images(f))) for name, f in points.items()}
        times = interleaved({"official": lambda: images.__setitem__("official", j.images({})), **fns},
                            ctx.device, warmup=0, repeats=1)  # fmt: skip
        ref = j.judge(images["official"])
        for name in points:
            r = j.judge(images[name])
            m = out[name]
            m[f"{j.name}_speedup"] = times["official"][0] / times[name][0]
            m[f"{j.name}_accuracy"], m[f"{j.name}_fd"] = r.accuracy, r.fd_samples
            m[f"{j.name}_fd_ratio"] = r.fd_samples / ref.fd_samples
            m[f"{j.name}_accuracy_drop"] = 100 * (ref.accuracy - r.accuracy)
    for m in out.values():
        for key in ("speedup", "fd_ratio", "accuracy_drop"):
            vals = [m[f"{j.name}_{key}"] for j in judges]
            m[key] = min(vals) if key == "speedup" else max(vals)
    return out


def _within(m: dict[str, float], budget: dict[str, float]) -> bool:
    return all(m[k] <= v for k, v in budget.items())


def _crossed(passed: dict[str, list[int]], done: set[str], most: int) -> dict[str, dict[str, Any]]:
    """Stage two: every crossing of each knob's kept levels (official's, the ones that kept quality
    alone and the next more aggressive one), the already measured left out; at most `most`, the
    crossing of every knob's most aggressive kept level always among them."""
    kept = {}
    for axis, levels in SEARCH_AXES.items():
        good = passed[axis]
        nxt = [i for i in range(1, len(levels)) if i > max(good, default=0)][:1]
        kept[axis] = sorted({0, *good, *nxt})
    combos = [dict(zip(kept, idx)) for idx in itertools.product(*kept.values())]
    strongest = {axis: max(passed[axis], default=0) for axis in SEARCH_AXES}
    rng = np.random.default_rng(0)
    rng.shuffle(combos)
    combos.sort(key=lambda c: c != strongest)  # stable: the strongest first, the rest shuffled
    points: dict[str, dict[str, Any]] = {}
    for c in combos:
        fields = {k: v for axis, i in c.items() for k, v in SEARCH_AXES[axis][i].items()}
        name = _short(fields)
        if name not in done and name != "official" and len(points) < most:
            points[name] = fields
    return points


def search(ctx, n: int, cache_dir: Path, most: int, plot_dir: Path | None) -> None:
    judges = [_Digits(ctx, name, n, cache_dir) for name in ("digits8", "digits16")]
    for j in judges:  # untimed warm-up: first-use self-checks, allocator, caches
        j.images({"precision": "auto", "steps": 2})
    spread = {}
    for j in judges:  # official's run-to-run spread: the same labels, another seed
        a, b = j.judge(j.images({})), j.judge(j.images({}, seed=1))
        fds = sorted((a.fd_samples, b.fd_samples))
        spread[j.name] = (100 * abs(a.accuracy - b.accuracy), fds[1] / fds[0])
    print("official run-to-run spread (seed 0 vs 1): " + ", ".join(
        f"{k}: {acc:.1f} accuracy points, FD x{fd:.2f}" for k, (acc, fd) in spread.items()))  # fmt: skip
    single = {}
    for axis, levels in SEARCH_AXES.items():
        for i, fields in enumerate(levels[1:], 1):
            single[_short(fields)] = (axis, i, fields)
    results = _measure(ctx, judges, {name: f for name, (_, _, f) in single.items()})
    fast_budget = next(iter(BUDGETS.values()))
    passed = {axis: [] for axis in SEARCH_AXES}
    for name, (axis, i, _) in single.items():
        if _within(results[name], fast_budget):
            passed[axis].append(i)
    settings = {name: f for name, (_, _, f) in single.items()}
    crossed = _crossed(passed, set(single), most)
    settings.update(crossed)
    results.update(_measure(ctx, judges, crossed))
    rows = [{"point": name, **m} for name, m in results.items()]
    front = {r["point"] for r in pareto_front(rows, "speedup", "fd_ratio")}
    table = Table(
        [("point", "point", "", 34), ("speed-up", "speedup", ".2f", 8), ("FD ratio", "fd_ratio", ".2f", 8),
         ("acc drop", "accuracy_drop", ".1f", 8), ("front", "front", "", 5)],
        f"knob search on digits8 + digits16 ({n} images each, worst of the two; official's spread above)",
    )  # fmt: skip
    for r in sorted(rows, key=lambda r: r["speedup"]):
        table.add({**r, "front": "*" if r["point"] in front else ""})
        ctx.record(
            f"search/{r['point']}",
            {"search": True, "point": r["point"], "settings": settings[r["point"]], "images": n},
            {**{k: v for k, v in r.items() if k != "point"}, "on_front": r["point"] in front},
        )
    for label, budget in BUDGETS.items():
        best = fastest_within(rows, "speedup", budget)
        what = "none" if best is None else f"{best['point']} {settings[best['point']]} ({best['speedup']:.2f}x)"
        print(f"fastest within {label} {budget}: {what}")
    if plot_dir is not None:
        path = plot_pareto([rec.to_dict() for rec in ctx.records], plot_dir)
        print(f"Pareto front drawn in {path}")


if __name__ == "__main__":
    sys.exit(main())
