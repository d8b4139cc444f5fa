"""What the native head sampler was built with and what will run where (for `marengine doctor`).

`build_info()` gathers versions, the extension's state (CPU kernel ISA, whether the CUDA
kernels are in it, what they take), the GPUs torch sees and the settings (marengine/settings.py)
that change the dispatch; `backend_lines(...)` says which implementation a head of a given size gets on each
device with backend="auto". Cheap: nothing here runs a kernel.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import torch

import marengine

from ..settings import settings
from . import native, selfcheck


@dataclass
class BuildInfo:
    marengine: str
    python: str
    torch: str
    torch_cuda: str | None  # the CUDA version torch was built with (None: a CPU build)
    extension: str | None  # path of the loaded marengine._C, None when it is not loaded
    load_error: str | None
    cpu_kernels: str | None  # the build that runs: 'avx512_amx', 'avx512_bf16', 'avx512', 'avx2' or 'base'
    built_with_cuda: bool
    cuda_registered: bool  # torch.ops.marengine.head_sample has a CUDA kernel
    stage_ops: bool  # the test-only torch.ops.marengine_stages (CUDA builds)
    gpus: list[str] = field(default_factory=list)
    settings: list[tuple[str, str, str]] = field(default_factory=list)  # (variable, value, env/default)
    limits: dict = field(default_factory=dict)  # what the kernels take (_C.limits(); empty when not built)
    cpu_kernels_supported: str | None = None  # the builds this CPU can run, best first, comma-separated

    @property
    def cpu_kernels_line(self) -> str:
        """One line on the CPU kernels: the build that runs and the ones this CPU can run."""
        if self.cpu_kernels is None:
            return "not built"
        return f"{self.cpu_kernels} (this CPU runs: {self.cpu_kernels_supported}; MARENGINE_CPU_KERNELS forces one)"

    @property
    def cuda_kernels(self) -> str:
        """One line on the CUDA kernels: built or not, and why not."""
        if self.extension is None:
            return "not built (the extension is not built)"
        if not self.built_with_cuda:
            if self.torch_cuda is None:
                return "not built (torch is a CPU build: install torch for your CUDA and rebuild)"
            return "not built (no nvcc when the extension was built, or MARENGINE_SKIP_CUDA=1): rebuild with nvcc"
        if not self.cuda_registered:
            return "built but not registered for CUDA (a mismatched torch?): rebuild against this torch"
        return "built" + ("" if self.gpus else ", but no GPU is visible")


def build_info() -> BuildInfo:
    C = native._C
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                f"{p.total_memory / 2**30:.0f} GiB"
            )
    try:
        torch.ops.marengine_stages.plan  # noqa: B018
        stages = True
    except (AttributeError, RuntimeError):
        stages = False
    return BuildInfo(
        marengine=marengine.__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        extension=getattr(C, "__file__", None) if C is not None else None,
        load_error=str(native._LOAD_ERROR) if native._LOAD_ERROR is not None else None,
        cpu_kernels=C.cpu_kernels() if C is not None else None,
        built_with_cuda=bool(C.built_with_cuda()) if C is not None else False,
        cuda_registered=C is not None and native.available("cuda"),
        stage_ops=stages,
        gpus=gpus,
        settings=settings().describe(),
        limits=dict(native.LIMITS),
        cpu_kernels_supported=C.cpu_kernels_supported() if C is not None else None,
    )


def backend_lines(info: BuildInfo, width: int, depth: int, channels: int = 16) -> list[tuple[str, str]]:
    """(device, what runs a width x depth head there with backend='auto')."""
    out = []
    if info.extension is None:
        out.append(("cpu", "PyTorch reference (the native extension is not built)"))
    else:
        out.append(("cpu", f"native C++ kernels ({info.cpu_kernels})"))
    if not info.gpus:
        out.append(("cuda", "no GPU visible"))
        return out
    why = None
    if not info.cuda_registered:
        why = "the CUDA kernels are " + info.cuda_kernels
    else:
        why = native.cuda_unsupported(width, depth, channels)
    if why is not None:
        out.append(("cuda", f"PyTorch reference ({why})"))
        return out
    forced = settings().head_path
    if forced == "auto":
        paths = (
            f"persistent kernel up to {info.limits['cuda_persistent_max_rows']} network rows, per-step kernels "
            f"above (32x32 tiles up to {info.limits['cuda_small_tile_max_rows']} rows, 64x64 above)"
        )
    else:
        paths = f"MARENGINE_HEAD_PATH={forced} for every row count"
    check = {"auto": "checked on first use", "all": "checked on first use", "off": "UNCHECKED (MARENGINE_SELFCHECK=0)"}
    out.append(("cuda", f"native CUDA kernels: {paths}; each configuration {check[selfcheck.mode()]}"))
    return out
