"""Argument checks shared by every entry point: the Python API, the command line and the
torch-free deploy sampler (so this module imports neither torch nor numpy).

Each check returns the value in its canonical Python type, or raises a TypeError /
ValueError whose message names the setting, what it must be, and what was given.
NaN and infinities never pass a range check (`nan < 1` is False, so a bare comparison
would let them through).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .limits import MAX_CFG, MAX_JSON_BYTES, MAX_TEMPERATURE, USUAL_CFG, USUAL_TEMPERATURE


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
    cfg = check_cfg("cfg", cfg)
    cfg_schedule = check_choice("cfg_schedule", cfg_schedule, cfg_schedules)
    temperature = check_temperature("temperature", temperature)
    return bsz, num_iter, cfg, cfg_schedule, temperature


# the bounds of guidance and temperature (marengine.limits), as check keyword arguments
CFG_BOUNDS: dict[str, Any] = {"lo": 1.0, "hi": MAX_CFG, "hint": f"1 disables guidance; at most {MAX_CFG:g}"}
TEMPERATURE_BOUNDS: dict[str, Any] = {"lo": 0.0, "hi": MAX_TEMPERATURE}


def check_cfg(name: str, value: Any) -> float:
    """A guidance scale in [1, MAX_CFG] (larger ones overflow the reverse diffusion)."""
    return check_float(name, value, **CFG_BOUNDS)


def check_temperature(name: str, value: Any) -> float:
    """A sampling temperature in [0, MAX_TEMPERATURE]."""
    return check_float(name, value, **TEMPERATURE_BOUNDS)


def check_finite_result(finite: bool, what: str, cfg: float, temperature: float) -> None:
    """Raise when a sampler's result (`what`: latents, tokens, logits) is not finite: the
    message names the settings that make the reverse diffusion overflow."""
    if finite:
        return
    large = [
        f"{n}={v:g}"
        for n, v, usual in (("cfg", cfg, USUAL_CFG), ("temperature", temperature, USUAL_TEMPERATURE))
        if v > usual
    ]
    cause = (
        f"{' and '.join(large)} made the sampler overflow: lower it (usual: cfg <= {USUAL_CFG:g}, "
        f"temperature <= {USUAL_TEMPERATURE:g})"
        if large
        else f"with cfg={cfg:g} and temperature={temperature:g} (usual values), so the model's weights overflow "
        "(a diverged checkpoint, or a half-precision head: try backend='torch' or float32 weights)"
    )
    raise ValueError(f"sampling produced non-finite {what} (NaN or inf): {cause}")


# ---------------------------------------------------------------- what files say
def read_json_file(path: str | os.PathLike, what: str = "metadata file") -> Any:
    """The JSON value of a metadata file (config.json, tokenizer.json, index.json, deploy.json),
    refused with a one-line error when missing, too large, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size} bytes, too large for a {what} (at most {MAX_JSON_BYTES}): not ours?")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON (a {what}; corrupt or truncated?): {e}") from None


def json_object(value: Any, path: str | os.PathLike, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object ({what}), got {type(value).__name__}")
    return value


def file_field(path: str | os.PathLike, d: dict[str, Any], field: str, lo: int = 1, hi: int | None = None) -> int:
    """The integer d[field] read from file `path`, in [lo, hi]; the error names the file and the field."""
    if field not in d:
        raise ValueError(f"{path}: field {field!r} is missing")
    try:
        return check_int(f"{path}: field {field!r}", d[field], lo=lo, hi=hi)
    except TypeError as e:
        raise ValueError(str(e)) from None


def path_inside(folder: str | os.PathLike, name: Any, source: str | os.PathLike) -> Path:
    """folder/name for a file name read from the file `source`, refused when it is not a plain
    relative name or resolves outside `folder` (absolute paths, '..', symlinks leading out)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{source} names a file {_describe(name)}, which is not a file name")
    folder = Path(folder)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise ValueError(f"{source} names {name!r}, outside its folder {folder}: refused (only names inside it)")
    target = folder / rel
    root = folder.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(
            f"{source} names {name!r}, which leads outside its folder {folder} (a symbolic link?): refused"
        )
    return target


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
