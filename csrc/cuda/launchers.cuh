// launchers.cuh -- the torch-free entry points of the marengine CUDA kernels.
//
// Plain C++ (only <cuda_runtime_api.h>): raw device pointers, sizes and a
// cudaStream_t. The torch glue (ops_cuda.cpp) checks the tensors, converts the
// small fp32 vectors, allocates the workspace through torch's caching allocator and
// calls these. All launches are asynchronous on `stream`; nothing here synchronizes
// the host, so a call can be captured into a CUDA Graph (the persistent path uses a
// cooperative launch, which graphs support on CUDA >= 11; the per-step path is
// plain launches).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../kernel_limits.h"

namespace marengine {
namespace cuda {

enum class WeightType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// kMaxDepth, kMaxChannels, kWidthMultiple, kPersistentMaxRows, kSmallTileMaxRows and
// kLayerNormEps: csrc/kernel_limits.h (shared with the CPU kernels, reported by _C.limits()).
// Columns of head_sample's per-step table (csrc/head_checks.h kCoefColumns, the glue
// static_asserts they agree): a, b, c1, c2, c3, lp, lb, nw (marengine/diffusion/samplers.py).
constexpr int kCoefColumns = 8;

// The persistent kernel runs this many blocks per SM at most (fewer blocks make
// the grid barrier cheaper; 2 x 4 warps keep the cp.async pipeline busy).
constexpr int kPersistentBlocksPerSM = 2;
// kModRowsTarget, kModBudgetBytes (the persistent kernel's modulation chunk): csrc/kernel_limits.h.

enum class HeadPath : int { kAuto = -1, kPersistent = 0, kPerStep = 1 };

// ------------------------------------------------------------------ adaln_block
struct AdalnBlockArgs {
  WeightType wtype;
  int M, W;
  const float* x;     // [M, W]
  const float* mod;   // [M, 3W] (shift, scale, gate)
  const float* ln_w;  // [W] fp32
  const float* ln_b;  // [W] fp32
  const void* w1;     // [W, W] wtype
  const float* b1;    // [W] fp32
  const void* w2;     // [W, W] wtype
  const float* b2;    // [W] fp32
  float* out;         // [M, W]
  void* workspace;    // adaln_block_workspace_bytes(M, W, wtype), 256-byte aligned
};

size_t adaln_block_workspace_bytes(int M, int W, WeightType wtype);
cudaError_t launch_adaln_block(const AdalnBlockArgs& a, cudaStream_t stream);

// ------------------------------------------------------------------ head_sample
struct HeadSampleArgs {
  WeightType wtype;
  int N;           // chain rows
  int R;           // network rows: N (no guidance) or 2N (guidance: rows [:N] cond, [N:] uncond)
  int C, W, D, S;  // S: iterations (every row's steps without a row_table; the most with one)
  float cfg, temperature;
  const float* x_T;              // [N, C]
  const float* c_emb;            // [R, W]
  const float* t_emb;            // [S, W]   (row s = embedding of step s)
  const float* in_w_t;           // [C, W]   input_proj weight, transposed, fp32
  const float* in_b;             // [W]
  const float* ln_w;             // [D, W]   fp32
  const float* ln_b;             // [D, W]
  const void* mod_w[kMaxDepth];  // each [3W, W] wtype
  const float* mod_b;            // [D, 3W]
  const void* w1[kMaxDepth];     // each [W, W]
  const float* b1;               // [D, W]
  const void* w2[kMaxDepth];     // each [W, W]
  const float* b2;               // [D, W]
  const void* fmod_w;            // [2W, W]
  const float* fmod_b;           // [2W]
  const void* out_w;             // [2C, W]
  const float* out_b;            // [2C]
  const float* coefs;            // [S, kCoefColumns]: a, b, c1, c2, c3, lp, lb, nw per step
  const float* step_noise;       // [S, N, C] or nullptr (then Philox(seed, offset))
  // Per-row steps: [N, 2] int32 (row n: first row of its table in coefs / t_emb, its steps; row n
  // runs iterations 0 .. steps - 1 at table rows first + steps - 1 - i, then keeps its value), or
  // nullptr (every row: first 0, S steps). table_rows: the rows of coefs / t_emb (values are
  // clamped into them on the device; the host checks them before the launch).
  const int* row_table;
  int table_rows;
  uint64_t seed, offset;
  bool clip_denoised;  // clamp x0 to [-1, 1] before the update
  float* out;          // [N, C]
  void* workspace;     // HeadPlan::workspace_bytes, 256-byte aligned (barrier word, chain state x and
                       // the previous x0, activations, modulations: head_impl.cuh HeadWs)
};

struct HeadPlan {
  HeadPath path;  // resolved: kPersistent or kPerStep
  int chunk;      // steps per modulation GEMM (persistent path)
  int grid;       // persistent grid size (blocks)
  size_t workspace_bytes;
};

// Picks the path and sizes for `a` on `device` (reads device properties and the
// persistent kernel's occupancy; host-only, no synchronization).
cudaError_t plan_head_sample(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan);
// `a.workspace` must hold plan.workspace_bytes; its first 256 bytes (the grid
// barrier word) are zeroed here with cudaMemsetAsync.
cudaError_t launch_head_sample(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t stream);

}  // namespace cuda
}  // namespace marengine
