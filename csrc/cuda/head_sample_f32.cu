// head_sample_f32.cu -- adaln_block and head_sample kernels for fp32 weights.
//
// All code lives in head_impl.cuh (kernels, tiling and paths are described there);
// this file instantiates it for one weight type so the three types compile in
// parallel. Test: pytest python_tests/test_native_cuda.py (CUDA GPU);
// compile check: scripts/check_cuda_compile.sh.
#include "entry_points.cuh"
#include "head_impl.cuh"

namespace marengine {
namespace cuda {

MARENGINE_DEFINE_HEAD_ENTRY_POINTS(float, f32)

}  // namespace cuda
}  // namespace marengine
