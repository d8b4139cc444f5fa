// head_impl.cuh -- the kernels and launchers of adaln_block and head_sample, templated
// on the weight type T (float, __nv_bfloat16, __half). Each head_sample_<dtype>.cu
// instantiates one T, so the three weight types compile in parallel.
//
// head_sample: the whole reverse diffusion (S steps of the SimpleMLPAdaLN head and the
// posterior update) in one native call, on two paths that run the same device code:
//
//  * persistent (R <= kPersistentMaxRows network rows, launch-bound regime): one
//    cooperative launch of head_persistent_kernel, grid = SMs x min(occupancy,
//    kPersistentBlocksPerSM), 128 threads; the stages of a step are separated by
//    grid_barrier (common.cuh). Per chunk of `chunk` steps:
//        y = SiLU(t_emb[s] + c_emb[r])            (chunk * R rows)          | barrier
//        mods = y @ [mod_w_0; ..; mod_w_{D-1}; fmod_w]^T + b   (one GEMM phase, D+1 jobs,
//               fp32, chunk * R rows: off the sequential path, weights read once per chunk)
//    and per step:
//        row_pre: x update from the previous step's (eps, v), h = in_proj(x), LN_0 + modulate
//                                                                            | barrier
//        D x [ G1: t = SiLU(A W1^T + b1) | G2: h += gate (t W2^T + b2) | LN_{d+1} + modulate ]
//        Gout: (eps, v) = A Wout^T + bout                                    | barrier
//    then the final update (step 0) writes the result. 3D + 2 barriers per step.
//    The update is the sampler's (coefs [S, 8], row_phases.cuh reverse_update): DDPM,
//    DDIM(eta) and DPM-Solver++(2M) run the same code; x0p keeps the previous x0.
//
//  * per-step kernels (larger R): the same stages as separate launches, 3D + 4 per
//    step; the modulations are computed per block just in time (double-buffered
//    [R, 3W], the next block's modulation GEMM shares a launch with this block's G2),
//    so no [R, (3D+2)W] buffer per step is needed. No host sync anywhere: the host
//    loop can be captured into a CUDA Graph once per shape by the caller.
//
// Per-row steps (a.row_table, head_sample's row_table): both paths run S = the most steps; each
// row reads its own table's rows (row_phases.cuh table_row) and a finished row is not updated
// any more (its network rows are still computed: no compaction on the GPU, no host sync).
//
// GEMM tiles: gemm_tile.cuh (small 32x32 tiles in the persistent kernel, 64x64 in the
// per-step kernels). Row stages: row_phases.cuh.
//
// Test: python_tests/test_native_cuda.py (needs a CUDA GPU):
//   pytest python_tests/test_native_cuda.py -q
//   MARENGINE_HEAD_PATH=persistent|kernels forces a path (the test compares both).
//   pytest python_tests/test_cuda_stages.py   (each stage alone, then both paths whole)
// Bench: python benchmarks/bench_head_goals.py (the goals: 1024x6 head at M = 32, 512, 4096 vs
// eager fp16, fraction of dense bf16 peak); all of it: bash scripts/gpu_check.sh OUT_DIR.
#pragma once

#include <algorithm>

#include "common.cuh"
#include "gemm_tile.cuh"
#include "launchers.cuh"
#include "row_phases.cuh"
#include "stages.cuh"

namespace marengine {
namespace cuda {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

#define MARENGINE_CUDA_TRY(expr)          \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

// ------------------------------------------------------------------ workspace
template <typename T>
struct HeadWs {
  unsigned* barrier;  // grid barrier word (256 bytes reserved)
  float* x;           // [N, C] chain state
  float* x0p;         // [N, C] the previous iteration's x0 (multistep samplers: c3 != 0)
  float* h;           // [R, W] residual stream
  float* outr;        // [R, 2C] (eps, v) of the last network evaluation
  T* abuf;            // [R, W] A operand of G1 / Gout (LN + modulate)
  T* tbuf;            // [R, W] hidden activation (A operand of G2)
  T* y;               // [chunk R, W] SiLU(t_emb + c_emb)
  float* mods;        // persistent: [chunk R, (3D+2) W]; per-step: [2][R, 3W]
  int mod_ld;
};

struct Carver {
  char* base;
  size_t off;
  template <typename U>
  U* take(size_t count) {
    off = (off + 255) & ~static_cast<size_t>(255);
    U* p = base != nullptr ? reinterpret_cast<U*>(base + off) : nullptr;
    off += count * sizeof(U);
    return p;
  }
};

template <typename T>
HeadWs<T> carve_head_ws(const HeadSampleArgs& a, HeadPath path, int chunk, void* base, size_t* bytes) {
  Carver cv{static_cast<char*>(base), 0};
  HeadWs<T> w;
  const size_t R = a.R, W = a.W;
  w.barrier = cv.take<unsigned>(64);
  w.x = cv.take<float>(static_cast<size_t>(a.N) * a.C);
  w.x0p = cv.take<float>(static_cast<size_t>(a.N) * a.C);
  w.h = cv.take<float>(R * W);
  w.outr = cv.take<float>(R * 2 * a.C);
  w.abuf = cv.take<T>(R * W);
  w.tbuf = cv.take<T>(R * W);
  if (path == HeadPath::kPersistent) {
    w.mod_ld = (3 * a.D + 2) * a.W;
    w.y = cv.take<T>(static_cast<size_t>(chunk) * R * W);
    w.mods = cv.take<float>(static_cast<size_t>(chunk) * R * w.mod_ld);
  } else {
    w.mod_ld = 3 * a.W;
    w.y = cv.take<T>(R * W);
    w.mods = cv.take<float>(2 * R * w.mod_ld);
  }
  if (bytes != nullptr) *bytes = cv.off;
  return w;
}

// ------------------------------------------------------------------ GEMM jobs
// out = epi(A B^T + bias): A [M, K], B [N, K] (both leading dimension K), out leading dimension N.
__host__ __device__ inline GemmJob linear_job(const void* A, const void* B, const float* bias, void* out, int M, int N,
                                              int K, int epi, const float* gate, int ldg) {
  // GemmJob's fields in order: A, B, bias, out, gate, M, N, K, lda, ldb, ldo, ldg, epi
  return GemmJob{A, B, bias, out, gate, M, N, K, K, K, N, ldg, epi};
}

// k < D: the modulations of res block k (N = 3W), k == D: the final layer's (N = 2W); fp32 out
// with leading dimension ldo.
__host__ __device__ inline GemmJob mods_job(const HeadSampleArgs& a, const void* y, int rows, int k, float* out,
                                            int ldo) {
  const bool blk = k < a.D;
  const float* bias = blk ? a.mod_b + static_cast<size_t>(k) * 3 * a.W : a.fmod_b;
  GemmJob j =
      linear_job(y, blk ? a.mod_w[k] : a.fmod_w, bias, out, rows, (blk ? 3 : 2) * a.W, a.W, EPI_F32, nullptr, 0);
  j.ldo = ldo;
  return j;
}

// ------------------------------------------------------------------ persistent kernel
// head_persistent_kernel: every step of head_sample in one cooperative launch (see the
// file header for the stage list). Grid: SMs x min(occupancy, kPersistentBlocksPerSM)
// co-resident blocks of 128 threads; GEMM stages walk their 32x32 tiles grid-stride,
// row stages one warp per row; stages are separated by grid_barrier. Static smem:
// the 4-stage cp.async ring (36 KB) + 4 KB per-warp x scratch.
// Test: MARENGINE_HEAD_PATH=persistent pytest python_tests/test_native_cuda.py
template <typename T>
__global__ void __launch_bounds__(kThreads, kPersistentBlocksPerSM)
    head_persistent_kernel(const __grid_constant__ HeadSampleArgs a, const HeadWs<T> w, const int chunk) {
  using Cfg = TileCfg<T, true>;
  __shared__ __align__(16) char smem[Cfg::kSmemBytes];
  __shared__ __align__(16) float xs[kWarps * kMaxChannels];
  const int W = a.W, D = a.D, R = a.R, S = a.S, ld = w.mod_ld;

  for (int i = 0; i < S; ++i) {
    const int js = i % chunk;
    if (js == 0) {
      const int rows = min(chunk, S - i) * R;
      y_rows<T>(a, i, rows, w.y);
      grid_barrier(w.barrier);
      gemm_phase<Cfg, T>(
          D + 1, [&](int k) { return mods_job(a, w.y, rows, k, w.mods + static_cast<size_t>(k) * 3 * W, ld); }, smem);
      grid_barrier(w.barrier);
    }
    const float* ms = w.mods + static_cast<size_t>(js) * R * ld;  // this step's modulations, row r at ms + r ld
    row_pre<T>(a, i, w.x, w.x0p, w.h, w.outr, D > 0 ? a.ln_w : nullptr, D > 0 ? a.ln_b : nullptr, ms, ld, w.abuf,
               static_cast<T*>(nullptr), xs);
    grid_barrier(w.barrier);
    for (int d = 0; d < D; ++d) {
      gemm_phase<Cfg, T>(
          1,
          [&](int) {
            return linear_job(w.abuf, a.w1[d], a.b1 + static_cast<size_t>(d) * W, w.tbuf, R, W, W, EPI_SILU, nullptr,
                              0);
          },
          smem);
      grid_barrier(w.barrier);
      gemm_phase<Cfg, T>(
          1,
          [&](int) {
            return linear_job(w.tbuf, a.w2[d], a.b2 + static_cast<size_t>(d) * W, w.h, R, W, W, EPI_GATE_RES,
                              ms + static_cast<size_t>(d) * 3 * W + 2 * W, ld);
          },
          smem);
      grid_barrier(w.barrier);
      const int k = d + 1;  // LN + modulate for the next block, or the final layer (no affine)
      ln_modulate_rows<T>(w.h, R, W, k < D ? a.ln_w + static_cast<size_t>(k) * W : nullptr,
                          k < D ? a.ln_b + static_cast<size_t>(k) * W : nullptr, ms + static_cast<size_t>(k) * 3 * W,
                          ld, w.abuf);
      grid_barrier(w.barrier);
    }
    gemm_phase<Cfg, T>(
        1, [&](int) { return linear_job(w.abuf, a.out_w, a.out_b, w.outr, R, 2 * a.C, W, EPI_F32, nullptr, 0); }, smem);
    grid_barrier(w.barrier);
  }
  update_rows(a, S - 1, w.x, w.x0p, w.outr, a.out);  // the last update (step 0) into the result
}

// ------------------------------------------------------------------ per-stage kernels
struct JobList {
  GemmJob j[2];
  int n;
};

// gemm_kernel: the tiles of one or two GEMM jobs (one block per tile, m fastest), each
// epilogue(A B^T + bias); Cfg = 32x32 or 64x64 tiles (gemm_tile.cuh).
// Test: test_adaln_block / MARENGINE_HEAD_PATH=kernels in python_tests/test_native_cuda.py
template <class Cfg, typename T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const __grid_constant__ JobList jl) {
  __shared__ __align__(16) char smem[Cfg::kSmemBytes];
  gemm_phase<Cfg, T>(jl.n, [&](int q) { return jl.j[q]; }, smem);
}

// ln_kernel: A = LN(h) [affine] * (1 + scale) + shift -> T, one warp per row (4 rows a block).
template <typename T>
__global__ void __launch_bounds__(kThreads) ln_kernel(const float* h, int rows, int W, const float* ln_w,
                                                      const float* ln_b, const float* shift, int mod_ld, T* out) {
  ln_modulate_rows<T>(h, rows, W, ln_w, ln_b, shift, mod_ld, out);
}

// row_pre_kernel: per chain row (one warp), the update from the previous step's (eps, v),
// h = in_proj(x) for the row and its CFG twin, y = SiLU(t_emb[s] + c_emb).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_pre_kernel(const __grid_constant__ HeadSampleArgs a, const HeadWs<T> w, int i) {
  __shared__ __align__(16) float xs[kWarps * kMaxChannels];
  row_pre<T>(a, i, w.x, w.x0p, w.h, w.outr, nullptr, nullptr, nullptr, 0, w.abuf, w.y, xs);
}

// update_kernel: the update of iteration `it` for every element, one thread each (it = S - 1:
// the final update, step 0, into the result). fp32 only; T only keeps one copy per .cu file.
template <typename T>
__global__ void __launch_bounds__(kThreads) update_kernel(const __grid_constant__ HeadSampleArgs a, int it,
                                                          const float* x, float* x0p, const float* outr, float* out) {
  update_rows(a, it, x, x0p, outr, out);
}

// ------------------------------------------------------------------ host helpers
template <class Cfg>
inline int host_tiles(const GemmJob& j) {
  return ceil_div(j.M, Cfg::BM) * ceil_div(j.N, Cfg::BN);
}

template <class Cfg, typename T>
cudaError_t launch_gemm(const GemmJob& j0, const GemmJob* j1, cudaStream_t stream) {
  JobList jl;
  jl.j[0] = j0;
  jl.n = 1;
  int tiles = host_tiles<Cfg>(j0);
  if (j1 != nullptr) {
    jl.j[1] = *j1;
    jl.n = 2;
    tiles += host_tiles<Cfg>(*j1);
  }
  if (tiles == 0) return cudaSuccess;
  gemm_kernel<Cfg, T><<<tiles, kThreads, 0, stream>>>(jl);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ln(const float* h, int rows, int W, const float* ln_w, const float* ln_b, const float* shift,
                      int mod_ld, T* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  ln_kernel<T><<<ceil_div(rows, kWarps), kThreads, 0, stream>>>(h, rows, W, ln_w, ln_b, shift, mod_ld, out);
  return cudaGetLastError();
}

// Tile-configuration switch: the row count picks the template. 32x32 tiles while a
// 64x64 grid would leave SMs idle (rows <= kSmallTileMaxRows), else 64x64 (the fallback:
// any M, N and K % 16 bytes work with either; there is no width specialization, partial
// tiles are zero-filled).
template <typename T, class F>
cudaError_t tile_switch(int rows, F&& f) {
  if (rows <= kSmallTileMaxRows) return f(TileCfg<T, true>{});
  return f(TileCfg<T, false>{});
}

// ------------------------------------------------------------------ adaln_block
// out = x + gate * (W2 SiLU(W1 (LN(x) (1 + scale) + shift) + b1) + b2):
// copy x -> out, LN + modulate -> A (T), G1 (bias + SiLU epilogue) -> t (T),
// G2 (bias + gate + residual epilogue) accumulates into out.
template <typename T>
size_t adaln_block_ws_bytes_t(int M, int W) {
  Carver cv{nullptr, 0};
  cv.take<T>(static_cast<size_t>(M) * W);
  cv.take<T>(static_cast<size_t>(M) * W);
  return cv.off;
}

template <class Cfg, typename T>
cudaError_t adaln_block_gemms(const AdalnBlockArgs& a, T* abuf, T* tbuf, cudaStream_t stream) {
  const GemmJob g1 = linear_job(abuf, a.w1, a.b1, tbuf, a.M, a.W, a.W, EPI_SILU, nullptr, 0);
  MARENGINE_CUDA_TRY((launch_gemm<Cfg, T>(g1, nullptr, stream)));
  const GemmJob g2 = linear_job(tbuf, a.w2, a.b2, a.out, a.M, a.W, a.W, EPI_GATE_RES, a.mod + 2 * a.W, 3 * a.W);
  return launch_gemm<Cfg, T>(g2, nullptr, stream);
}

template <typename T>
cudaError_t launch_adaln_block_t(const AdalnBlockArgs& a, cudaStream_t stream) {
  if (a.M == 0) return cudaSuccess;
  Carver cv{static_cast<char*>(a.workspace), 0};
  T* abuf = cv.take<T>(static_cast<size_t>(a.M) * a.W);
  T* tbuf = cv.take<T>(static_cast<size_t>(a.M) * a.W);
  MARENGINE_CUDA_TRY(
      cudaMemcpyAsync(a.out, a.x, static_cast<size_t>(a.M) * a.W * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  MARENGINE_CUDA_TRY(launch_ln<T>(a.out, a.M, a.W, a.ln_w, a.ln_b, a.mod, 3 * a.W, abuf, stream));
  return tile_switch<T>(a.M, [&](auto cfg) { return adaln_block_gemms<decltype(cfg), T>(a, abuf, tbuf, stream); });
}

// ------------------------------------------------------------------ head_sample
template <typename T>
cudaError_t plan_head_sample_t(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan) {
  HeadPath path = want;
  if (path == HeadPath::kAuto) path = a.R <= kPersistentMaxRows ? HeadPath::kPersistent : HeadPath::kPerStep;
  int grid = 0;
  if (path == HeadPath::kPersistent) {
    int sms = 0, coop = 0, occ = 0;
    MARENGINE_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    MARENGINE_CUDA_TRY(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    MARENGINE_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, head_persistent_kernel<T>, kThreads, 0));
    if (coop == 0 || occ == 0) {
      if (want == HeadPath::kPersistent) return cudaErrorCooperativeLaunchTooLarge;
      path = HeadPath::kPerStep;  // cannot co-schedule a grid: fall back to per-step launches
    } else {
      grid = sms * std::min(occ, kPersistentBlocksPerSM);
    }
  }
  int chunk = 1;
  if (path == HeadPath::kPersistent) {
    // enough rows for an efficient modulation GEMM, at most kModBudgetBytes of y + mods
    const size_t per_step = static_cast<size_t>(a.R) * a.W * ((3 * a.D + 2) * sizeof(float) + sizeof(T));
    const int by_mem = static_cast<int>(std::min<size_t>(a.S, std::max<size_t>(1, kModBudgetBytes / per_step)));
    chunk = std::max(1, std::min({a.S, ceil_div(kModRowsTarget, std::max(a.R, 1)), by_mem}));
  }
  size_t bytes = 0;
  carve_head_ws<T>(a, path, chunk, nullptr, &bytes);
  plan->path = path;
  plan->chunk = chunk;
  plan->grid = grid;
  plan->workspace_bytes = bytes;
  return cudaSuccess;
}

// The per-step path: 3D + 4 launches per step (see the file header), Cfg tiles.
template <class Cfg, typename T>
cudaError_t launch_steps(const HeadSampleArgs& a, const HeadWs<T>& w, cudaStream_t stream) {
  const int R = a.R, W = a.W, D = a.D, ld = w.mod_ld;
  float* modbuf[2] = {w.mods, w.mods + static_cast<size_t>(R) * ld};
  const int row_blocks = ceil_div(a.N, kWarps);
  for (int i = 0; i < a.S; ++i) {
    // x update (from step i-1), h = in_proj(x), y = SiLU(t_emb[s] + c_emb)
    row_pre_kernel<T><<<row_blocks, kThreads, 0, stream>>>(a, w, i);
    MARENGINE_CUDA_TRY(cudaGetLastError());
    MARENGINE_CUDA_TRY((launch_gemm<Cfg, T>(mods_job(a, w.y, R, 0, modbuf[0], ld), nullptr, stream)));
    for (int d = 0; d < D; ++d) {
      const float* cur = modbuf[d & 1];
      MARENGINE_CUDA_TRY(launch_ln<T>(w.h, R, W, a.ln_w + static_cast<size_t>(d) * W,
                                      a.ln_b + static_cast<size_t>(d) * W, cur, ld, w.abuf, stream));
      MARENGINE_CUDA_TRY((launch_gemm<Cfg, T>(
          linear_job(w.abuf, a.w1[d], a.b1 + static_cast<size_t>(d) * W, w.tbuf, R, W, W, EPI_SILU, nullptr, 0),
          nullptr, stream)));
      // G2 of block d and the modulation GEMM of block d + 1 (or the final layer) share a launch
      const GemmJob next = mods_job(a, w.y, R, d + 1, modbuf[(d + 1) & 1], ld);
      MARENGINE_CUDA_TRY((launch_gemm<Cfg, T>(
          linear_job(w.tbuf, a.w2[d], a.b2 + static_cast<size_t>(d) * W, w.h, R, W, W, EPI_GATE_RES, cur + 2 * W, ld),
          &next, stream)));
    }
    MARENGINE_CUDA_TRY(launch_ln<T>(w.h, R, W, nullptr, nullptr, modbuf[D & 1], ld, w.abuf, stream));
    MARENGINE_CUDA_TRY((launch_gemm<Cfg, T>(
        linear_job(w.abuf, a.out_w, a.out_b, w.outr, R, 2 * a.C, W, EPI_F32, nullptr, 0), nullptr, stream)));
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_head_sample_t(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t stream) {
  const size_t xbytes = static_cast<size_t>(a.N) * a.C * sizeof(float);
  if (a.N == 0) return cudaSuccess;
  if (a.S == 0) return cudaMemcpyAsync(a.out, a.x_T, xbytes, cudaMemcpyDeviceToDevice, stream);
  HeadWs<T> w = carve_head_ws<T>(a, plan.path, plan.chunk, a.workspace, nullptr);
  MARENGINE_CUDA_TRY(cudaMemsetAsync(w.barrier, 0, 64 * sizeof(unsigned), stream));
  MARENGINE_CUDA_TRY(cudaMemcpyAsync(w.x, a.x_T, xbytes, cudaMemcpyDeviceToDevice, stream));

  if (plan.path == HeadPath::kPersistent) {
    int chunk = plan.chunk;
    void* args[] = {const_cast<HeadSampleArgs*>(&a), &w, &chunk};
    MARENGINE_CUDA_TRY(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&head_persistent_kernel<T>),
                                                   dim3(plan.grid), dim3(kThreads), args, 0, stream));
    return cudaGetLastError();
  }

  MARENGINE_CUDA_TRY(tile_switch<T>(a.R, [&](auto cfg) { return launch_steps<decltype(cfg), T>(a, w, stream); }));
  update_kernel<T><<<ceil_div(a.N * a.C, kThreads), kThreads, 0, stream>>>(a, a.S - 1, w.x, w.x0p, w.outr, a.out);
  return cudaGetLastError();
}

// ------------------------------------------------------------------ test-only stage launchers
// One device stage on given buffers (stages.cuh; dispatched by stages.cu, registered as
// torch.ops.marengine_stages.* by stages_cuda.cpp). They launch the very kernels and device
// functions the two paths use. Test: pytest python_tests/test_cuda_stages.py
template <typename T>
__global__ void __launch_bounds__(kThreads)
    silu_rows_stage_kernel(const __grid_constant__ HeadSampleArgs a, int i0, int rows, T* y) {
  y_rows<T>(a, i0, rows, y);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_pre_stage_kernel(const __grid_constant__ HeadSampleArgs a, const __grid_constant__ StageRowPre r) {
  __shared__ __align__(16) float xs[kWarps * kMaxChannels];
  row_pre<T>(a, r.i, r.x, r.x0p, r.h, r.outr, r.ln_w0, r.ln_b0, r.mods0, r.mod_ld, static_cast<T*>(r.abuf),
             static_cast<T*>(r.y), xs);
}

inline int stage_grid(int blocks, int natural) {
  return std::max(1, blocks > 0 ? std::min(blocks, natural) : natural);
}

template <typename T>
cudaError_t stage_gemm_t(const StageGemm& g, cudaStream_t stream) {
  const GemmJob j = linear_job(g.A, g.B, g.bias, g.out, g.M, g.N, g.K, g.epi, g.gate, g.ldg);
  if (g.small_tiles) return launch_gemm<TileCfg<T, true>, T>(j, nullptr, stream);
  return launch_gemm<TileCfg<T, false>, T>(j, nullptr, stream);
}

template <typename T>
cudaError_t stage_ln_t(const StageLn& l, cudaStream_t stream) {
  if (l.rows == 0) return cudaSuccess;
  ln_kernel<T><<<stage_grid(l.blocks, ceil_div(l.rows, kWarps)), kThreads, 0, stream>>>(
      l.h, l.rows, l.W, l.ln_w, l.ln_b, l.shift, l.mod_ld, static_cast<T*>(l.out));
  return cudaGetLastError();
}

template <typename T>
cudaError_t stage_silu_rows_t(const HeadSampleArgs& a, int i0, int rows, void* y, int blocks, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int natural = ceil_div(rows * (a.W / 4), kThreads);
  silu_rows_stage_kernel<T><<<stage_grid(blocks, natural), kThreads, 0, stream>>>(a, i0, rows, static_cast<T*>(y));
  return cudaGetLastError();
}

template <typename T>
cudaError_t stage_row_pre_t(const HeadSampleArgs& a, const StageRowPre& r, cudaStream_t stream) {
  if (a.N == 0) return cudaSuccess;
  row_pre_stage_kernel<T><<<stage_grid(r.blocks, ceil_div(a.N, kWarps)), kThreads, 0, stream>>>(a, r);
  return cudaGetLastError();
}

// The non-template entry points of one weight type (one head_sample_<dtype>.cu each);
// launchers.cu and stages.cu dispatch on WeightType to them.
#define MARENGINE_DEFINE_HEAD_ENTRY_POINTS(T, SUFFIX)                                                         \
  size_t adaln_block_ws_bytes_##SUFFIX(int M, int W) {                                                        \
    return adaln_block_ws_bytes_t<T>(M, W);                                                                   \
  }                                                                                                           \
  cudaError_t launch_adaln_block_##SUFFIX(const AdalnBlockArgs& a, cudaStream_t s) {                          \
    return launch_adaln_block_t<T>(a, s);                                                                     \
  }                                                                                                           \
  cudaError_t plan_head_sample_##SUFFIX(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan) { \
    return plan_head_sample_t<T>(a, want, device, plan);                                                      \
  }                                                                                                           \
  cudaError_t launch_head_sample_##SUFFIX(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t s) {    \
    return launch_head_sample_t<T>(a, plan, s);                                                               \
  }                                                                                                           \
  cudaError_t stage_gemm_##SUFFIX(const StageGemm& g, cudaStream_t s) {                                       \
    return stage_gemm_t<T>(g, s);                                                                             \
  }                                                                                                           \
  cudaError_t stage_ln_##SUFFIX(const StageLn& l, cudaStream_t s) {                                           \
    return stage_ln_t<T>(l, s);                                                                               \
  }                                                                                                           \
  cudaError_t stage_silu_rows_##SUFFIX(const HeadSampleArgs& a, int i0, int rows, void* y, int blocks,        \
                                       cudaStream_t s) {                                                      \
    return stage_silu_rows_t<T>(a, i0, rows, y, blocks, s);                                                   \
  }                                                                                                           \
  cudaError_t stage_row_pre_##SUFFIX(const HeadSampleArgs& a, const StageRowPre& r, cudaStream_t s) {         \
    return stage_row_pre_t<T>(a, r, s);                                                                       \
  }

}  // namespace cuda
}  // namespace marengine
