"""What every benchmark record carries about the machine it was measured on.

`machine_info()` is called once at the start of a benchmark script: the load average it
records is the one at that moment (a busy machine skews timings; the record says so), and
`finish_info()` adds the one at its end. `load_warning()` says when other work held the cores.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# the fields every record's `machine` holds (checked by records.validate_record)
MACHINE_FIELDS = (
    "cpu_model",
    "cpu_cores",
    "gpu",
    "torch",
    "marengine",
    "commit",
    "torch_threads",
    "loadavg_start",
    "device",
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def git_commit(where: Path | None = None) -> str:
    """`git rev-parse HEAD` of the checkout holding marengine, "unknown" outside one.
    A "+dirty" suffix says the working tree had uncommitted changes."""
    where = where or Path(__file__).resolve().parents[2]
    if not (where / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


def gpu_info(device: str) -> dict[str, Any]:
    """Name, count and CUDA version of the GPU (None when the run is not on one)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {"gpu": None, "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    dev = torch.device(device)
    props = torch.cuda.get_device_properties(dev)
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine, the software and the moment: every field of MACHINE_FIELDS and a few more."""
    import torch

    import marengine

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count() or 1,
        "cpu_cores_usable": usable_cores(),
        **gpu_info(device),
        "torch": torch.__version__,
        "marengine": marengine.__version__,
        "onnxruntime": ort,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "device": device,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# other work (the load average less our own threads) above this share of the cores makes timings unreliable
HIGH_LOAD_SHARE = 0.5


def load_warning(loadavg_1min: float, cores: int, own: float = 0.0, when: str = "") -> str | None:
    """A one-line warning when the 1-minute load average, less `own` (the runnable threads of
    our own work, e.g. the benchmark's --threads after it ran), exceeds HIGH_LOAD_SHARE x cores;
    None on a quiet machine."""
    others = max(0.0, loadavg_1min - own)
    if others <= HIGH_LOAD_SHARE * cores:
        return None
    where = f" {when}" if when else ""
    besides = f", ~{others:.1f} besides this benchmark's {own:g} threads" if own else ""
    return (
        f"WARNING: the machine was busy{where}: load average {loadavg_1min:.2f} on {cores} cores{besides}; "
        "timings are unreliable, compare only ratios measured side by side, and rerun on a quiet machine "
        "for absolute figures"
    )


def finish_info(machine: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of the run to a machine_info() dict (in place)."""
    machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return machine
