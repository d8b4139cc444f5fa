// kernels.h -- torch-free CPU kernels of the diffusion head (declarations).
//
// Layout "P16": a block of 16 rows ("panel") of an activation matrix with F features is
// stored feature-major, [F][16] floats, so one feature of 16 rows is two 8-float vectors.
// A matrix of R rows is ceil(R/16) panels; padding rows are kept finite (zeros).
// Every kernel here works on panels: the GEMM's activation operand is a P16 panel and
// its output is written back in P16 (or through an epilogue), which lets LayerNorm,
// modulation, SiLU and the residual update run as plain vector loops along features.
//
// GEMM: out[r, n] = sum_k A[r, k] * Wt[n, k] + epilogue, with Wt the nn.Linear weight
// ([N][K] row-major, fp32 / bf16 / fp16). Micro-tile 16 rows x 6 weight rows, 12 vector
// accumulators (2 loads + 6 broadcasts per 12 FMAs; ~97% of one core's FMA peak when the
// operands sit in L1/L2), or 8 rows x 12 weight rows for chains of <= 8 rows; the weight
// rows of a tile are packed k-major and broadcast, the P16 panel is the vector operand.
// `gemm` packs each tile once per block of panels (weights used once: adaln_block);
// `pack_weights` + `gemm_packed` use weights packed once (head_sample packs every weight
// once, widened to fp32, and keeps it between calls: pack_cache.cpp). With bf16/fp16
// weights the GEMM inputs are rounded to that type by the producers (LN, SiLU), so the
// fp32 FMAs compute exactly what a bf16 x bf16 -> fp32 tensor-core GEMM computes.
//
// Builds of the same source (kernels_impl.h): AVX2+FMA (kernels_avx2.cpp) and baseline
// (kernels_base.cpp: SSE2 on x86, NEON on aarch64). kernels_avx512.cpp reuses it for the
// row-wise parts and has its own AVX-512 GEMM micro-kernels (one 16-row panel is one zmm),
// plus bf16 x bf16 -> fp32 GEMMs on bf16 weights: with AVX512-BF16 (vdpbf16ps, weights
// packed in k-pairs) or with AMX-BF16 tiles (weights packed in 16 x 32 tiles). `kernels()` picks the best build for the
// running CPU (avx512_amx > avx512_bf16 > avx512 > avx2 > base; MARENGINE_CPU_KERNELS=NAME forces one, falling back
// with a message on stderr when the CPU cannot run it). Threading is the caller's business
// (head_sample_cpu.cpp).
//
// Test: pytest python_tests/test_native_cpu.py; benchmark: python benchmarks/bench_head.py.
#pragma once

#include <cstdint>

// MARENGINE_TARGET_PUSH("isa,list") ... MARENGINE_TARGET_POP: the functions declared between
// them are compiled for that ISA target (GCC and Clang), those around them are not. The ISA
// builds open a region after every standard header is included, so that the extension still
// loads on CPUs without the ISA.
#define MARENGINE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define MARENGINE_TARGET_PUSH(isa) \
  MARENGINE_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MARENGINE_TARGET_POP MARENGINE_PRAGMA(clang attribute pop)
#else
#define MARENGINE_TARGET_PUSH(isa) MARENGINE_PRAGMA(GCC push_options) MARENGINE_PRAGMA(GCC target(isa))
#define MARENGINE_TARGET_POP MARENGINE_PRAGMA(GCC pop_options)
#endif

namespace marengine {
namespace cpu {

constexpr int64_t kLanes = 16;     // rows per panel
constexpr int64_t kTileN = 6;      // weight rows per micro-tile
constexpr int64_t kColSplit = 48;  // column ranges given to gemm_packed start at multiples of this

enum class WType : int { F32 = 0, BF16 = 1, F16 = 2 };

// A weight matrix in nn.Linear layout: row n of length k at data + n * k elements.
struct Weight {
  const void* data = nullptr;
  WType type = WType::F32;
  int64_t n = 0;
  int64_t k = 0;
};

enum class Epi : int {
  Store,         // out = acc + bias
  SiluRound,     // out = round(silu(acc + bias))           (round to `round`'s precision)
  GateResidual,  // out += gate * (acc + bias)
};

// Where the GEMM result of panel p, output column n, lane l goes:
//   out[p * out_pstride + (out_off + n) * 16 + l]
//   gate[p * gate_pstride + n * 16 + l]                     (GateResidual)
struct EpiArgs {
  Epi kind = Epi::Store;
  const float* bias = nullptr;  // [N] fp32, or null
  float* out = nullptr;
  int64_t out_pstride = 0;
  int64_t out_off = 0;
  const float* gate = nullptr;
  int64_t gate_pstride = 0;
  WType round = WType::F32;
  // Store only: if set, row (p, l) goes to out[row_off[p * 16 + l] + (out_off + n) * 16]
  // instead (row_off < 0: dropped). Lets a GEMM over densely packed rows scatter its
  // result into another panel layout.
  const int64_t* row_off = nullptr;
};

struct Kernels {
  const char* name;
  // Panels [0, panels) of A (panel p at A + p * a_pstride, [K][16]) times weight rows
  // [n0, n1) of W. Single-threaded; callers split n or panels across threads.
  void (*gemm)(const float* A, int64_t a_pstride, int64_t panels, const Weight& W, int64_t n0, int64_t n1,
               const EpiArgs& epi);
  // Weight tiles [t0, t1) (6 rows each) -> k-major tiles in W's element type, tile t at
  // out + t * K * 6 elements (rows past N zero). For weights reused across calls / steps.
  void (*pack_weights)(const Weight& W, int64_t t0, int64_t t1, void* out);
  // gemm with prepacked weights ([ceil(N/6)][K][6] of `type`, unless noted); n0 must be a
  // multiple of kColSplit (every build's column groups divide it).
  // lanes <= 8: only rows 0-7 of each panel matter (8 x 12 micro-tile, half the FLOPs).
  void (*gemm_packed)(const float* A, int64_t a_pstride, int64_t panels, const void* wp, WType type, int64_t K,
                      int64_t N, int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi);
  // One panel: out = round(LN(h) * (1 + scale) + shift), LN over F features per lane with
  // fp32 two-pass statistics; ln_w/ln_b may be null (no affine). h, shift, scale, out: [F][16].
  void (*ln_modulate)(const float* h, int64_t F, const float* shift, const float* scale, const float* ln_w,
                      const float* ln_b, float eps, WType round, float* out);
  // One panel from 16 row pointers: out[k][l] = round(silu(t_rows[l][k] + c_rows[l][k]))
  // ([K][16]); a null t_rows[l] or c_rows[l] counts as a zero row.
  void (*silu_add_rows)(const float* const* t_rows, const float* const* c_rows, int64_t K, WType round, float* out);
  // dst[i] = round(src[i]), n elements.
  void (*round_copy)(const float* src, int64_t n, WType round, float* dst);
  // dst[i] = float(src[i]) for a weight-typed array.
  void (*to_f32)(const void* src, WType type, int64_t n, float* dst);
  // true: pack_weights / gemm_packed also take bf16 weights as such (packed in k-pairs,
  // [ceil(N/6)][ceil(K/2)][6][2] bf16, and multiplied with bf16 x bf16 -> fp32 dot
  // products); the A panels must then hold bf16-exact values. false: callers widen bf16
  // weights to fp32 before packing.
  bool dot_bf16 = false;
  // Elements pack_weights writes for a whole [n][k] weight of `type`; null: ceil(n/6) * 6 * k
  // (bf16 k-pairs: k rounded up to even).
  int64_t (*packed_elems)(WType type, int64_t n, int64_t k) = nullptr;
};

// Per-thread scratch of at least `count` floats (grown on demand, kept for the thread's life).
float* thread_scratch(int64_t count);

const Kernels& kernels_base();
const Kernels* kernels_avx2();         // null when not compiled for this architecture
const Kernels* kernels_avx512();       // null when not compiled for this architecture
const Kernels* kernels_avx512_bf16();  // null when not compiled for this architecture
const Kernels* kernels_avx512_amx();   // null when not compiled for this architecture
// The best available on the running CPU, chosen once per process; MARENGINE_CPU_KERNELS=
// avx512_amx|avx512_bf16|avx512|avx2|base forces a build (one the CPU cannot run falls back to the
// best it can, with a message on stderr).
const Kernels& kernels();
// Which builds the running CPU can run, best first, comma-separated (e.g. "avx512_bf16,avx512,avx2,base").
const char* kernels_supported();
// The builds compiled into this extension (whether or not this CPU runs them), best first, comma-separated.
const char* kernels_built();

}  // namespace cpu
}  // namespace marengine
