// torch_glue.h -- host-side helpers shared by the torch glue of the CUDA kernels
// (ops_cuda.cpp: the public operators; stages_cuda.cpp: the test-only stage operators):
// the kernels' weight type from a torch dtype, and the 16-byte aligned contiguous operand
// the kernels read with cp.async / float4 loads. Host code only; no kernel here.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "launchers.cuh"

namespace marengine {
namespace cuda {

// The kernels' WeightType of a torch dtype; a clear error naming `what` for any other dtype.
inline WeightType weight_type(at::ScalarType s, const char* what) {
  switch (s) {
    case at::kFloat:
      return WeightType::kFloat32;
    case at::kBFloat16:
      return WeightType::kBFloat16;
    case at::kHalf:
      return WeightType::kFloat16;
    default:
      TORCH_CHECK(false, what, ": dtype must be float32, bfloat16 or float16, got ", s);
  }
  return WeightType::kFloat32;
}

// Contiguous and 16-byte aligned; copies only when needed.
inline at::Tensor ready(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (c.numel() > 0 && reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

}  // namespace cuda
}  // namespace marengine
