// kernels_avx2.cpp -- the CPU kernels (kernels_impl.h) built for AVX2 + FMA (x86-64 only;
// chosen at run time by kernels() when the CPU has both). The target is set with a
// pragma after every standard header is included, so only this file's own functions are
// compiled for AVX2 and the extension still loads on older CPUs.
// Test: pytest python_tests/test_native_cpu.py; benchmark: python benchmarks/bench_head.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

MARENGINE_TARGET_PUSH("avx2,fma")

#define MARENGINE_KNS avx2
#define MARENGINE_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#include "kernels_impl.h"

MARENGINE_TARGET_POP

namespace marengine {
namespace cpu {

const Kernels* kernels_avx2() {
  static const Kernels k{
      "avx2",           avx2::gemm,  avx2::pack_weights, avx2::gemm_packed, avx2::ln_modulate, avx2::silu_add_rows,
      avx2::round_copy, avx2::to_f32};
  return &k;
}

}  // namespace cpu
}  // namespace marengine

#else  // not x86

namespace marengine {
namespace cpu {
const Kernels* kernels_avx2() {
  return nullptr;
}
}  // namespace cpu
}  // namespace marengine

#endif
