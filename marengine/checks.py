"""Argument checks shared by every entry point: the Python API, the command line and the
torch-free deploy sampler (so this module imports neither torch nor numpy).

Each check returns the value in its canonical Python type, or raises a TypeError /
ValueError whose message names the setting, what it must be, and what was given.
NaN and infinities never pass a range check (`nan < 1` is False, so a bare comparison
would let them through).
"""

from __future__ import annotations

import argparse
import math
import operator
from typing import Any, Callable, Iterable, Sequence


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(name: str, value: Any) -> int:
    """An integer from a Python int, a numpy integer or a 0-d integer tensor (never a bool,
    a float or a string)."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {_describe(value)}")
    try:
        return operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {_describe(value)}") from None


def as_float(name: str, value: Any) -> float:
    """A finite float from an int/float (numpy and 0-d tensors too); NaN, inf, strings and
    bools are refused."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_describe(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_describe(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {out}")
    return out


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """An integer in [lo, hi] (either bound may be None)."""
    out = as_int(name, value)
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ValueError(f"{name} must be an integer {_range(lo, hi)}, got {out}{_hint(hint)}")
    return out


def check_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float:
    """A finite float in [lo, hi] (open ends with lo_open / hi_open)."""
    out = as_float(name, value)
    below = lo is not None and (out <= lo if lo_open else out < lo)
    above = hi is not None and (out >= hi if hi_open else out > hi)
    if below or above:
        raise ValueError(f"{name} must be a finite number {_range(lo, hi, lo_open, hi_open)}, got {out}{_hint(hint)}")
    return out


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {_describe(value)}; choose one of {', '.join(choices)}")
    return value


def check_labels(labels: Any, num_classes: int, name: str = "labels") -> list[int]:
    """Class indices in [0, num_classes) from a sequence, numpy array or tensor of integers.

    Floats are refused even when whole (1.0): a float label is almost always a bug
    (normalised targets, logits), and truncating it would sample the wrong class."""
    if labels is None or isinstance(labels, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of class indices, got {_describe(labels)}")
    dtype = getattr(labels, "dtype", None)  # numpy arrays and tensors: refuse float dtypes up front
    if dtype is not None and (
        getattr(dtype, "kind", "") in ("f", "c", "b")
        or getattr(dtype, "is_floating_point", False)
        or "bool" in str(dtype)
    ):
        raise TypeError(f"{name} must be integers (class indices), got dtype {dtype}")
    if hasattr(labels, "tolist"):
        labels = labels.tolist()
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    if not isinstance(labels, Sequence):
        raise TypeError(f"{name} must be a sequence of class indices, got {type(labels).__name__}")
    out = [as_int(f"{name}[{i}]", v) for i, v in enumerate(labels)]
    bad = [v for v in out if not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {bad[:5]}")
    return out


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {type(value).__name__} {_describe(value)}")
    return value


def check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {_describe(value)}")
    return value


# field name -> (check, keyword arguments of the check)
Rules = dict[str, tuple[Callable[..., Any], dict[str, Any]]]


def check_fields(obj: Any, rules: Rules, what: str) -> None:
    """Apply `rules` to the attributes of `obj` (a dataclass), replacing each by its checked value;
    None passes for a field whose rule says optional=True."""
    for name, (check, kw) in rules.items():
        kw = dict(kw)
        optional = kw.pop("optional", False)
        value = getattr(obj, name)
        if value is None and optional:
            continue
        setattr(obj, name, check(f"{what} {name}", value, **kw))


# ---------------------------------------------------------------- the settings of sampling
def check_sampling(
    seq_len: int, bsz: Any, num_iter: Any, cfg: Any, cfg_schedule: Any, temperature: Any, cfg_schedules: Sequence[str]
) -> tuple[int, int, float, str, float]:
    """(bsz, num_iter, cfg, cfg_schedule, temperature) of one MAR sampling call, checked."""
    bsz = check_int("the batch size", bsz, lo=1)
    num_iter = check_int("num_iter", num_iter, lo=1, hi=seq_len, hint=f"at most the {seq_len} tokens of an image")
    cfg = check_float("cfg", cfg, lo=1.0, hint="1 disables guidance")
    cfg_schedule = check_choice("cfg_schedule", cfg_schedule, cfg_schedules)
    temperature = check_float("temperature", temperature, lo=0.0)
    return bsz, num_iter, cfg, cfg_schedule, temperature


# ---------------------------------------------------------------- argparse
def arg(check: Callable[..., Any], name: str, **kw: Any) -> Callable[[str], Any]:
    """An argparse `type=` that parses the text and applies `check(name, value, **kw)`."""

    def parse(text: str) -> Any:
        try:
            value: Any = int(text) if check is check_int else float(text) if check is check_float else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        try:
            return check(name, value, **kw)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse
