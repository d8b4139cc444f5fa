"""What every benchmark script shares: its common flags (--quick/--full, --device, --threads,
--out), the --quick shrinking of its own defaults, the timed-rounds flags, the start (device,
threads, machine metadata taken once) and the end (records written), and a plain-text table
printer whose usual columns are named once here.

A script is

    def parse_args(argv):  p = argparse.ArgumentParser(...); add_common_args(p); ...
    def body(ctx, args):   ... ctx.record(...); Table(["backend", "s_per_image_p50", ...]).add(row)
    def main(argv=None):   return run_main("name", parse_args(argv), body)
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from ..checks import arg, check_int
from .machine import finish_info, machine_info, usable_cores
from .records import Record, write_records

DEVICES = ("auto", "cpu", "cuda")


def add_cache_dir_arg(p: argparse.ArgumentParser) -> None:
    """--cache-dir: where the trained digits models are cached (marengine bench passes OUT/models)."""
    p.add_argument(
        "--cache-dir", type=Path, default=Path("runs/bench/models"), help="trained digits models (default %(default)s)"
    )


def add_models_arg(p: argparse.ArgumentParser, models: str = "the plan's models") -> None:
    """--models: a subset of a benchmark's plan (select_models picks it)."""
    p.add_argument("--models", default=None, help=f"comma-separated subset of {models} (default: all)")


def add_count_arg(
    p: argparse.ArgumentParser, flag: str, default: int | None, help: str, lo: int = 1, aliases: Sequence[str] = ()
) -> None:
    """An integer flag checked to be >= lo (a bad value is one argparse line naming the flag);
    its help ends with the default unless the default is None (then `help` says what it is)."""
    text = help if default is None else f"{help} (default {default})"
    p.add_argument(flag, *aliases, type=arg(check_int, flag, lo=lo), default=default, help=text)


def add_plan_args(p: argparse.ArgumentParser, backends: Sequence[str]) -> None:
    """--models / --backends: subsets of a benchmark's plan (bench/plan.py)."""
    add_models_arg(p)
    p.add_argument("--backends", default=",".join(backends), help="comma-separated subset of " + ",".join(backends))


def select_models(plans: Sequence[Any], models: str | None, benchmark: str, mode: str) -> list[Any]:
    """The plans (each with a .model) named by --models (all when None); an unknown name exits
    with a line that lists the plan's models."""
    if not models:
        return list(plans)
    names = [n.strip() for n in models.split(",")]
    missing = sorted(set(names) - {p.model for p in plans})
    if missing:
        raise SystemExit(f"{benchmark}: {missing} not in the {mode} plan: {[p.model for p in plans]}")
    return [p for p in plans if p.model in names]


def add_common_args(p: argparse.ArgumentParser, device: str = "auto", threads: int | None = None) -> None:
    """--quick/--full, --device, --threads and --out; `device` and `threads` are the script's defaults."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="tiny shapes, few repeats")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the full sweep (default)")
    p.set_defaults(mode="full")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=device,
        help=f"auto: cuda when torch sees a GPU, else cpu (default {device})",
    )
    cores = "" if threads else " (default: all usable cores)"
    add_count_arg(p, "--threads", threads, "torch (and onnxruntime) CPU threads" + cores)
    p.add_argument("--out", type=Path, default=None, help="write this benchmark's records here (a JSON list)")


def add_rounds_args(p: argparse.ArgumentParser, warmup: int, repeats: int, what: str = "per point") -> None:
    """--warmup / --repeats (also spelled --repeat): untimed and timed rounds."""
    add_count_arg(p, "--warmup", warmup, f"untimed rounds {what}", lo=0)
    add_count_arg(p, "--repeats", repeats, f"timed rounds {what}", aliases=("--repeat",))


def apply_quick(p: argparse.ArgumentParser, args: argparse.Namespace, quick: dict[str, Any]) -> argparse.Namespace:
    """Under --quick, the script's tiny values for the options the user left at their defaults."""
    if args.mode == "quick":
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


@dataclass
class Context:
    benchmark: str
    mode: str
    device: torch.device
    threads: int
    machine: dict[str, Any]
    records: list[Record] = field(default_factory=list)

    def record(
        self,
        name: str,
        params: dict[str, Any],
        metrics: dict[str, Any],
        units: dict[str, str] | None = None,
        notes: str = "",
    ) -> Record:
        rec = Record(
            self.benchmark,
            name,
            {"mode": self.mode, "device": str(self.device), **params},
            metrics,
            self.machine,
            units or {},
            notes,
        )
        self.records.append(rec)
        return rec


def start(benchmark: str, args: argparse.Namespace) -> Context | None:
    """Resolve the device and threads and take the machine's metadata; None (after saying so)
    when a GPU is asked for and torch sees none: the caller exits cleanly."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{benchmark}: skipped: --device cuda asked for, but torch sees no GPU here", file=sys.stderr)
        return None
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if gpu else "cpu")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"{benchmark}: --threads must be >= 1, got {args.threads}")
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("marengine").setLevel(logging.INFO)  # e.g. "training the digits model ..."
    return Context(benchmark, args.mode, device, threads, machine_info(str(device)))


def finish(ctx: Context, out: Path | None) -> int:
    finish_info(ctx.machine)  # every record shares this dict: each gets the load average at the end
    if out is not None:
        write_records(out, ctx.records)
        print(f"{ctx.benchmark}: wrote {len(ctx.records)} records to {out}")
    return 0


def run_main(benchmark: str, args: argparse.Namespace, body: Callable[[Context, argparse.Namespace], None]) -> int:
    """The whole life of a script: start (0 when it is skipped), body(ctx, args), finish."""
    ctx = start(benchmark, args)
    if ctx is None:
        return 0
    body(ctx, args)
    return finish(ctx, args.out)


# the usual columns, named once: key -> (header, format spec, width); a table names them by key
COLUMNS: dict[str, tuple[str, str, int]] = {
    "backend": ("backend", "", 13),
    "point": ("point", "", 18),
    "sweep": ("sweep", "", 8),
    "variant": ("variant", "", 8),
    "preset": ("preset", "", 8),
    "model": ("model", "", 8),
    "what": ("what", "", 24),
    "stage": ("stage", "", 8),
    "images": ("images", "d", 6),
    "num_iter": ("num_iter", "", 4),
    "steps": ("steps", "", 4),
    "seconds": ("seconds", ".2f", 7),
    "seconds_p50": ("s", ".4f", 7),
    "ms": ("ms", ".2f", 8),
    "gflop": ("GFLOP", ".1f", 6),
    "gflops": ("GFLOP/s", ".1f", 7),
    "s_per_image": ("s/img", ".4f", 7),
    "s_per_image_p50": ("s/img p50", ".4f", 9),
    "s_per_image_p90": ("p90", ".4f", 8),
    "s_per_image_p99": ("p99", ".4f", 8),
    "images_per_s": ("img/s", ".2f", 8),
    "items_per_s": ("items/s", ".0f", 9),
    "speedup_vs_official": ("x official", ".2f", 6),
    "accuracy": ("accuracy", ".1%", 8),
    "fd_samples": ("FD", ".2f", 6),
    "fd_real_floor": ("FD floor", ".2f", 6),
    "share": ("share", ".0%", 5),
    "peak_rss_mb": ("peak RSS MB", ".0f", 11),
}
Column = Union[str, tuple[str, str, str, int]]  # a key of COLUMNS, or (header, key, format spec, width)


def column(c: Column) -> tuple[str, str, str, int]:
    """(header, key, format spec, width) of a column given by its key in COLUMNS or in full."""
    if isinstance(c, str):
        if c not in COLUMNS:
            raise KeyError(f"no column {c!r} in bench.script.COLUMNS: give it as (header, key, spec, width)")
        header, spec, width = COLUMNS[c]
        return header, c, spec, width
    return c


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


class Table:
    """A table printed row by row as results come in (columns: header, key, format spec, width)."""

    def __init__(self, columns: Sequence[Column], title: str = "") -> None:
        self.columns = [(h, k, spec, max(len(h), w)) for h, k, spec, w in map(column, columns)]
        self.title, self.started = title, False

    def add(self, row: dict[str, Any]) -> None:
        if not self.started:
            if self.title:
                print(f"\n{self.title}")
            print("  ".join(h.rjust(w) for h, _, _, w in self.columns), flush=True)
            self.started = True
        print("  ".join(fmt(row.get(k), spec).rjust(w) for _, k, spec, w in self.columns), flush=True)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str = "") -> None:
    """Print rows as an aligned table, each column as wide as its widest cell."""
    columns = [(h, k, spec) for h, k, spec, _ in map(column, columns)]
    cells = [[fmt(r.get(key), spec) for _, key, spec in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), flush=True)
