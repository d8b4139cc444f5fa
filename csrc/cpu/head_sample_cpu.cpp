// head_sample_cpu.cpp -- CPU implementation of marengine::head_sample: the whole reverse
// diffusion of the Diffusion-Loss head (SimpleMLPAdaLN, S steps, optional CFG) in one call.
//
// Per chunk of steps the AdaLN modulations of every block and of the final layer,
// Linear(SiLU(t_emb[s] + c_emb[r])), are computed as big GEMMs over the densely packed
// (step, row) pairs, [chunk * rows, W] x [W, 3W] (they do not depend on x and are ~65%
// of the FLOPs), and scattered into per-step P16 panels (kernels.h); then each step runs input_proj, D fused AdaLN
// blocks (LN+modulate -> GEMM+bias+SiLU -> GEMM+bias+gate+residual), the final layer and the sampler's update, all in
// preallocated buffers, no Python, no allocation per step. All GEMM weights are packed once (and cached between
// calls, pack_cache.cpp), so no step repacks them: fp32 k-major tiles (bf16/fp16 widened exactly), except bf16
// weights on CPUs whose kernels multiply bf16 themselves (AMX or AVX512-BF16: kernels.h dot_bf16), which stay bf16.
//
// Threading (at::parallel_for, torch's intra-op threads):
//   row mode     chains are independent, so with at least one 16-row panel per thread
//                the panels (with their CFG twins) are cut into units and each thread
//                runs the whole loop for its units alone: no synchronisation at all.
//   column mode  fewer panels than threads: one loop, each GEMM split over weight rows.
// Units are small enough that a worker's buffers fit MARENGINE_CPU_WORKSPACE_MB (default
// 128); workspaces and packed weights (pack_cache.cpp) are kept between calls.
// Tuning knobs: MARENGINE_CPU_ROW_MIN (panels per thread needed for row mode, default 1),
// MARENGINE_CPU_MOD_ROWS (rows per modulation GEMM, default 512).
//
// Samplers: one update for all (coefs [S, 8] from marengine/diffusion/samplers.py; x0_prev kept per
// worker for the multistep solver; clip_denoised clamps x0).
//
// Per-row steps (row_table [N, 2]: each row's first row in the stacked coefs / t_emb and its step
// count; head_checks.h): the rows are put in slots ordered by step count, most first (stable), so
// that in every unit the rows still running at iteration i are a prefix of its slots; a unit runs
// as many iterations as its first slot, and each iteration's modulation rows, GEMMs and updates
// cover only the panels of that prefix (the CFG halves separately). Rows that have finished keep
// their value. Noise stays indexed by the original row (step_noise[i, row], Philox element
// (i N + row) C + c), so a row draws what it would draw alone at the same position. Without a
// row_table every row takes the S steps of coefs from row 0: the uniform path, unchanged.
//
// Numerics: residual stream, LN statistics, eps / variance outputs and the sampler update in
// fp32; with bf16/fp16 weights the GEMM inputs (LN+modulate outputs, SiLU outputs, the
// modulation GEMM's SiLU(y)) are rounded to that type and products are accumulated in
// fp32 (what a bf16 tensor-core GEMM computes; with AMX / AVX512-BF16 the CPU does exactly
// that); the input projection reads the fp32 chain state unrounded (its weight stays fp32).
//
// Test: pytest python_tests/test_native_cpu.py; benchmark: python benchmarks/bench_head.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "../head_checks.h"
#include "../kernel_limits.h"
#include "../philox.h"
#include "../settings.h"
#include "head_common.h"
#include "kernels.h"

namespace marengine {
namespace cpu {
namespace {

constexpr float kLnEps = kLayerNormEps;  // csrc/kernel_limits.h

struct Problem {
  int64_t N, R, C, W, D, S, Pn, Fm;
  bool cfg_on, clip;
  float cfg, temp;
  WType wt;
  const float* t_emb;
  const float* coefs;
  const float* step_noise;  // [S, N, C] or null (S: the iterations, max_steps with a row_table)
  uint64_t seed, offset;
  // per slot (rows ordered by steps, most first): original row, first table row, steps;
  // empty without a row_table (slot = row, first 0, steps S)
  std::vector<int64_t> row_of, first, steps;
  PackedWeight in_w, out_w, fmod_w;  // all GEMM weights, packed once per call
  std::vector<PackedWeight> w1, w2, mod_w;
  const float *in_b, *fmod_b, *out_b;
  std::vector<const float*> ln_w, ln_b, mod_b, b1, b2;
  const float* c_emb;  // [R, W] row-major
  float* xs;           // chain state in panels [Pn][C][16]
};

// How the chain panels are cut into units (contiguous panel ranges, each run through all
// S steps by one worker) and how many steps share one modulation GEMM.
struct Plan {
  bool row_mode;        // units spread over threads (else: one thread, GEMMs split over n)
  int64_t threads;      // workers
  int64_t unit_panels;  // chain panels per unit (the last may be smaller)
  int64_t units;
  int64_t chunk;  // steps per modulation GEMM
};

// One thread's buffers (in a workspace slice) and the step loop for a unit of chain panels.
class Worker {
 public:
  // Floats of workspace a worker needs for units of up to `unit_panels` chain panels.
  static int64_t floats_needed(const Problem& P, int64_t unit_panels, int64_t chunk) {
    const int64_t L = kLanes, np = unit_panels * (P.cfg_on ? 2 : 1);
    const int64_t mpanels = (chunk * np * L + L - 1) / L;
    return np * L * (3 * P.W + 2 * P.C) + unit_panels * P.C * L + chunk * np * P.Fm * L + mpanels * P.W * L + 8 * 64;
  }

  Worker(const Problem& pb, int64_t unit_panels, int64_t chunk, float* ws) : P(pb), K(kernels()), chunk_(chunk) {
    const int64_t W = P.W, L = kLanes, np = unit_panels * (P.cfg_on ? 2 : 1);
    const int64_t mpanels = (chunk_ * np * L + L - 1) / L;
    h_ = take(ws, np * W * L);
    a_ = take(ws, np * W * L);
    u_ = take(ws, np * W * L);
    fo_ = take(ws, np * 2 * P.C * L);
    x0p_ = take(ws, unit_panels * P.C * L);
    mods_ = take(ws, chunk_ * np * P.Fm * L);
    ma_ = take(ws, mpanels * W * L);
    row_off_.resize(static_cast<size_t>(mpanels * L));
    noise_.resize(static_cast<size_t>(P.C));
  }

  // Every iteration of chain panels [u0, u1) (as many as its slots' most steps).
  void run(int64_t u0, int64_t u1) {
    const int64_t L = kLanes;
    u0_ = u0;
    nu_ = u1 - u0;
    np_ = nu_ * (P.cfg_on ? 2 : 1);
    nvalid_ = std::min(P.N, u1 * L) - u0 * L;
    std::fill(x0p_, x0p_ + nu_ * P.C * kLanes, 0.0f);  // no previous x0 before the first step
    const int64_t iters = steps_of(u0 * L);            // slots are ordered by steps, most first
    for (int64_t i0 = 0; i0 < iters; i0 += chunk_) {
      const int64_t cnt = std::min(chunk_, iters - i0);
      compute_mods(i0, cnt);
      for (int64_t q = 0; q < cnt; ++q) step(i0 + q, q);
    }
  }

 private:
  int64_t steps_of(int64_t slot) const { return P.steps.empty() ? P.S : P.steps[static_cast<size_t>(slot)]; }
  int64_t row_of(int64_t slot) const { return P.row_of.empty() ? slot : P.row_of[static_cast<size_t>(slot)]; }
  // The table row (of coefs and t_emb) of a slot at iteration i: its step S_n - 1 - i.
  int64_t table_row(int64_t slot, int64_t i) const {
    return (P.first.empty() ? 0 : P.first[static_cast<size_t>(slot)]) + steps_of(slot) - 1 - i;
  }
  // Valid rows of this unit still running at iteration i: a prefix of its slots.
  int64_t active_rows(int64_t i) const {
    if (P.steps.empty()) return nvalid_;
    int64_t n = nvalid_;
    while (n > 0 && steps_of(u0_ * kLanes + n - 1) <= i) --n;
    return n;
  }

  static float* take(float*& ws, int64_t n) {  // 64-byte aligned slices
    float* p = ws;
    ws += (n + 15) / 16 * 16;
    return p;
  }

  // The step GEMMs: with one chain panel of <= 8 rows only half of each panel is computed.
  void gemm(const float* A, int64_t a_ps, int64_t panels, const PackedWeight& w, const EpiArgs& e) const {
    gemm_packed_parallel(K, A, a_ps, panels, w, e, na_ == 1 ? nact_ : kLanes);
  }

  // A step GEMM over the running panels of both CFG halves (all np panels when every slot runs;
  // else the cond and the uncond halves' first na_ panels, as two calls).
  void gemm_running(const float* A, int64_t a_ps, const PackedWeight& w, EpiArgs e) const {
    if (na_ == nu_) return gemm(A, a_ps, np_, w, e);
    gemm(A, a_ps, na_, w, e);
    if (!P.cfg_on) return;
    e.out += nu_ * e.out_pstride;
    if (e.gate != nullptr) e.gate += nu_ * e.gate_pstride;
    gemm(A + nu_ * a_ps, a_ps, na_, w, e);
  }

  // Modulations of iterations [i0, i0 + cnt), as one GEMM per weight over the densely
  // packed (step, valid row) pairs: ma = SiLU(t_emb[s] + c_emb[row]), then
  // mods[q][panel][f][lane] = ma @ mod_w^T + mod_b, scattered into this step's panels.
  // Only the (step, row) pairs of running rows are packed (all of them on the uniform path).
  void compute_mods(int64_t i0, int64_t cnt) {
    const int64_t W = P.W, L = kLanes, halves = P.cfg_on ? 2 : 1;
    pairs_.clear();  // (q, half, r) of each packed row, in the uniform path's order
    for (int64_t q = 0; q < cnt; ++q) {
      const int64_t act = active_rows(i0 + q);
      for (int64_t half = 0; half < halves; ++half)
        for (int64_t r = 0; r < act; ++r) pairs_.push_back({q, half, r});
    }
    const int64_t total = static_cast<int64_t>(pairs_.size()), panels = (total + L - 1) / L;
    for (int64_t idx = 0; idx < panels * L; ++idx) {
      int64_t off = -1;
      if (idx < total) {
        const Pair& p = pairs_[static_cast<size_t>(idx)];
        const int64_t j = p.half * nu_ + p.r / L;
        off = (p.q * np_ + j) * P.Fm * L + p.r % L;
      }
      row_off_[static_cast<size_t>(idx)] = off;
    }
    at::parallel_for(0, panels, grain_for(W * L * 8), [&](int64_t b, int64_t e) {
      const float* tr[kLanes];
      const float* cr[kLanes];
      for (int64_t d = b; d < e; ++d) {
        for (int64_t l = 0; l < L; ++l) {
          const int64_t idx = d * L + l;
          tr[l] = cr[l] = nullptr;
          if (idx >= total) continue;
          const Pair& p = pairs_[static_cast<size_t>(idx)];
          const int64_t slot = u0_ * L + p.r;
          tr[l] = P.t_emb + table_row(slot, i0 + p.q) * W;
          cr[l] = P.c_emb + (p.half * P.N + row_of(slot)) * W;
        }
        K.silu_add_rows(tr, cr, W, P.wt, ma_ + d * W * L);
      }
    });
    EpiArgs e;
    e.kind = Epi::Store;
    e.out = mods_;
    e.row_off = row_off_.data();
    for (int64_t d = 0; d < P.D; ++d) {
      e.bias = P.mod_b[d];
      e.out_off = 3 * W * d;
      gemm_packed_parallel(K, ma_, W * L, panels, P.mod_w[d], e, std::min(total, L));
    }
    e.bias = P.fmod_b;
    e.out_off = 3 * W * P.D;
    gemm_packed_parallel(K, ma_, W * L, panels, P.fmod_w, e, std::min(total, L));
  }

  void step(int64_t i, int64_t q) {
    const int64_t W = P.W, C = P.C, L = kLanes, Fm = P.Fm;
    nact_ = active_rows(i);
    na_ = (nact_ + L - 1) / L;
    const float* mq = mods_ + q * np_ * Fm * L;  // this step's modulations, panel stride Fm * 16
    // input_proj reads the fp32 chain state directly (K = C is tiny; rounding the state to
    // bf16/fp16 would be the largest error of the low-precision path, and fp16 overflows
    // for the |x| ~ 1e5 an untrained head produces). With CFG both halves see the same x.
    EpiArgs e;
    e.kind = Epi::Store;
    e.bias = P.in_b;
    e.out = h_;
    e.out_pstride = W * L;
    const float* x0 = P.xs + u0_ * C * L;
    gemm(x0, C * L, na_, P.in_w, e);
    if (P.cfg_on) {
      e.out = h_ + nu_ * W * L;
      gemm(x0, C * L, na_, P.in_w, e);
    }
    for (int64_t d = 0; d < P.D; ++d) {
      const int64_t base = 3 * W * d;
      ln_mod(mq, base, base + W, P.ln_w[d], P.ln_b[d]);
      EpiArgs e1;
      e1.kind = Epi::SiluRound;
      e1.bias = P.b1[d];
      e1.out = u_;
      e1.out_pstride = W * L;
      e1.round = P.wt;
      gemm_running(a_, W * L, P.w1[d], e1);
      EpiArgs e2;
      e2.kind = Epi::GateResidual;
      e2.bias = P.b2[d];
      e2.out = h_;
      e2.out_pstride = W * L;
      e2.gate = mq + (base + 2 * W) * L;
      e2.gate_pstride = Fm * L;
      gemm_running(u_, W * L, P.w2[d], e2);
    }
    ln_mod(mq, 3 * W * P.D, 3 * W * P.D + W, nullptr, nullptr);
    EpiArgs ef;
    ef.kind = Epi::Store;
    ef.bias = P.out_b;
    ef.out = fo_;
    ef.out_pstride = 2 * C * L;
    gemm_running(a_, W * L, P.out_w, ef);
    update(i);
  }

  // a = round(LN(h) * (1 + scale) + shift) for every local panel.
  void ln_mod(const float* mq, int64_t shift_off, int64_t scale_off, const float* lw, const float* lb) {
    const int64_t W = P.W, L = kLanes, Fm = P.Fm;
    const int64_t halves = P.cfg_on ? 2 : 1;
    at::parallel_for(0, halves * na_, grain_for(W * L * 4), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t j = k / na_ * nu_ + k % na_;  // panel k % na_ of CFG half k / na_
        const float* m = mq + j * Fm * L;
        K.ln_modulate(h_ + j * W * L, W, m + shift_off * L, m + scale_off * L, lw, lb, kLnEps, P.wt, a_ + j * W * L);
      }
    });
  }

  // x <- the sampler's update (coefs row s: a, b, c1, c2, c3, lp, lb, nw; csrc/ops.cpp) from
  // eps and the variance values, for the chain panels of this worker. With c3 = 0 (ddpm,
  // ddim) the arithmetic is exactly the official posterior step's.
  void update(int64_t i) {
    const int64_t C = P.C, L = kLanes;
    for (int64_t u = 0; u < na_; ++u) {
      const int64_t cp = u0_ + u;
      const float* fc = fo_ + u * 2 * C * L;
      const float* fu = P.cfg_on ? fo_ + (nu_ + u) * 2 * C * L : nullptr;
      float* x = P.xs + cp * C * L;
      float* x0p = x0p_ + u * C * L;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t slot = cp * L + l;
        if (slot - u0_ * L >= nact_) break;  // past the running rows (or the valid ones)
        const int64_t row = row_of(slot);
        const float* cf = P.coefs + table_row(slot, i) * checks::kCoefColumns;
        const float a = cf[0], b = cf[1], c1 = cf[2], c2 = cf[3], c3 = cf[4], lp = cf[5], lb = cf[6];
        const bool noisy = cf[7] != 0.0f && P.temp > 0;
        const float* nz = nullptr;
        if (noisy) {
          const uint64_t e0 = static_cast<uint64_t>((i * P.N + row) * C);
          if (P.step_noise) {
            nz = P.step_noise + e0;
          } else {
            philox::fill_normals(e0, C, P.seed, P.offset, noise_.data());
            nz = noise_.data();
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          float eps = fc[c * L + l];
          if (fu) {
            const float un = fu[c * L + l];
            eps = un + P.cfg * (eps - un);
          }
          const float xv = x[c * L + l];
          float x0 = a * xv - b * eps;
          if (P.clip) x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);  // NaN passes, as torch.clamp
          float mean = c1 * x0 + c2 * xv;
          if (c3 != 0.0f) mean = mean + c3 * x0p[c * L + l];
          x0p[c * L + l] = x0;
          if (noisy) {
            const float frac = (fc[(C + c) * L + l] + 1.0f) / 2.0f;
            const float logvar = frac * lb + (1.0f - frac) * lp;
            mean = mean + std::exp(0.5f * logvar) * nz[c] * P.temp;
          }
          x[c * L + l] = mean;
        }
      }
    }
  }

  const Problem& P;
  const Kernels& K;
  int64_t chunk_;
  int64_t u0_ = 0, nu_ = 0, np_ = 0;
  int64_t nvalid_ = 0;  // valid chain rows of the current unit
  int64_t nact_ = 0;    // rows of the unit running at the current step (a prefix of its slots)
  int64_t na_ = 0;      // chain panels holding them
  struct Pair {
    int64_t q, half, r;
  };
  std::vector<Pair> pairs_;
  std::vector<int64_t> row_off_;
  float *h_, *a_, *u_, *fo_, *x0p_, *mods_, *ma_;
  std::vector<float> noise_;
};

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = knob(name);  // marengine/settings.py
  if (v == nullptr || *v == '\0') return fallback;
  return std::max<int64_t>(0, std::atoll(v));
}

Plan make_plan(const Problem& P, int64_t threads) {
  const int64_t pair = P.cfg_on ? 2 : 1;
  const int64_t budget = std::max<int64_t>(1, env_int("MARENGINE_CPU_WORKSPACE_MB", 128)) << 20;
  // a unit's workspace with one step per chunk must fit the budget
  const int64_t panel_bytes = kLanes * pair * (P.Fm + 4 * P.W + 2 * P.C) * static_cast<int64_t>(sizeof(float));
  const int64_t max_unit = std::max<int64_t>(1, budget / panel_bytes);
  const int64_t row_min = std::max<int64_t>(1, env_int("MARENGINE_CPU_ROW_MIN", 1));
  Plan plan;
  plan.row_mode = threads > 1 && P.Pn >= threads * row_min;
  plan.threads = plan.row_mode ? threads : 1;
  int64_t units = (P.Pn + max_unit - 1) / max_unit;
  if (plan.row_mode) units = std::min(P.Pn, (std::max(units, threads) + threads - 1) / threads * threads);
  plan.unit_panels = (P.Pn + units - 1) / units;
  plan.units = (P.Pn + plan.unit_panels - 1) / plan.unit_panels;
  // steps per modulation GEMM: ~MARENGINE_CPU_MOD_ROWS rows, within the budget
  const int64_t rows = std::min(P.N, plan.unit_panels * kLanes) * pair;  // the most running rows
  const int64_t target = std::max<int64_t>(1, env_int("MARENGINE_CPU_MOD_ROWS", 512));
  const int64_t step_bytes = plan.unit_panels * panel_bytes;
  plan.chunk = std::min<int64_t>(P.S, (target + rows - 1) / rows);
  plan.chunk = std::max<int64_t>(1, std::min<int64_t>(plan.chunk, budget / step_bytes));
  return plan;
}

// Workspaces kept between calls (page-faulting fresh buffers costs as much as a small
// call): one per worker, grown on demand, used by one call at a time (a concurrent call
// allocates its own). release_workspaces() frees them.
struct Workspaces {
  std::mutex mu;
  std::vector<at::Tensor> bufs;
};

Workspaces& workspaces() {
  static Workspaces* w = new Workspaces();
  return *w;
}

float* workspace_slot(std::vector<at::Tensor>& bufs, size_t t, int64_t floats) {
  if (bufs.size() <= t) bufs.resize(t + 1);
  if (!bufs[t].defined() || bufs[t].numel() < floats) bufs[t] = at::empty({floats}, at::kFloat);
  return bufs[t].data_ptr<float>();
}

void run_plan(const Problem& P, const Plan& plan) {
  const int64_t need = Worker::floats_needed(P, plan.unit_panels, plan.chunk);
  Workspaces& cache = workspaces();
  std::unique_lock<std::mutex> lock(cache.mu, std::try_to_lock);
  std::vector<at::Tensor> private_bufs;
  std::vector<at::Tensor>& bufs = lock.owns_lock() ? cache.bufs : private_bufs;
  std::vector<float*> base(static_cast<size_t>(plan.threads));
  for (int64_t t = 0; t < plan.threads; ++t) base[static_cast<size_t>(t)] = workspace_slot(bufs, t, need);
  auto work = [&](int64_t t) {
    Worker w(P, plan.unit_panels, plan.chunk, base[static_cast<size_t>(t)]);
    const int64_t ub = t * plan.units / plan.threads, ue = (t + 1) * plan.units / plan.threads;
    for (int64_t u = ub; u < ue; ++u) w.run(u * plan.unit_panels, std::min(P.Pn, (u + 1) * plan.unit_panels));
  };
  if (plan.row_mode) {
    at::parallel_for(0, plan.threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) work(t);
    });
  } else {
    work(0);
  }
}

at::Tensor head_sample_cpu(MARENGINE_HEAD_SAMPLE_PARAMS) {
  const char* op = "marengine::head_sample";
  const checks::HeadShapes sh = MARENGINE_CHECK_HEAD_SAMPLE();
  TORCH_CHECK(x_T.device().is_cpu(), op, ": the CPU kernel got tensors on ", x_T.device());
  if (sh.N == 0) return at::empty({0, sh.C}, x_T.options());

  Problem P;
  P.N = sh.N;
  P.R = sh.R;
  P.C = sh.C;
  P.W = sh.W;
  P.D = sh.D;
  P.S = sh.iters;
  P.Pn = (sh.N + kLanes - 1) / kLanes;
  P.Fm = 3 * sh.W * sh.D + 2 * sh.W;
  P.cfg_on = sh.cfg_on;
  P.clip = clip_denoised;
  P.cfg = static_cast<float>(cfg);
  P.temp = static_cast<float>(temperature);
  P.wt = wtype_of(sh.wdtype);
  P.t_emb = t_emb.data_ptr<float>();
  P.coefs = coefs.data_ptr<float>();
  const bool has_noise = step_noise.has_value() && step_noise->defined();
  P.step_noise = has_noise ? step_noise->data_ptr<float>() : nullptr;
  P.seed = static_cast<uint64_t>(seed);
  P.offset = static_cast<uint64_t>(offset);

  F32Params f32;  // fp32 copies of biases / LN params where needed (kept alive here)
  const Kernels& K = kernels();
  P.in_w = cached_pack(K, in_w);
  P.in_b = f32.get(in_b);
  for (int64_t d = 0; d < sh.D; ++d) {
    P.ln_w.push_back(f32.get(ln_w[d]));
    P.ln_b.push_back(f32.get(ln_b[d]));
    P.mod_w.push_back(cached_pack(K, mod_w[d], true));
    P.mod_b.push_back(f32.get(mod_b[d]));
    P.w1.push_back(cached_pack(K, w1[d], true));
    P.b1.push_back(f32.get(b1[d]));
    P.w2.push_back(cached_pack(K, w2[d], true));
    P.b2.push_back(f32.get(b2[d]));
  }
  P.fmod_w = cached_pack(K, fmod_w, true);
  P.fmod_b = f32.get(fmod_b);
  P.out_w = cached_pack(K, out_w, true);
  P.out_b = f32.get(out_b);

  P.c_emb = c_emb.data_ptr<float>();
  const bool per_row = row_table.has_value() && row_table->defined();
  at::Tensor order;  // slot -> row (rows ordered by steps, most first), with a row_table
  if (per_row) {
    const int32_t* rt = row_table->data_ptr<int32_t>();
    checks::check_row_values(op, rt, sh.N, sh.S, sh.iters);
    order = at::empty({sh.N}, at::kLong);
    int64_t* ord = order.data_ptr<int64_t>();
    for (int64_t n = 0; n < sh.N; ++n) ord[n] = n;
    std::stable_sort(ord, ord + sh.N, [&](int64_t x, int64_t y) { return rt[2 * x + 1] > rt[2 * y + 1]; });
    for (int64_t k = 0; k < sh.N; ++k) {
      P.row_of.push_back(ord[k]);
      P.first.push_back(rt[2 * ord[k]]);
      P.steps.push_back(rt[2 * ord[k] + 1]);
    }
  }
  at::Tensor xs = pack_rows(per_row ? x_T.index_select(0, order) : x_T);
  P.xs = xs.data_ptr<float>();

  run_plan(P, make_plan(P, at::get_num_threads()));
  at::Tensor out = unpack_rows(xs, sh.N);
  return per_row ? at::empty_like(out).index_copy_(0, order, out) : out;
}

}  // namespace

void release_workspaces() {
  Workspaces& w = workspaces();
  std::lock_guard<std::mutex> g(w.mu);
  w.bufs.clear();
}

TORCH_LIBRARY_IMPL(marengine, CPU, m) {
  m.impl("head_sample", &head_sample_cpu);
}

}  // namespace cpu
}  // namespace marengine
