// stages.cu -- the test-only stage entry points (stages.cuh): dispatch on the weight type to
// the per-type stage launchers of head_sample_{f32,bf16,f16}.cu, plus the two stages that do
// not depend on it:
//
//   stage_update_kernel    the sampler update (row_phases.cuh update_rows), one thread per
//                          element, grid-stride
//   barrier_stress_kernel  `rounds` x [every thread writes a word tagged with the round |
//                          grid_barrier | reads the word of a thread of another block (a
//                          different partner each round) and counts a mismatch | grid_barrier].
//                          A missing release/acquire or a barrier that lets a block through
//                          early shows up as mismatches; a miscounted arrival as a final
//                          barrier word != 0 (each barrier adds exactly 2^31 to it) or a hang.
// Cooperative launch of 128-thread blocks (all co-resident, as the persistent kernel).
//
// Test: pytest python_tests/test_cuda_stages.py -k "barrier or update" (CUDA GPU);
// compile check: scripts/check_cuda_compile.sh.
#include <algorithm>

#include "common.cuh"
#include "entry_points.cuh"
#include "launchers.cuh"
#include "row_phases.cuh"
#include "stages.cuh"

namespace marengine {
namespace cuda {
namespace {

constexpr int kStageThreads = 128;

__global__ void __launch_bounds__(kStageThreads)
    stage_update_kernel(const __grid_constant__ HeadSampleArgs a, int it, const float* x, float* x0p, const float* outr,
                        float* out) {
  update_rows(a, it, x, x0p, outr, out);
}

__device__ __forceinline__ unsigned round_tag(unsigned round, unsigned thread) {
  return round * 2654435761u ^ thread;  // a value only `round` writes into `thread`'s word
}

__global__ void __launch_bounds__(kStageThreads)
    barrier_stress_kernel(unsigned* word, unsigned* errors, unsigned* slots, int rounds) {
  const unsigned total = gridDim.x * blockDim.x;
  const unsigned me = blockIdx.x * blockDim.x + threadIdx.x;
  for (int r = 1; r <= rounds; ++r) {
    slots[me] = round_tag(static_cast<unsigned>(r), me);
    grid_barrier(word);
    // a thread of another block (the same block only when the grid is one block)
    const unsigned hop = gridDim.x > 1 ? 1u + static_cast<unsigned>(r) % (gridDim.x - 1u) : 0u;
    const unsigned other = (me + hop * blockDim.x) % total;
    if (slots[other] != round_tag(static_cast<unsigned>(r), other)) atomicAdd(errors, 1u);
    grid_barrier(word);  // nobody writes round r + 1 before everyone has read round r
  }
}

}  // namespace

cudaError_t stage_gemm(WeightType wt, const StageGemm& g, cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(wt, stage_gemm, cudaErrorInvalidValue, g, stream);
}

cudaError_t stage_ln_modulate(WeightType wt, const StageLn& l, cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(wt, stage_ln, cudaErrorInvalidValue, l, stream);
}

cudaError_t stage_silu_rows(WeightType wt, const HeadSampleArgs& a, int i0, int rows, void* y, int blocks,
                            cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(wt, stage_silu_rows, cudaErrorInvalidValue, a, i0, rows, y, blocks, stream);
}

cudaError_t stage_row_pre(WeightType wt, const HeadSampleArgs& a, const StageRowPre& r, cudaStream_t stream) {
  MARENGINE_WTYPE_DISPATCH(wt, stage_row_pre, cudaErrorInvalidValue, a, r, stream);
}

cudaError_t stage_update(const HeadSampleArgs& a, int it, const float* x, float* x0p, const float* outr, float* out,
                         int blocks, cudaStream_t stream) {
  const int total = a.N * a.C;
  if (total == 0) return cudaSuccess;
  const int natural = ceil_div(total, kStageThreads);
  const int grid = std::max(1, blocks > 0 ? std::min(blocks, natural) : natural);
  stage_update_kernel<<<grid, kStageThreads, 0, stream>>>(a, it, x, x0p, outr, out);
  return cudaGetLastError();
}

size_t stage_grid_barrier_bytes(int grid) {
  return (64 + static_cast<size_t>(grid) * kStageThreads) * sizeof(unsigned);
}

cudaError_t stage_grid_barrier_grid(int device, int blocks, int* grid) {
  int sms = 0, coop = 0, occ = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, barrier_stress_kernel, kStageThreads, 0);
  if (err != cudaSuccess) return err;
  if (coop == 0 || occ == 0) return cudaErrorCooperativeLaunchTooLarge;
  const int most = sms * occ;
  const int want = blocks > 0 ? blocks : (blocks == 0 ? sms * std::min(occ, kPersistentBlocksPerSM) : most);
  if (want > most) return cudaErrorCooperativeLaunchTooLarge;
  *grid = want;
  return cudaSuccess;
}

cudaError_t stage_grid_barrier(void* scratch, int grid, int rounds, cudaStream_t stream) {
  unsigned* base = static_cast<unsigned*>(scratch);
  cudaError_t err = cudaMemsetAsync(base, 0, stage_grid_barrier_bytes(grid), stream);
  if (err != cudaSuccess) return err;
  unsigned* word = base;
  unsigned* errors = base + 32;  // another 128-byte line than the barrier word
  unsigned* slots = base + 64;
  void* args[] = {&word, &errors, &slots, &rounds};
  err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&barrier_stress_kernel), dim3(grid),
                                    dim3(kStageThreads), args, 0, stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace cuda
}  // namespace marengine
