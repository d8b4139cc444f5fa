"""What every benchmark script shares: its common flags (--quick/--full, --device, --threads,
--out), the start (device, threads, machine metadata taken once) and the end (records
written), and a plain-text table printer."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .machine import finish_info, machine_info, usable_cores
from .records import Record, write_records

DEVICES = ("auto", "cpu", "cuda")


def add_cache_dir_arg(p: argparse.ArgumentParser) -> None:
    """--cache-dir: where the trained digits models are cached (marengine bench passes OUT/models)."""
    p.add_argument("--cache-dir", type=Path, default=Path("runs/bench/models"), help="trained digits models")


def add_plan_args(p: argparse.ArgumentParser, backends: Sequence[str]) -> None:
    """--models / --backends: subsets of a benchmark's plan (bench/plan.py)."""
    p.add_argument("--models", default=None, help="comma-separated subset of the plan's models")
    p.add_argument("--backends", default=",".join(backends), help="comma-separated subset of " + ",".join(backends))


def add_common_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="tiny shapes, few repeats")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the full sweep (default)")
    p.set_defaults(mode="full")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when torch sees a GPU, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) CPU threads (default: all cores)")
    p.add_argument("--out", type=Path, default=None, help="write this benchmark's records here (a JSON list)")


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


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


class Table:
    """A table printed row by row as results come in (columns: header, key, format spec, width)."""

    def __init__(self, columns: Sequence[tuple[str, str, str, int]], title: str = "") -> None:
        self.columns = [(h, k, spec, max(len(h), w)) for h, k, spec, w in columns]
        self.title, self.started = title, False

    def add(self, row: dict[str, Any]) -> None:
        if not self.started:
            if self.title:
                print(f"\n{self.title}")
            print("  ".join(h.rjust(w) for h, _, _, w in self.columns), flush=True)
            self.started = True
        print("  ".join(fmt(row.get(k), spec).rjust(w) for _, k, spec, w in self.columns), flush=True)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], title: str = "") -> None:
    """Print rows as an aligned table; columns are (header, key, format spec)."""
    cells = [[fmt(r.get(key), spec) for _, key, spec in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), flush=True)
