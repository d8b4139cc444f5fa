// gemm_tile.cuh -- one output tile of  out = epilogue(A @ B^T + bias)  for the head's linears.
//
// A [M, K] row-major (activations, element type T), B [N, K] row-major (an nn.Linear
// weight, (out, in) layout, type T), bias [N] fp32, fp32 accumulation. K must be a
// multiple of 16 bytes' worth of elements (8 for bf16/fp16, 4 for fp32): the head
// always has K = width, and the host glue requires width % 8 == 0. M and N are
// arbitrary (out-of-range rows are zero-filled by cp.async and skipped on store).
//
// Tiling: a 128-thread block (4 warps, 2 x 2) owns a BM x BN tile and walks K in BK
// slices through a STAGES-deep cp.async ring in shared memory (rows padded by 16
// bytes: ldmatrix and float4 reads are bank-conflict free). Per warp:
//   bf16/fp16: ldmatrix.x4 fragments + mma.sync.m16n8k16 (fp32 accumulators),
//              warp tile (BM/2) x (BN/2) = MI x NI fragments of 16 x 8;
//   fp32:      exact SIMT FFMA (tf32 would miss the 1e-4 end-to-end tolerance after
//              the first reverse step's ~300x amplification), lanes 4 x 8, each
//              thread (BM/8) x (BN/16) outputs, float4 smem reads.
// Two configurations: kSmall (BM = BN = 32, for the persistent kernel and few rows),
// kLarge (BM = BN = 64, for the per-step kernels at many rows). The config is a
// template parameter picked by the host through a two-way switch.
//
// Epilogues (a runtime field, uniform per tile): EPI_SILU  -> out_T = SiLU(acc + b)
// (the hidden activation of a res block, the A operand of the next GEMM);
// EPI_GATE_RES -> out_f32 += gate * (acc + b) (the residual update, in place);
// EPI_F32 -> out_f32 = acc + b (AdaLN modulations, the final (eps, v) rows).
//
// Test: pytest python_tests/test_cuda_stages.py -k stage_gemm (each tile config and epilogue alone,
// odd M/N/K, against float64), python_tests/test_native_cuda.py (CUDA GPU); compile check:
// scripts/check_cuda_compile.sh.
#pragma once

#include "common.cuh"

namespace marengine {
namespace cuda {

enum EpiKind : int { EPI_SILU = 0, EPI_GATE_RES = 1, EPI_F32 = 2 };

struct GemmJob {
  const void* A;      // [M, lda] type T
  const void* B;      // [N, ldb] type T
  const float* bias;  // [N]
  void* out;          // [M, ldo] type T (EPI_SILU) or fp32
  const float* gate;  // [M, ldg] fp32 (EPI_GATE_RES)
  int M, N, K;
  int lda, ldb, ldo, ldg;
  int epi;
};

template <typename T, bool kSmall>
struct TileCfg {
  static constexpr bool kMma = Num<T>::kTensorCore;
  static constexpr int kThreads = 128;
  static constexpr int BM = kSmall ? 32 : 64;
  static constexpr int BN = kSmall ? 32 : 64;
  // K slice: 128 bytes (small) / 64 bytes (large) per row and stage.
  static constexpr int BK = (kSmall ? 128 : 64) / static_cast<int>(sizeof(T));
  static constexpr int STAGES = 4;
  static constexpr int kEpc = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int LDS = BK + kEpc;                          // padded smem row (elements)
  static constexpr int WTM = BM / 2, WTN = BN / 2;               // warp tile
  static constexpr size_t kSmemBytes = static_cast<size_t>(STAGES) * (BM + BN) * LDS * sizeof(T);
  static_assert(kSmemBytes <= 48 * 1024, "tile config must fit the default 48 KB of static smem");
  static_assert(!kMma || (WTM % 16 == 0 && WTN % 16 == 0 && BK % 16 == 0), "mma tile shape");
  static_assert(kMma || (WTM % 4 == 0 && WTN % 8 == 0 && BK % 4 == 0), "simt tile shape");
};

template <class Cfg>
__device__ __forceinline__ int gemm_tiles(const GemmJob& j) {
  return ceil_div(j.M, Cfg::BM) * ceil_div(j.N, Cfg::BN);
}

template <typename T>
__device__ __forceinline__ void epi_store(const GemmJob& j, int row, int col, float v) {
  if (row >= j.M || col >= j.N) return;
  v += j.bias[col];
  const size_t o = static_cast<size_t>(row) * j.ldo + col;
  if (j.epi == EPI_SILU) {
    static_cast<T*>(j.out)[o] = Num<T>::from_float(silu(v));
  } else if (j.epi == EPI_GATE_RES) {
    float* h = static_cast<float*>(j.out) + o;
    *h += j.gate[static_cast<size_t>(row) * j.ldg + col] * v;
  } else {
    static_cast<float*>(j.out)[o] = v;
  }
}

// cp.async copies of rows [r0, r0 + ROWS) x K slice [k0, k0 + BK) of a [rows, K] matrix
// (row stride ld) into smem rows of LDS elements; chunks past `rows` or K are zero-filled.
template <class Cfg, int ROWS, typename T>
__device__ __forceinline__ void load_rows(const T* src, int ld, int rows, int K, int r0, int k0, T* dst) {
  constexpr int CPR = Cfg::BK / Cfg::kEpc;  // 16-byte chunks per tile row
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * CPR; c += Cfg::kThreads) {
    const int r = c / CPR, kc = (c % CPR) * Cfg::kEpc;
    const int gr = r0 + r, gk = k0 + kc;
    const bool ok = gr < rows && gk < K;
    const T* p = ok ? src + static_cast<size_t>(gr) * ld + gk : src;
    cp_async16(dst + r * Cfg::LDS + kc, p, ok ? 16 : 0);
  }
}

// Issue the cp.async copies of K slice `kt` of the A and B tiles into ring slot `slot`.
template <class Cfg, typename T>
__device__ __forceinline__ void load_slice(const GemmJob& j, int m0, int n0, int kt, int slot, T* As, T* Bs) {
  const int k0 = kt * Cfg::BK;
  load_rows<Cfg, Cfg::BM>(static_cast<const T*>(j.A), j.lda, j.M, j.K, m0, k0,
                          As + static_cast<size_t>(slot) * Cfg::BM * Cfg::LDS);
  load_rows<Cfg, Cfg::BN>(static_cast<const T*>(j.B), j.ldb, j.N, j.K, n0, k0,
                          Bs + static_cast<size_t>(slot) * Cfg::BN * Cfg::LDS);
}

// The K loop both tile kinds share: BK slices through the STAGES-deep cp.async ring
// (STAGES - 1 in flight), `slice(as, bs)` consuming each from its slot (A rows [BM][LDS], B
// rows [BN][LDS]). Returns with every copy landed and the ring free for the next tile.
template <class Cfg, typename T, class SliceFn>
__device__ __forceinline__ void k_ring(const GemmJob& j, int m0, int n0, char* smem, SliceFn&& slice) {
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + static_cast<size_t>(Cfg::STAGES) * Cfg::BM * Cfg::LDS;
  const int KT = ceil_div(j.K, Cfg::BK);
#pragma unroll
  for (int st = 0; st < Cfg::STAGES - 1; ++st) {
    if (st < KT) load_slice<Cfg, T>(j, m0, n0, st, st, As, Bs);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<Cfg::STAGES - 2>();
    __syncthreads();  // slice kt landed for everyone; slot (kt-1) % STAGES is free
    const int nk = kt + Cfg::STAGES - 1;
    if (nk < KT) load_slice<Cfg, T>(j, m0, n0, nk, nk % Cfg::STAGES, As, Bs);
    cp_async_commit();

    const int slot = kt % Cfg::STAGES;
    slice(As + static_cast<size_t>(slot) * Cfg::BM * Cfg::LDS, Bs + static_cast<size_t>(slot) * Cfg::BN * Cfg::LDS);
  }
  cp_async_wait<0>();
  __syncthreads();  // the ring may be refilled by the next tile
}

// ------------------------------------------------------------------ tensor-core tile
template <class Cfg, typename T>
__device__ __forceinline__ void gemm_tile_mma(const GemmJob& j, int m0, int n0, char* smem) {
  constexpr int MI = Cfg::WTM / 16, NI = Cfg::WTN / 8, LDS = Cfg::LDS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm0 = (warp >> 1) * Cfg::WTM, wn0 = (warp & 1) * Cfg::WTN;

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;

  k_ring<Cfg, T>(j, m0, n0, smem, [&](const T* as, const T* bs) {
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
        ldmatrix_x4(af[mi], as + (wm0 + mi * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) {
        uint32_t r[4];
        ldmatrix_x4(r, bs + (wn0 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk + ((lane >> 3) & 1) * 8);
        bf[2 * nj][0] = r[0];
        bf[2 * nj][1] = r[1];
        bf[2 * nj + 1][0] = r[2];
        bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  });

  const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const int row = m0 + wm0 + mi * 16 + g, col = n0 + wn0 + ni * 8 + t2;
      epi_store<T>(j, row, col, acc[mi][ni][0]);
      epi_store<T>(j, row, col + 1, acc[mi][ni][1]);
      epi_store<T>(j, row + 8, col, acc[mi][ni][2]);
      epi_store<T>(j, row + 8, col + 1, acc[mi][ni][3]);
    }
}

// ------------------------------------------------------------------ fp32 SIMT tile
template <class Cfg>
__device__ __forceinline__ void gemm_tile_simt(const GemmJob& j, int m0, int n0, char* smem) {
  constexpr int TM = Cfg::WTM / 4, TN = Cfg::WTN / 8, LDS = Cfg::LDS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm0 = (warp >> 1) * Cfg::WTM, wn0 = (warp & 1) * Cfg::WTN;
  const int ly = lane >> 3, lx = lane & 7;  // rows wm0 + ly + 4 i, cols wn0 + lx + 8 jn

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int q = 0; q < TN; ++q) acc[i][q] = 0.0f;

  k_ring<Cfg, float>(j, m0, n0, smem, [&](const float* as, const float* bs) {
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 4) {
      float4 a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = *reinterpret_cast<const float4*>(as + (wm0 + ly + 4 * i) * LDS + kk);
#pragma unroll
      for (int q = 0; q < TN; ++q) b[q] = *reinterpret_cast<const float4*>(bs + (wn0 + lx + 8 * q) * LDS + kk);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int q = 0; q < TN; ++q) {
          float s = acc[i][q];
          s = fmaf(a[i].x, b[q].x, s);
          s = fmaf(a[i].y, b[q].y, s);
          s = fmaf(a[i].z, b[q].z, s);
          s = fmaf(a[i].w, b[q].w, s);
          acc[i][q] = s;
        }
    }
  });

#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int q = 0; q < TN; ++q) epi_store<float>(j, m0 + wm0 + ly + 4 * i, n0 + wn0 + lx + 8 * q, acc[i][q]);
}

template <class Cfg, typename T>
__device__ __forceinline__ void gemm_tile(const GemmJob& j, int tile, char* smem) {
  const int tiles_m = ceil_div(j.M, Cfg::BM);
  // m fastest: consecutive blocks share a weight tile (read once from L2 per wave)
  const int m0 = (tile % tiles_m) * Cfg::BM, n0 = (tile / tiles_m) * Cfg::BN;
  if constexpr (Cfg::kMma) {
    gemm_tile_mma<Cfg, T>(j, m0, n0, smem);
  } else {
    gemm_tile_simt<Cfg>(j, m0, n0, smem);
  }
}

// All tiles of jobs 0..njobs-1 (get_job(i) -> GemmJob), distributed over the grid:
// block b takes tiles b, b + gridDim.x, ... of the concatenated tile list.
template <class Cfg, typename T, class JobFn>
__device__ __forceinline__ void gemm_phase(int njobs, JobFn get_job, char* smem) {
  int total = 0;
  for (int q = 0; q < njobs; ++q) total += gemm_tiles<Cfg>(get_job(q));
  for (int tile = blockIdx.x; tile < total; tile += gridDim.x) {
    int q = 0, local = tile;
    GemmJob j = get_job(0);
    for (;;) {
      const int n = gemm_tiles<Cfg>(j);
      if (local < n) break;
      local -= n;
      j = get_job(++q);
    }
    gemm_tile<Cfg, T>(j, local, smem);
  }
}

}  // namespace cuda
}  // namespace marengine
