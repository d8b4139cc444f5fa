// philox.h -- the in-kernel noise stream of marengine::head_sample (header-only, torch-free).
//
// head_sample draws its per-step noise from this stream when no `step_noise` tensor is
// given. The stream is counter-based, so every element can be computed independently,
// in any order, on any device: CPU (csrc/cpu/) and CUDA (csrc/cuda/) kernels implement
// the same definition and agree to a few float ulp (libm vs CUDA logf/sinf/cosf); each
// device is bit-reproducible with itself.
//
// Definition (seed, offset: uint64 taken bitwise from the op's int arguments):
//   element index   e = (i * N + row) * C + col      i = loop iteration 0..S-1 (step s = S-1-i),
//                                                     row < N chain rows, col < C channels
//   group           g = e / 4 + offset                (uint64, wraps)
//   counter         {lo32(g), hi32(g), 0, 0}
//   key             {lo32(seed), hi32(seed)}
//   r[0..3]         = Philox4x32-10(counter, key)     (Salmon et al., SC'11; Random123 constants)
//   uniforms        u_k = ((r[k] >> 8) + 0.5) * 2^-24       in (0, 1), both ends excluded
//   Box-Muller      rad = sqrt(-2 ln u_0), th = 2 pi u_1 -> z_0 = rad cos th, z_1 = rad sin th
//                   rad = sqrt(-2 ln u_2), th = 2 pi u_3 -> z_2 = rad cos th, z_3 = rad sin th
//   normal(e)       = z_(e % 4)
// All arithmetic after the integer rounds is float32.
//
// Test: pytest python_tests/test_native_cpu.py -k philox (reproducibility and the
// moments of the sampled chain).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MARENGINE_HD __host__ __device__ __forceinline__
#else
#define MARENGINE_HD inline
#endif

namespace marengine {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;
constexpr float kTwoPi = 6.2831853071795864769f;

struct Block {
  uint32_t r[4];
};

// Philox4x32 with 10 rounds on counter {lo(g), hi(g), 0, 0} and key {lo(seed), hi(seed)}.
MARENGINE_HD Block philox4x32_10(uint64_t group, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Block{{c0, c1, c2, c3}};
}

// 24 random bits -> float in (0, 1), never 0 or 1 (so log() is finite).
MARENGINE_HD float uniform01(uint32_t x) {
  return (static_cast<float>(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// The four normals z_0..z_3 of one group.
MARENGINE_HD void normals4(uint64_t group, uint64_t seed, float z[4]) {
  const Block b = philox4x32_10(group, seed);
  for (int h = 0; h < 2; ++h) {
    const float rad = sqrtf(-2.0f * logf(uniform01(b.r[2 * h])));
    const float th = kTwoPi * uniform01(b.r[2 * h + 1]);
    z[2 * h] = rad * cosf(th);
    z[2 * h + 1] = rad * sinf(th);
  }
}

// normal(e) of the stream (one element; prefer normals4 when filling runs).
MARENGINE_HD float normal(uint64_t e, uint64_t seed, uint64_t offset) {
  float z[4];
  normals4(e / 4u + offset, seed, z);
  return z[e & 3u];
}

// Fill out[0..count) with normal(e0 + j): one Philox call per group of four.
inline void fill_normals(uint64_t e0, int64_t count, uint64_t seed, uint64_t offset, float* out) {
  int64_t j = 0;
  while (j < count) {
    const uint64_t e = e0 + static_cast<uint64_t>(j);
    float z[4];
    normals4(e / 4u + offset, seed, z);
    for (uint64_t lane = e & 3u; lane < 4u && j < count; ++lane, ++j) out[j] = z[lane];
  }
}

}  // namespace philox
}  // namespace marengine
