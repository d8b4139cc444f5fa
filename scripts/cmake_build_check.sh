#!/usr/bin/env bash
# Builds the extension with CMake (CPU) in a temporary folder and imports the
# result: the CMake build must stay equivalent to setup.py's.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
pybind_dir=$(python3 -m pybind11 --cmakedir)
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
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
