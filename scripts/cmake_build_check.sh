#!/usr/bin/env bash
# Builds the extension with CMake in a temporary folder: the CMake build must stay
# equivalent to setup.py's.
#
#   scripts/cmake_build_check.sh                 # CPU build (-DMARENGINE_CUDA=OFF), linked and imported
#   scripts/cmake_build_check.sh --cuda-objects  # -DMARENGINE_CUDA=ON, CMAKE_CUDA_ARCHITECTURES="80;90a":
#                                                # configure, then compile the CUDA kernels' object
#                                                # library and the torch glue objects
#
# --cuda-objects needs nvcc, not a GPU nor a CUDA torch: where torch is a CPU build nothing can
# be linked or run against it, so it stops at the object files (the glue compiles against
# torch's CUDA headers with stand-ins for the cuBLAS-family headers a CPU torch lacks,
# scripts/cuda_stubs.sh). JOBS sets the parallel compiles (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-cpu}"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
pybind_dir=$(python3 -m pybind11 --cmakedir)
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

if [ "$mode" = "--cuda-objects" ]; then
  # shellcheck source=scripts/cuda_stubs.sh
  source scripts/cuda_stubs.sh
  nvcc_path=$(command -v "${NVCC:-nvcc}") || { echo "cmake_build_check: nvcc not found" >&2; exit 2; }
  cuda_inc=$(cuda_include_dir)
  torch_inc=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
  write_cuda_stubs "$build/stubs" "$cuda_inc" "$torch_inc"
  t0=$SECONDS
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -Dpybind11_DIR="$pybind_dir" -DMARENGINE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$(readlink -f "$cuda_inc/../bin/nvcc" 2>/dev/null || echo "$nvcc_path")" \
    -DCMAKE_CUDA_ARCHITECTURES="80;90a" -DCMAKE_CXX_FLAGS="-isystem $build/stubs" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; exit 1; }
  echo "configured with CUDA (80;90a) in $((SECONDS - t0)) s"
  glue=()
  for cpp in csrc/cuda/*.cpp; do glue+=("CMakeFiles/_C.dir/$cpp.o"); done
  cmake --build "$build" -j "${JOBS:-2}" --target marengine_cuda_kernels
  if [ -n "${generator[*]}" ]; then
    ninja -C "$build" -j "${JOBS:-2}" "${glue[@]}"
  else  # Makefiles: the object targets of the _C target's own Makefile
    for o in "${glue[@]}"; do make -C "$build" -f CMakeFiles/_C.dir/build.make "${o#CMakeFiles/_C.dir/}"; done
  fi
  n=$(find "$build" -name '*.o' -path '*cuda*' | wc -l)
  echo "CMake CUDA build OK: $n CUDA objects (kernels for sm_80 + sm_90a, glue) in $((SECONDS - t0)) s"
  exit 0
fi

cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix" -Dpybind11_DIR="$pybind_dir" -DMARENGINE_CUDA=OFF >/dev/null
cmake --build "$build" -j 2
so=$(find "$build" -name '_C*.so' | head -n 1)
[ -n "$so" ] || { echo "CMake build produced no _C module"; exit 1; }
python3 - "$so" <<'PY'
import importlib.util, sys
import torch  # the module links against torch's libraries
spec = importlib.util.spec_from_file_location("marengine._C", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
ops = [n for n in ("head_sample", "adaln_block") if hasattr(torch.ops.marengine, n)]
assert len(ops) == 2, f"operators missing from the CMake build: {ops}"
print("CMake build OK:", sys.argv[1])
PY
