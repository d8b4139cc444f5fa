"""The suite behind `marengine bench`: run each benchmark script of benchmarks/ in its own
process (threads, memory and allocator state stay separate), each printing its own table
and writing its records; merge the records into one JSON file; write the plots and
report.md.

Output folder:
    report.md            the report (tables, key ratios, plots, what was reduced)
    records.json         every record of the run (a JSON list)
    plots/*.png          the figures
    records/<name>.json  each benchmark's own records;  logs/<name>.log  its output
    models/              the trained digits models (reused by the next run)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..files import atomic_write_text, claim_output_folder, record_outputs
from .records import merge_records, read_records

MODES = ("quick", "full")
BENCH_KIND = "bench"  # the output kind in the suite folder's manifest (files.claim_output_folder)
# a CPU benchmark whose CPU time is below this share of its wall time (less than half of one core,
# whatever its threads: every benchmark keeps at least one core busy) waited for cores
STARVED_SHARE = 0.5
# console lines of the ONNX exporter that say nothing about the benchmark (they stay in the logs)
NOISE = (
    "torchvision is not installed",
    "rename_mapping",
    "UserWarning: # The axis name",
    "FutureWarning",
    "return cls",
)


@dataclass
class Benchmark:
    name: str
    script: str  # file in benchmarks/
    args: dict[str, list[str]] = field(default_factory=dict)  # per mode, after the common flags
    common: bool = True  # takes --quick/--full, --device, --threads, --out
    uses_models: bool = False  # takes --cache-dir (the trained digits models)
    timeout_s: dict[str, int] = field(default_factory=lambda: {"quick": 300, "full": 1800})


# in order: quality first, as it trains (or loads) the digits models the others reuse
BENCHMARKS = (
    Benchmark("quality", "bench_quality.py", uses_models=True),
    Benchmark("presets", "bench_presets.py", uses_models=True),
    Benchmark("latency", "bench_latency.py", uses_models=True),
    Benchmark("e2e", "bench_e2e.py", uses_models=True),
    Benchmark("stages", "bench_stages.py", uses_models=True),
    Benchmark("eval", "bench_eval.py", uses_models=True),
    Benchmark("roofline", "bench_roofline.py"),
    Benchmark(
        "head",
        "bench_head.py",
        args={
            "quick": ["--rows", "16", "--heads", "128x2", "--cfg", "on", "--steps", "5", "--dtype", "fp32"],
            "full": ["--rows", "16,64", "--heads", "1024x6", "--cfg", "on", "--steps", "10", "--dtype", "fp32"],
        },
    ),
    Benchmark(
        "backbone",
        "bench_backbone.py",
        args={
            "quick": ["--img-size", "8", "--batch", "2", "--known", "0", "half", "--repeats", "3", "--no-compile"],
            "full": ["--preset", "mar_base", "--img-size", "64", "--batch", "2", "--repeats", "3", "--no-compile"],
        },
    ),
)
NAMES = tuple(b.name for b in BENCHMARKS)


def benchmarks_dir(root: Path | None = None) -> Path:
    """benchmarks/ of the source checkout that holds this package (an installed wheel has none)."""
    root = root or Path(__file__).resolve().parents[2]
    folder = root / "benchmarks"
    if not (folder / "bench_e2e.py").is_file():
        raise FileNotFoundError(
            f"marengine bench runs the scripts in benchmarks/ of a source checkout, and there is none next to "
            f"the package at {root}: clone the marengine repository and install it with `pip install -e .` "
            "(or run `python -m marengine bench` from the checkout)"
        )
    return folder


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_suite_device(device: str) -> str:
    """cpu or cuda; an error when cuda is asked for and torch sees no GPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if gpu_available() else "cpu"
    if device == "cuda" and not gpu_available():
        raise RuntimeError("--device cuda asked for, but torch sees no GPU here: run with --device cpu (or auto)")
    return device


def check_only(only: list[str] | None) -> list[str] | None:
    """The --only subset, checked: None runs every benchmark; an empty or unknown name is an error."""
    if only is None:
        return None
    names = [n.strip() for n in only]
    if not names or any(not n for n in names):
        raise ValueError(f"--only names no benchmark (got {','.join(only)!r}); give a comma-separated subset of "
                         f"{','.join(NAMES)}, or leave --only out to run them all")  # fmt: skip
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; choose among {list(NAMES)}")
    return names


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_one(
    bench: Benchmark, folder: Path, mode: str, device: str, threads: int, out: Path, echo: Callable[[str], None]
) -> dict[str, Any]:
    records, log = out / "records" / f"{bench.name}.json", out / "logs" / f"{bench.name}.log"
    cmd = [sys.executable, str(folder / bench.script)]
    if bench.common:
        cmd += [f"--{mode}", "--device", device, "--threads", str(threads), "--out", str(records)]
    if bench.uses_models:
        cmd += ["--cache-dir", str(out / "models")]
    cmd += bench.args.get(mode, [])
    root = str(folder.parent)
    env = {
        **os.environ,
        "PYTHONPATH": root + os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else root,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    records.unlink(missing_ok=True)
    echo(f"\n=== {bench.name}: {' '.join(cmd[1:])}")
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    status = "ok"
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
        expired = threading.Event()  # a watchdog: a benchmark that stops printing is stopped too

        def stop() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(bench.timeout_s[mode], stop)
        watchdog.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                logf.write(line)
                if not any(n in line for n in NOISE):
                    echo(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
    if expired.is_set():
        status = f"timed out after {bench.timeout_s[mode]} s"
    if status == "ok" and rc != 0:
        status = f"exit status {rc}"
    n = 0
    if status == "ok":
        try:
            n = len(read_records(records)) if records.is_file() else 0
        except ValueError as e:
            status = f"bad records: {e}"
        if status == "ok" and n == 0 and bench.common:
            status = "wrote no records"
    return {
        "name": bench.name,
        "script": f"benchmarks/{bench.script}",
        "command": cmd[1:],
        "status": status,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": _children_cpu_s() - cpu0,  # CPU time of the script: ~ wall x threads on a quiet machine
        "records": n,
        "log": str(log.relative_to(out)),
        "mode": mode,
        "device": device,
    }


def run_suite(
    mode: str,
    device: str,
    out: str | os.PathLike,
    threads: int | None = None,
    only: list[str] | None = None,
    echo: Callable[[str], None] = print,
    command: str = "marengine bench",
) -> dict[str, Any]:
    """Run the suite; returns {"runs", "records", "report", "plots", "wall_s", "load", "warnings", "out"}.
    `out` is resolved once against the caller's working directory: every path the scripts get
    is absolute (they run with the checkout as their working directory)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    only = check_only(only)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    # reused by design (its trained models are cached there), but only when marengine wrote it
    out = claim_output_folder(Path(os.path.abspath(out)), BENCH_KIND, reuse=True)
    folder = benchmarks_dir()
    resolved = resolve_suite_device(device)
    from .machine import load_warning, usable_cores

    threads = threads or usable_cores()
    record_outputs(out, BENCH_KIND, ["records", "logs", "plots", "models", "records.json", "report.md"])
    cores = os.cpu_count() or 1
    load_before = [round(v, 2) for v in os.getloadavg()]
    warnings = [w for w in [load_warning(load_before[0], cores, 0.0, "before the suite")] if w]
    for w in warnings:
        echo(w)
    for sub in ("records", "logs", "plots"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for old in (out / "plots").glob("*.png"):  # only this run's figures are linked from the report
        old.unlink()
    t0 = time.perf_counter()
    runs = [_run_one(b, folder, mode, resolved, threads, out, echo) for b in BENCHMARKS if not only or b.name in only]
    load_after = [round(v, 2) for v in os.getloadavg()]
    late = [w for w in [load_warning(load_after[0], cores, threads, "at the end of the suite")] if w]
    starved = [r["name"] for r in runs if r["wall_s"] > 10 and r["cpu_s"] < STARVED_SHARE * r["wall_s"]]
    if starved and resolved == "cpu":
        late.append(
            f"WARNING: {', '.join(starved)} got less than {STARVED_SHARE:.0%} of one core (CPU s vs wall s in "
            "the Runs table): other work held the cores; their timings are unreliable"
        )
    warnings += late
    load = {"cores": cores, "threads": threads, "loadavg_before": load_before, "loadavg_after": load_after}
    records = merge_records(out / "records" / f"{r['name']}.json" for r in runs if r["status"] == "ok")
    records_file = out / "records.json"
    atomic_write_text(records_file, json.dumps(records, indent=1, allow_nan=False) + "\n")
    from .plots import write_plots
    from .report import write_report

    plots = write_plots(records, out / "plots")
    wall = time.perf_counter() - t0
    report = write_report(
        out / "report.md", records, plots, runs, command, wall, records_file.name, load=load, warnings=warnings
    )
    for w in late:  # after the benchmarks' tables, where it is seen
        echo(w)
    return {
        "runs": runs,
        "records": records_file,
        "report": report,
        "plots": plots,
        "wall_s": wall,
        "load": load,
        "warnings": warnings,
        "out": out,
    }
