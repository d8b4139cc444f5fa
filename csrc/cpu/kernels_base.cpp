// kernels_base.cpp -- the CPU kernels (kernels_impl.h) built for the architecture's
// baseline ISA (SSE2 on x86-64, NEON on aarch64), plus the runtime choice between this
// build and the AVX2 / AVX-512 ones (MARENGINE_CPU_KERNELS forces one), and the per-thread
// scratch buffers.
// Test: pytest python_tests/test_native_cpu.py (MARENGINE_CPU_KERNELS=base runs it on
// this build); benchmark: python benchmarks/bench_head.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../settings.h"
#include "kernels.h"

#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

namespace {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512() {  // the subsets kernels_avx512.cpp is compiled for (the OS saving zmm state included)
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_has_avx512_bf16() {
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
// AMX-TILE and AMX-BF16 (CPUID.(7,0):EDX bits 24, 22), and Linux's permission to use the
// tile data state, asked for once for the whole process (arch_prctl ARCH_REQ_XCOMP_PERM).
bool cpu_has_amx_bf16() {
  static const bool ok = [] {
#if defined(__linux__) && defined(__x86_64__)
    if (!cpu_has_avx512_bf16()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 24) & 1u) || !((d >> 22) & 1u)) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
#else
bool cpu_has_avx2_fma() {
  return false;
}
bool cpu_has_avx512() {
  return false;
}
bool cpu_has_avx512_bf16() {
  return false;
}
bool cpu_has_amx_bf16() {
  return false;
}
#endif

struct Candidate {
  const char* name;
  const Kernels* kernels;  // null: not compiled for this architecture
  bool runs;               // the running CPU has the instructions
};

// Every build, best first.
std::vector<Candidate> candidates() {
  return {{"avx512_amx", kernels_avx512_amx(), cpu_has_amx_bf16()},
          {"avx512_bf16", kernels_avx512_bf16(), cpu_has_avx512_bf16()},
          {"avx512", kernels_avx512(), cpu_has_avx512()},
          {"avx2", kernels_avx2(), cpu_has_avx2_fma()},
          {"base", &kernels_base(), true}};
}

const Kernels* choose() {
  const std::vector<Candidate> all = candidates();
  const Kernels* best = nullptr;
  for (const Candidate& c : all)
    if (best == nullptr && c.kernels != nullptr && c.runs) best = c.kernels;
  const char* env = knob("MARENGINE_CPU_KERNELS");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  for (const Candidate& c : all) {
    if (want != c.name) continue;
    if (c.kernels != nullptr && c.runs) return c.kernels;
    std::fprintf(stderr,
                 "marengine: MARENGINE_CPU_KERNELS=%s: this CPU cannot run the %s kernels (it can run: %s); "
                 "using %s\n",
                 env, c.name, kernels_supported(), best->name);
    return best;
  }
  std::fprintf(
      stderr,
      "marengine: MARENGINE_CPU_KERNELS=%s is not a CPU kernel build (avx512_amx, avx512_bf16, avx512, avx2, base); "
      "using %s\n",
      env, best->name);
  return best;
}

// The names of the builds compiled in (and, with runnable_only, that this CPU runs), best first.
std::string build_names(bool runnable_only) {
  std::string out;
  for (const Candidate& c : candidates())
    if (c.kernels != nullptr && (c.runs || !runnable_only)) out += (out.empty() ? "" : ",") + std::string(c.name);
  return out;
}

}  // namespace

const char* kernels_supported() {
  static const std::string names = build_names(true);
  return names.c_str();
}

const char* kernels_built() {
  static const std::string names = build_names(false);
  return names.c_str();
}

const Kernels& kernels() {
  static const Kernels* chosen = choose();
  return *chosen;
}

}  // namespace cpu
}  // namespace marengine
