// head_checks.h -- argument checks shared by the CPU and CUDA implementations of
// marengine::adaln_block and marengine::head_sample (schemas in csrc/ops.cpp).
//
// Every entry point calls one of the check_* functions first: a bad call raises a
// c10::Error (RuntimeError in Python) whose message names the op, the argument, what
// was expected and what was given, never a crash inside a kernel.
// Test: pytest python_tests/test_native_cpu.py -k bad
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace marengine {
namespace checks {

// Columns of head_sample's per-step table (marengine/diffusion/samplers.py):
// a, b, c1, c2, c3, lp, lb, nw.
constexpr int64_t kCoefColumns = 8;

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline void check_tensor(const char* op, const at::Tensor& t, const std::string& name, const at::Device& dev,
                         std::vector<int64_t> shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined (None)");
  TORCH_CHECK(t.device() == dev, op, ": all tensors must be on one device; x is on ", dev, " but ", name, " is on ",
              t.device(), " (move it with .to(", dev, "))");
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", shape_str(shape), ", got ",
              shape_str(t.sizes()));
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
}

inline void check_dtype(const char* op, const at::Tensor& t, const std::string& name, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ", t.scalar_type());
}

inline bool is_weight_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}

// A Linear's weight [out, in] and bias [out], both of the weight dtype `wdt`.
inline void check_linear(const char* op, const at::Tensor& w, const at::Tensor& b, const std::string& name,
                         const at::Device& dev, int64_t out, int64_t in, at::ScalarType wdt) {
  check_tensor(op, w, name + " weight", dev, {out, in});
  check_tensor(op, b, name + " bias", dev, {out});
  TORCH_CHECK(w.scalar_type() == wdt, op, ": every GEMM weight must have one dtype (", wdt, " here), but ", name,
              " weight is ", w.scalar_type());
  TORCH_CHECK(b.scalar_type() == wdt, op, ": ", name, " bias must have the weights' dtype ", wdt, ", got ",
              b.scalar_type());
}

// LayerNorm affine parameters: [W], fp32 or the weights' dtype.
inline void check_ln(const char* op, const at::Tensor& t, const std::string& name, const at::Device& dev, int64_t W,
                     at::ScalarType wdt) {
  check_tensor(op, t, name, dev, {W});
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == wdt, op, ": ", name, " must be float32 or ", wdt,
              ", got ", t.scalar_type());
}

struct AdalnShapes {
  int64_t M, W;
  at::ScalarType wdtype;
};

inline AdalnShapes check_adaln_block(const at::Tensor& x, const at::Tensor& mod, const at::Tensor& ln_w,
                                     const at::Tensor& ln_b, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2) {
  const char* op = "marengine::adaln_block";
  TORCH_CHECK(x.defined() && x.dim() == 2, op, ": x must be [M, W], got ",
              x.defined() ? shape_str(x.sizes()) : std::string("None"));
  const int64_t M = x.size(0), W = x.size(1);
  TORCH_CHECK(W > 0, op, ": width W must be positive");
  const at::Device dev = x.device();
  check_tensor(op, x, "x", dev, {M, W});
  check_dtype(op, x, "x", at::kFloat);
  check_tensor(op, mod, "mod (shift, scale, gate)", dev, {M, 3 * W});
  check_dtype(op, mod, "mod", at::kFloat);
  TORCH_CHECK(w1.defined() && is_weight_dtype(w1.scalar_type()), op,
              ": weights must be float32, bfloat16 or float16, got ",
              w1.defined() ? toString(w1.scalar_type()) : "None");
  const at::ScalarType wdt = w1.scalar_type();
  check_ln(op, ln_w, "ln_w", dev, W, wdt);
  check_ln(op, ln_b, "ln_b", dev, W, wdt);
  check_linear(op, w1, b1, "w1", dev, W, W, wdt);
  check_linear(op, w2, b2, "w2", dev, W, W, wdt);
  return {M, W, wdt};
}

struct HeadShapes {
  int64_t N, R, C, W, D, S;  // S: rows of the coefficient table (t_emb, coefs)
  int64_t iters;             // iterations of the call: S, or max_steps with a row_table
  bool cfg_on;
  at::ScalarType wdtype;
};

// Per-row step counts (marengine/diffusion/schedule.py TableStack): row_table [N, 2] int32 holds,
// per chain row, the first row of its sampler table in the stacked coefs / t_emb [S, ...] and its
// number of steps; the call runs max_steps iterations and row n takes part in the first
// row_table[n][1] of them. Shape, dtype and device are checked here (both devices); the values by
// check_row_values where the host can read them (CPU).
inline void check_row_table(const char* op, const c10::optional<at::Tensor>& row_table, const at::Device& dev,
                            int64_t N, int64_t S, int64_t max_steps) {
  if (!row_table.has_value() || !row_table->defined()) {
    TORCH_CHECK(max_steps == 0, op, ": max_steps (", max_steps, ") is only used with a row_table; pass 0");
    return;
  }
  check_tensor(op, *row_table, "row_table (per row: first table row, steps)", dev, {N, 2});
  check_dtype(op, *row_table, "row_table", at::kInt);
  TORCH_CHECK(max_steps >= 1 && max_steps <= S, op, ": max_steps must be in [1, ", S,
              "] (the stacked table's rows) with a row_table, got ", max_steps);
}

// Values of a host row_table: every row's steps in [1, max_steps] and its table inside [0, S).
inline void check_row_values(const char* op, const int32_t* rt, int64_t N, int64_t S, int64_t max_steps) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t first = rt[2 * n], steps = rt[2 * n + 1];
    TORCH_CHECK(steps >= 1 && steps <= max_steps, op, ": row_table[", n, "] has ", steps,
                " steps; each row needs 1 to max_steps = ", max_steps);
    TORCH_CHECK(first >= 0 && first + steps <= S, op, ": row_table[", n, "] = (", first, ", ", steps,
                ") reaches past the stacked table's ", S, " rows");
  }
}

inline HeadShapes check_head_sample(const at::Tensor& x_T, const at::Tensor& c_emb, const at::Tensor& t_emb,
                                    const at::Tensor& in_w, const at::Tensor& in_b, at::TensorList ln_w,
                                    at::TensorList ln_b, at::TensorList mod_w, at::TensorList mod_b, at::TensorList w1,
                                    at::TensorList b1, at::TensorList w2, at::TensorList b2, const at::Tensor& fmod_w,
                                    const at::Tensor& fmod_b, const at::Tensor& out_w, const at::Tensor& out_b,
                                    const at::Tensor& coefs, double cfg, double temperature,
                                    const c10::optional<at::Tensor>& step_noise, int64_t offset,
                                    const c10::optional<at::Tensor>& row_table = c10::nullopt, int64_t max_steps = 0) {
  const char* op = "marengine::head_sample";
  TORCH_CHECK(x_T.defined() && x_T.dim() == 2, op, ": x_T must be [N, C], got ",
              x_T.defined() ? shape_str(x_T.sizes()) : std::string("None"));
  const int64_t N = x_T.size(0), C = x_T.size(1);
  TORCH_CHECK(C > 0, op, ": x_T must have at least one channel");
  const at::Device dev = x_T.device();
  check_tensor(op, x_T, "x_T", dev, {N, C});
  check_dtype(op, x_T, "x_T", at::kFloat);
  // the head width W comes from the weights (input_proj is [W, C]), so that a wrong c_emb or
  // t_emb is named as such instead of being taken as the reference the others must match
  TORCH_CHECK(in_w.defined() && in_w.dim() == 2, op, ": in_w (input_proj weight) must be [W, C], got ",
              in_w.defined() ? shape_str(in_w.sizes()) : std::string("None"));
  const int64_t W = in_w.size(0);
  TORCH_CHECK(W > 0, op, ": the head width W (rows of input_proj) must be positive");
  TORCH_CHECK(c_emb.defined() && c_emb.dim() == 2, op, ": c_emb must be [R, W] (R = N, or 2N with CFG), got ",
              c_emb.defined() ? shape_str(c_emb.sizes()) : std::string("None"));
  const int64_t R = c_emb.size(0);
  TORCH_CHECK(R == N || R == 2 * N, op, ": c_emb must have N (=", N, ") rows, or 2N (=", 2 * N,
              ") rows with CFG (conditional first, then unconditional); got ", R);
  TORCH_CHECK(c_emb.size(1) == W, op, ": c_emb must have the head width W = ", W, " columns (cond_embed(z)), got ",
              c_emb.size(1));
  check_tensor(op, c_emb, "c_emb", dev, {R, W});
  check_dtype(op, c_emb, "c_emb", at::kFloat);
  TORCH_CHECK(t_emb.defined() && t_emb.dim() == 2, op, ": t_emb must be [S, W], got ",
              t_emb.defined() ? shape_str(t_emb.sizes()) : std::string("None"));
  const int64_t S = t_emb.size(0);
  TORCH_CHECK(S >= 1, op, ": need at least one diffusion step (t_emb has 0 rows)");
  TORCH_CHECK(t_emb.size(1) == W, op, ": t_emb must have the head width W = ", W,
              " columns (time_embed of the timesteps), got ", t_emb.size(1));
  check_tensor(op, t_emb, "t_emb", dev, {S, W});
  check_dtype(op, t_emb, "t_emb", at::kFloat);
  check_tensor(op, coefs, "coefs (DiffusionTables.sampler_table(...): a, b, c1, c2, c3, lp, lb, nw)", dev,
               {S, kCoefColumns});
  check_dtype(op, coefs, "coefs", at::kFloat);

  const int64_t D = static_cast<int64_t>(ln_w.size());
  TORCH_CHECK(ln_b.size() == ln_w.size() && mod_w.size() == ln_w.size() && mod_b.size() == ln_w.size() &&
                  w1.size() == ln_w.size() && b1.size() == ln_w.size() && w2.size() == ln_w.size() &&
                  b2.size() == ln_w.size(),
              op, ": the per-block lists must have one entry per block; got ln_w ", ln_w.size(), ", ln_b ", ln_b.size(),
              ", mod_w ", mod_w.size(), ", mod_b ", mod_b.size(), ", w1 ", w1.size(), ", b1 ", b1.size(), ", w2 ",
              w2.size(), ", b2 ", b2.size());
  TORCH_CHECK(in_w.defined() && is_weight_dtype(in_w.scalar_type()), op,
              ": weights must be float32, bfloat16 or float16, got ",
              in_w.defined() ? toString(in_w.scalar_type()) : "None");
  const at::ScalarType wdt = in_w.scalar_type();
  check_linear(op, in_w, in_b, "input_proj", dev, W, C, wdt);
  for (int64_t d = 0; d < D; ++d) {
    const std::string blk = "res_blocks[" + std::to_string(d) + "].";
    check_ln(op, ln_w[d], blk + "in_ln weight (ln_w)", dev, W, wdt);
    check_ln(op, ln_b[d], blk + "in_ln bias (ln_b)", dev, W, wdt);
    check_linear(op, mod_w[d], mod_b[d], blk + "adaLN_modulation (mod_w/mod_b)", dev, 3 * W, W, wdt);
    check_linear(op, w1[d], b1[d], blk + "mlp[0] (w1/b1)", dev, W, W, wdt);
    check_linear(op, w2[d], b2[d], blk + "mlp[2] (w2/b2)", dev, W, W, wdt);
  }
  check_linear(op, fmod_w, fmod_b, "final_layer.adaLN_modulation (fmod_w/fmod_b)", dev, 2 * W, W, wdt);
  check_linear(op, out_w, out_b, "final_layer.linear (out_w/out_b)", dev, 2 * C, W, wdt);
  check_row_table(op, row_table, dev, N, S, max_steps);
  const int64_t iters = max_steps > 0 ? max_steps : S;
  if (step_noise.has_value() && step_noise->defined()) {
    check_tensor(op, *step_noise, "step_noise", dev, {iters, N, C});
    check_dtype(op, *step_noise, "step_noise", at::kFloat);
  }
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0, op, ": temperature must be finite and >= 0, got ",
              temperature);
  TORCH_CHECK(std::isfinite(cfg), op, ": cfg must be finite, got ", cfg);
  TORCH_CHECK(offset >= 0, op, ": offset must be >= 0, got ", offset);
  return {N, R, C, W, D, S, iters, R == 2 * N && N > 0, wdt};
}

}  // namespace checks
}  // namespace marengine

// The parameters of marengine::head_sample's implementations, as the schema (csrc/ops.cpp) lists
// them, and the checks every implementation starts with: written once for the CPU
// (cpu/head_sample_cpu.cpp) and the CUDA (cuda/ops_cuda.cpp) entry points.
#define MARENGINE_HEAD_SAMPLE_PARAMS                                                                                   \
  const at::Tensor &x_T, const at::Tensor &c_emb, const at::Tensor &t_emb, const at::Tensor &in_w,                     \
      const at::Tensor &in_b, at::TensorList ln_w, at::TensorList ln_b, at::TensorList mod_w, at::TensorList mod_b,    \
      at::TensorList w1, at::TensorList b1, at::TensorList w2, at::TensorList b2, const at::Tensor &fmod_w,            \
      const at::Tensor &fmod_b, const at::Tensor &out_w, const at::Tensor &out_b, const at::Tensor &coefs, double cfg, \
      double temperature, const std::optional<at::Tensor>&step_noise, int64_t seed, int64_t offset,                    \
      bool clip_denoised, const std::optional<at::Tensor>&row_table, int64_t max_steps
#define MARENGINE_CHECK_HEAD_SAMPLE()                                                                               \
  ::marengine::checks::check_head_sample(x_T, c_emb, t_emb, in_w, in_b, ln_w, ln_b, mod_w, mod_b, w1, b1, w2, b2,   \
                                         fmod_w, fmod_b, out_w, out_b, coefs, cfg, temperature, step_noise, offset, \
                                         row_table, max_steps)
