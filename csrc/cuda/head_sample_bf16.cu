// head_sample_bf16.cu -- adaln_block and head_sample kernels for bf16 weights.
//
// All code lives in head_impl.cuh (kernels, tiling and paths are described there);
// this file instantiates it for one weight type so the three types compile in
// parallel. Test: pytest python_tests/test_native_cuda.py (CUDA GPU);
// compile check: scripts/check_cuda_compile.sh.
#include "entry_points.cuh"
#include "head_impl.cuh"

namespace marengine {
namespace cuda {

MARENGINE_DEFINE_HEAD_ENTRY_POINTS(__nv_bfloat16, bf16)

}  // namespace cuda
}  // namespace marengine
