"""The speed/quality Pareto front of a sampling-knob search (benchmarks/bench_presets.py --search).

A point is a dict with a speed to maximise and a quality loss to minimise; it is on the front
when no other point is at least as fast and at most as lossy, and strictly better in one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Point = dict[str, Any]


def dominates(a: Point, b: Point, up: str, down: str) -> bool:
    """a is at least as good as b in both (`up` higher, `down` lower) and better in one."""
    return a[up] >= b[up] and a[down] <= b[down] and (a[up] > b[up] or a[down] < b[down])


def pareto_front(points: Sequence[Point], up: str, down: str) -> list[Point]:
    """The points no other point dominates, fastest last (NaN values are never on the front)."""
    ok = [p for p in points if not (math.isnan(p[up]) or math.isnan(p[down]))]
    front = [p for p in ok if not any(dominates(q, p, up, down) for q in ok if q is not p)]
    return sorted(front, key=lambda p: (p[up], -p[down]))


def fastest_within(points: Sequence[Point], up: str, limits: dict[str, float]) -> Point | None:
    """The fastest point whose every `limits` key is at most its limit (None: none is)."""
    ok = [p for p in points if all(not math.isnan(p[k]) and p[k] <= v for k, v in limits.items())]
    return max(ok, key=lambda p: p[up]) if ok else None
