// pack_cache.cpp -- packed GEMM weights kept between head_sample calls (head_common.h).
// Packing every weight costs about one pass over them (~30 ms for a 1024x3 head on two
// cores, mostly page faults), which would dominate calls with few rows; the cache makes
// repeated calls with the same weights pay it once.
// Test: pytest python_tests/test_native_cpu.py -k cache
#include <ATen/ATen.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>

#include "../settings.h"
#include "head_common.h"

namespace marengine {
namespace cpu {
namespace {

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> source;
  int64_t version;
  const void* data;
  at::ScalarType dtype;
  PackedWeight packed;
  std::list<const c10::TensorImpl*>::iterator lru;
};

struct Cache {
  std::mutex mu;
  std::unordered_map<const c10::TensorImpl*, Entry> map;
  std::list<const c10::TensorImpl*> lru;  // front = most recent
  int64_t bytes = 0;

  void erase(std::unordered_map<const c10::TensorImpl*, Entry>::iterator it) {
    bytes -= it->second.packed.data.nbytes();
    lru.erase(it->second.lru);
    map.erase(it);
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // leaked on purpose: no destruction-order issues at exit
  return *c;
}

int64_t cap_bytes() {
  const char* v = knob("MARENGINE_CPU_PACK_CACHE_MB");
  const int64_t mb = (v && *v) ? std::atoll(v) : 2048;
  return std::max<int64_t>(0, mb) << 20;
}

bool fresh(const Entry& e, const at::Tensor& w) {
  const c10::intrusive_ptr<c10::TensorImpl> alive = e.source.lock();
  return alive.get() == w.unsafeGetTensorImpl() && e.version == w._version() && e.data == w.data_ptr() &&
         e.dtype == w.scalar_type();
}

}  // namespace

PackedWeight cached_pack(const Kernels& K, const at::Tensor& w, bool lowp_inputs) {
  const int64_t cap = cap_bytes();
  if (w.is_inference() || cap == 0) return pack_weight(K, w, lowp_inputs);
  Cache& c = cache();
  const c10::TensorImpl* key = w.unsafeGetTensorImpl();
  {
    std::lock_guard<std::mutex> g(c.mu);
    auto it = c.map.find(key);
    if (it != c.map.end()) {
      if (fresh(it->second, w) && it->second.packed.type == packed_type(K, w.scalar_type(), lowp_inputs)) {
        c.lru.splice(c.lru.begin(), c.lru, it->second.lru);
        return it->second.packed;
      }
      c.erase(it);
    }
  }
  PackedWeight packed = pack_weight(K, w, lowp_inputs);
  std::lock_guard<std::mutex> g(c.mu);
  if (c.map.count(key)) return packed;  // another thread packed it meanwhile
  c.lru.push_front(key);
  Entry e{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()),
          w._version(),
          w.data_ptr(),
          w.scalar_type(),
          packed,
          c.lru.begin()};
  c.bytes += packed.data.nbytes();
  c.map.emplace(key, std::move(e));
  // drop entries whose source died, then the least recently used beyond the cap
  for (auto it = c.map.begin(); it != c.map.end();) {
    auto next = std::next(it);
    if (it->second.source.expired()) c.erase(it);
    it = next;
  }
  while (c.bytes > cap && !c.lru.empty()) c.erase(c.map.find(c.lru.back()));
  return packed;
}

void forget_packed(const std::vector<at::Tensor>& sources) {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  for (const at::Tensor& t : sources) {
    auto it = c.map.find(t.unsafeGetTensorImpl());
    if (it != c.map.end()) c.erase(it);
  }
}

void release_pack_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  c.map.clear();
  c.lru.clear();
  c.bytes = 0;
}

}  // namespace cpu
}  // namespace marengine
