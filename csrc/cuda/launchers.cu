// launchers.cu -- the public, torch-free entry points (launchers.cuh): dispatch on the
// weight type to the per-type launchers of head_sample_{f32,bf16,f16}.cu.
// Test: pytest python_tests/test_native_cuda.py (CUDA GPU); compile check:
// scripts/check_cuda_compile.sh.
#include "entry_points.cuh"
#include "launchers.cuh"

namespace marengine {
namespace cuda {

size_t adaln_block_workspace_bytes(int M, int W, WeightType wtype) {
  MARENGINE_WTYPE_DISPATCH(wtype, adaln_block_ws_bytes, 0, M, W);
}

cudaError_t launch_adaln_block(const AdalnBlockArgs& a, cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(a.wtype, launch_adaln_block, cudaErrorInvalidValue, a, stream);
}

cudaError_t plan_head_sample(const HeadSampleArgs& a, HeadPath want, int device, HeadPlan* plan) {
  MARENGINE_WTYPE_DISPATCH(a.wtype, plan_head_sample, cudaErrorInvalidValue, a, want, device, plan);
}

cudaError_t launch_head_sample(const HeadSampleArgs& a, const HeadPlan& plan, cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(a.wtype, launch_head_sample, cudaErrorInvalidValue, a, plan, stream);
}

}  // namespace cuda
}  // namespace marengine
