// stages.cuh -- test-only, torch-free entry points that run ONE device stage of the head
// kernels on given buffers, so that each stage can be checked alone against a CPU
// reference (llm.c dev/cuda style) before the whole paths are: a failure names the stage.
//
//   stage_gemm         one GEMM job through gemm_kernel (gemm_tile.cuh): mma.sync (bf16/fp16)
//                      or exact FFMA (fp32), 32x32 or 64x64 tiles, any epilogue
//   stage_ln_modulate  ln_modulate_rows (Welford LayerNorm [+ affine] + AdaLN modulate -> T)
//   stage_silu_rows    y_rows: SiLU(t_emb[step] + c_emb[row]) for a chunk of steps -> T
//   stage_row_pre      row_pre: the sampler update, the input projection, LN_0 + modulate and
//                      SiLU(t_emb + c_emb) for every chain row
//   stage_update       the sampler update alone (update_rows), one thread per element
//   stage_grid_barrier many rounds of grid_barrier (common.cuh) in a cooperative launch: every
//                      thread writes a word, crosses the barrier, reads a word of another
//                      block; counts the words that were not yet visible
// `blocks` (> 0) caps the grid, so that the grid-stride loops the persistent kernel relies
// on (fewer warps than rows) are exercised too; 0 picks one warp per row / thread per item.
//
// Not part of the public operators: the glue (stages_cuda.cpp) registers them as
// torch.ops.marengine_stages.* in CUDA builds only.
// Test: pytest python_tests/test_cuda_stages.py (CUDA GPU; on CPU only the references run).
#pragma once

#include <cuda_runtime_api.h>

#include "launchers.cuh"

namespace marengine {
namespace cuda {

struct StageGemm {
  const void* A;      // [M, K] weight type (fp32 for fp32 weights)
  const void* B;      // [N, K] weight type
  const float* bias;  // [N]
  void* out;          // [M, N]: weight type (epi 0, SiLU) or fp32 (epi 1 gate+residual in place, epi 2 store)
  const float* gate;  // [M, ldg] (epi 1)
  int M, N, K, ldg;
  int epi;           // 0 SiLU -> T, 1 out += gate * (.), 2 fp32 store (gemm_tile.cuh EpiKind)
  bool small_tiles;  // 32x32 (else 64x64)
};

struct StageLn {
  const float* h;      // [rows, W]
  const float* ln_w;   // [W] or nullptr (no affine: the final layer)
  const float* ln_b;   // [W] or nullptr
  const float* shift;  // row r: shift at shift + r * mod_ld, scale at shift + r * mod_ld + W
  int rows, W, mod_ld;
  void* out;  // [rows, W] weight type
  int blocks;
};

struct StageRowPre {
  int i;  // iteration (0: no update; else the update of iteration i - 1 first)
  float* x;
  float* x0p;          // [N, C] in/out
  float* h;            // [R, W] out
  const float* outr;   // [R, 2C] (eps, v) of iteration i - 1
  const float* ln_w0;  // [W] or nullptr
  const float* ln_b0;  // [W] or nullptr
  const float* mods0;  // [R, mod_ld] or nullptr (no LN_0 + modulate)
  int mod_ld;
  void* abuf;  // [R, W] weight type (with mods0)
  void* y;     // [R, W] weight type or nullptr
  int blocks;
};

cudaError_t stage_gemm(WeightType wt, const StageGemm& g, cudaStream_t stream);
cudaError_t stage_ln_modulate(WeightType wt, const StageLn& l, cudaStream_t stream);
// y [rows, W] for iterations i0 .. (a.R rows per step); uses a.W, a.R, a.S, a.t_emb, a.c_emb
cudaError_t stage_silu_rows(WeightType wt, const HeadSampleArgs& a, int i0, int rows, void* y, int blocks,
                            cudaStream_t stream);
cudaError_t stage_row_pre(WeightType wt, const HeadSampleArgs& a, const StageRowPre& r, cudaStream_t stream);
// out = update of iteration `it` from x (x may alias out); x0p in/out
cudaError_t stage_update(const HeadSampleArgs& a, int it, const float* x, float* x0p, const float* outr, float* out,
                         int blocks, cudaStream_t stream);

// Scratch bytes stage_grid_barrier needs for a grid of `grid` blocks.
size_t stage_grid_barrier_bytes(int grid);
// The grid stage_grid_barrier launches on `device` for a requested `blocks`: > 0 that many
// (checked against co-residency), 0 the persistent head kernel's size (SMs x
// min(occupancy, kPersistentBlocksPerSM)), -1 every block that can be co-resident.
cudaError_t stage_grid_barrier_grid(int device, int blocks, int* grid);
// `rounds` x 2 barriers; scratch (zeroed here) holds the barrier word, an error count and one
// word per thread. Afterwards scratch[0] (the word) must be 0 again and scratch[1] (errors) 0.
cudaError_t stage_grid_barrier(void* scratch, int grid, int rounds, cudaStream_t stream);

}  // namespace cuda
}  // namespace marengine
