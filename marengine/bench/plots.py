"""PNG plots of a records list (matplotlib, Agg backend: no display needed).

Each function takes the merged records and an output folder and returns the path it
wrote, or None when the records hold nothing to plot.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

Records = list[dict[str, Any]]
BACKEND_ORDER = ("official", "engine-torch", "engine-native", "onnx-native")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _of(records: Records, benchmark: str) -> Records:
    return [r for r in records if r["benchmark"] == benchmark]


def _save(fig, path: Path) -> Path:
    """Lay out, then save with the bounding box grown to every artist (titles, labels and
    legends placed outside the axes are never clipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    _pyplot().close(fig)
    return path


def _title(ax, text: str, fontsize: float = 9) -> None:
    """An axes title wrapped to the axes' width (a long title would run past the figure)."""
    inches = ax.get_position().width * ax.figure.get_figwidth()
    chars = max(20, int(inches * 72 / (0.55 * fontsize)))  # ~0.55 em per character
    ax.set_title(textwrap.fill(text, chars), fontsize=fontsize)


def _legend_outside(ax, **kw) -> None:
    """The legend to the right of the axes, clear of bars, lines and labels."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, framealpha=0.9, **kw)


def e2e_speedup(records: Records, out: Path) -> Path | None:
    """Speed-up over the official anchor at each model's base point, one bar per backend."""
    rows = [r for r in _of(records, "e2e") if r["params"].get("sweep") == "base"]
    if not rows:
        return None
    plt = _pyplot()
    models = list(dict.fromkeys(r["params"]["model"] for r in rows))
    backends = [b for b in BACKEND_ORDER if any(r["params"]["backend"] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(2.6 + 1.4 * len(models), 3.6))
    width = 0.8 / max(1, len(backends))
    for i, b in enumerate(backends):
        xs, ys = [], []
        for j, m in enumerate(models):
            hit = [r for r in rows if r["params"]["model"] == m and r["params"]["backend"] == b]
            if hit and hit[0]["metrics"].get("speedup_vs_official"):
                xs.append(j + (i - (len(backends) - 1) / 2) * width)
                ys.append(hit[0]["metrics"]["speedup_vs_official"])
        ax.bar(xs, ys, width, label=b)
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(
        [
            m + ("*" if any(r["params"].get("reduced") for r in rows if r["params"]["model"] == m) else "")
            for m in models
        ]
    )
    ax.set_ylabel("speed-up over the official anchor (p50)")
    device = rows[0]["machine"].get("gpu") or rows[0]["machine"].get("cpu_model")
    _title(ax, f"end to end, base point per model ({device}); * reduced configuration")
    ax.set_ylim(0, max([1.0] + [r["metrics"].get("speedup_vs_official") or 0 for r in rows]) * 1.12)  # room for labels
    _legend_outside(ax, title="backend", title_fontsize=7)
    return _save(fig, out / "e2e_speedup.png")


def e2e_sweeps(records: Records, out: Path) -> Path | None:
    """Seconds per image against batch size, iterations and diffusion steps, per backend."""
    rows = _of(records, "e2e")
    by_model: dict[str, Records] = defaultdict(list)
    for r in rows:
        by_model[r["params"]["model"]].append(r)
    swept = [m for m, rs in by_model.items() if {r["params"].get("sweep") for r in rs} - {"base", "cfg"}]
    if not swept:
        return None
    plt = _pyplot()
    axes_names = (("batch", "batch"), ("num_iter", "num_iter"), ("steps", "diffusion_steps"))
    fig, axes = plt.subplots(len(swept), 3, figsize=(11, 3.0 * len(swept)), squeeze=False)
    for i, m in enumerate(swept):
        for j, (sweep, key) in enumerate(axes_names):
            ax = axes[i][j]
            for b in BACKEND_ORDER:
                pts = sorted(
                    (r["params"][key], r["metrics"]["s_per_image_p50"])
                    for r in by_model[m]
                    if r["params"]["backend"] == b and r["params"].get("sweep") in (sweep, "base")
                )
                if len(pts) > 1:
                    ax.plot(*zip(*pts), marker="o", label=b)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            values = sorted({r["params"][key] for r in by_model[m] if r["params"].get("sweep") in (sweep, "base")})
            ax.set_xticks(values, [str(v) for v in values])
            ax.xaxis.set_minor_formatter(_pyplot().NullFormatter())
            ax.set_xlabel(key)
            ax.set_ylabel("s / image (p50)")
            _title(ax, f"{m}: {sweep} sweep")
            ax.grid(alpha=0.3, which="both")
        _legend_outside(axes[i][2])
    return _save(fig, out / "e2e_sweeps.png")


def stages(records: Records, out: Path) -> Path | None:
    """Stacked seconds per image: backbone, head, decode, other, per model and backend."""
    rows = _of(records, "stages")
    if not rows:
        return None
    plt = _pyplot()
    star = lambda r: "*" if r["params"].get("reduced") else ""
    labels = [f"{r['params']['model']}{star(r)} {r['params']['backend']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    for stage in ("backbone", "head", "decode", "other"):
        vals = [max(0.0, r["metrics"].get(f"{stage}_fraction") or 0.0) * 100 for r in rows]
        ax.barh(labels, vals, left=left, label=stage)
        left = [a + b for a, b in zip(left, vals)]
    for y, r in enumerate(rows):
        ax.text(101, y, f"{r['metrics']['total_s_per_image'] * 1e3:.1f} ms/img", va="center", fontsize=7)
    ax.set_xlim(0, 125)
    ax.set_xlabel("% of the generation time")
    ax.invert_yaxis()
    _legend_outside(ax, title="stage", title_fontsize=7)
    _title(ax, "where the time goes (per-stage breakdown); * reduced configuration")
    return _save(fig, out / "stages.png")


def quality(records: Records, out: Path) -> Path | None:
    """Judge accuracy and Frechet distance against seconds per image (the speed/quality figure)."""
    rows = [r for r in _of(records, "quality") if "accuracy" in r["metrics"]]
    if not rows:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple[str, str, str], Records] = defaultdict(list)
    for r in rows:
        p = r["params"]
        groups[(p["model"], p["variant"], p["sweep"])].append(r)
    for (model, variant, sweep), rs in groups.items():
        key = "num_iter" if sweep == "num_iter" else "diffusion_steps"
        rs = sorted(rs, key=lambda r: r["metrics"]["s_per_image"])
        xs = [r["metrics"]["s_per_image"] for r in rs]
        style = "-o" if sweep == "num_iter" else "--s"
        label = f"{model} {variant}: {'iterations' if sweep == 'num_iter' else 'diffusion steps'}"
        for ax, metric in ((a1, "accuracy"), (a2, "fd_samples")):
            ys = [r["metrics"][metric] for r in rs]
            ax.plot(xs, ys, style, label=label)
            for x, y, r in zip(xs, ys, rs):
                ax.annotate(str(r["params"][key]), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    floors: dict[float, list[str]] = defaultdict(list)  # the judge compares 8x8 digits: models may share a floor
    for model in dict.fromkeys(r["params"]["model"] for r in rows):
        floor = next(r["metrics"]["fd_real_floor"] for r in rows if r["params"]["model"] == model)
        if floor is not None:
            floors[round(floor, 3)].append(model)
    for floor, models in floors.items():
        a2.axhline(floor, lw=0.7, ls=":", color="gray")
        a2.text(a2.get_xlim()[0], floor, f" real-vs-real floor ({', '.join(models)})", fontsize=6, va="bottom")
    a1.set_ylabel("judge accuracy\n(samples recognised as their class)")
    a2.set_ylabel("Frechet distance to held-out digits\n(lower is better)")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image")
        ax.grid(alpha=0.3, which="both")
    a2.margins(x=0.08)  # room for the point labels at the ends
    a1.margins(x=0.08)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(3, len(labels)),
        framealpha=0.9,
    )
    quick = rows[0]["params"].get("mode") == "quick"
    fig.suptitle("speed vs quality on digits" + (" (quick: barely trained models)" if quick else ""), fontsize=10)
    return _save(fig, out / "quality.png")


def roofline(records: Records, out: Path) -> Path | None:
    """Achieved GFLOP/s of head and backbone next to the measured matmul peak."""
    rows = [r for r in _of(records, "roofline") if r["params"].get("kind") in ("head", "backbone")]
    if not rows:
        return None
    plt = _pyplot()
    labels = [f"{r['params']['kind']} {r['params']['backend']} {r['params']['dtype']}" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)))
    ax.barh(labels, [r["metrics"]["gflops"] for r in rows], color="tab:blue", label="achieved")
    peaks = {}
    for dt in dict.fromkeys(r["params"]["dtype"] for r in rows):
        peaks[dt] = next(r["metrics"]["peak_matmul_gflops"] for r in rows if r["params"]["dtype"] == dt)
        ax.axvline(peaks[dt], color="tab:red", ls="--", lw=1, label=f"measured matmul peak, {dt}: {peaks[dt]:.0f}")
    top = max([r["metrics"]["gflops"] for r in rows] + [p for p in peaks.values() if p])
    ax.set_xlim(0, top * 1.08)
    ax.set_xlabel("GFLOP/s (counted FLOPs / time)")
    ax.invert_yaxis()
    _legend_outside(ax)
    _title(ax, "achieved vs measured peak")
    return _save(fig, out / "roofline.png")


def pareto(records: Records, out: Path) -> Path | None:
    """The preset search: worst FD ratio to official against the worst speed-up, front joined."""
    rows = [r for r in _of(records, "presets") if r["params"].get("search")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for ok, colour, label in ((True, "tab:blue", "accuracy within 1 point"), (False, "tab:orange", "accuracy lost")):
        pts = [r for r in rows if (r["metrics"]["accuracy_drop"] <= 1.0) == ok]
        ax.scatter([r["metrics"]["speedup"] for r in pts], [r["metrics"]["fd_ratio"] for r in pts],
                   s=14, color=colour, label=label)  # fmt: skip
    front = sorted((r for r in rows if r["metrics"]["on_front"]), key=lambda r: r["metrics"]["speedup"])
    ax.plot([r["metrics"]["speedup"] for r in front], [r["metrics"]["fd_ratio"] for r in front], "-", color="gray",
            lw=1, label="Pareto front")  # fmt: skip
    for r in front:
        ax.annotate(r["params"]["point"], (r["metrics"]["speedup"], r["metrics"]["fd_ratio"]), fontsize=5,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(1.1, lw=0.7, ls=":", color="gray")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))  # 1x 2x 3x 5x 10x ...
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))  # plain factors, no powers of ten
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("speed-up over official (worst of the digits models)")
    ax.set_ylabel("FD / official FD (worst of the digits models)")
    ax.grid(alpha=0.3, which="both")
    _legend_outside(ax)
    _title(ax, "sampling-knob search: speed vs quality")
    return _save(fig, out / "pareto.png")


PLOTS = (e2e_speedup, e2e_sweeps, stages, quality, roofline, pareto)


def write_plots(records: Records, out: Path) -> list[Path]:
    """Every plot the records allow, as PNG files under `out`."""
    return [p for fn in PLOTS if (p := fn(records, out)) is not None]
