// kernels_base.cpp -- the CPU kernels (kernels_impl.h) built for the architecture's
// baseline ISA (SSE2 on x86-64, NEON on aarch64), plus the runtime choice between this
// build and the AVX2 one, and the per-thread scratch buffers.
// Test: pytest python_tests/test_native_cpu.py (MARENGINE_CPU_KERNELS=base runs it on
// this build); benchmark: python benchmarks/bench_head.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

#define MARENGINE_KNS base
#define MARENGINE_FMA(a, b, c) ((a) * (b) + (c))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in static inline helpers only
#endif
#include "kernels_impl.h"

namespace marengine {
namespace cpu {

float* thread_scratch(int64_t count) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < count) buf.resize(static_cast<size_t>(count));
  return buf.data();
}

const Kernels& kernels_base() {
  static const Kernels k{
      "base",           base::gemm,  base::pack_weights, base::gemm_packed, base::ln_modulate, base::silu_add_rows,
      base::round_copy, base::to_f32};
  return k;
}

static bool cpu_has_avx2_fma() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* env = std::getenv("MARENGINE_CPU_KERNELS");
    const bool force_base = env != nullptr && std::string(env) == "base";
    const Kernels* avx2 = kernels_avx2();
    return (!force_base && avx2 != nullptr && cpu_has_avx2_fma()) ? avx2 : &kernels_base();
  }();
  return *chosen;
}

}  // namespace cpu
}  // namespace marengine
