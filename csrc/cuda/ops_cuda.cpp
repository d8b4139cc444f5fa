// ops_cuda.cpp -- CUDA implementations of the marengine operators (schemas: csrc/ops.cpp).
//
//   marengine::adaln_block  one AdaLN residual block (LN + modulate prologue, fused
//                           bias+SiLU and bias+gate+residual epilogues)
//   marengine::head_sample  the whole reverse-diffusion loop of the Diffusion-Loss head, for any
//                           sampler of the coefficient table coefs [S, 8] (DDPM, DDIM, DPM-Solver++),
//                           clip_denoised; the previous x0 (multistep samplers) lives in the workspace
//
// Each entry point checks its arguments first: the checks shared with the CPU kernels
// (csrc/head_checks.h: device, dtype, shape, contiguity, list lengths), then the CUDA
// limits (width % 8, channels, depth): a bad call raises, it never crashes. It converts the small
// vectors (biases, LayerNorm parameters, input projection) to fp32, allocates one
// workspace through torch's caching allocator and calls the torch-free launchers
// (launchers.cuh) on the current stream. No host synchronization.
//
// MARENGINE_HEAD_PATH=auto|persistent|kernels picks head_sample's path (default auto:
// persistent kernel for at most kPersistentMaxRows network rows).
// Test: pytest python_tests/test_native_cuda.py (CUDA GPU).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../head_checks.h"
#include "../settings.h"
#include "launchers.cuh"
#include "torch_glue.h"

namespace marengine {
namespace cuda {
namespace {

static_assert(kCoefColumns == checks::kCoefColumns, "launchers.cuh and head_checks.h disagree on the coefs columns");

at::Tensor as_f32(const at::Tensor& t) {
  return ready(t.to(at::kFloat));
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "marengine: ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes) + 256}, like.options().dtype(at::kByte));
}

void* aligned256(const at::Tensor& ws) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ws.data_ptr());
  return reinterpret_cast<void*>((p + 255) & ~static_cast<uintptr_t>(255));
}

// fp32 [n, len] stack of a list of vectors (n may be 0).
at::Tensor stack_f32(at::TensorList list, int64_t len, const at::Tensor& like) {
  if (list.empty()) return at::empty({0, len}, like.options().dtype(at::kFloat));
  std::vector<at::Tensor> v;
  v.reserve(list.size());
  for (const auto& t : list) v.push_back(t.to(at::kFloat));
  return ready(at::stack(v));
}

HeadPath path_from_env() {
  const char* e = knob("MARENGINE_HEAD_PATH");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return HeadPath::kAuto;
  if (std::strcmp(e, "persistent") == 0) return HeadPath::kPersistent;
  if (std::strcmp(e, "kernels") == 0) return HeadPath::kPerStep;
  TORCH_CHECK(false, "marengine: MARENGINE_HEAD_PATH must be auto, persistent or kernels, got '", e, "'");
  return HeadPath::kAuto;
}

// ------------------------------------------------------------------ adaln_block
at::Tensor adaln_block_cuda(const at::Tensor& x, const at::Tensor& mod, const at::Tensor& ln_w, const at::Tensor& ln_b,
                            const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  const char* op = "marengine::adaln_block (CUDA)";
  const checks::AdalnShapes sh = checks::check_adaln_block(x, mod, ln_w, ln_b, w1, b1, w2, b2);
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(sh.W % kWidthMultiple == 0, op, ": width must be a multiple of ", kWidthMultiple,
              " on CUDA (16-byte rows), got ", sh.W);
  TORCH_CHECK(sh.M * 3 * sh.W < (int64_t{1} << 31), op, ": x too large for the CUDA kernels (", sh.M, " x ", sh.W, ")");
  const WeightType wt = weight_type(sh.wdtype, op);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({sh.M, sh.W}, x.options());
  if (sh.M == 0) return out;
  const at::Tensor xc = ready(x), mc = ready(mod), w1c = ready(w1), w2c = ready(w2);
  const at::Tensor lnw = as_f32(ln_w), lnb = as_f32(ln_b), b1f = as_f32(b1), b2f = as_f32(b2);
  const int M = static_cast<int>(sh.M), W = static_cast<int>(sh.W);
  const at::Tensor ws = workspace(adaln_block_workspace_bytes(M, W, wt), x);

  AdalnBlockArgs a{};
  a.wtype = wt;
  a.M = M;
  a.W = W;
  a.x = xc.data_ptr<float>();
  a.mod = mc.data_ptr<float>();
  a.ln_w = lnw.data_ptr<float>();
  a.ln_b = lnb.data_ptr<float>();
  a.w1 = w1c.data_ptr();
  a.b1 = b1f.data_ptr<float>();
  a.w2 = w2c.data_ptr();
  a.b2 = b2f.data_ptr<float>();
  a.out = out.data_ptr<float>();
  a.workspace = aligned256(ws);
  check_launch(launch_adaln_block(a, at::cuda::getCurrentCUDAStream().stream()), "adaln_block launch");
  return out;
}

// ------------------------------------------------------------------ head_sample
at::Tensor head_sample_cuda(MARENGINE_HEAD_SAMPLE_PARAMS) {
  const char* op = "marengine::head_sample (CUDA)";
  const checks::HeadShapes sh = MARENGINE_CHECK_HEAD_SAMPLE();
  TORCH_CHECK(x_T.is_cuda(), op, ": x_T must be a CUDA tensor, got ", x_T.device());
  TORCH_CHECK(sh.W % kWidthMultiple == 0, op, ": width must be a multiple of ", kWidthMultiple,
              " on CUDA (16-byte rows), got ", sh.W);
  TORCH_CHECK(sh.C <= kMaxChannels, op, ": at most ", kMaxChannels, " channels on CUDA, got ", sh.C);
  TORCH_CHECK(sh.D <= kMaxDepth, op, ": at most ", kMaxDepth, " res blocks on CUDA, got ", sh.D);
  TORCH_CHECK(sh.R * (3 * sh.D + 2) * sh.W < (int64_t{1} << 31) && sh.S < (int64_t{1} << 30), op,
              ": problem too large for the CUDA kernels (R=", sh.R, ", W=", sh.W, ", depth ", sh.D, ")");
  const WeightType wt = weight_type(sh.wdtype, op);
  const int64_t N = sh.N, C = sh.C, D = sh.D;

  const c10::cuda::CUDAGuard guard(x_T.device());
  at::Tensor out = at::empty({N, C}, x_T.options());
  if (N == 0) return out;

  // fp32: activations and every small vector; weight dtype: the big matrices
  const at::Tensor xT = ready(x_T), ce = ready(c_emb), te = ready(t_emb), co = ready(coefs);
  const at::Tensor in_w_t = ready(in_w.to(at::kFloat).t());  // [C, W]
  const at::Tensor in_bf = as_f32(in_b);
  const at::Tensor lnw = stack_f32(ln_w, sh.W, x_T), lnb = stack_f32(ln_b, sh.W, x_T);
  const at::Tensor modb = stack_f32(mod_b, 3 * sh.W, x_T);
  const at::Tensor b1f = stack_f32(b1, sh.W, x_T), b2f = stack_f32(b2, sh.W, x_T);
  const at::Tensor fmodb = as_f32(fmod_b), outb = as_f32(out_b);
  const at::Tensor fmodw = ready(fmod_w), outw = ready(out_w);
  const bool has_noise = step_noise.has_value() && step_noise->defined();
  const at::Tensor noise = has_noise ? ready(*step_noise) : at::Tensor();
  std::vector<at::Tensor> keep;  // aligned views of the per-block weights (copies only if misaligned)
  keep.reserve(3 * D);

  HeadSampleArgs a{};
  a.wtype = wt;
  a.N = static_cast<int>(N);
  a.R = static_cast<int>(sh.R);
  a.C = static_cast<int>(C);
  a.W = static_cast<int>(sh.W);
  a.D = static_cast<int>(D);
  a.S = static_cast<int>(sh.iters);  // the iterations; the table has sh.S rows
  const bool per_row = row_table.has_value() && row_table->defined();
  a.row_table = per_row ? row_table->data_ptr<int32_t>() : nullptr;  // values: checked by the caller
  a.table_rows = static_cast<int>(sh.S);
  a.cfg = static_cast<float>(cfg);
  a.temperature = static_cast<float>(temperature);
  a.x_T = xT.data_ptr<float>();
  a.c_emb = ce.data_ptr<float>();
  a.t_emb = te.data_ptr<float>();
  a.in_w_t = in_w_t.data_ptr<float>();
  a.in_b = in_bf.data_ptr<float>();
  a.ln_w = lnw.data_ptr<float>();
  a.ln_b = lnb.data_ptr<float>();
  a.mod_b = modb.data_ptr<float>();
  a.b1 = b1f.data_ptr<float>();
  a.b2 = b2f.data_ptr<float>();
  for (int64_t d = 0; d < D; ++d) {
    keep.push_back(ready(mod_w[d]));
    a.mod_w[d] = keep.back().data_ptr();
    keep.push_back(ready(w1[d]));
    a.w1[d] = keep.back().data_ptr();
    keep.push_back(ready(w2[d]));
    a.w2[d] = keep.back().data_ptr();
  }
  a.fmod_w = fmodw.data_ptr();
  a.fmod_b = fmodb.data_ptr<float>();
  a.out_w = outw.data_ptr();
  a.out_b = outb.data_ptr<float>();
  a.coefs = co.data_ptr<float>();
  a.step_noise = has_noise ? noise.data_ptr<float>() : nullptr;
  a.seed = static_cast<uint64_t>(seed);
  a.offset = static_cast<uint64_t>(offset);
  a.clip_denoised = clip_denoised;
  a.out = out.data_ptr<float>();

  HeadPlan plan{};
  check_launch(plan_head_sample(a, path_from_env(), x_T.device().index(), &plan), "head_sample planning");
  const at::Tensor ws = workspace(plan.workspace_bytes, x_T);
  a.workspace = aligned256(ws);
  check_launch(launch_head_sample(a, plan, at::cuda::getCurrentCUDAStream().stream()), "head_sample launch");
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace marengine

TORCH_LIBRARY_IMPL(marengine, CUDA, m) {
  m.impl("adaln_block", &marengine::cuda::adaln_block_cuda);
  m.impl("head_sample", &marengine::cuda::head_sample_cuda);
}
