"""The environment knobs of marengine, read once into one documented object.

`settings()` reads every knob from the environment the first time it is called and returns the
same frozen `Settings` from then on; `reload()` reads them again (tests, after changing the
environment). A bad value raises one ValueError that names the variable, what it takes and its
default. `marengine doctor` prints the whole object (`describe()`): each knob, its value and
where the value came from (env or default).

Who acts on them: the self-check switch in marengine/ops/selfcheck.py; the kernel knobs in
the compiled extension, which gets them from marengine/ops/extension.py (`native_knobs()`,
passed to `_C.set_knobs`) and never reads the environment itself; MKL_CBWR by MKL itself (the
serving engine only asks whether it is set). Not knobs, so not here: torchrun's RANK,
WORLD_SIZE and LOCAL_RANK (training/distributed.py reads them once, joining the process group)
and the build switches of setup.py (MARENGINE_SKIP_CUDA, MARENGINE_DEBUG). Torch-free, and imports nothing of marengine:
the lowest layer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
CPU_KERNEL_BUILDS = ("avx512_amx", "avx512_bf16", "avx512", "avx2", "base")


def _knob(env: str, default: Any, doc: str, choices: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None,
          lo: int | None = None, native: bool = False) -> Any:  # fmt: skip
    """A field of Settings: its variable, default and doc (and what parse() accepts)."""
    meta = dict(env=env, doc=doc, choices=choices, aliases=dict(aliases or {}), lo=lo, native=native)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Every environment knob of marengine, with its default and what it does."""

    selfcheck: str = _knob(
        "MARENGINE_SELFCHECK",
        "auto",
        "check a native kernel configuration against the reference before its first use: auto (the CUDA "
        "kernels), all (the CPU kernels too) or off",
        choices=("auto", "all", "off"),
        aliases={"": "auto", "1": "auto", "on": "auto", "true": "auto", "yes": "auto", "0": "off", "false": "off"},
    )
    head_path: str = _knob(
        "MARENGINE_HEAD_PATH",
        AUTO,
        "the CUDA head sampler's code path: auto (persistent kernel for few rows, per-step kernels above), "
        "persistent or kernels",
        choices=(AUTO, "persistent", "kernels"),
        native=True,
    )
    cpu_kernels: str = _knob(
        "MARENGINE_CPU_KERNELS",
        AUTO,
        "force a build of the CPU kernels (auto: the best this CPU runs; one it cannot run falls back "
        "to the best, with a message)",
        choices=(AUTO, *CPU_KERNEL_BUILDS),
        native=True,
    )
    cpu_workspace_mb: int = _knob(
        "MARENGINE_CPU_WORKSPACE_MB", 128, "workspace of one CPU sampler thread, in MiB", lo=1, native=True
    )
    cpu_pack_cache_mb: int = _knob(
        "MARENGINE_CPU_PACK_CACHE_MB",
        2048,
        "packed CPU weights kept between calls, in MiB (0: pack on every call)",
        lo=0,
        native=True,
    )
    cpu_row_min: int = _knob(
        "MARENGINE_CPU_ROW_MIN",
        1,
        "the CPU sampler splits rows over threads when each thread gets at least this many 16-row panels "
        "(else it splits each GEMM's columns)",
        lo=1,
        native=True,
    )
    cpu_mod_rows: int = _knob(
        "MARENGINE_CPU_MOD_ROWS",
        512,
        "the CPU sampler computes the AdaLN modulations of several steps in one GEMM of about this many rows",
        lo=1,
        native=True,
    )
    mkl_cbwr: str = _knob(
        "MKL_CBWR",
        "",
        "MKL's reproducibility mode, read by MKL itself; AUTO,STRICT makes a GEMM row's bits independent of "
        "the other rows (the serving engine sets it at start when it is not set)",
    )
    # knob name -> "env" or "default": where each value came from (not a knob)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def blas_strict(self) -> bool:
        """MKL_CBWR asks for MKL's strict reproducibility (AUTO,STRICT)."""
        return self.mkl_cbwr.upper().replace(" ", "") == "AUTO,STRICT"

    def native_knobs(self) -> dict[str, str]:
        """The knobs the compiled extension acts on, by variable name (`_C.set_knobs`); 'auto'
        and unset values are left out: the kernels' choice."""
        out = {}
        for f in knobs():
            value = getattr(self, f.name)
            if f.metadata["native"] and value != AUTO:
                out[f.metadata["env"]] = str(value)
        return out

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, value, 'env' or 'default') for every knob, in declaration order."""
        return [
            (f.metadata["env"], str(getattr(self, f.name)) or "(unset)", self.sources.get(f.name, "default"))
            for f in knobs()
        ]


def knobs() -> tuple[dataclasses.Field, ...]:
    """The knob fields of Settings (each with env, doc and default)."""
    return tuple(f for f in dataclasses.fields(Settings) if "env" in f.metadata)


def env_of(name: str) -> str:
    """The environment variable of the knob `name` (a field of Settings)."""
    return next(f.metadata["env"] for f in knobs() if f.name == name)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    m = f.metadata
    env, default = m["env"], f.default
    if isinstance(default, int):
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{env} must be a whole number, got {raw!r} (default {default})") from None
        if m["lo"] is not None and value < m["lo"]:
            raise ValueError(f"{env} must be at least {m['lo']}, got {value} (default {default})")
        return value
    if not m["choices"]:
        return raw
    text = raw.strip().lower()
    value = m["aliases"].get(text, text) or default
    if value not in m["choices"]:
        raise ValueError(f"{env} must be one of {', '.join(m['choices'])}, got {raw!r} (default {default})")
    return value


def from_environ(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ` (a variable that is unset or empty takes its default)."""
    values, sources = {}, {}
    for f in knobs():
        raw = environ.get(f.metadata["env"])
        if raw is None or (raw.strip() == "" and not f.metadata["aliases"]):
            sources[f.name] = "default"
            continue
        values[f.name] = _parse(f, raw)
        sources[f.name] = "env"
    return Settings(**values, sources=sources)


_CURRENT: Settings | None = None


def settings() -> Settings:
    """The knobs of this process, read from the environment at the first call."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = from_environ(os.environ)
    return _CURRENT


def reload() -> Settings:
    """Read the environment again (tests; a process that changed its environment)."""
    global _CURRENT
    _CURRENT = None
    return settings()


def use(new: Settings) -> Settings:
    """Make `new` the process's settings (doctor runs its checks with changed knobs); returns the
    previous ones, to pass back to use() afterwards."""
    global _CURRENT
    old = settings()
    _CURRENT = new
    return old
