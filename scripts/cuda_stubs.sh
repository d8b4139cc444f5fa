#!/usr/bin/env bash
# cuda_stubs.sh -- sourced by the CUDA compile checks (check_cuda_compile.sh,
# cmake_build_check.sh --cuda-objects): where torch is a CPU build its CUDA headers are
# present, but the cuBLAS / cuSPARSE / cuSOLVER headers ATen's CUDA headers include may not
# be; `write_cuda_stubs DIR CUDA_INC TORCH_INC` writes tiny stand-ins (only the handle and
# status typedefs the glue's includes name) into DIR for the headers neither tree has.
# They are for syntax and compile checks only: nothing built with them is linked or run.

# the CUDA include folder of the nvcc on PATH (or $NVCC), following wrapper scripts
cuda_include_dir() {
  local nvcc="${NVCC:-nvcc}" dir
  dir="$("$nvcc" -v --version 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [ -n "$dir" ] && [ -f "$dir/include/cuda_runtime_api.h" ] && { echo "$dir/include"; return; }
  dir="$(cd "$(dirname "$(readlink -f "$(command -v "$nvcc")")")/../include" 2>/dev/null && pwd)"
  [ -n "$dir" ] && [ -f "$dir/cuda_runtime_api.h" ] && { echo "$dir"; return; }
  echo "${CUDA_HOME:-/usr/local/cuda}/include"
}

write_cuda_stubs() {  # DIR CUDA_INC TORCH_INC
  local dir="$1" cuda_inc="$2" torch_inc="$3"
  mkdir -p "$dir/c10/cuda/impl"
  _stub() {  # header, content: only when the real header is missing
    if [ ! -f "$cuda_inc/$1" ] && [ ! -f "$torch_inc/$1" ]; then printf '%s\n' "$2" >"$dir/$1"; fi
  }
  _stub cusparse.h 'typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;'
  _stub cublas_v2.h 'typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;'
  _stub cublasLt.h 'typedef struct cublasLtContext* cublasLtHandle_t;'
  _stub cusolverDn.h 'typedef struct cusolverDnContext* cusolverDnHandle_t;'
  _stub cusolver_common.h 'typedef int cusolverStatus_t;'
  _stub c10/cuda/impl/cuda_cmake_macros.h '#pragma once'
}
