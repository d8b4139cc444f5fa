// kernels_impl.h -- the CPU kernels of kernels.h, written once with GCC/Clang vector
// extensions and compiled twice: kernels_avx2.cpp (AVX2 + FMA target) and
// kernels_base.cpp (the architecture's baseline). Include only from those two files,
// after defining MARENGINE_KNS (the namespace of this build) and MARENGINE_FMA(a, b, c).
//
// What is here (see kernels.h for the P16 layout):
//   gemm          16-row x 6-column micro-tile, 12 accumulators of 8 floats, K unblocked;
//                 the tile's 6 weight rows are packed k-major (in the weights' type; widened
//                 to an fp32 copy, 24 KB at K = 1024, per tile and block of panels) and
//                 reused across a block of panels (~kPanelBlockBytes of A, L2); fused
//                 epilogue.
//   ln_modulate   fp32 two-pass LayerNorm per lane + affine + (1 + scale), shift, rounding.
//   silu_add_rows SiLU(t + c) for the modulation GEMM's activation panels, gathered from
//                 arbitrary (step, row) pairs so that panels hold no padding rows.
//   round/convert bf16 (round-to-nearest-even) and fp16 (IEEE, with subnormals and
//                 overflow to inf) rounding in integer vector ops; bf16/fp16 -> fp32 widening.
// No torch headers: this code is also the reference for how the CPU path computes.
//
// Test: pytest python_tests/test_native_cpu.py; benchmark: python benchmarks/bench_head.py.
// The including file includes every standard header this one needs (kernels.h,
// <algorithm>, <cmath>, <cstdint>, <cstring>, <type_traits>) before any target pragma, so that
// no standard-library code is compiled for the AVX2 target.

namespace marengine {
namespace cpu {
namespace MARENGINE_KNS {

typedef float vf __attribute__((vector_size(32)));
typedef float vf_m __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
typedef uint16_t vh_m __attribute__((vector_size(16), aligned(2), may_alias));

#include "kernels_dispatch.h"

constexpr int64_t L = kLanes;
#ifndef MARENGINE_PANEL_BLOCK_BYTES
#define MARENGINE_PANEL_BLOCK_BYTES (512 * 1024)
#endif
constexpr int64_t kPanelBlockBytes = MARENGINE_PANEL_BLOCK_BYTES;

static inline vf ld(const float* p) {
  return *reinterpret_cast<const vf_m*>(p);
}
static inline void st(float* p, vf v) {
  *reinterpret_cast<vf_m*>(p) = v;
}
static inline vf splat(float x) {
  return vf{x, x, x, x, x, x, x, x};
}
static inline vf vmax(vf a, vf b) {
  return a > b ? a : b;
}
static inline vf vmin(vf a, vf b) {
  return a < b ? a : b;
}

// exp(x), Cephes-style: n = round(x log2 e), r = x - n ln2, degree-6 polynomial; ~1 ulp.
static inline vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.0f)), splat(88.0f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vi e = __builtin_convertvector(n, vi);
  return y * (vf)((e + 127) << 23);
}

static inline vf vsilu(vf x) {
  return x / (1.0f + vexp(-x));
}

static inline vf round_bf16(vf x) {
  vu b = (vu)x;
  b = b + 0x7fffu + ((b >> 16) & 1u);
  return (vf)(b & 0xffff0000u);
}

static inline vf round_f16(vf x) {
  const vu b = (vu)x;
  const vu sign = b & 0x80000000u;
  const vu a = b ^ sign;
  const vf ax = (vf)a;
  const vu normal = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;  // 10 mantissa bits, RNE
  const vf sub = (ax + 0.75f) - 0.75f;                              // quantum 2^-24 below 2^-14 (fp16 subnormals)
  vu r = ax < 6.103515625e-05f ? (vu)sub : normal;
  r = (vf)r >= 65536.0f ? vu{} + 0x7f800000u : r;  // overflow (>= 65520 before rounding) -> inf
  r = a >= 0x7f800000u ? a : r;                    // inf / nan pass through
  return (vf)(r | sign);
}

template <WType T>
static inline vf rnd(vf x) {
  if constexpr (T == WType::BF16)
    return round_bf16(x);
  else if constexpr (T == WType::F16)
    return round_f16(x);
  else
    return x;
}

static inline vf bf16_to_f32(const uint16_t* p) {
  const vu w = __builtin_convertvector(*reinterpret_cast<const vh_m*>(p), vu);
  return (vf)(w << 16);
}

static inline vf f16_to_f32(const uint16_t* p) {
  const vu w = __builtin_convertvector(*reinterpret_cast<const vh_m*>(p), vu);
  const vu sign = (w & 0x8000u) << 16;
  const vu em = w & 0x7fffu;
  vf f = (vf)(em << 13) * 5.192296858534828e+33f;  // * 2^112 rebiases exponents, subnormals too
  f = em >= 0x7c00u ? (vf)((em << 13) | 0x7f800000u) : f;
  return (vf)((vu)f | sign);
}

static float f16_scalar(uint16_t h) {
  uint16_t tmp[8] = {h, 0, 0, 0, 0, 0, 0, 0};
  return f16_to_f32(tmp)[0];
}

static void to_f32(const void* src, WType type, int64_t n, float* dst) {
  if (type == WType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (type == WType::BF16) {
    for (; i + 8 <= n; i += 8) st(dst + i, bf16_to_f32(s + i));
    for (; i < n; ++i) {
      const uint32_t w = static_cast<uint32_t>(s[i]) << 16;
      std::memcpy(dst + i, &w, 4);
    }
  } else {
    for (; i + 8 <= n; i += 8) st(dst + i, f16_to_f32(s + i));
    for (; i < n; ++i) dst[i] = f16_scalar(s[i]);
  }
}

template <WType T>
static void round_copy_t(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) st(dst + i, rnd<T>(ld(src + i)));
  if (i < n) {
    float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tmp, src + i, static_cast<size_t>(n - i) * sizeof(float));
    const vf v = rnd<T>(ld(tmp));
    for (int64_t j = 0; i + j < n; ++j) dst[i + j] = v[j];
  }
}

static void round_copy(const float* src, int64_t n, WType round, float* dst) {
  switch (round) {
    case WType::BF16:
      return round_copy_t<WType::BF16>(src, n, dst);
    case WType::F16:
      return round_copy_t<WType::F16>(src, n, dst);
    default:
      return round_copy_t<WType::F32>(src, n, dst);
  }
}

// ---------------------------------------------------------------- GEMM micro-kernel
// tile[j][0..16) = sum_k A[k][0..16) * wp[k * 6 + j], j < NB; wp is the tile's weight rows
// packed k-major (one stream, 24 bytes per k), A a P16 panel.
template <int NB>
static inline void micro_tile(const float* __restrict A, int64_t K, const float* __restrict wp,
                              float* __restrict tile) {
  vf c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {};
  vf c30 = {}, c31 = {}, c40 = {}, c41 = {}, c50 = {}, c51 = {};
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const vf a0 = ld(A), a1 = ld(A + 8);
    A += L;
    vf b;
#define MARENGINE_TILE_ROW(j)                \
  if constexpr (NB > j) {                    \
    b = splat(wp[j]);                        \
    c##j##0 = MARENGINE_FMA(a0, b, c##j##0); \
    c##j##1 = MARENGINE_FMA(a1, b, c##j##1); \
  }
    MARENGINE_TILE_ROW(0)
    MARENGINE_TILE_ROW(1)
    MARENGINE_TILE_ROW(2)
    MARENGINE_TILE_ROW(3)
    MARENGINE_TILE_ROW(4)
    MARENGINE_TILE_ROW(5)
#undef MARENGINE_TILE_ROW
    wp += kTileN;
  }
#define MARENGINE_TILE_STORE(j)    \
  if constexpr (NB > j) {          \
    st(tile + j * L, c##j##0);     \
    st(tile + j * L + 8, c##j##1); \
  }
  MARENGINE_TILE_STORE(0)
  MARENGINE_TILE_STORE(1)
  MARENGINE_TILE_STORE(2)
  MARENGINE_TILE_STORE(3)
  MARENGINE_TILE_STORE(4)
  MARENGINE_TILE_STORE(5)
#undef MARENGINE_TILE_STORE
}

// Rows [n, n + nb) of a [N][K] matrix (nb <= 6) -> [K][6] in the same element type
// (unused columns zero).
template <typename T>
static void pack_tile_t(const T* src, int64_t K, int nb, T* wp) {
  if (nb == kTileN) {
    for (int64_t k = 0; k < K; ++k) {
      T* d = wp + k * kTileN;
      d[0] = src[k];
      d[1] = src[K + k];
      d[2] = src[2 * K + k];
      d[3] = src[3 * K + k];
      d[4] = src[4 * K + k];
      d[5] = src[5 * K + k];
    }
    return;
  }
  for (int64_t k = 0; k < K; ++k)
    for (int j = 0; j < kTileN; ++j) wp[k * kTileN + j] = j < nb ? src[j * K + k] : T(0);
}

static void pack_tile(const Weight& W, int64_t n, int nb, void* wp) {
  if (W.type == WType::F32)
    pack_tile_t(static_cast<const float*>(W.data) + n * W.k, W.k, nb, static_cast<float*>(wp));
  else
    pack_tile_t(static_cast<const uint16_t*>(W.data) + n * W.k, W.k, nb, static_cast<uint16_t*>(wp));
}

static int64_t elem_size(WType t) {
  return t == WType::F32 ? 4 : 2;
}

// Tiles [t0, t1) of W packed in W's element type: tile t at out + t * K * 6 elements.
static void pack_weights(const Weight& W, int64_t t0, int64_t t1, void* out) {
  char* o = static_cast<char*>(out);
  for (int64_t t = t0; t < t1; ++t) {
    const int nb = static_cast<int>(std::min<int64_t>(kTileN, W.n - t * kTileN));
    pack_tile(W, t * kTileN, nb, o + t * W.k * kTileN * elem_size(W.type));
  }
}

// An fp32 view of packed tile t: in place for fp32, else widened into `scratch` (K * 6).
static const float* tile_f32(const void* wp, WType type, int64_t K, int64_t t, float* scratch) {
  if (type == WType::F32) return static_cast<const float*>(wp) + t * K * kTileN;
  to_f32(static_cast<const uint16_t*>(wp) + t * K * kTileN, type, K * kTileN, scratch);
  return scratch;
}

// Half panel (lanes 0-7 only; rows 8-15 of the tile come out zero): 8 x NB, NB <= 12,
// weight columns 0-5 from packed tile w0 and 6-11 from w1. For chains of <= 8 rows.
template <int NB>
static inline void micro_tile8(const float* __restrict A, int64_t K, const float* __restrict w0,
                               const float* __restrict w1, float* __restrict tile) {
  vf c[2 * kTileN] = {};
  for (int64_t k = 0; k < K; ++k) {
    const vf a = ld(A);
    A += L;
#pragma GCC unroll 12
    for (int j = 0; j < NB; ++j) c[j] = MARENGINE_FMA(a, splat(j < kTileN ? w0[j] : w1[j - kTileN]), c[j]);
    w0 += kTileN;
    if constexpr (NB > kTileN) w1 += kTileN;
  }
  const vf zero = {};
  for (int j = 0; j < NB; ++j) {
    st(tile + j * L, c[j]);
    st(tile + j * L + 8, zero);
  }
}

static inline void run_tile8(int nb, const float* A, int64_t K, const float* w0, const float* w1, float* tile) {
  with_const<2 * kTileN>(nb, [&](auto NB) { micro_tile8<NB.value>(A, K, w0, w1, tile); });
}

static inline void run_tile(int nb, const float* A, int64_t K, const float* wp, float* tile) {
  with_const<kTileN>(nb, [&](auto NB) { micro_tile<NB.value>(A, K, wp, tile); });
}

template <WType R>
static inline void epilogue_t(const EpiArgs& e, int64_t p, int64_t n, int nb, const float* tile) {
  float* out = e.out + p * e.out_pstride + (e.out_off + n) * L;
  const float* gate = e.kind == Epi::GateResidual ? e.gate + p * e.gate_pstride + n * L : nullptr;
  if (e.row_off != nullptr) {  // scattered store
    const int64_t* off = e.row_off + p * L;
    float* base = e.out + (e.out_off + n) * L;
    for (int j = 0; j < nb; ++j) {
      const float b = e.bias ? e.bias[n + j] : 0.0f;
      for (int64_t l = 0; l < L; ++l)
        if (off[l] >= 0) base[off[l] + j * L] = tile[j * L + l] + b;
    }
    return;
  }
  for (int j = 0; j < nb; ++j) {
    const vf b = splat(e.bias ? e.bias[n + j] : 0.0f);
    vf v0 = ld(tile + j * L) + b, v1 = ld(tile + j * L + 8) + b;
    float* o = out + j * L;
    switch (e.kind) {
      case Epi::Store:
        break;
      case Epi::SiluRound:
        v0 = rnd<R>(vsilu(v0));
        v1 = rnd<R>(vsilu(v1));
        break;
      case Epi::GateResidual:
        v0 = ld(o) + ld(gate + j * L) * v0;
        v1 = ld(o + 8) + ld(gate + j * L + 8) * v1;
        break;
    }
    st(o, v0);
    st(o + 8, v1);
  }
}

static inline void epilogue(const EpiArgs& e, int64_t p, int64_t n, int nb, const float* tile) {
  switch (e.round) {
    case WType::BF16:
      return epilogue_t<WType::BF16>(e, p, n, nb, tile);
    case WType::F16:
      return epilogue_t<WType::F16>(e, p, n, nb, tile);
    default:
      return epilogue_t<WType::F32>(e, p, n, nb, tile);
  }
}

static int64_t panel_block(int64_t K) {
  return std::max<int64_t>(1, kPanelBlockBytes / (K * L * static_cast<int64_t>(sizeof(float))));
}

// Weights prepacked by pack_weights (tile t at wp + t * K * 6); columns [n0, n1), n0 % 6 == 0.
// Weights prepacked by pack_weights (in `type`); columns [n0, n1), n0 % 6 == 0. With
// lanes <= 8 only the first 8 rows of each panel are computed (12 columns per tile).
static void gemm_packed(const float* A, int64_t a_pstride, int64_t panels, const void* wp, WType type, int64_t K,
                        int64_t N, int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi) {
  n1 = std::min(n1, N);
  if (panels <= 0 || n1 <= n0) return;
  const int64_t pblock = panel_block(K);
  float* scratch = type == WType::F32 ? nullptr : thread_scratch(2 * kTileN * K);
  alignas(64) float tile[2 * kTileN * L];
  const int64_t step = lanes <= 8 ? 2 * kTileN : kTileN;
  for (int64_t p0 = 0; p0 < panels; p0 += pblock) {
    const int64_t p1 = std::min(panels, p0 + pblock);
    for (int64_t n = n0; n < n1; n += step) {
      const int nb = static_cast<int>(std::min<int64_t>(step, n1 - n));
      const float* w0 = tile_f32(wp, type, K, n / kTileN, scratch);
      const float* w1 =
          nb > kTileN ? tile_f32(wp, type, K, n / kTileN + 1, scratch ? scratch + kTileN * K : nullptr) : w0;
      for (int64_t p = p0; p < p1; ++p) {
        if (step > kTileN) {
          run_tile8(nb, A + p * a_pstride, K, w0, w1, tile);
        } else {
          run_tile(nb, A + p * a_pstride, K, w0, tile);
        }
        epilogue(epi, p, n, std::min(nb, static_cast<int>(kTileN)), tile);
        if (nb > kTileN) epilogue(epi, p, n + kTileN, nb - static_cast<int>(kTileN), tile + kTileN * L);
      }
    }
  }
}

// Unpacked weights: each 6-row tile is packed (and widened) once per block of panels.
static void gemm(const float* A, int64_t a_pstride, int64_t panels, const Weight& W, int64_t n0, int64_t n1,
                 const EpiArgs& epi) {
  const int64_t K = W.k;
  if (panels <= 0 || n1 <= n0) return;
  const int64_t pblock = panel_block(K);
  float* buf = thread_scratch(2 * kTileN * K);
  alignas(64) float tile[kTileN * L];
  for (int64_t p0 = 0; p0 < panels; p0 += pblock) {
    const int64_t p1 = std::min(panels, p0 + pblock);
    for (int64_t n = n0; n < n1; n += kTileN) {
      const int nb = static_cast<int>(std::min<int64_t>(kTileN, n1 - n));
      pack_tile(W, n, nb, buf + kTileN * K);  // raw elements (fp32, or bf16/fp16 in half the space)
      const float* w = tile_f32(buf + kTileN * K, W.type, K, 0, buf);
      for (int64_t p = p0; p < p1; ++p) {
        run_tile(nb, A + p * a_pstride, K, w, tile);
        epilogue(epi, p, n, nb, tile);
      }
    }
  }
}

// ---------------------------------------------------------------- row-wise parts
template <WType R>
static void ln_modulate_t(const float* h, int64_t F, const float* shift, const float* scale, const float* ln_w,
                          const float* ln_b, float eps, float* out) {
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t k = 0;
  for (; k + 2 <= F; k += 2) {
    s0 += ld(h + k * L);
    s1 += ld(h + k * L + 8);
    s2 += ld(h + k * L + L);
    s3 += ld(h + k * L + L + 8);
  }
  for (; k < F; ++k) {
    s0 += ld(h + k * L);
    s1 += ld(h + k * L + 8);
  }
  const float inv_f = 1.0f / static_cast<float>(F);
  const vf m0 = (s0 + s2) * inv_f, m1 = (s1 + s3) * inv_f;
  vf q0 = {}, q1 = {}, q2 = {}, q3 = {};
  for (k = 0; k + 2 <= F; k += 2) {
    vf d;
    d = ld(h + k * L) - m0;
    q0 += d * d;
    d = ld(h + k * L + 8) - m1;
    q1 += d * d;
    d = ld(h + k * L + L) - m0;
    q2 += d * d;
    d = ld(h + k * L + L + 8) - m1;
    q3 += d * d;
  }
  for (; k < F; ++k) {
    vf d;
    d = ld(h + k * L) - m0;
    q0 += d * d;
    d = ld(h + k * L + 8) - m1;
    q1 += d * d;
  }
  vf r0 = (q0 + q2) * inv_f + eps, r1 = (q1 + q3) * inv_f + eps;
  for (int i = 0; i < 8; ++i) {
    r0[i] = 1.0f / std::sqrt(r0[i]);
    r1[i] = 1.0f / std::sqrt(r1[i]);
  }
  for (k = 0; k < F; ++k) {
    vf y0 = (ld(h + k * L) - m0) * r0, y1 = (ld(h + k * L + 8) - m1) * r1;
    if (ln_w) {
      const float g = ln_w[k], bb = ln_b ? ln_b[k] : 0.0f;
      y0 = y0 * g + bb;
      y1 = y1 * g + bb;
    }
    y0 = y0 * (1.0f + ld(scale + k * L)) + ld(shift + k * L);
    y1 = y1 * (1.0f + ld(scale + k * L + 8)) + ld(shift + k * L + 8);
    st(out + k * L, rnd<R>(y0));
    st(out + k * L + 8, rnd<R>(y1));
  }
}

static void ln_modulate(const float* h, int64_t F, const float* shift, const float* scale, const float* ln_w,
                        const float* ln_b, float eps, WType round, float* out) {
  switch (round) {
    case WType::BF16:
      return ln_modulate_t<WType::BF16>(h, F, shift, scale, ln_w, ln_b, eps, out);
    case WType::F16:
      return ln_modulate_t<WType::F16>(h, F, shift, scale, ln_w, ln_b, eps, out);
    default:
      return ln_modulate_t<WType::F32>(h, F, shift, scale, ln_w, ln_b, eps, out);
  }
}

template <WType R>
static void silu_add_rows_t(const float* const* t_rows, const float* const* c_rows, int64_t K, float* out) {
  static const float zeros[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const float* tr[L];
  const float* cr[L];
  int64_t tstep[L], cstep[L];
  for (int64_t l = 0; l < L; ++l) {
    tr[l] = t_rows[l] ? t_rows[l] : zeros;
    cr[l] = c_rows[l] ? c_rows[l] : zeros;
    tstep[l] = t_rows[l] ? 1 : 0;
    cstep[l] = c_rows[l] ? 1 : 0;
  }
  for (int64_t k = 0; k < K; ++k) {
    vf v0, v1;
    for (int l = 0; l < 8; ++l) {
      v0[l] = tr[l][k * tstep[l]] + cr[l][k * cstep[l]];
      v1[l] = tr[l + 8][k * tstep[l + 8]] + cr[l + 8][k * cstep[l + 8]];
    }
    st(out + k * L, rnd<R>(vsilu(v0)));
    st(out + k * L + 8, rnd<R>(vsilu(v1)));
  }
}

static void silu_add_rows(const float* const* t_rows, const float* const* c_rows, int64_t K, WType round, float* out) {
  switch (round) {
    case WType::BF16:
      return silu_add_rows_t<WType::BF16>(t_rows, c_rows, K, out);
    case WType::F16:
      return silu_add_rows_t<WType::F16>(t_rows, c_rows, K, out);
    default:
      return silu_add_rows_t<WType::F32>(t_rows, c_rows, K, out);
  }
}

}  // namespace MARENGINE_KNS
}  // namespace cpu
}  // namespace marengine
