"""Loading the compiled extension (`marengine._C`, which registers `torch.ops.marengine.*`) and
what it reports.

- `_C`: the extension module, or None when it is missing (`_LOAD_ERROR` says why; this says so
  once in the log, and nothing raises at import).
- `push_knobs()`: hand the kernel knobs of marengine/settings.py to the extension (it never
  reads the environment itself); done at import and again whenever the settings change.
- `LIMITS`: what the compiled kernels take (csrc/kernel_limits.h, reported by `_C.limits()`);
  `WEIGHT_DTYPES`: the weight dtypes they multiply.
ops/native.py (the kernels' Python side) and ops/head_weights.py (their weight operands) build on it.
"""

from __future__ import annotations

import logging

import torch

from ..settings import Settings, settings

log = logging.getLogger("marengine.ops")

try:
    from .. import _C  # noqa: F401  (registers torch.ops.marengine.*)

    _LOAD_ERROR: Exception | None = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR = exc
    log.info(
        "marengine._C is not available (%s); the native head sampler is disabled, "
        "the PyTorch reference is used. Build it with `pip install --no-build-isolation -e .`",
        exc,
    )

_PUSHED: Settings | None = None  # the settings whose knobs the extension holds (set_knobs)


def push_knobs() -> None:
    """Hand the kernel knobs of `settings()` to the extension when they changed since the last
    push (a bad value raises settings' ValueError here, at the first use of a kernel)."""
    global _PUSHED
    current = settings()
    if _C is not None and current is not _PUSHED:
        _C.set_knobs(current.native_knobs())
        _PUSHED = current


if _C is not None:
    try:  # before anything asks the extension which CPU kernels run (chosen once per process)
        push_knobs()
    except ValueError as exc:  # nothing raises at import: the first kernel call raises it
        log.info("marengine: %s", exc)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LIMITS: dict = _C.limits() if _C is not None else {}
WEIGHT_DTYPES = tuple(_DTYPES[name] for name in LIMITS.get("weight_dtypes", ()))  # () when not built
