// launchers.cu -- the public, torch-free entry points (launchers.cuh): dispatch on the
// weight type to the per-type launchers of head_sample_{f32,bf16,f16}.cu.
// Test: pytest python_tests/test_native_cuda.py (CUDA GPU); compile check:
// scripts/check_cuda_compile.sh.
#include "entry_points.cuh"
#include "launchers.cuh"

namespace marengine {
namespace cuda {

size_t adaln_block_workspace_bytes(int M, int W, WeightType wtype) {
  switch (wtype) {
    case WeightType::kFloat32:
      return adaln_block_ws_bytes_f32(M, W);
    case WeightType::kBFloat16:
      return adaln_block_ws_bytes_bf16(M, W);
    case WeightType::kFloat16:
      return adaln_block_ws_bytes_f16(M, W);
  }
  return 0;
}

cudaError_t launch_adaln_block(const AdalnBlockArgs& a, cudaStream_t stream) {
  switch (a.wtype) {
    case WeightType::kFloat32:
      return launch_adaln_block_f32(a, stream);
    case WeightType::kBFloat16:
      return launch_adaln_block_bf16(a, stream);
    case WeightType::kFloat16:
      return launch_adaln_block_f16(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t plan_head_sample(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan) {
  switch (a.wtype) {
    case WeightType::kFloat32:
      return plan_head_sample_f32(a, want, device, plan);
    case WeightType::kBFloat16:
      return plan_head_sample_bf16(a, want, device, plan);
    case WeightType::kFloat16:
      return plan_head_sample_f16(a, want, device, plan);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_head_sample(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t stream) {
  switch (a.wtype) {
    case WeightType::kFloat32:
      return launch_head_sample_f32(a, plan, stream);
    case WeightType::kBFloat16:
      return launch_head_sample_bf16(a, plan, stream);
    case WeightType::kFloat16:
      return launch_head_sample_f16(a, plan, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace marengine
