"""report.md from the merged records: the machine, the key ratios, one table per benchmark,
the plots, what was reduced and why, and how each benchmark script ran."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

Records = list[dict[str, Any]]


def _f(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _of(records: Records, benchmark: str) -> Records:
    return [r for r in records if r["benchmark"] == benchmark]


def _heading(title: str, intro: str = "", rows: Records = ()) -> list[str]:
    """A section's title, its introduction, and the distinct notes of its records (in italics)."""
    lines = [f"## {title}", ""] + ([intro, ""] if intro else [])
    notes = list(dict.fromkeys(r["notes"] for r in rows if r.get("notes")))
    return lines + ([f"*{n}*" for n in notes] + [""] if notes else [])


def machine_lines(records: Records) -> list[str]:
    if not records:
        return ["(no records)", ""]
    m = records[0]["machine"]
    loads = {r["benchmark"]: (r["machine"].get("loadavg_start"), r["machine"].get("loadavg_end")) for r in records}
    return [
        f"- CPU: {m.get('cpu_model')} ({m.get('cpu_cores')} cores, {m.get('cpu_cores_usable', '?')} usable); "
        f"GPU: {m.get('gpu') or 'none'}",
        f"- torch {m.get('torch')}, marengine {m.get('marengine')} (commit `{m.get('commit')}`), "
        f"onnxruntime {m.get('onnxruntime') or '-'}, Python {m.get('python')}, torch threads {m.get('torch_threads')}",
        "- load average (1, 5, 15 min) at the start / end of each benchmark: "
        + ", ".join(f"{k} {start} / {end or '-'}" for k, (start, end) in loads.items())
        + " (a load above the core count means other work shared the machine: timings are noisy, "
        "ratios measured side by side less so)",
        "",
    ]


def load_lines(load: dict[str, Any] | None) -> list[str]:
    """The machine's load around the whole suite (os.getloadavg before and after, the cores)."""
    if not load:
        return []
    return [
        f"- load average (1, 5, 15 min) before the suite {load['loadavg_before']}, after it "
        f"{load['loadavg_after']}, on {load['cores']} cores; the benchmarks ran with {load['threads']} threads",
        "",
    ]


def key_ratios(records: Records) -> list[str]:
    """The speed-ups over the anchor at each model's base point (measured interleaved)."""
    rows = [
        r for r in _of(records, "e2e") if r["params"].get("sweep") == "base" and r["params"]["backend"] != "official"
    ]
    if not rows:
        return []
    lines = ["## Key ratios", "", "Speed-up of each backend over the official-semantics anchor, p50 seconds per"]
    lines += ["image, at each model's base point (measured in the same run, interleaved round-robin):", ""]
    by_model: dict[str, dict[str, float]] = defaultdict(dict)
    point: dict[str, str] = {}
    for r in rows:
        p = r["params"]
        by_model[p["model"]][p["backend"]] = r["metrics"].get("speedup_vs_official")
        point[p["model"]] = (
            f"batch {p['batch']}, {p['num_iter']} it, {p['diffusion_steps']} steps, "
            f"{'CFG' if p['cfg_on'] else 'no CFG'}{', reduced' if p.get('reduced') else ''}"
        )
    backends = [b for b in ("engine-torch", "engine-native", "onnx-native") if any(b in v for v in by_model.values())]
    body = [
        [m, point[m]] + [_f(v.get(b), ".2f") + ("x" if v.get(b) else "") for b in backends] for m, v in by_model.items()
    ]
    return lines + _table(["model", "point"] + backends, body)


def e2e_section(records: Records) -> list[str]:
    rows = _of(records, "e2e")
    if not rows:
        return []
    lines = [
        "## End to end",
        "",
        "Seconds per image (sampling + decode) over repeats after warm-up; images/s from p50.",
    ]
    lines += [""]
    by_model: dict[str, Records] = defaultdict(list)
    for r in rows:
        by_model[r["params"]["model"]].append(r)
    for model, rs in by_model.items():
        p0 = rs[0]["params"]
        lines.append(f"### {model} ({p0.get('weights')}, {p0['seq_len']} tokens, {p0.get('precision')})")
        lines.append("")
        if rs[0]["notes"]:
            lines += [f"*{rs[0]['notes']}*", ""]
        body = [
            [
                r["params"]["sweep"],
                str(r["params"]["batch"]),
                str(r["params"]["num_iter"]),
                str(r["params"]["diffusion_steps"]),
                "on" if r["params"]["cfg_on"] else "off",
                r["params"]["backend"],
                _f(r["metrics"]["s_per_image_p50"], ".4g"),
                _f(r["metrics"]["s_per_image_p90"], ".4g"),
                _f(r["metrics"]["s_per_image_p99"], ".4g"),
                _f(r["metrics"]["images_per_s"], ".3g"),
                _f(r["metrics"].get("speedup_vs_official"), ".2f"),
                str(r["params"]["repeats"]),
            ]
            for r in rs
        ]
        header = ["sweep", "batch", "iters", "steps", "CFG", "backend", "s/img p50", "p90", "p99", "img/s"]
        lines += _table(header + ["x official", "n"], body)
    return lines


def stages_section(records: Records) -> list[str]:
    rows = _of(records, "stages")
    if not rows:
        return []
    lines = ["## Per-stage breakdown", ""]
    lines += [
        f"Timing: {rows[0]['params'].get('timing')}; 'other' is the total minus the stages (the loop's own work).",
        f"Peak memory per image: {rows[0]['params'].get('memory_method')}, divided by the batch.",
        "",
    ]
    body = []
    for r in rows:
        p, m = r["params"], r["metrics"]
        body.append(
            [
                f"{p['model']}{' (reduced)' if p.get('reduced') else ''}",
                f"b{p['batch']} it{p['num_iter']} s{p['diffusion_steps']}",
                p["backend"],
                _f(m["total_s_per_image"] * 1e3, ".4g"),
            ]
            + [
                f"{_f(m[f'{s}_s_per_image'] * 1e3, '.3g')} ({_f(100 * m[f'{s}_fraction'], '.0f')}%)"
                for s in ("backbone", "head", "decode", "other")
            ]
            + [_f(m.get("peak_memory_mb_per_image"), ".3g")]
        )
    header = ["model", "point", "backend", "total ms/img", "backbone ms", "head ms", "decode ms", "other ms"]
    return lines + _table(header + ["peak MiB/img"], body)


def quality_section(records: Records) -> list[str]:
    rows = _of(records, "quality")
    if not rows:
        return []
    lines = ["## Speed vs quality (digits judge)", ""]
    for r in rows:
        if r["name"].endswith("/train"):
            m, p = r["metrics"], r["params"]
            lines.append(
                f"- {p['model']}: preset {p['preset']}, data {p['data']}, {p['train_steps']} training steps of "
                f"batch {p['batch_size']} in {_f(m['train_seconds'], '.0f')} s "
                f"({'trained in this run' if m['trained_in_this_run'] else 'loaded from the cache'}), "
                f"final loss {_f(m['final_loss'], '.3f')}"
            )
    lines.append("")
    if rows[0]["notes"]:
        lines += [f"*{rows[0]['notes']}*", ""]
    body = [
        [
            r["params"]["model"],
            r["params"]["variant"],
            r["params"]["sweep"],
            str(r["params"]["num_iter"]),
            str(r["params"]["diffusion_steps"]),
            _f(r["metrics"]["s_per_image"], ".4g"),
            _f(100 * r["metrics"]["accuracy"], ".1f") + "%",
            _f(r["metrics"]["fd_samples"], ".3g"),
            _f(r["metrics"]["fd_real_floor"], ".3g"),
            str(r["params"]["images"]),
        ]
        for r in rows
        if "accuracy" in r["metrics"]
    ]
    header = ["model", "variant", "sweep", "iters", "steps", "s/img", "accuracy", "FD", "FD floor", "images"]
    return lines + _table(header, body)


def presets_section(records: Records) -> list[str]:
    """Fast sampling knob by knob against the official sampler (bench_presets.py)."""
    rows = _of(records, "presets")
    if not rows:
        return []
    lines = _heading(
        "Fast sampling: each knob and the `fast` preset vs `official`",
        "Side by side in one run (round-robin repeats); quality from the digits judge on the same images.",
    )
    body = []
    for r in rows:
        m, p = r["metrics"], r["params"]
        point = f"{p.get('tokens', p.get('seq_len'))} tokens, {p['settings']['num_iter']} it"
        body.append(
            [
                p["model"],
                point,
                p["variant"],
                _f(m["s_per_image"], ".4g"),
                _f(m["speedup_vs_official"], ".2f") + "x",
                (_f(100 * m["accuracy"], ".1f") + "%") if "accuracy" in m else "-",
                _f(m.get("fd_samples"), ".3g"),
                (_f(m["fd_ratio_vs_official"], ".2f") + "x") if "fd_ratio_vs_official" in m else "-",
            ]
        )
    return lines + _table(["model", "point", "variant", "s/img", "speed-up", "accuracy", "FD", "FD ratio"], body)


def latency_section(records: Records) -> list[str]:
    """Batch-1 latency (p50/p99 s per image) beside batch throughput, per sampling preset (bench_latency.py)."""
    rows = _of(records, "latency")
    intro = (
        "Seconds per image when one image is generated alone (p50 and p99 over the runs, the presets "
        "interleaved round-robin), beside images/s of a full batch; tokens and decode, same labels and seed."
    )
    header = ["model", "point", "preset", "batch-1 s/img p50", "p99", "runs", "p50 vs official", "img/s", "batch"]
    body = [
        [
            r["params"]["model"],
            "{seq_len} tokens, {num_iter} it, cfg {cfg}".format(**r["params"]),
            r["params"]["preset"],
            _f(r["metrics"]["s_per_image_b1_p50"], ".4g"),
            _f(r["metrics"]["s_per_image_b1_p99"], ".4g"),
            str(r["params"]["runs"]),
            _f(r["metrics"].get("speedup_b1_vs_official"), ".2f") + "x",
            _f(r["metrics"]["images_per_s_batch"], ".4g"),
            str(r["params"]["batch"]),
        ]
        for r in rows
    ]
    title = "Batch-1 latency and batch throughput per sampling preset"
    return _heading(title, intro, rows) + _table(header, body) if rows else []


def roofline_section(records: Records) -> list[str]:
    rows = _of(records, "roofline")
    if not rows:
        return []
    lines = _heading("Roofline (achieved vs peak)", rows=rows)
    body = []
    for r in rows:
        p, m = r["params"], r["metrics"]
        if p["kind"] == "matmul":
            what = f"matmul n={p['n']}" + (" (peak, interleaved)" if p.get("interleaved") else "")
            body.append([what, p["dtype"], "-", _f(m["gflops"], ".4g"), "-", "-"])
        else:
            body.append(
                [
                    f"{p['kind']} {p['backend']}",
                    p["dtype"],
                    _f(m["gflop"], ".4g"),
                    _f(m["gflops"], ".4g"),
                    _f(100 * m["fraction_of_matmul_peak"], ".1f") + "%",
                    _f(None if m["fraction_of_device_bf16_peak"] is None else 100 * m["fraction_of_device_bf16_peak"])
                    + ("%" if m["fraction_of_device_bf16_peak"] is not None else ""),
                ]
            )
    return lines + _table(["what", "dtype", "GFLOP", "GFLOP/s", "of matmul peak", "of device bf16 peak"], body)


def other_section(records: Records) -> list[str]:
    """Records of benchmarks without a dedicated section (e.g. head, backbone): one table each."""
    known = {"e2e", "stages", "quality", "presets", "roofline", "latency", "suite"}
    lines: list[str] = []
    for bench in dict.fromkeys(r["benchmark"] for r in records):
        if bench in known:
            continue
        rows = _of(records, bench)
        keys = list(dict.fromkeys(k for r in rows for k, v in r["metrics"].items() if not isinstance(v, (list, dict))))
        lines += [f"## {bench}", ""]
        lines += _table(["name"] + keys, [[r["name"]] + [_f(r["metrics"].get(k), ".4g") for k in keys] for r in rows])
    return lines


def write_report(
    path: Path,
    records: Records,
    plots: list[Path],
    runs: list[dict[str, Any]],
    command: str,
    wall_s: float,
    records_file: str,
    load: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """report.md: everything above, with plot links relative to the report's folder."""
    mode = runs[0].get("mode", "?") if runs else "?"
    failed = [r for r in runs if r["status"] != "ok"]
    cpu_min = sum(r.get("cpu_s", 0.0) for r in runs) / 60
    lines = [
        "# marengine benchmark report",
        "",
        f"`{command}` — mode **{mode}**, device **{runs[0].get('device', '?') if runs else '?'}**, "
        f"wall time **{wall_s / 60:.1f} min** (CPU time of the benchmarks {cpu_min:.1f} min); "
        f"records: `{records_file}` ({len(records)} records).",
        "",
    ]
    if failed:
        lines += ["**Failed:** " + ", ".join(f"{r['name']} ({r['status']}, see `{r['log']}`)" for r in failed), ""]
    lines += [f"**{w}**" for w in warnings or []] + ([""] if warnings else [])
    lines += ["## Machine", ""] + machine_lines(records) + load_lines(load)
    lines += key_ratios(records)
    lines += latency_section(records)
    for p in plots:
        if p.name == "e2e_speedup.png":
            lines += [f"![speed-up over the anchor]({p.relative_to(path.parent)})", ""]
    lines += e2e_section(records)
    lines += [f"![sweeps]({p.relative_to(path.parent)})\n" for p in plots if p.name == "e2e_sweeps.png"]
    lines += stages_section(records)
    lines += [f"![stages]({p.relative_to(path.parent)})\n" for p in plots if p.name == "stages.png"]
    lines += quality_section(records)
    lines += presets_section(records)
    lines += [f"![speed vs quality]({p.relative_to(path.parent)})\n" for p in plots if p.name == "quality.png"]
    lines += roofline_section(records)
    lines += [f"![roofline]({p.relative_to(path.parent)})\n" for p in plots if p.name == "roofline.png"]
    lines += other_section(records)
    lines += ["## Runs", ""]
    lines += [
        "Each benchmark ran in its own process. CPU s is the process's CPU time: on a quiet machine it is close "
        "to wall s x threads; far less means the benchmark waited for cores other work held.",
        "",
    ]
    lines += _table(
        ["benchmark", "script", "status", "wall s", "CPU s", "records", "log"],
        [
            [
                r["name"],
                f"`{r['script']}`",
                r["status"],
                _f(r["wall_s"], ".0f"),
                _f(r.get("cpu_s"), ".0f"),
                str(r["records"]),
                f"`{r['log']}`",
            ]
            for r in runs
        ],
    )
    path.write_text("\n".join(lines) + "\n")
    return path
