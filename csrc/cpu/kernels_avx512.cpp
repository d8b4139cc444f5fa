// kernels_avx512.cpp -- the CPU kernels of kernels.h for AVX-512 (x86-64 only), in three
// builds chosen at run time by kernels(): "avx512" (avx512f/bw/vl/dq + FMA), "avx512_bf16"
// (the same plus AVX512-BF16) and "avx512_amx" (plus AMX-TILE/AMX-BF16; Linux must grant
// the tile state, kernels_base.cpp asks). The targets are set (MARENGINE_TARGET_PUSH) after
// every standard header is included, so only this file's own functions use them and the
// extension still loads on older CPUs.
//
// The row-wise parts (LayerNorm + modulation, SiLU, rounding, conversions) and the unpacked
// `gemm` are kernels_impl.h compiled for the AVX-512 target. The packed GEMM (head_sample's
// hot loop) has its own micro-kernels, since one 16-row P16 panel is exactly one zmm (fp32 and
// bf16 share them: kernels_avx512_panels.h, compiled into each target region):
//   fp32, >= 2 panels   2 panels x 12 weight columns (two packed 6-column tiles): 24 zmm
//                       accumulators, 2 panel loads + 12 broadcasts per 24 FMAs.
//   fp32, 1 panel       1 panel x 24 columns (four tiles): 24 accumulators, 1 load + 24
//                       broadcast FMAs; the weights stream once (small M is bandwidth-bound).
//   <= 8 live lanes     the same with ymm (8 lanes), half the FLOPs of a zmm panel.
//   bf16, avx512_bf16   the same shapes with vdpbf16ps: weights packed in k-pairs
//                       ([tile][ceil(K/2)][6][2] bf16, one 32-bit broadcast per column and
//                       pair), the panel converted once per block of panels to
//                       [ceil(K/2)][16][2] bf16 (its values are already bf16-exact: the
//                       producers round them), fp32 accumulation. (On Sapphire Rapids
//                       vdpbf16ps runs at half the fp32 FMA rate: this build only halves
//                       the weight traffic; the AMX build is the fast one.)
//   bf16, avx512_amx    tdpbf16ps on 16 x 16 fp32 C tiles: 2 weight groups (32 columns) x
//                       2 panels = 4 C tiles per k block of 32; weights packed as 16-row x
//                       32-k tiles, panels as k-pair tiles (see the AMX section).
// K is not blocked (the accumulators hold the whole dot product); a block of panels
// (~512 KB of A, L2) is swept by each weight tile group, which stays in L1/L2. With one
// panel (a few rows: bandwidth-bound) the micro-kernels prefetch the weight streams ahead.
//
// Test: pytest python_tests/test_native_cpu.py (forces every build this CPU can run);
// benchmark: python benchmarks/bench_head.py, python benchmarks/bench_roofline.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the deliberately undefined vector inside its own AVX-512 shift intrinsics
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

MARENGINE_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")

#define MARENGINE_KNS avx512
#define MARENGINE_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#include "kernels_impl.h"
#define MARENGINE_PANEL_NS f32_panels
#include "kernels_avx512_panels.h"

namespace marengine {
namespace cpu {
namespace avx512 {

// fp32 steps (kernels_avx512_panels.h): 16 / 8 lanes of a panel, one weight broadcast, FMA.
struct F32Ops {
  using Elem = float;
  using V16 = __m512;
  using V8 = __m256;
  static inline V16 load16(const float* p) { return _mm512_loadu_ps(p); }
  static inline V8 load8(const float* p) { return _mm256_loadu_ps(p); }
  static inline V16 bcast16(float w) { return _mm512_set1_ps(w); }
  static inline V8 bcast8(float w) { return _mm256_set1_ps(w); }
  static inline __m512 madd16(__m512 c, V16 a, V16 b) { return _mm512_fmadd_ps(a, b, c); }
  static inline __m256 madd8(__m256 c, V8 a, V8 b) { return _mm256_fmadd_ps(a, b, c); }
};

// gemm_packed for fp32 packed tiles (tile t at wp + t * K * 6 floats).
static void gemm_packed_f32(const float* A, int64_t a_ps, int64_t panels, const float* w, int64_t K, int64_t n0,
                            int64_t n1, int64_t lanes, const EpiArgs& epi) {
  f32_panels::sweep_panels<F32Ops>(
      panels, panel_block(K), K, w, K * kTileN, n0, n1, lanes, epi,
      [&](int64_t p0, int64_t) { return f32_panels::PanelBlock<float>{A + p0 * a_ps, a_ps}; });
}

static void gemm_packed512(const float* A, int64_t a_pstride, int64_t panels, const void* wp, WType type, int64_t K,
                           int64_t N, int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi) {
  n1 = std::min(n1, N);
  if (panels <= 0 || n1 <= n0) return;
  if (type != WType::F32)  // not reached from head_sample (it widens such weights); kept correct anyway
    return gemm_packed(A, a_pstride, panels, wp, type, K, N, n0, n1, lanes, epi);
  gemm_packed_f32(A, a_pstride, panels, static_cast<const float*>(wp), K, n0, n1, lanes, epi);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace marengine

MARENGINE_TARGET_POP

// ---------------------------------------------------------------- bf16 x bf16 -> fp32
MARENGINE_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")

#define MARENGINE_PANEL_NS bf16_panels
#include "kernels_avx512_panels.h"

namespace marengine {
namespace cpu {
namespace avx512 {

// Tiles [t0, t1) of a bf16 weight in k-pairs: tile t at out + t * ceil(K/2) * 12 bf16,
// element (pair q, column j) = (W[n + j][2q], W[n + j][2q + 1]) (zero past N or K).
// Other weight types: the usual [K][6] tiles.
static void pack_weights_bf16(const Weight& W, int64_t t0, int64_t t1, void* out) {
  if (W.type != WType::BF16) return pack_weights(W, t0, t1, out);
  const int64_t K = W.k, K2 = (K + 1) / 2;
  const uint16_t* src = static_cast<const uint16_t*>(W.data);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (int64_t t = t0; t < t1; ++t) {
    uint16_t* d = o + t * K2 * 2 * kTileN;
    for (int j = 0; j < kTileN; ++j) {
      const int64_t n = t * kTileN + j;
      const uint16_t* row = n < W.n ? src + n * K : nullptr;
      for (int64_t q = 0; q < K2; ++q) {
        d[(q * kTileN + j) * 2] = row ? row[2 * q] : 0;
        d[(q * kTileN + j) * 2 + 1] = (row && 2 * q + 1 < K) ? row[2 * q + 1] : 0;
      }
    }
  }
}

// P16 panel [K][16] fp32 -> [ceil(K/2)][16] pairs of bf16 (low half: even k), rounded to
// nearest even (exact for the bf16-valued panels head_sample feeds it).
static inline void panel_to_pairs(const float* A, int64_t K, uint32_t* out) {
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  auto rnd = [&](__m512i b) {
    return _mm512_add_epi32(b,
                            _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srlv_epi32(b, _mm512_set1_epi32(16)), one)));
  };
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t q = 0; 2 * q < K; ++q) {
    const __m512i lo = _mm512_srli_epi32(rnd(_mm512_castps_si512(_mm512_loadu_ps(A + 2 * q * kLanes))), 16);
    __m512i hi = _mm512_setzero_si512();
    if (2 * q + 1 < K)
      hi = _mm512_and_si512(rnd(_mm512_castps_si512(_mm512_loadu_ps(A + (2 * q + 1) * kLanes))), hi_mask);
    _mm512_storeu_si512(out + q * kLanes, _mm512_or_si512(lo, hi));
  }
}

static inline __m512bh as_bh(__m512i v) {
  return (__m512bh)v;
}
static inline __m256bh as_bh(__m256i v) {
  return (__m256bh)v;
}

// bf16 k-pair steps (kernels_avx512_panels.h): a uint32_t holds bf16 elements 2q and 2q + 1,
// vdpbf16ps adds both products to the fp32 accumulator.
struct Bf16PairOps {
  using Elem = uint32_t;
  using V16 = __m512bh;
  using V8 = __m256bh;
  static inline V16 load16(const uint32_t* p) { return as_bh(_mm512_loadu_si512(p)); }
  static inline V8 load8(const uint32_t* p) { return as_bh(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static inline V16 bcast16(uint32_t w) { return as_bh(_mm512_set1_epi32(static_cast<int>(w))); }
  static inline V8 bcast8(uint32_t w) { return as_bh(_mm256_set1_epi32(static_cast<int>(w))); }
  static inline __m512 madd16(__m512 c, V16 a, V16 b) { return _mm512_dpbf16_ps(c, a, b); }
  static inline __m256 madd8(__m256 c, V8 a, V8 b) { return _mm256_dpbf16_ps(c, a, b); }
};

// gemm_packed for bf16 k-pair tiles (pack_weights_bf16): each block of panels is converted
// to k-pairs in this thread's scratch, then swept as in gemm_packed_f32.
static void gemm_packed_bf16(const float* A, int64_t a_ps, int64_t panels, const uint32_t* w, int64_t K, int64_t n0,
                             int64_t n1, int64_t lanes, const EpiArgs& epi) {
  const int64_t K2 = (K + 1) / 2, pblock = panel_block(K), bps = K2 * kLanes;
  uint32_t* buf = reinterpret_cast<uint32_t*>(thread_scratch(std::min(panels, pblock) * bps));
  bf16_panels::sweep_panels<Bf16PairOps>(panels, pblock, K2, w, K2 * kTileN, n0, n1, lanes, epi,
                                         [&](int64_t p0, int64_t p1) {
                                           for (int64_t p = p0; p < p1; ++p)
                                             panel_to_pairs(A + p * a_ps, K, buf + (p - p0) * bps);
                                           return bf16_panels::PanelBlock<uint32_t>{buf, bps};
                                         });
}

static void gemm_packed512_bf16(const float* A, int64_t a_pstride, int64_t panels, const void* wp, WType type,
                                int64_t K, int64_t N, int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi) {
  n1 = std::min(n1, N);
  if (panels <= 0 || n1 <= n0) return;
  if (type == WType::BF16)
    return gemm_packed_bf16(A, a_pstride, panels, static_cast<const uint32_t*>(wp), K, n0, n1, lanes, epi);
  gemm_packed512(A, a_pstride, panels, wp, type, K, N, n0, n1, lanes, epi);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace marengine

MARENGINE_TARGET_POP

// ---------------------------------------------------------------- AMX-BF16 tiles
MARENGINE_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")

namespace marengine {
namespace cpu {
namespace avx512 {

// AMX layout. Weights: groups of 16 output rows, blocks of 32 k, [ceil(N/16)][ceil(K/32)]
// [16][32] bf16 (one 1 KB A-operand tile each, zero past N and K). Panels: k-pairs
// [ceil(K/32) * 16][16 lanes][2] bf16 (one 1 KB B-operand tile per k block). A tile
// product C[n][lane] (16 x 16 fp32) is then exactly the [column][lane] layout the
// epilogue takes, so no transposition anywhere.
constexpr int64_t kAmxRows = 16, kAmxK = 32;

static int64_t amx_packed_elems(WType type, int64_t n, int64_t k) {
  if (type != WType::BF16) return (n + kTileN - 1) / kTileN * kTileN * k;
  return (n + kAmxRows - 1) / kAmxRows * kAmxRows * ((k + kAmxK - 1) / kAmxK * kAmxK);
}

// pack_weights for the AMX build: bf16 weights in the AMX layout (tiles [t0, t1) of 6 rows
// map to rows [6 t0, 6 t1); the call that ends at the last tile also zeroes the padding
// rows of the last group); other types as usual.
static void pack_weights_amx(const Weight& W, int64_t t0, int64_t t1, void* out) {
  if (W.type != WType::BF16) return pack_weights(W, t0, t1, out);
  const int64_t K = W.k, KB = (K + kAmxK - 1) / kAmxK, last = (W.n + kTileN - 1) / kTileN;
  const int64_t r1 = t1 >= last ? (W.n + kAmxRows - 1) / kAmxRows * kAmxRows : std::min(W.n, t1 * kTileN);
  const uint16_t* src = static_cast<const uint16_t*>(W.data);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (int64_t n = t0 * kTileN; n < r1; ++n) {
    uint16_t* g = o + (n / kAmxRows) * KB * kAmxRows * kAmxK + (n % kAmxRows) * kAmxK;
    for (int64_t b = 0; b < KB; ++b) {
      uint16_t* d = g + b * kAmxRows * kAmxK;
      for (int64_t i = 0; i < kAmxK; ++i) {
        const int64_t k = b * kAmxK + i;
        d[i] = (n < W.n && k < K) ? src[n * K + k] : 0;
      }
    }
  }
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tmm0-3: C (16 x 16 fp32), tmm4-5: weight tiles (16 rows x 32 bf16), tmm6-7: panel tiles
// (16 k-pairs x 16 lanes x 2 bf16): every tile 16 rows x 64 bytes.
static void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// C tiles of G weight groups x P panels over KB k blocks; tile (g, p) is stored to
// out + p * kMaxColsAmx * 16 + g * 256 floats ([column][lane]). The weights stream from
// memory (each tile is used by at most two panels), so they are prefetched kAmxPrefetch k
// blocks ahead (measured on the MAR-B head: ~10% faster at 1-8 rows).
constexpr int64_t kMaxColsAmx = 2 * kAmxRows;
constexpr int64_t kAmxPrefetch = 4;
template <int G, int P>
static inline void amx_tile(const uint16_t* w0, const uint16_t* w1, const uint32_t* a0, const uint32_t* a1, int64_t KB,
                            float* out) {
  _tile_zero(0);
  if (P > 1) _tile_zero(1);
  if (G > 1) _tile_zero(2);
  if (G > 1 && P > 1) _tile_zero(3);
  for (int64_t b = 0; b < KB; ++b) {
    if (b + kAmxPrefetch < KB) {  // the weight tiles kAmxPrefetch k blocks ahead, a 64-byte row per prefetch
      const char* pf0 = reinterpret_cast<const char*>(w0 + (b + kAmxPrefetch) * kAmxRows * kAmxK);
      const char* pf1 = reinterpret_cast<const char*>(w1 + (b + kAmxPrefetch) * kAmxRows * kAmxK);
#pragma GCC unroll 16
      for (int r = 0; r < kAmxRows; ++r) {
        _mm_prefetch(pf0 + 64 * r, _MM_HINT_T0);
        if (G > 1) _mm_prefetch(pf1 + 64 * r, _MM_HINT_T0);
      }
    }
    _tile_loadd(4, w0 + b * kAmxRows * kAmxK, 64);
    if (G > 1) _tile_loadd(5, w1 + b * kAmxRows * kAmxK, 64);
    _tile_loadd(6, a0 + b * kAmxRows * kLanes, 64);
    if (P > 1) _tile_loadd(7, a1 + b * kAmxRows * kLanes, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (P > 1) _tile_dpbf16ps(1, 4, 7);
    if (G > 1) _tile_dpbf16ps(2, 5, 6);
    if (G > 1 && P > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  if (P > 1) _tile_stored(1, out + kMaxColsAmx * kLanes, 64);
  if (G > 1) _tile_stored(2, out + kAmxRows * kLanes, 64);
  if (G > 1 && P > 1) _tile_stored(3, out + kMaxColsAmx * kLanes + kAmxRows * kLanes, 64);
}

// gemm_packed on AMX-layout bf16 weights; n0 must be a multiple of 16.
static void gemm_packed_amx(const float* A, int64_t a_ps, int64_t panels, const uint16_t* w, int64_t K, int64_t n0,
                            int64_t n1, const EpiArgs& epi) {
  const int64_t KB = (K + kAmxK - 1) / kAmxK, Kp = KB * kAmxK, pblock = panel_block(K);
  const int64_t bps = Kp / 2 * kLanes, gstride = KB * kAmxRows * kAmxK;
  uint32_t* buf = reinterpret_cast<uint32_t*>(thread_scratch(std::min(panels, pblock) * bps));
  alignas(64) float tile[2 * kMaxColsAmx * kLanes];
  amx_configure();
  for (int64_t p0 = 0; p0 < panels; p0 += pblock) {
    const int64_t p1 = std::min(panels, p0 + pblock);
    for (int64_t p = p0; p < p1; ++p) {
      uint32_t* d = buf + (p - p0) * bps;
      panel_to_pairs(A + p * a_ps, K, d);
      std::memset(d + (K + 1) / 2 * kLanes, 0, static_cast<size_t>(Kp / 2 - (K + 1) / 2) * kLanes * 4);
    }
    asm volatile("" ::: "memory");  // the tile loads below read buf through inline asm
    for (int64_t n = n0; n < n1; n += kMaxColsAmx) {
      const int nb = static_cast<int>(std::min<int64_t>(kMaxColsAmx, n1 - n));
      const uint16_t* wg = w + (n / kAmxRows) * gstride;
      const bool two = nb > kAmxRows;
      int64_t p = p0;
      for (; p + 1 < p1; p += 2) {
        const uint32_t* a = buf + (p - p0) * bps;
        if (two)
          amx_tile<2, 2>(wg, wg + gstride, a, a + bps, KB, tile);
        else
          amx_tile<1, 2>(wg, wg, a, a + bps, KB, tile);
        epilogue(epi, p, n, nb, tile);
        epilogue(epi, p + 1, n, nb, tile + kMaxColsAmx * kLanes);
      }
      if (p < p1) {
        const uint32_t* a = buf + (p - p0) * bps;
        if (two)
          amx_tile<2, 1>(wg, wg + gstride, a, a, KB, tile);
        else
          amx_tile<1, 1>(wg, wg, a, a, KB, tile);
        epilogue(epi, p, n, nb, tile);
      }
    }
  }
  _tile_release();
}

static void gemm_packed512_amx(const float* A, int64_t a_pstride, int64_t panels, const void* wp, WType type, int64_t K,
                               int64_t N, int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi) {
  n1 = std::min(n1, N);
  if (panels <= 0 || n1 <= n0) return;
  if (type == WType::BF16)
    return gemm_packed_amx(A, a_pstride, panels, static_cast<const uint16_t*>(wp), K, n0, n1, epi);
  gemm_packed512(A, a_pstride, panels, wp, type, K, N, n0, n1, lanes, epi);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace marengine

MARENGINE_TARGET_POP

namespace marengine {
namespace cpu {

// The three AVX-512 builds share the unpacked gemm and the row-wise parts; they differ in how
// the head's weights are packed and multiplied.
static constexpr Kernels avx512_build(const char* name, decltype(Kernels::pack_weights) pack,
                                      decltype(Kernels::gemm_packed) gemm_packed, bool dot_bf16,
                                      decltype(Kernels::packed_elems) packed_elems = nullptr) {
  return Kernels{name,
                 avx512::gemm,
                 pack,
                 gemm_packed,
                 avx512::ln_modulate,
                 avx512::silu_add_rows,
                 avx512::round_copy,
                 avx512::to_f32,
                 dot_bf16,
                 packed_elems};
}

const Kernels* kernels_avx512() {
  static constexpr Kernels k = avx512_build("avx512", avx512::pack_weights, avx512::gemm_packed512, false);
  return &k;
}

const Kernels* kernels_avx512_bf16() {
  static constexpr Kernels k =
      avx512_build("avx512_bf16", avx512::pack_weights_bf16, avx512::gemm_packed512_bf16, true);
  return &k;
}

const Kernels* kernels_avx512_amx() {
  static constexpr Kernels k =
      avx512_build("avx512_amx", avx512::pack_weights_amx, avx512::gemm_packed512_amx, true, avx512::amx_packed_elems);
  return &k;
}

}  // namespace cpu
}  // namespace marengine

#else  // not x86-64

namespace marengine {
namespace cpu {
const Kernels* kernels_avx512() {
  return nullptr;
}
const Kernels* kernels_avx512_bf16() {
  return nullptr;
}
const Kernels* kernels_avx512_amx() {
  return nullptr;
}
}  // namespace cpu
}  // namespace marengine

#endif
