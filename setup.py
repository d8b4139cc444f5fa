"""Build marengine._C: the native head kernels (CPU always; CUDA where possible).

    pip install --no-build-isolation -e .     # builds against the installed torch

Environment flags:
    MARENGINE_SKIP_CUDA=1      build the CPU kernels only, even where nvcc and CUDA torch exist
    MARENGINE_DEBUG=1          -O0 -g, no NDEBUG
    TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0a")
    MAX_JOBS                   parallel compile jobs (torch's ninja build)

CUDA sources (csrc/cuda/*.cu, csrc/cuda/*.cpp) are built when torch has CUDA
(`torch.version.cuda`), nvcc is found, and MARENGINE_SKIP_CUDA is not 1.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / pattern)))


def _want_cuda(torch) -> bool:
    if _flag("MARENGINE_SKIP_CUDA"):
        return False
    if torch.version.cuda is None and not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None)
    if not nvcc or not os.path.exists(nvcc):
        print("marengine: torch has CUDA but nvcc was not found; building the CPU kernels only", file=sys.stderr)
        return False
    return bool(_sources("csrc/cuda/*.cu"))


def _opt(debug: bool) -> list[str]:
    return ["-O0", "-g", "-UNDEBUG"] if debug else ["-O3", "-DNDEBUG"]


def nvcc_flags(debug: bool = False) -> list[str]:
    """nvcc flags of the CUDA sources (after torch's COMMON_NVCC_FLAGS, whose __CUDA_NO_HALF*
    defines they undo); scripts/check_cuda_compile.sh compiles with these too."""
    return _opt(debug) + [
        "-std=c++17",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        "-Xcompiler",
        "-fopenmp",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    ]


def _extension():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = _flag("MARENGINE_DEBUG")
    opt = _opt(debug)
    # -fopenmp: at::parallel_for is inlined into our code and is an `omp parallel` region
    # (torch's CPU backend is OpenMP); without the flag it silently runs on one thread.
    # libgomp resolves to the one torch already loaded (same SONAME).
    cxx = opt + ["-std=c++17", "-fvisibility=hidden", "-Wno-psabi", "-fopenmp"]
    sources = ["csrc/ops.cpp"] + _sources("csrc/cpu/*.cpp")
    kw = dict(name="marengine._C", include_dirs=[str(ROOT / "csrc")], extra_link_args=["-fopenmp"])
    if _want_cuda(torch):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        kw["include_dirs"].append(str(ROOT / "csrc" / "cuda"))
        nvcc = nvcc_flags(debug)
        print(f"marengine: building CPU + CUDA kernels (arch {os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        return CUDAExtension(
            sources=sources,
            define_macros=[("MARENGINE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kw,
        )
    print("marengine: building CPU kernels", file=sys.stderr)
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kw)


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})


if __name__ == "__main__":
    main()
