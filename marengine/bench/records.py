"""Benchmark records: one self-describing dict per measured row, many rows per JSON file.

A record is
    {"schema": 1, "benchmark": "e2e", "name": "digits16/engine-native/b16/it16/s50/cfg",
     "params": {...what was run...}, "metrics": {...what was measured...},
     "units": {metric: unit}, "machine": {...machine_info()...}, "notes": "..."}
Numbers that are not finite are written as null (strict JSON). A records file is a JSON
list of records; the suite merges the files of its benchmarks into one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..files import atomic_write_text
from .machine import MACHINE_FIELDS

SCHEMA = 1
RECORD_KEYS = ("schema", "benchmark", "name", "params", "metrics", "units", "machine", "notes")


@dataclass
class Record:
    benchmark: str  # which script: e2e, stages, quality, roofline, head, backbone
    name: str  # the row, unique within its benchmark
    params: dict[str, Any]  # what was run (model, shapes, settings, backend, reduced-configuration notes)
    metrics: dict[str, Any]  # what was measured (numbers, or None when not measured)
    machine: dict[str, Any]  # machine_info() at the start of the script
    units: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {k: clean(v) for k, v in asdict(self).items()}


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy and torch scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def validate_record(rec: Any) -> list[str]:
    """What is wrong with one record (an empty list when it is well formed)."""
    if not isinstance(rec, dict):
        return [f"a record must be a JSON object, got {type(rec).__name__}"]
    errs = [f"missing key {k!r}" for k in RECORD_KEYS if k not in rec]
    if errs:
        return errs
    if rec["schema"] != SCHEMA:
        errs.append(f"schema {rec['schema']!r}, expected {SCHEMA}")
    for k in ("benchmark", "name"):
        if not isinstance(rec[k], str) or not rec[k]:
            errs.append(f"{k} must be a non-empty string")
    for k in ("params", "metrics", "units", "machine"):
        if not isinstance(rec[k], dict):
            errs.append(f"{k} must be an object")
    if not isinstance(rec["notes"], str):
        errs.append("notes must be a string")
    if errs:
        return errs
    errs += [f"machine lacks {k!r}" for k in MACHINE_FIELDS if k not in rec["machine"]]
    for k, v in rec["metrics"].items():
        if v is not None and not isinstance(v, (int, float, str, bool, list, dict)):
            errs.append(f"metric {k!r} has a non-JSON value {v!r}")
    return errs


def validate_records(records: Any) -> list[str]:
    """Errors of a whole records list, each prefixed with the record's position and name."""
    if not isinstance(records, list):
        return [f"a records file holds a JSON list, got {type(records).__name__}"]
    out = []
    for i, rec in enumerate(records):
        name = rec.get("name", "?") if isinstance(rec, dict) else "?"
        out += [f"record {i} ({name}): {e}" for e in validate_record(rec)]
    return out


def write_records(path: str | os.PathLike, records: Iterable[Record | dict[str, Any]]) -> Path:
    """Write records as one JSON list (atomically); refuses malformed records."""
    rows = [r.to_dict() if isinstance(r, Record) else clean(r) for r in records]
    errs = validate_records(rows)
    if errs:
        raise ValueError("malformed benchmark records: " + "; ".join(errs[:5]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(rows, indent=1, allow_nan=False) + "\n")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a file, checked."""
    try:
        rows = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    errs = validate_records(rows)
    if errs:
        raise ValueError(f"{path}: " + "; ".join(errs[:5]))
    return rows


def merge_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The records of several files, in order (files that do not exist are skipped)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        if Path(p).is_file():
            out += read_records(p)
    return out
