// row_phases.cuh -- the per-row (non-GEMM) stages of the head, one warp per row.
//
//   ln_modulate_rows  A[r] = (LN(h[r]) [* ln_w + ln_b]) * (1 + scale[r]) + shift[r]  -> T
//                     (the AdaLN prologue of a res block's first GEMM, or of the final
//                     linear: LayerNorm without affine). Welford fp32 statistics.
//   row_pre           per chain row n of iteration i: x <- the sampler's update from the
//                     previous iteration's (eps, v) rows (CFG combine, x0 = a x - b eps,
//                     optional clamp, mean = c1 x0 + c2 x + c3 x0_prev, learned-range or
//                     fixed variance, noise; coefficient table [S, 8]), then the input
//                     projection h = in_w x + in_b (copied to row n + N with CFG), and
//                     optionally LN + modulate for block 0 and y = SiLU(t_emb + c_emb).
//   update_rows       the update alone, one thread per element (the last one, step 0,
//                     writes the result).
//
// Each lane owns the float4 chunks j = 4 lane + 128 k of a row, so a lane re-reads
// only what it wrote itself (no cross-lane hazards inside a row). Row r is
// processed by warp (blockIdx.x * warps + warp) + q * (gridDim.x * warps).
//
// The update mirrors marengine/diffusion/gaussian.py sample_loop op by op with explicitly
// rounded fp32 operations (__fmul_rn etc.: no FMA contraction), so it rounds as the
// PyTorch reference does.
// Test: python_tests/test_cuda_stages.py -k "ln_modulate or row_pre or update or silu"
// (each stage alone against a float64 reference), python_tests/test_native_cuda.py.
#pragma once

#include "common.cuh"
#include "launchers.cuh"
#include "philox_cuda.cuh"

namespace marengine {
namespace cuda {

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void st4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}

template <typename T>
__device__ __forceinline__ void store4(T* p, float4 v);
template <>
__device__ __forceinline__ void store4<float>(float* p, float4 v) {
  st4(p, v);
}
template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162* q = reinterpret_cast<__nv_bfloat162*>(p);  // p is 8-byte aligned
  q[0] = __floats2bfloat162_rn(v.x, v.y);
  q[1] = __floats2bfloat162_rn(v.z, v.w);
}
template <>
__device__ __forceinline__ void store4<__half>(__half* p, float4 v) {
  __half2* q = reinterpret_cast<__half2*>(p);
  q[0] = __floats2half2_rn(v.x, v.y);
  q[1] = __floats2half2_rn(v.z, v.w);
}

struct RowStats {
  float mean, rstd;
};

__device__ __forceinline__ RowStats finish_stats(Welford w, int W) {
  w = warp_welford(w);
  const float var = w.m2 / static_cast<float>(W);
  return {w.mean, rsqrtf(var + kLayerNormEps)};
}

__device__ __forceinline__ RowStats row_stats(const float* h, int W, int lane) {
  Welford w{0.0f, 0.0f, 0.0f};
  for (int j = lane * 4; j < W; j += 128) {
    const float4 v = ld4(h + j);
    welford_add(w, v.x);
    welford_add(w, v.y);
    welford_add(w, v.z);
    welford_add(w, v.w);
  }
  return finish_stats(w, W);
}

// a[j] = (LN(h)[j] (* ln_w + ln_b)) * (1 + shift[W + j]) + shift[j]
template <typename T>
__device__ __forceinline__ void modulate_row(const float* h, int W, RowStats st, const float* ln_w, const float* ln_b,
                                             const float* shift, T* a, int lane) {
  for (int j = lane * 4; j < W; j += 128) {
    const float4 v = ld4(h + j), sh = ld4(shift + j), sc = ld4(shift + W + j);
    float4 n{(v.x - st.mean) * st.rstd, (v.y - st.mean) * st.rstd, (v.z - st.mean) * st.rstd,
             (v.w - st.mean) * st.rstd};
    if (ln_w != nullptr) {
      const float4 g = ld4(ln_w + j), b = ld4(ln_b + j);
      n = {n.x * g.x + b.x, n.y * g.y + b.y, n.z * g.z + b.z, n.w * g.w + b.w};
    }
    store4<T>(a + j, {n.x * (1.0f + sc.x) + sh.x, n.y * (1.0f + sc.y) + sh.y, n.z * (1.0f + sc.z) + sh.z,
                      n.w * (1.0f + sc.w) + sh.w});
  }
}

// A rows of every network row: LN(h) with optional affine, modulated by the
// (shift, scale) pair at shift + r * mod_ld (scale = shift + W).
template <typename T>
__device__ __forceinline__ void ln_modulate_rows(const float* h, int rows, int W, const float* ln_w, const float* ln_b,
                                                 const float* shift, int mod_ld, T* a) {
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  for (int r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps) {
    const float* hr = h + static_cast<size_t>(r) * W;
    const RowStats st = row_stats(hr, W, lane);
    modulate_row<T>(hr, W, st, ln_w, ln_b, shift + static_cast<size_t>(r) * mod_ld, a + static_cast<size_t>(r) * W,
                    lane);
  }
}

// The coefs / t_emb row of chain row n at iteration it (its step S_n - 1 - it; a.row_table: the
// row's own table in the stack, head_sample's per-row steps), and whether the row still runs then
// (a finished row reads its table's step 0 and is not updated).
__device__ __forceinline__ int table_row(const HeadSampleArgs& a, int n, int it, bool* running) {
  if (a.row_table == nullptr) {
    *running = true;
    return a.S - 1 - it;
  }
  const int steps = min(max(a.row_table[2 * n + 1], 1), min(a.S, a.table_rows));
  const int first = min(max(a.row_table[2 * n], 0), a.table_rows - steps);
  *running = it < steps;
  return first + max(steps - 1 - it, 0);
}

// y[q] = SiLU(t_emb[step(q)] + c_emb[q % R]) for q < rows, step(q) = table_row(chain row of q % R,
// i0 + q / R) (S - 1 - (i0 + q / R) without per-row steps).
template <typename T>
__device__ __forceinline__ void y_rows(const HeadSampleArgs& a, int i0, int rows, T* y) {
  const int W = a.W;
  const int per_row = W / 4;
  const size_t total = static_cast<size_t>(rows) * per_row;
  for (size_t e = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int q = static_cast<int>(e / per_row), j = static_cast<int>(e % per_row) * 4;
    const int r = q % a.R;
    bool running;
    const int step = table_row(a, r < a.N ? r : r - a.N, i0 + q / a.R, &running);
    const float4 t = ld4(a.t_emb + static_cast<size_t>(step) * W + j);
    const float4 c = ld4(a.c_emb + static_cast<size_t>(r) * W + j);
    store4<T>(y + static_cast<size_t>(q) * W + j, {silu(t.x + c.x), silu(t.y + c.y), silu(t.z + c.z), silu(t.w + c.w)});
  }
}

// Clamp to [-1, 1] (clip_denoised); NaN stays NaN, as torch.clamp leaves it.
__device__ __forceinline__ float clamp_unit(float v) {
  return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
}

// The sampler's update at iteration `it` (diffusion step t = S - 1 - it) for element (n, c),
// from the coefficient row t (a, b, c1, c2, c3, lp, lb, nw; csrc/ops.cpp; per-row steps: the row's
// table_row, and a row past its steps returns xv unchanged, its x0p kept):
//   x0 = a x - b eps (clamped with clip_denoised);  mean = c1 x0 + c2 x [+ c3 x0_prev]
//   x  = mean [+ exp(logvar / 2) noise temperature where nw != 0 and temperature > 0]
// `outr` = the network's (eps, v) rows [R, 2C] at that step, xv = x_t. x0p[n C + c] holds
// the previous iteration's x0 (read only when it > 0: zero before the first) and receives
// this one's. Mirrors marengine/diffusion/gaussian.py sample_loop op by op with explicitly
// rounded fp32 operations (no FMA contraction): for DDPM (c3 = 0) it is the official
// posterior step, bit for bit with the CPU kernel where no noise is drawn.
__device__ __forceinline__ float reverse_update(const HeadSampleArgs& a, const float* outr, int it, int n, int c,
                                                float xv, float* x0p) {
  const int C = a.C;
  bool running;
  const int step = table_row(a, n, it, &running);
  if (!running) return xv;
  const float* co = a.coefs + static_cast<size_t>(step) * kCoefColumns;
  const size_t e = static_cast<size_t>(n) * C + c;
  float eps = outr[static_cast<size_t>(n) * 2 * C + c];
  const float v = outr[static_cast<size_t>(n) * 2 * C + C + c];
  if (a.R != a.N) {  // guidance: eps = uncond + cfg * (cond - uncond); v from the cond half
    const float eu = outr[static_cast<size_t>(n + a.N) * 2 * C + c];
    eps = __fadd_rn(eu, __fmul_rn(a.cfg, __fsub_rn(eps, eu)));
  }
  float x0 = __fsub_rn(__fmul_rn(co[0], xv), __fmul_rn(co[1], eps));
  if (a.clip_denoised) x0 = clamp_unit(x0);
  float mean = __fadd_rn(__fmul_rn(co[2], x0), __fmul_rn(co[3], xv));
  const float c3 = co[4];
  if (c3 != 0.0f) mean = __fadd_rn(mean, __fmul_rn(c3, it > 0 ? x0p[e] : 0.0f));
  x0p[e] = x0;
  if (co[7] != 0.0f && a.temperature > 0.0f) {
    const float frac = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);  // (v + 1) / 2, exactly
    const float logvar = __fadd_rn(__fmul_rn(frac, co[6]), __fmul_rn(__fsub_rn(1.0f, frac), co[5]));
    const size_t en = (static_cast<size_t>(it) * a.N + n) * C + c;
    const float z = a.step_noise != nullptr ? a.step_noise[en] : philox_normal(en, a.seed, a.offset);
    return __fadd_rn(mean, __fmul_rn(__fmul_rn(expf(__fmul_rn(0.5f, logvar)), z), a.temperature));
  }
  return mean;
}

// Per chain row n at iteration i (step s = S - 1 - i):
//   x[n] = i == 0 ? x_T[n] : reverse_update(previous iteration)   (x0p: previous x0, [N, C])
//   h[n] (and h[n + N]) = in_w x + in_b
//   mods0 != nullptr: A[n], A[n + N] = LN_0(h) modulated by mods0 rows (ln_w0 == nullptr: no affine)
//   y != nullptr:     y[n], y[n + N] = SiLU(t_emb[s] + c_emb[row])
// xs: per-warp shared scratch of kMaxChannels floats.
template <typename T>
__device__ __forceinline__ void row_pre(const HeadSampleArgs& a, int i, float* x, float* x0p, float* h,
                                        const float* outr, const float* ln_w0, const float* ln_b0, const float* mods0,
                                        int mod_ld, T* abuf, T* y, float* xs_all) {
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int C = a.C, W = a.W, N = a.N;
  const bool guided = a.R != a.N;
  float* xs = xs_all + warp * kMaxChannels;
  for (int n = blockIdx.x * warps + warp; n < N; n += gridDim.x * warps) {
    for (int c = lane; c < C; c += 32) {
      float xv = x[static_cast<size_t>(n) * C + c];  // x_T was copied into x before iteration 0
      if (i > 0) xv = reverse_update(a, outr, i - 1, n, c, xv, x0p);
      x[static_cast<size_t>(n) * C + c] = xv;
      xs[c] = xv;
    }
    __syncwarp();
    Welford w{0.0f, 0.0f, 0.0f};
    float* hn = h + static_cast<size_t>(n) * W;
    for (int j = lane * 4; j < W; j += 128) {
      float4 acc = ld4(a.in_b + j);
      for (int c = 0; c < C; ++c) {
        const float xc = xs[c];
        const float4 wc = ld4(a.in_w_t + static_cast<size_t>(c) * W + j);
        acc.x = fmaf(wc.x, xc, acc.x);
        acc.y = fmaf(wc.y, xc, acc.y);
        acc.z = fmaf(wc.z, xc, acc.z);
        acc.w = fmaf(wc.w, xc, acc.w);
      }
      st4(hn + j, acc);
      if (guided) st4(hn + static_cast<size_t>(N) * W + j, acc);
      welford_add(w, acc.x);
      welford_add(w, acc.y);
      welford_add(w, acc.z);
      welford_add(w, acc.w);
    }
    const RowStats st = finish_stats(w, W);  // all lanes take part (shuffles)
    if (mods0 != nullptr) {
      modulate_row<T>(hn, W, st, ln_w0, ln_b0, mods0 + static_cast<size_t>(n) * mod_ld,
                      abuf + static_cast<size_t>(n) * W, lane);
      if (guided)
        modulate_row<T>(hn, W, st, ln_w0, ln_b0, mods0 + static_cast<size_t>(n + N) * mod_ld,
                        abuf + static_cast<size_t>(n + N) * W, lane);
    }
    if (y != nullptr) {
      bool running;
      const int s = table_row(a, n, i, &running);
      const float* te = a.t_emb + static_cast<size_t>(s) * W;
      for (int rr = 0; rr < (guided ? 2 : 1); ++rr) {
        const int r = n + rr * N;
        const float* ce = a.c_emb + static_cast<size_t>(r) * W;
        for (int j = lane * 4; j < W; j += 128) {
          const float4 t = ld4(te + j), c = ld4(ce + j);
          store4<T>(y + static_cast<size_t>(r) * W + j,
                    {silu(t.x + c.x), silu(t.y + c.y), silu(t.z + c.z), silu(t.w + c.w)});
        }
      }
    }
    __syncwarp();  // xs is rewritten for the next row
  }
}

// out[n, c] = reverse_update of iteration `it` for every element, one thread per element
// (it = S - 1, step 0: the last update, into the result; x may alias out).
__device__ __forceinline__ void update_rows(const HeadSampleArgs& a, int it, const float* x, float* x0p,
                                            const float* outr, float* out) {
  const size_t total = static_cast<size_t>(a.N) * a.C;
  for (size_t e = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(e / a.C), c = static_cast<int>(e % a.C);
    out[e] = reverse_update(a, outr, it, n, c, x[e], x0p);
  }
}

}  // namespace cuda
}  // namespace marengine
