// head_common.h -- glue between ATen tensors and the torch-free kernels (kernels.h):
// weight views, fp32 copies of small parameters, row <-> P16 panel packing, and the
// threaded GEMM (each call split over weight-row tiles with at::parallel_for; inside an
// already parallel region at::parallel_for runs inline, which is what row mode relies on).
// Used by head_sample_cpu.cpp and adaln_block_cpu.cpp.
// Test: pytest python_tests/test_native_cpu.py
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels.h"

namespace marengine {
namespace cpu {

inline WType wtype_of(at::ScalarType s) {
  switch (s) {
    case at::kBFloat16:
      return WType::BF16;
    case at::kHalf:
      return WType::F16;
    default:
      return WType::F32;
  }
}

inline Weight weight_of(const at::Tensor& w) {
  Weight out;
  out.data = w.data_ptr();
  out.type = wtype_of(w.scalar_type());
  out.n = w.size(0);
  out.k = w.size(1);
  return out;
}

// fp32 views of 1-D parameters (biases, LN affine): the tensor itself when it is fp32,
// else a converted copy owned here.
class F32Params {
 public:
  const float* get(const at::Tensor& t) {
    if (t.scalar_type() == at::kFloat) return t.data_ptr<float>();
    keep_.push_back(t.to(at::kFloat).contiguous());
    return keep_.back().data_ptr<float>();
  }

 private:
  std::vector<at::Tensor> keep_;
};

// Items per task so that a task does at least ~64K element operations.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work_per_item));
}

// Copies the first M rows between [M, F] row-major fp32 and [ceil(M/16), F, 16] panels
// (kToPanels: rows -> panels, else panels -> rows).
template <bool kToPanels>
inline void copy_panels(const float* src, float* dst, int64_t M, int64_t F) {
  const int64_t L = kLanes, P = (M + L - 1) / L;
  at::parallel_for(0, P, grain_for(F * L), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p)
      for (int64_t l = 0; l < L && p * L + l < M; ++l)
        for (int64_t f = 0; f < F; ++f) {
          const int64_t row = (p * L + l) * F + f, panel = (p * F + f) * L + l;
          dst[kToPanels ? panel : row] = src[kToPanels ? row : panel];
        }
  });
}

// [M, F] row-major fp32 -> [ceil(M/16), F, 16] panels, padding rows zero.
inline at::Tensor pack_rows(const at::Tensor& x) {
  const int64_t M = x.size(0), F = x.size(1), P = (M + kLanes - 1) / kLanes;
  at::Tensor out = at::zeros({std::max<int64_t>(P, 1), F, kLanes}, at::kFloat);
  copy_panels<true>(x.data_ptr<float>(), out.data_ptr<float>(), M, F);
  return out;
}

// Inverse of pack_rows for the first M rows.
inline at::Tensor unpack_rows(const at::Tensor& panels, int64_t M) {
  at::Tensor out = at::empty({M, panels.size(1)}, at::kFloat);
  copy_panels<false>(panels.data_ptr<float>(), out.data_ptr<float>(), M, panels.size(1));
  return out;
}

// out (via epilogue) = A panels x W^T, split over 6-row weight tiles across threads.
inline void gemm_parallel(const Kernels& K, const float* A, int64_t a_pstride, int64_t panels, const Weight& w,
                          const EpiArgs& e) {
  const int64_t tiles = (w.n + kTileN - 1) / kTileN;
  const int64_t tile_flops = 2 * panels * kLanes * kTileN * w.k;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, tile_flops));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    K.gemm(A, a_pstride, panels, w, t0 * kTileN, std::min(w.n, t1 * kTileN), e);
  });
}

// A weight packed (kernels.h pack_weights), reused across steps and calls.
struct PackedWeight {
  at::Tensor data;  // [ceil(N/6) * K * 6] elements of `type` (bf16 k-pairs: K rounded up to even)
  int64_t n = 0, k = 0;
  WType type = WType::F32;
  const void* ptr() const { return data.data_ptr(); }
};

// The element type a weight is packed in: bf16 stays bf16 where the kernels multiply bf16
// x bf16 -> fp32 themselves (K.dot_bf16) and the caller feeds bf16-exact panels
// (`lowp_inputs`); everything else is widened to fp32 (exact): on CPUs without bf16
// arithmetic the widening would otherwise be paid per tile and step, which costs more
// than the halved memory traffic saves.
inline WType packed_type(const Kernels& K, at::ScalarType dtype, bool lowp_inputs) {
  return (lowp_inputs && K.dot_bf16 && dtype == at::kBFloat16) ? WType::BF16 : WType::F32;
}

inline PackedWeight pack_weight(const Kernels& K, const at::Tensor& weight, bool lowp_inputs = false) {
  const bool keep = packed_type(K, weight.scalar_type(), lowp_inputs) == WType::BF16;
  const at::Tensor w = (weight.scalar_type() == at::kFloat || keep) ? weight : weight.to(at::kFloat);
  const Weight src = weight_of(w);
  const int64_t tiles = (src.n + kTileN - 1) / kTileN, kp = keep ? (src.k + 1) / 2 * 2 : src.k;
  const int64_t elems = K.packed_elems ? K.packed_elems(src.type, src.n, src.k) : tiles * kp * kTileN;
  PackedWeight out{at::empty({std::max<int64_t>(1, elems)}, w.options()), src.n, src.k, src.type};
  void* dst = out.data.data_ptr();
  at::parallel_for(0, tiles, grain_for(src.k * kTileN),
                   [&](int64_t t0, int64_t t1) { K.pack_weights(src, t0, t1, dst); });
  return out;
}

// Packed weights survive between calls: an entry is valid while its source tensor is
// alive (weak reference), has the same data pointer and the same version counter (so
// in-place updates, e.g. an optimizer step, repack). Writes that bypass the version
// counter (`.data`, numpy views) are caught by the Python side's content fingerprint
// (content_hash), which then evicts the entries of those tensors (forget_packed).
// Inference tensors have no version counter and are packed per call. Bounded (LRU,
// MARENGINE_CPU_PACK_CACHE_MB, default 2048); release_pack_cache() empties it.
PackedWeight cached_pack(const Kernels& K, const at::Tensor& w, bool lowp_inputs = false);
void forget_packed(const std::vector<at::Tensor>& sources);
void release_pack_cache();
// A 64-bit fingerprint of a CPU tensor's bytes, and of a list of them in order (content_hash.cpp).
uint64_t content_hash(const at::Tensor& tensor);
uint64_t content_hash_all(const std::vector<at::Tensor>& tensors);
// Frees head_sample's cached per-thread workspaces (head_sample_cpu.cpp).
void release_workspaces();

// lanes: rows per panel that matter (<= 8 takes the half-panel micro-kernels). Columns are
// split across threads in ranges of kColSplit.
inline void gemm_packed_parallel(const Kernels& K, const float* A, int64_t a_pstride, int64_t panels,
                                 const PackedWeight& w, const EpiArgs& e, int64_t lanes = kLanes) {
  const int64_t parts = (w.n + kColSplit - 1) / kColSplit;
  const int64_t part_flops = 2 * panels * kLanes * kColSplit * w.k;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, part_flops));
  at::parallel_for(0, parts, grain, [&](int64_t t0, int64_t t1) {
    K.gemm_packed(A, a_pstride, panels, w.ptr(), w.type, w.k, w.n, t0 * kColSplit, std::min(w.n, t1 * kColSplit), lanes,
                  e);
  });
}

}  // namespace cpu
}  // namespace marengine
