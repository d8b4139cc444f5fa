// adaln_block_cpu.cpp -- CPU implementation of marengine::adaln_block, one AdaLN residual
// block of the Diffusion-Loss head (official ResBlock):
//   out = x + gate * (W2 @ SiLU(W1 @ (LN(x) * (1 + scale) + shift) + b1) + b2)
// x [M, W] fp32, mod [M, 3W] = (shift, scale, gate), weights fp32 / bf16 / fp16.
// Rows are packed to 16-row P16 panels (kernels.h); LN + modulate per panel, then the two
// GEMMs with fused epilogues (bias + SiLU + rounding, bias + gate + residual), each split
// over weight-row tiles across threads. head_sample runs the same kernels inside its loop.
// Test: pytest python_tests/test_native_cpu.py -k adaln
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../head_checks.h"
#include "../kernel_limits.h"
#include "head_common.h"
#include "kernels.h"

namespace marengine {
namespace cpu {
namespace {

at::Tensor adaln_block_cpu(const at::Tensor& x, const at::Tensor& mod, const at::Tensor& ln_w, const at::Tensor& ln_b,
                           const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  const checks::AdalnShapes sh = checks::check_adaln_block(x, mod, ln_w, ln_b, w1, b1, w2, b2);
  TORCH_CHECK(x.device().is_cpu(), "marengine::adaln_block: the CPU kernel got tensors on ", x.device());
  const int64_t M = sh.M, W = sh.W, L = kLanes, P = (M + L - 1) / L;
  if (M == 0) return at::empty({0, W}, x.options());
  const Kernels& K = kernels();
  const WType wt = wtype_of(sh.wdtype);
  F32Params f32;
  const float* lw = f32.get(ln_w);
  const float* lb = f32.get(ln_b);
  const float* bias1 = f32.get(b1);
  const float* bias2 = f32.get(b2);

  at::Tensor h = pack_rows(x);     // [P, W, 16], becomes the output
  at::Tensor mp = pack_rows(mod);  // [P, 3W, 16]
  at::Tensor a = at::empty({P, W, L}, at::kFloat);
  at::Tensor u = at::empty({P, W, L}, at::kFloat);
  float *hp = h.data_ptr<float>(), *mpp = mp.data_ptr<float>(), *ap = a.data_ptr<float>(), *up = u.data_ptr<float>();

  at::parallel_for(0, P, grain_for(W * L * 4), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* m = mpp + p * 3 * W * L;
      K.ln_modulate(hp + p * W * L, W, m, m + W * L, lw, lb, kLayerNormEps, wt, ap + p * W * L);
    }
  });
  EpiArgs e1;
  e1.kind = Epi::SiluRound;
  e1.bias = bias1;
  e1.out = up;
  e1.out_pstride = W * L;
  e1.round = wt;
  gemm_parallel(K, ap, W * L, P, weight_of(w1), e1);
  EpiArgs e2;
  e2.kind = Epi::GateResidual;
  e2.bias = bias2;
  e2.out = hp;
  e2.out_pstride = W * L;
  e2.gate = mpp + 2 * W * L;
  e2.gate_pstride = 3 * W * L;
  gemm_parallel(K, up, W * L, P, weight_of(w2), e2);
  return unpack_rows(h, M);
}

}  // namespace

TORCH_LIBRARY_IMPL(marengine, CPU, m) {
  m.impl("adaln_block", &adaln_block_cpu);
}

}  // namespace cpu
}  // namespace marengine
