// content_hash.cpp -- a 64-bit fingerprint of a tensor's bytes, and the eviction of packed
// weights by source tensor (head_common.h).
//
// The packed-weight cache (pack_cache.cpp) and marengine/ops/head_weights.py's converted-weight
// cache key their entries by tensor identity, data pointer and version counter. Writes
// through `.data`, numpy views or raw pointers change the bytes without bumping the
// version counter, so the Python side also compares this fingerprint of the source
// weights (once per sampling run) and evicts stale packed entries with forget_packed().
//
// The fingerprint is sum_i mix64(word_i ^ (i * golden)) mod 2^64 over the 64-bit words
// of the bytes (the tail zero-padded), mixed with the byte count: every position keys its
// own mix, so changes at any set of positions cancel with probability ~2^-64. One pass
// over memory, split across threads (at::parallel_reduce), a few ms per 100 MB.
// Test: pytest python_tests/test_native_cpu.py -k stale
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

#include "head_common.h"

namespace marengine {
namespace cpu {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t content_hash(const at::Tensor& tensor) {
  TORCH_CHECK(tensor.device().is_cpu(), "content_hash: the tensor must be on the CPU, got ", tensor.device());
  const at::Tensor t = tensor.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
  const int64_t nbytes = static_cast<int64_t>(t.nbytes());
  const int64_t words = nbytes / 8;
  const uint64_t body = at::parallel_reduce(
      0, words, int64_t(1) << 16, uint64_t(0),
      [&](int64_t i0, int64_t i1, uint64_t acc) {
        for (int64_t i = i0; i < i1; ++i) {
          uint64_t w;
          std::memcpy(&w, bytes + 8 * i, 8);  // unaligned-safe load
          acc += mix64(w ^ (static_cast<uint64_t>(i) * kGolden));
        }
        return acc;
      },
      [](uint64_t a, uint64_t b) { return a + b; });
  uint64_t tail = 0;
  std::memcpy(&tail, bytes + 8 * words, static_cast<size_t>(nbytes - 8 * words));
  return body + mix64(tail ^ static_cast<uint64_t>(words) * kGolden) + mix64(static_cast<uint64_t>(nbytes));
}

uint64_t content_hash_all(const std::vector<at::Tensor>& tensors) {
  uint64_t h = mix64(static_cast<uint64_t>(tensors.size()));
  for (size_t i = 0; i < tensors.size(); ++i) h = mix64(h ^ (content_hash(tensors[i]) + i * kGolden));
  return h;
}

}  // namespace cpu
}  // namespace marengine
