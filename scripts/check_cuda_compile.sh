#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90a (no GPU needed) with the flags
# setup.py's build uses (torch's COMMON_NVCC_FLAGS + setup.py nvcc_flags(), -DMARENGINE_WITH_CUDA),
# and syntax-check the torch glue csrc/cuda/*.cpp against torch's headers when they can be
# found. Exits non-zero on the first failure. (The CMake build's CUDA compile is checked by
# scripts/cmake_build_check.sh --cuda-objects.)
#
#   scripts/check_cuda_compile.sh            # all .cu files, both arches, + glue check
#   JOBS=1 scripts/check_cuda_compile.sh     # parallel nvcc jobs (default: nproc)
#   SKIP_GLUE=1 scripts/check_cuda_compile.sh
#   NVCC=/path/to/nvcc scripts/check_cuda_compile.sh
#
# The glue check uses g++ -fsyntax-only; where torch is a CPU build its CUDA headers
# are present but cuBLAS/cuSPARSE/cuSOLVER headers may not be: tiny stand-ins for
# the handle/status typedefs ATen's headers name are written to the temp dir then
# (scripts/cuda_stubs.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
ARCH_FLAGS=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# shellcheck source=scripts/cuda_stubs.sh
source "$ROOT/scripts/cuda_stubs.sh"

command -v "$NVCC" >/dev/null || { echo "check_cuda_compile: nvcc not found (set NVCC)" >&2; exit 2; }
# setup.py's flags (torch's defaults first, as torch.utils.cpp_extension orders them)
read -r -a BUILD_FLAGS <<<"$(cd "$ROOT" && "$PY" -c '
import runpy
g = runpy.run_path("setup.py", run_name="marengine_setup")
try:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
except ImportError:
    COMMON_NVCC_FLAGS = []
print(" ".join(list(COMMON_NVCC_FLAGS) + g["nvcc_flags"](False)))' 2>/dev/null ||
  echo "-O3 -std=c++17 --expt-relaxed-constexpr")"
echo "nvcc: $("$NVCC" --version | tail -n 1)"
echo "arches: sm_80, sm_90a   jobs: $JOBS   out: $TMP"
echo "flags: ${BUILD_FLAGS[*]}"

shopt -s nullglob
SOURCES=("$ROOT"/csrc/cuda/*.cu)
if [ "${#SOURCES[@]}" -eq 0 ]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 1
fi

compile_one() {  # $1 = source; writes $TMP/<name>.log, returns nvcc's status
  local src="$1" name
  name="$(basename "$src" .cu)"
  local t0=$SECONDS
  if "$NVCC" "${BUILD_FLAGS[@]}" "${ARCH_FLAGS[@]}" -Xptxas=-warn-spills -DMARENGINE_WITH_CUDA=1 \
      -I"$ROOT/csrc" -I"$ROOT/csrc/cuda" -c "$src" -o "$TMP/$name.o" >"$TMP/$name.log" 2>&1; then
    echo "  ok    $(printf '%-24s' "$name.cu") $((SECONDS - t0)) s"
  else
    echo "  FAIL  $name.cu"
    cat "$TMP/$name.log"
    return 1
  fi
}

start=$SECONDS
pids=()
status=0
for src in "${SOURCES[@]}"; do
  compile_one "$src" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$JOBS" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
if [ "$status" -ne 0 ]; then
  echo "check_cuda_compile: nvcc failed" >&2
  exit 1
fi
# warnings (spills, ...) are shown but do not fail the check
for log in "$TMP"/*.log; do
  if [ -s "$log" ]; then echo "--- $(basename "$log" .log).cu:"; cat "$log"; fi
done
echo "compiled ${#SOURCES[@]} files for sm_80 + sm_90a in $((SECONDS - start)) s"

# ---------------------------------------------------------------- torch glue syntax check
if [ "${SKIP_GLUE:-0}" = "1" ]; then
  echo "glue check skipped (SKIP_GLUE=1)"
  exit 0
fi
TORCH_INC="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)"
if [ -z "$TORCH_INC" ] || [ ! -f "$TORCH_INC/c10/cuda/CUDAGuard.h" ]; then
  echo "glue check skipped: torch's CUDA headers not found"
  exit 0
fi
CUDA_INC="$(cuda_include_dir)"
STUBS="$TMP/stubs"
write_cuda_stubs "$STUBS" "$CUDA_INC" "$TORCH_INC"
t0=$SECONDS
for cpp in "$ROOT"/csrc/cuda/*.cpp; do
  if ${CXX:-g++} -std=c++17 -fsyntax-only -Wall -Wextra -isystem "$TORCH_INC" \
      -isystem "$TORCH_INC/torch/csrc/api/include" -isystem "$CUDA_INC" -isystem "$STUBS" \
      -I"$ROOT/csrc/cuda" -I"$ROOT/csrc" "$cpp"; then
    echo "  ok    $(basename "$cpp") (g++ -fsyntax-only against torch headers, $((SECONDS - t0)) s)"
  else
    echo "  FAIL  $(basename "$cpp")" >&2
    exit 1
  fi
done
