// philox_cuda.cuh -- the in-kernel noise stream of head_sample on the GPU.
//
// The stream is defined once, in csrc/philox.h (Philox4x32-10 keyed by the seed, counter
// {lo, hi} of e / 4 + offset, Box-Muller on 24-bit uniforms; normal(e) = z_(e % 4) for
// element e = (i * N + row) * C + col). That header is torch-free and marks its functions
// __host__ __device__ under nvcc, so the CUDA kernels run the very same code as the CPU
// kernels; CPU and GPU agree to a few float ulp (libm vs CUDA logf/sinf/cosf), each is
// bit-reproducible with itself.
#pragma once

#include <cstdint>

#include "../philox.h"

namespace marengine {
namespace cuda {

// Standard normal of element e of the head_sample noise stream.
__device__ __forceinline__ float philox_normal(uint64_t e, uint64_t seed, uint64_t offset) {
  return ::marengine::philox::normal(e, seed, offset);
}

}  // namespace cuda
}  // namespace marengine
