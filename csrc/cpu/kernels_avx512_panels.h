// kernels_avx512_panels.h -- the packed-GEMM micro-kernels and panel sweep of
// kernels_avx512.cpp (one 16-row P16 panel is one zmm), written once over an `Ops` struct
// that says how one k step is loaded, broadcast and accumulated:
//   fp32          Ops = F32Ops (avx512 region): float steps, FMA;
//   bf16 k-pairs  Ops = Bf16PairOps (avx512_bf16 region): a step is a pair of bf16 in a
//                 uint32_t, vdpbf16ps.
// GCC and Clang inline a function only into a caller compiled for at least its target, so
// this code is included into each target region (inside namespace MARENGINE_PANEL_NS, which
// the includer defines after kernels_impl.h) instead of being compiled once.
//
// Ops provides: `Elem` (one k step of a panel lane or weight column), the vector types `V16`
// and `V8` (16 / 8 lanes of one step), `V16 load16(const Elem*)`, `V8 load8(const Elem*)`,
// `V16 bcast16(Elem)`, `V8 bcast8(Elem)` (one weight step to every lane) and
// `__m512 madd16(__m512 c, V16 a, V16 b)`, `__m256 madd8(__m256 c, V8 a, V8 b)` (c + a b).
// The includer includes <algorithm>, <cstdint>, <type_traits> and kernels.h first.

namespace marengine {
namespace cpu {
namespace avx512 {
namespace MARENGINE_PANEL_NS {

#include "kernels_dispatch.h"

constexpr int kMaxCols = 4 * kTileN;  // widest micro-tile (columns)
// One panel streams each weight once (bandwidth-bound): its micro-kernels prefetch every
// weight tile's stream this far ahead (measured on the MAR-B head, fp32: 10-20% faster at
// 1-8 rows). A prefetch is a hint: one past the end of the weights does not fault (the
// address is computed as an integer).
constexpr uintptr_t kPrefetchBytes = 1024;
static inline void prefetch_ahead(const void* p) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + kPrefetchBytes), _MM_HINT_T0);
}

// tile[m * 24 + j][0..16) = sum_k A_m[k][0..16) * W[k][j] for panels m < MP (A_m at
// A + m * a_ps) and columns j < NT * 6, W being NT consecutive packed tiles (stride ts);
// K steps of Ops::Elem.
template <class Ops, int MP, int NT>
static inline void mk16(const typename Ops::Elem* __restrict A, int64_t a_ps, int64_t K,
                        const typename Ops::Elem* __restrict w, int64_t ts, float* __restrict tile) {
  __m512 c[MP][NT * kTileN];
#pragma GCC unroll 32
  for (int m = 0; m < MP; ++m)
#pragma GCC unroll 32
    for (int j = 0; j < NT * kTileN; ++j) c[m][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    typename Ops::V16 a[MP];
#pragma GCC unroll 4
    for (int m = 0; m < MP; ++m) a[m] = Ops::load16(A + m * a_ps + k * kLanes);
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const typename Ops::Elem* wk = w + t * ts + k * kTileN;
      if (MP == 1) prefetch_ahead(wk);
#pragma GCC unroll 8
      for (int j = 0; j < kTileN; ++j) {
        const typename Ops::V16 b = Ops::bcast16(wk[j]);
#pragma GCC unroll 4
        for (int m = 0; m < MP; ++m) c[m][t * kTileN + j] = Ops::madd16(c[m][t * kTileN + j], a[m], b);
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MP; ++m)
#pragma GCC unroll 32
    for (int j = 0; j < NT * kTileN; ++j) _mm512_store_ps(tile + (m * kMaxCols + j) * kLanes, c[m][j]);
}

// Lanes 0-7 of one panel (lanes 8-15 of the tile come out zero), NT tiles.
template <class Ops, int NT>
static inline void mk8(const typename Ops::Elem* __restrict A, int64_t K, const typename Ops::Elem* __restrict w,
                       int64_t ts, float* __restrict tile) {
  __m256 c[NT * kTileN];
#pragma GCC unroll 32
  for (int j = 0; j < NT * kTileN; ++j) c[j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const typename Ops::V8 a = Ops::load8(A + k * kLanes);
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const typename Ops::Elem* wk = w + t * ts + k * kTileN;
      prefetch_ahead(wk);
#pragma GCC unroll 8
      for (int j = 0; j < kTileN; ++j) c[t * kTileN + j] = Ops::madd8(c[t * kTileN + j], a, Ops::bcast8(wk[j]));
    }
  }
#pragma GCC unroll 32
  for (int j = 0; j < NT * kTileN; ++j) {
    _mm256_store_ps(tile + j * kLanes, c[j]);
    _mm256_store_ps(tile + j * kLanes + 8, _mm256_setzero_ps());
  }
}

// mp panels (2: nt <= 2; 1: nt <= 4) x nt tiles.
template <class Ops, class E>
static inline void run16(int mp, int nt, const E* A, int64_t a_ps, int64_t K, const E* w, int64_t ts, float* tile) {
  if (mp == 2) {
    if (nt == 2) return mk16<Ops, 2, 2>(A, a_ps, K, w, ts, tile);
    return mk16<Ops, 2, 1>(A, a_ps, K, w, ts, tile);
  }
  with_const<4>(nt, [&](auto NT) { mk16<Ops, 1, NT.value>(A, a_ps, K, w, ts, tile); });
}

template <class Ops, class E>
static inline void run8(int nt, const E* A, int64_t K, const E* w, int64_t ts, float* tile) {
  with_const<4>(nt, [&](auto NT) { mk8<Ops, NT.value>(A, K, w, ts, tile); });
}

// How a block of panels is swept: `wide` (one panel, or <= 8 lanes) takes 24-column tile
// groups one panel at a time; otherwise 12-column groups over pairs of panels.
struct Sweep {
  bool wide;
  int64_t cols;
};

static inline Sweep sweep_of(int64_t block_panels, int64_t lanes) {
  const bool wide = block_panels == 1 || lanes <= 8;
  return Sweep{wide, wide ? int64_t(kMaxCols) : int64_t(2 * kTileN)};
}

// A block of panels in Ops' layout: panel p0 + i at a + i * ps elements.
template <class E>
struct PanelBlock {
  const E* a;
  int64_t ps;
};

// gemm_packed's loop over panels [0, panels) and columns [n0, n1) of packed tiles (tile t at
// w + t * ts, K steps): blocks of pblock panels, each prepared by block(p0, p1) ->
// PanelBlock, then swept by every tile group of the columns (sweep_of) through the epilogue.
template <class Ops, class BlockFn>
static inline void sweep_panels(int64_t panels, int64_t pblock, int64_t K, const typename Ops::Elem* w, int64_t ts,
                                int64_t n0, int64_t n1, int64_t lanes, const EpiArgs& epi, BlockFn block) {
  alignas(64) float tile[2 * kMaxCols * kLanes];
  for (int64_t p0 = 0; p0 < panels; p0 += pblock) {
    const int64_t p1 = std::min(panels, p0 + pblock);
    const PanelBlock<typename Ops::Elem> b = block(p0, p1);
    const Sweep sw = sweep_of(p1 - p0, lanes);
    for (int64_t n = n0; n < n1; n += sw.cols) {
      const int nb = static_cast<int>(std::min<int64_t>(sw.cols, n1 - n));
      const int nt = (nb + static_cast<int>(kTileN) - 1) / static_cast<int>(kTileN);
      const typename Ops::Elem* wt = w + (n / kTileN) * ts;
      int64_t p = p0;
      if (!sw.wide) {
        for (; p + 1 < p1; p += 2) {
          run16<Ops>(2, nt, b.a + (p - p0) * b.ps, b.ps, K, wt, ts, tile);
          epilogue(epi, p, n, nb, tile);
          epilogue(epi, p + 1, n, nb, tile + kMaxCols * kLanes);
        }
      }
      for (; p < p1; ++p) {
        if (lanes <= 8)
          run8<Ops>(nt, b.a + (p - p0) * b.ps, K, wt, ts, tile);
        else
          run16<Ops>(1, nt, b.a + (p - p0) * b.ps, b.ps, K, wt, ts, tile);
        epilogue(epi, p, n, nb, tile);
      }
    }
  }
}

}  // namespace MARENGINE_PANEL_NS
}  // namespace avx512
}  // namespace cpu
}  // namespace marengine

#undef MARENGINE_PANEL_NS
