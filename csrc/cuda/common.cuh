// common.cuh -- shared device helpers of the marengine CUDA kernels (torch-free).
//
// What is here: element types and conversions (fp32 / bf16 / fp16), PTX wrappers
// for cp.async, ldmatrix and mma.sync (m16n8k16, fp32 accumulate), warp reductions,
// a Welford merge, and the grid-wide barrier the persistent head kernel uses.
//
// Everything is header-only and plain CUDA C++ so the .cu files compile without
// torch headers (scripts/check_cuda_compile.sh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace marengine {
namespace cuda {

// ------------------------------------------------------------------ element types
template <typename T>
struct Num;

template <>
struct Num<float> {
  static constexpr bool kTensorCore = false;  // fp32 weights run the exact SIMT path
  __device__ __forceinline__ static float to_float(float v) { return v; }
  __device__ __forceinline__ static float from_float(float v) { return v; }
};

template <>
struct Num<__nv_bfloat16> {
  static constexpr bool kTensorCore = true;
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <>
struct Num<__half> {
  static constexpr bool kTensorCore = true;
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
};

__device__ __forceinline__ float silu(float v) {
  return v / (1.0f + expf(-v));
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ------------------------------------------------------------------ cp.async
// 16-byte global -> shared copy; src_bytes < 16 zero-fills the rest (0: all zeros,
// nothing is read, `src` only has to be a valid address).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ------------------------------------------------------------------ ldmatrix / mma
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

// D = A (16x16, row) * B (16x8, col) + D; fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ------------------------------------------------------------------ reductions
// Welford state (count, mean, M2), merged with Chan's formula.
struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ void welford_add(Welford& w, float v) {
  w.n += 1.0f;
  const float d = v - w.mean;
  w.mean += d / w.n;
  w.m2 += d * (v - w.mean);
}

__device__ __forceinline__ Welford welford_merge(const Welford& a, const Welford& b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean;
  const float fb = b.n / n;
  return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Welford other{__shfl_xor_sync(0xffffffffu, w.n, o), __shfl_xor_sync(0xffffffffu, w.mean, o),
                  __shfl_xor_sync(0xffffffffu, w.m2, o)};
    w = welford_merge(w, other);
  }
  return w;
}

// ------------------------------------------------------------------ grid barrier
// Grid-wide barrier for a co-resident grid (the persistent kernel is launched with
// cudaLaunchCooperativeKernel at an occupancy-limited size, so every block is
// resident and spinning cannot deadlock).
//
// One 32-bit word in global memory, zeroed before the launch. Block 0 adds
// 0x80000000 - (gridDim.x - 1), every other block adds 1: once all blocks have
// arrived the word has grown by exactly 0x80000000, i.e. its top bit flipped and
// its low bits are back where they were. A block waits until the top bit differs
// from the value it saw when it arrived. No reset is needed between barriers.
// Stress test: pytest python_tests/test_cuda_stages.py -k grid_barrier (stages.cu).
// Release/acquire: __syncthreads orders the block's writes before thread 0's
// fence + atomic (fence cumulativity), and thread 0's fence after the spin orders
// everything later in the block (after the second __syncthreads) behind it.
__device__ __forceinline__ unsigned ld_volatile_u32(const unsigned* p) {
  unsigned v;
  asm volatile("ld.volatile.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void grid_barrier(unsigned* word) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1u) : 1u;
    __threadfence();
    const unsigned old = atomicAdd(word, add);
    while (((old ^ ld_volatile_u32(word)) & 0x80000000u) == 0u) {
      __nanosleep(20);
    }
    __threadfence();
  }
  __syncthreads();
}

__host__ __device__ inline constexpr int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

}  // namespace cuda
}  // namespace marengine
