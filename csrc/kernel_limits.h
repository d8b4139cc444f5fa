// kernel_limits.h -- the constants the CPU and CUDA kernels share, written once (plain C++, no
// torch: the .cu files include it). `marengine._C.limits()` (csrc/ops.cpp) reports them, and
// marengine/ops/extension.py reads them from there instead of restating them in Python.
//
//   kLayerNormEps   the LayerNorm eps of the head's res blocks (LN of the AdaLN blocks); equal to
//                   marengine.config.LAYERNORM_EPS (python_tests/test_settings.py checks it)
//   cuda::k*        what the CUDA kernels take and how they pick a code path
//                   (csrc/cuda/ops_cuda.cpp checks the first three on every call)
// Test: pytest python_tests/test_settings.py -k limits
#pragma once

#include <cstddef>

namespace marengine {

constexpr float kLayerNormEps = 1e-6f;

namespace cuda {

constexpr int kMaxDepth = 32;      // res blocks per head (official heads: 3 .. 12)
constexpr int kMaxChannels = 256;  // token channels C (official: 16)
constexpr int kWidthMultiple = 8;  // width % 8 == 0: 16-byte rows for cp.async
// head_sample runs the persistent kernel when the network's row count
// (R = N, or 2N with CFG) is at most this, else one fused kernel per stage and step.
// Below it launch latency dominates (a step is ~3D+2 small GEMM/row phases); above
// it the per-step kernels each fill the GPU. MARENGINE_HEAD_PATH=persistent|kernels
// (marengine/settings.py, passed to the glue) overrides the choice.
constexpr int kPersistentMaxRows = 256;
// GEMMs over at most this many rows use 32x32 tiles (else 64x64): the per-step path
// and adaln_block (the persistent kernel always uses 32x32).
constexpr int kSmallTileMaxRows = 512;
// The persistent kernel computes the AdaLN modulations of `chunk` steps at once,
// chunk = ceil(kModRowsTarget / R) (clamped to [1, S] and to kModBudgetBytes of
// buffers): one big GEMM per chunk, weights streamed once per chunk.
constexpr int kModRowsTarget = 256;
constexpr size_t kModBudgetBytes = size_t{256} << 20;  // bound on the chunk's y + mods buffers

}  // namespace cuda
}  // namespace marengine
