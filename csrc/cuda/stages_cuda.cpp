// stages_cuda.cpp -- test-only torch operators that run ONE device stage of the head kernels
// (csrc/cuda/stages.cuh) on given tensors, so that python_tests/test_cuda_stages.py can check
// each stage alone against a float64 CPU reference and name the stage that fails. Built
// with the CUDA kernels only; not part of the public schema (csrc/ops.cpp):
//
//   torch.ops.marengine_stages.gemm(A, B, bias, residual?, gate?, epi, small_tiles) -> out
//   torch.ops.marengine_stages.ln_modulate(h, ln_w?, ln_b?, mods, shift_col, dtype, blocks) -> A
//   torch.ops.marengine_stages.silu_rows(t_emb, c_emb, i0, rows, dtype, blocks) -> y
//   torch.ops.marengine_stages.row_pre(x, x0_prev, outr, coefs, in_w, in_b, ln_w0?, ln_b0?, mods0?,
//        t_emb, c_emb, i, cfg, temperature, step_noise?, seed, offset, clip, make_y, dtype, blocks)
//        -> (x, x0_prev, h, A, y)
//   torch.ops.marengine_stages.update(x, x0_prev, outr, coefs, it, cfg, temperature, step_noise?,
//        seed, offset, clip, blocks) -> (x, x0_prev)
//   torch.ops.marengine_stages.grid_barrier(like, rounds, blocks) -> [errors, grid, final word]
//   torch.ops.marengine_stages.plan(like, N, R, C, W, D, S, dtype, path) -> [path, chunk, grid, bytes]
//
// Inputs are checked (a bad call raises naming the stage and the argument); outputs are
// fresh tensors, inputs are never written. Test: pytest python_tests/test_cuda_stages.py
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../head_checks.h"
#include "launchers.cuh"
#include "stages.cuh"
#include "torch_glue.h"

namespace marengine {
namespace cuda {
namespace {

// A contiguous, 16-byte aligned CUDA tensor of `dtype` and `shape` (copied only when needed).
at::Tensor arg(const char* stage, const at::Tensor& t, const char* name, at::ScalarType dtype,
               std::vector<int64_t> shape, const at::Device& dev) {
  TORCH_CHECK(t.defined(), stage, ": ", name, " is undefined");
  TORCH_CHECK(t.device() == dev, stage, ": ", name, " must be on ", dev, ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, stage, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), stage, ": ", name, " must have shape ", checks::shape_str(shape),
              ", got ", checks::shape_str(t.sizes()));
  return ready(t);
}

void check_cuda(const char* stage, const at::Tensor& t) {
  TORCH_CHECK(t.defined() && t.is_cuda(), stage, ": the stage operators take CUDA tensors");
}

// Where a stage runs: its tensor `t` must be a CUDA tensor, the stage launches on t's device
// (the guard, for the stage's lifetime) and takes its other tensors on `dev`.
struct OnDevice {
  OnDevice(const char* stage, const at::Tensor& t) : dev((check_cuda(stage, t), t.device())), guard(dev) {}
  const at::Device dev;
  const c10::cuda::CUDAGuard guard;
};

void ok(cudaError_t err, const char* stage) {
  TORCH_CHECK(err == cudaSuccess, stage, ": launch failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() {
  return at::cuda::getCurrentCUDAStream().stream();
}

// HeadSampleArgs with these sizes set and everything else zero (the stages set what they use).
HeadSampleArgs sized_args(int64_t N, int64_t R, int64_t C, int64_t W, int64_t S) {
  HeadSampleArgs a{};
  a.N = static_cast<int>(N);
  a.R = static_cast<int>(R);
  a.C = static_cast<int>(C);
  a.W = static_cast<int>(W);
  a.S = static_cast<int>(S);
  return a;
}

// ------------------------------------------------------------------ gemm
at::Tensor gemm(const at::Tensor& A, const at::Tensor& B, const at::Tensor& bias,
                const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& gate, int64_t epi,
                bool small_tiles) {
  const char* stage = "marengine_stages::gemm";
  const OnDevice on(stage, B);
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && A.size(1) == B.size(1), stage, ": A [M, K] and B [N, K] needed");
  const int64_t M = A.size(0), N = B.size(0), K = B.size(1);
  const at::ScalarType T = B.scalar_type();
  TORCH_CHECK(K * static_cast<int64_t>(B.element_size()) % 16 == 0, stage, ": K * element size must be a multiple ",
              "of 16 bytes (K = ", K, ")");
  TORCH_CHECK(epi >= 0 && epi <= 2, stage, ": epi must be 0 (SiLU), 1 (gate + residual) or 2 (store)");
  const at::Tensor a = arg(stage, A, "A", T, {M, K}, on.dev), b = arg(stage, B, "B", T, {N, K}, on.dev);
  const at::Tensor bs = arg(stage, bias, "bias", at::kFloat, {N}, on.dev);
  at::Tensor out, g;
  StageGemm s{};
  if (epi == 0) {
    out = at::empty({M, N}, B.options());
  } else if (epi == 1) {
    TORCH_CHECK(residual.has_value() && gate.has_value(), stage, ": epi 1 needs residual and gate");
    out = arg(stage, *residual, "residual", at::kFloat, {M, N}, on.dev).clone();
    TORCH_CHECK(gate->dim() == 2 && gate->size(0) == M && gate->size(1) >= N, stage, ": gate must be [M, >= N]");
    g = arg(stage, *gate, "gate", at::kFloat, {M, gate->size(1)}, on.dev);
    s.gate = g.data_ptr<float>();
    s.ldg = static_cast<int>(g.size(1));
  } else {
    out = at::empty({M, N}, B.options().dtype(at::kFloat));
  }
  s.A = a.data_ptr();
  s.B = b.data_ptr();
  s.bias = bs.data_ptr<float>();
  s.out = out.data_ptr();
  s.M = static_cast<int>(M);
  s.N = static_cast<int>(N);
  s.K = static_cast<int>(K);
  s.epi = static_cast<int>(epi);
  s.small_tiles = small_tiles;
  if (M > 0 && N > 0) ok(stage_gemm(weight_type(T, stage), s, stream()), stage);
  return out;
}

// ------------------------------------------------------------------ ln_modulate
at::Tensor ln_modulate(const at::Tensor& h, const std::optional<at::Tensor>& ln_w,
                       const std::optional<at::Tensor>& ln_b, const at::Tensor& mods, int64_t shift_col,
                       at::ScalarType dtype, int64_t blocks) {
  const char* stage = "marengine_stages::ln_modulate";
  const OnDevice on(stage, h);
  TORCH_CHECK(h.dim() == 2 && mods.dim() == 2 && mods.size(0) == h.size(0), stage, ": h [rows, W], mods [rows, ld]");
  const int64_t rows = h.size(0), W = h.size(1), ld = mods.size(1);
  TORCH_CHECK(W % kWidthMultiple == 0, stage, ": W must be a multiple of ", kWidthMultiple);
  TORCH_CHECK(shift_col >= 0 && shift_col % 4 == 0 && shift_col + 2 * W <= ld, stage,
              ": shift_col must be a multiple of 4 with shift and scale inside mods");
  TORCH_CHECK(ln_w.has_value() == ln_b.has_value(), stage, ": give both ln_w and ln_b or neither");
  const at::Tensor hc = arg(stage, h, "h", at::kFloat, {rows, W}, on.dev);
  const at::Tensor mc = arg(stage, mods, "mods", at::kFloat, {rows, ld}, on.dev);
  TORCH_CHECK(ld % 4 == 0, stage, ": mods' row length must be a multiple of 4 (float4 loads)");
  at::Tensor lw, lb;
  if (ln_w.has_value()) {
    lw = arg(stage, *ln_w, "ln_w", at::kFloat, {W}, on.dev);
    lb = arg(stage, *ln_b, "ln_b", at::kFloat, {W}, on.dev);
  }
  at::Tensor out = at::empty({rows, W}, h.options().dtype(dtype));
  StageLn l{};
  l.h = hc.data_ptr<float>();
  l.ln_w = lw.defined() ? lw.data_ptr<float>() : nullptr;
  l.ln_b = lb.defined() ? lb.data_ptr<float>() : nullptr;
  l.shift = mc.data_ptr<float>() + shift_col;
  l.rows = static_cast<int>(rows);
  l.W = static_cast<int>(W);
  l.mod_ld = static_cast<int>(ld);
  l.out = out.data_ptr();
  l.blocks = static_cast<int>(blocks);
  ok(stage_ln_modulate(weight_type(dtype, stage), l, stream()), stage);
  return out;
}

// ------------------------------------------------------------------ silu_rows
at::Tensor silu_rows(const at::Tensor& t_emb, const at::Tensor& c_emb, int64_t i0, int64_t rows, at::ScalarType dtype,
                     int64_t blocks) {
  const char* stage = "marengine_stages::silu_rows";
  const OnDevice on(stage, t_emb);
  TORCH_CHECK(t_emb.dim() == 2 && c_emb.dim() == 2 && c_emb.size(1) == t_emb.size(1), stage,
              ": t_emb [S, W], c_emb [R, W]");
  const int64_t S = t_emb.size(0), W = t_emb.size(1), R = c_emb.size(0);
  TORCH_CHECK(W % kWidthMultiple == 0 && R > 0, stage, ": W must be a multiple of ", kWidthMultiple, ", R > 0");
  TORCH_CHECK(i0 >= 0 && rows >= 0 && i0 * R + rows <= S * R, stage, ": rows of iterations i0.. must exist");
  const at::Tensor te = arg(stage, t_emb, "t_emb", at::kFloat, {S, W}, on.dev);
  const at::Tensor ce = arg(stage, c_emb, "c_emb", at::kFloat, {R, W}, on.dev);
  HeadSampleArgs a = sized_args(R, R, 0, W, S);
  a.t_emb = te.data_ptr<float>();
  a.c_emb = ce.data_ptr<float>();
  at::Tensor y = at::empty({rows, W}, t_emb.options().dtype(dtype));
  ok(stage_silu_rows(weight_type(dtype, stage), a, static_cast<int>(i0), static_cast<int>(rows), y.data_ptr(),
                     static_cast<int>(blocks), stream()),
     stage);
  return y;
}

// HeadSampleArgs of the update: N, R, C, S, cfg, temperature, coefs, noise, seed, offset, clip.
struct UpdateInputs {
  at::Tensor x, x0p, outr, coefs, noise;
  HeadSampleArgs a{};
};

UpdateInputs update_inputs(const char* stage, const at::Tensor& x, const at::Tensor& x0_prev, const at::Tensor& outr,
                           const at::Tensor& coefs, double cfg, double temperature,
                           const std::optional<at::Tensor>& step_noise, int64_t seed, int64_t offset, bool clip) {
  const at::Device dev = x.device();
  TORCH_CHECK(x.dim() == 2 && outr.dim() == 2 && coefs.dim() == 2, stage, ": x [N, C], outr [R, 2C], coefs [S, 8]");
  const int64_t N = x.size(0), C = x.size(1), R = outr.size(0), S = coefs.size(0);
  TORCH_CHECK(R == N || R == 2 * N, stage, ": outr must have N or 2N rows");
  TORCH_CHECK(C <= kMaxChannels, stage, ": at most ", kMaxChannels, " channels");
  UpdateInputs u;
  u.x = arg(stage, x, "x", at::kFloat, {N, C}, dev);
  u.x0p = arg(stage, x0_prev, "x0_prev", at::kFloat, {N, C}, dev).clone();
  u.outr = arg(stage, outr, "outr", at::kFloat, {R, 2 * C}, dev);
  u.coefs = arg(stage, coefs, "coefs", at::kFloat, {S, kCoefColumns}, dev);
  if (step_noise.has_value()) u.noise = arg(stage, *step_noise, "step_noise", at::kFloat, {S, N, C}, dev);
  u.a = sized_args(N, R, C, 0, S);
  HeadSampleArgs& a = u.a;
  a.cfg = static_cast<float>(cfg);
  a.temperature = static_cast<float>(temperature);
  a.coefs = u.coefs.data_ptr<float>();
  a.step_noise = u.noise.defined() ? u.noise.data_ptr<float>() : nullptr;
  a.seed = static_cast<uint64_t>(seed);
  a.offset = static_cast<uint64_t>(offset);
  a.clip_denoised = clip;
  return u;
}

// ------------------------------------------------------------------ update
std::tuple<at::Tensor, at::Tensor> update(const at::Tensor& x, const at::Tensor& x0_prev, const at::Tensor& outr,
                                          const at::Tensor& coefs, int64_t it, double cfg, double temperature,
                                          const std::optional<at::Tensor>& step_noise, int64_t seed, int64_t offset,
                                          bool clip, int64_t blocks) {
  const char* stage = "marengine_stages::update";
  const OnDevice on(stage, x);
  UpdateInputs u = update_inputs(stage, x, x0_prev, outr, coefs, cfg, temperature, step_noise, seed, offset, clip);
  TORCH_CHECK(it >= 0 && it < u.a.S, stage, ": it must be in [0, S)");
  at::Tensor out = at::empty_like(u.x);
  ok(stage_update(u.a, static_cast<int>(it), u.x.data_ptr<float>(), u.x0p.data_ptr<float>(), u.outr.data_ptr<float>(),
                  out.data_ptr<float>(), static_cast<int>(blocks), stream()),
     stage);
  return {out, u.x0p};
}

// ------------------------------------------------------------------ row_pre
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_pre(
    const at::Tensor& x, const at::Tensor& x0_prev, const at::Tensor& outr, const at::Tensor& coefs,
    const at::Tensor& in_w, const at::Tensor& in_b, const std::optional<at::Tensor>& ln_w0,
    const std::optional<at::Tensor>& ln_b0, const std::optional<at::Tensor>& mods0, const at::Tensor& t_emb,
    const at::Tensor& c_emb, int64_t i, double cfg, double temperature, const std::optional<at::Tensor>& step_noise,
    int64_t seed, int64_t offset, bool clip, bool make_y, at::ScalarType dtype, int64_t blocks) {
  const char* stage = "marengine_stages::row_pre";
  const OnDevice on(stage, x);
  UpdateInputs u = update_inputs(stage, x, x0_prev, outr, coefs, cfg, temperature, step_noise, seed, offset, clip);
  HeadSampleArgs& a = u.a;
  TORCH_CHECK(i >= 0 && i < a.S, stage, ": i must be in [0, S)");
  TORCH_CHECK(in_w.dim() == 2 && in_w.size(1) == a.C, stage, ": in_w must be [W, C]");
  const int64_t W = in_w.size(0), R = a.R, C = a.C;
  TORCH_CHECK(W % kWidthMultiple == 0, stage, ": W must be a multiple of ", kWidthMultiple);
  const at::Tensor in_w_t = arg(stage, in_w.to(at::kFloat), "in_w", at::kFloat, {W, C}, on.dev).t().contiguous();
  const at::Tensor inb = arg(stage, in_b.to(at::kFloat), "in_b", at::kFloat, {W}, on.dev);
  const at::Tensor te = arg(stage, t_emb, "t_emb", at::kFloat, {a.S, W}, on.dev);
  const at::Tensor ce = arg(stage, c_emb, "c_emb", at::kFloat, {R, W}, on.dev);
  a.W = static_cast<int>(W);
  a.in_w_t = in_w_t.data_ptr<float>();
  a.in_b = inb.data_ptr<float>();
  a.t_emb = te.data_ptr<float>();
  a.c_emb = ce.data_ptr<float>();
  at::Tensor lw, lb, mc;
  StageRowPre r{};
  if (mods0.has_value()) {
    TORCH_CHECK(mods0->dim() == 2 && mods0->size(0) == R && mods0->size(1) >= 2 * W && mods0->size(1) % 4 == 0, stage,
                ": mods0 must be [R, ld] with ld >= 2W, ld % 4 == 0");
    mc = arg(stage, *mods0, "mods0", at::kFloat, {R, mods0->size(1)}, on.dev);
    r.mods0 = mc.data_ptr<float>();
    r.mod_ld = static_cast<int>(mc.size(1));
    TORCH_CHECK(ln_w0.has_value() == ln_b0.has_value(), stage, ": give both ln_w0 and ln_b0 or neither");
    if (ln_w0.has_value()) {
      lw = arg(stage, *ln_w0, "ln_w0", at::kFloat, {W}, on.dev);
      lb = arg(stage, *ln_b0, "ln_b0", at::kFloat, {W}, on.dev);
      r.ln_w0 = lw.data_ptr<float>();
      r.ln_b0 = lb.data_ptr<float>();
    }
  }
  at::Tensor xo = u.x.clone();
  at::Tensor h = at::empty({R, W}, x.options());
  at::Tensor abuf = at::empty({mods0.has_value() ? R : 0, W}, x.options().dtype(dtype));
  at::Tensor y = at::empty({make_y ? R : 0, W}, x.options().dtype(dtype));
  r.i = static_cast<int>(i);
  r.x = xo.data_ptr<float>();
  r.x0p = u.x0p.data_ptr<float>();
  r.h = h.data_ptr<float>();
  r.outr = u.outr.data_ptr<float>();
  r.abuf = mods0.has_value() ? abuf.data_ptr() : nullptr;
  r.y = make_y ? y.data_ptr() : nullptr;
  r.blocks = static_cast<int>(blocks);
  ok(stage_row_pre(weight_type(dtype, stage), a, r, stream()), stage);
  return {xo, u.x0p, h, abuf, y};
}

// ------------------------------------------------------------------ grid barrier, plan
std::vector<int64_t> grid_barrier(const at::Tensor& like, int64_t rounds, int64_t blocks) {
  const char* stage = "marengine_stages::grid_barrier";
  const OnDevice on(stage, like);
  TORCH_CHECK(rounds >= 1 && rounds < (int64_t{1} << 24), stage, ": rounds must be in [1, 2^24)");
  int grid = 0;
  ok(stage_grid_barrier_grid(like.device().index(), static_cast<int>(blocks), &grid), stage);
  const size_t bytes = stage_grid_barrier_bytes(grid);
  at::Tensor scratch = at::empty({static_cast<int64_t>(bytes / sizeof(int32_t))}, like.options().dtype(at::kInt));
  ok(stage_grid_barrier(scratch.data_ptr(), grid, static_cast<int>(rounds), stream()), stage);
  const at::Tensor head = scratch.slice(0, 0, 33).cpu();  // synchronizes
  const int32_t* p = head.data_ptr<int32_t>();
  return {static_cast<uint32_t>(p[32]), grid, static_cast<uint32_t>(p[0])};
}

std::vector<int64_t> plan(const at::Tensor& like, int64_t N, int64_t R, int64_t C, int64_t W, int64_t D, int64_t S,
                          at::ScalarType dtype, int64_t path) {
  const char* stage = "marengine_stages::plan";
  check_cuda(stage, like);
  TORCH_CHECK(path >= -1 && path <= 1, stage, ": path must be -1 (auto), 0 (persistent) or 1 (per-step kernels)");
  TORCH_CHECK(D >= 0 && D <= kMaxDepth && N >= 0 && (R == N || R == 2 * N), stage, ": bad sizes");
  HeadSampleArgs a = sized_args(N, R, C, W, S);
  a.wtype = weight_type(dtype, stage);
  a.D = static_cast<int>(D);
  HeadPlan p{};
  ok(plan_head_sample(a, static_cast<HeadPath>(path), like.device().index(), &p), stage);
  return {static_cast<int64_t>(p.path), p.chunk, p.grid, static_cast<int64_t>(p.workspace_bytes)};
}

}  // namespace
}  // namespace cuda
}  // namespace marengine

TORCH_LIBRARY(marengine_stages, m) {
  m.def("gemm(Tensor A, Tensor B, Tensor bias, Tensor? residual, Tensor? gate, int epi, bool small_tiles) -> Tensor");
  m.def(
      "ln_modulate(Tensor h, Tensor? ln_w, Tensor? ln_b, Tensor mods, int shift_col, ScalarType dtype, int blocks=0) "
      "-> Tensor");
  m.def("silu_rows(Tensor t_emb, Tensor c_emb, int i0, int rows, ScalarType dtype, int blocks=0) -> Tensor");
  m.def(
      "row_pre(Tensor x, Tensor x0_prev, Tensor outr, Tensor coefs, Tensor in_w, Tensor in_b, Tensor? ln_w0, "
      "Tensor? ln_b0, Tensor? mods0, Tensor t_emb, Tensor c_emb, int i, float cfg, float temperature, "
      "Tensor? step_noise, int seed, int offset, bool clip, bool make_y, ScalarType dtype, int blocks=0) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "update(Tensor x, Tensor x0_prev, Tensor outr, Tensor coefs, int it, float cfg, float temperature, "
      "Tensor? step_noise, int seed, int offset, bool clip, int blocks=0) -> (Tensor, Tensor)");
  m.def("grid_barrier(Tensor like, int rounds, int blocks=0) -> int[]");
  m.def("plan(Tensor like, int N, int R, int C, int W, int D, int S, ScalarType dtype, int path=-1) -> int[]");
}

TORCH_LIBRARY_IMPL(marengine_stages, CUDA, m) {
  m.impl("gemm", &marengine::cuda::gemm);
  m.impl("ln_modulate", &marengine::cuda::ln_modulate);
  m.impl("silu_rows", &marengine::cuda::silu_rows);
  m.impl("row_pre", &marengine::cuda::row_pre);
  m.impl("update", &marengine::cuda::update);
  m.impl("grid_barrier", &marengine::cuda::grid_barrier);
  m.impl("plan", &marengine::cuda::plan);
}
