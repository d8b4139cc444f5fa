// entry_points.cuh -- per-weight-type launchers (defined in head_sample_{f32,bf16,f16}.cu,
// dispatched by launchers.cu; the test-only stage launchers by stages.cu). Internal; plain C++.
#pragma once

#include "launchers.cuh"
#include "stages.cuh"

namespace marengine {
namespace cuda {

#define MARENGINE_DECLARE_HEAD_ENTRY_POINTS(SUFFIX)                                                          \
  size_t adaln_block_ws_bytes_##SUFFIX(int M, int W);                                                        \
  cudaError_t launch_adaln_block_##SUFFIX(const AdalnBlockArgs& a, cudaStream_t s);                          \
  cudaError_t plan_head_sample_##SUFFIX(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan); \
  cudaError_t launch_head_sample_##SUFFIX(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t s);    \
  cudaError_t stage_gemm_##SUFFIX(const StageGemm& g, cudaStream_t s);                                       \
  cudaError_t stage_ln_##SUFFIX(const StageLn& l, cudaStream_t s);                                           \
  cudaError_t stage_silu_rows_##SUFFIX(const HeadSampleArgs& a, int i0, int rows, void* y, int blocks,       \
                                       cudaStream_t s);                                                      \
  cudaError_t stage_row_pre_##SUFFIX(const HeadSampleArgs& a, const StageRowPre& r, cudaStream_t s);

MARENGINE_DECLARE_HEAD_ENTRY_POINTS(f32)
MARENGINE_DECLARE_HEAD_ENTRY_POINTS(bf16)
MARENGINE_DECLARE_HEAD_ENTRY_POINTS(f16)

#undef MARENGINE_DECLARE_HEAD_ENTRY_POINTS

// `return fn_<suffix>(...)` for the weight type `wt` (fn_f32, fn_bf16 or fn_f16), `unknown`
// for any other value.
#define MARENGINE_WTYPE_DISPATCH(wt, fn, unknown, ...) \
  switch (wt) {                                        \
    case WeightType::kFloat32:                         \
      return fn##_f32(__VA_ARGS__);                    \
    case WeightType::kBFloat16:                        \
      return fn##_bf16(__VA_ARGS__);                   \
    case WeightType::kFloat16:                         \
      return fn##_f16(__VA_ARGS__);                    \
  }                                                    \
  return unknown

}  // namespace cuda
}  // namespace marengine
