// ops.cpp -- the operator schemas of marengine (one place) and the pybind11 module
// `marengine._C`. Implementations register per device: csrc/cpu/*_cpu.cpp (always
// built) and csrc/cuda/ (built where torch has CUDA and nvcc is found); fake (meta)
// kernels for torch.compile / export live in marengine/ops/native.py.
//
//   adaln_block(x, mod, ln_w, ln_b, w1, b1, w2, b2) -> x + gate * MLP(LN(x) * (1 + scale) + shift)
//   head_sample(x_T, c_emb, t_emb, <head weights>, coefs, cfg, temperature, step_noise?, seed, offset,
//               clip_denoised)
//       -> x_0: the whole reverse diffusion of the Diffusion-Loss head in one call, for any
//       sampler whose per-step coefficients are in coefs [S, 8] (a, b, c1, c2, c3, lp, lb, nw;
//       marengine/diffusion/samplers.py): x0 = a x - b eps (clamped to [-1, 1] with
//       clip_denoised), x = c1 x0 + c2 x + c3 x0_prev + nw exp(logvar / 2) noise temperature.
//       CFG is on iff c_emb has 2N rows (conditional, then unconditional); `cfg` is then the
//       scale. Per-step noise: step_noise[i] at iteration i if given, else Philox(seed, offset)
//       (csrc/philox.h); none at temperature 0 or where nw = 0.
//       Per-row steps: row_table [N, 2] int32 (per row: its first row in the stacked coefs / t_emb,
//       its step count; marengine/diffusion/schedule.py TableStack) and max_steps (the iterations
//       of the call, >= every row's count): row n runs its own table in the first row_table[n][1]
//       iterations and then keeps its value; step_noise is then [max_steps, N, C].
//
// Test: pytest python_tests/test_native_cpu.py (opcheck runs the schema checks).
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "cpu/head_common.h"
#include "cpu/kernels.h"
#include "kernel_limits.h"
#include "philox.h"
#include "settings.h"

TORCH_LIBRARY(marengine, m) {
  // where the fake (meta) kernels live: torch imports it when it needs them
  m.set_python_module("marengine.ops.native");
  m.def(
      "adaln_block(Tensor x, Tensor mod, Tensor ln_w, Tensor ln_b, Tensor w1, Tensor b1, Tensor w2, Tensor b2) "
      "-> Tensor");
  m.def(
      "head_sample(Tensor x_T, Tensor c_emb, Tensor t_emb, Tensor in_w, Tensor in_b, Tensor[] ln_w, "
      "Tensor[] ln_b, Tensor[] mod_w, Tensor[] mod_b, Tensor[] w1, Tensor[] b1, Tensor[] w2, Tensor[] b2, "
      "Tensor fmod_w, Tensor fmod_b, Tensor out_w, Tensor out_b, Tensor coefs, float cfg, float temperature, "
      "Tensor? step_noise, int seed, int offset, bool clip_denoised=False, Tensor? row_table=None, "
      "int max_steps=0) -> Tensor");
}

namespace {

// Normals e0 .. e0 + count - 1 of the in-kernel noise stream (csrc/philox.h), on the CPU.
at::Tensor philox_normals(int64_t seed, int64_t offset, int64_t e0, int64_t count) {
  TORCH_CHECK(count >= 0 && e0 >= 0 && offset >= 0, "philox_normals: e0, count and offset must be >= 0");
  at::Tensor out = at::empty({count}, at::kFloat);
  marengine::philox::fill_normals(static_cast<uint64_t>(e0), count, static_cast<uint64_t>(seed),
                                  static_cast<uint64_t>(offset), out.data_ptr<float>());
  return out;
}

bool built_with_cuda() {
#ifdef MARENGINE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The knobs marengine/settings.py passed in (csrc/settings.h). Values are kept for the life of
// the process (a later set_knobs adds new strings), so a pointer knob() returned stays valid.
struct Knobs {
  std::mutex mu;
  std::map<std::string, const char*> by_name;
  std::deque<std::string> values;
};

Knobs& knob_table() {
  static Knobs* k = new Knobs();  // leaked on purpose: no destruction-order issues at exit
  return *k;
}

void set_knobs(const std::map<std::string, std::string>& knobs) {
  Knobs& k = knob_table();
  std::lock_guard<std::mutex> g(k.mu);
  k.by_name.clear();
  for (const auto& [name, value] : knobs) {
    k.values.push_back(value);
    k.by_name[name] = k.values.back().c_str();
  }
}

std::map<std::string, std::string> knobs() {
  Knobs& k = knob_table();
  std::lock_guard<std::mutex> g(k.mu);
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : k.by_name) out[name] = value;
  return out;
}

// What the kernels take, from csrc/kernel_limits.h and the build (marengine/ops/extension.py reads it).
pybind11::dict limits() {
  namespace cu = marengine::cuda;
  pybind11::dict d;
  d["layernorm_eps"] = marengine::kLayerNormEps;
  d["weight_dtypes"] = pybind11::make_tuple("float32", "bfloat16", "float16");
  d["cuda_built"] = built_with_cuda();
  d["cuda_width_multiple"] = cu::kWidthMultiple;
  d["cuda_max_channels"] = cu::kMaxChannels;
  d["cuda_max_depth"] = cu::kMaxDepth;
  d["cuda_persistent_max_rows"] = cu::kPersistentMaxRows;
  d["cuda_small_tile_max_rows"] = cu::kSmallTileMaxRows;
  d["cuda_mod_rows_target"] = cu::kModRowsTarget;
  d["cuda_mod_budget_bytes"] = cu::kModBudgetBytes;
  d["cpu_kernels_built"] = std::string(marengine::cpu::kernels_built());
  return d;
}

}  // namespace

namespace marengine {

const char* knob(const char* name) {
  Knobs& k = knob_table();
  std::lock_guard<std::mutex> g(k.mu);
  const auto it = k.by_name.find(name);
  return it == k.by_name.end() ? nullptr : it->second;
}

}  // namespace marengine

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "marengine native kernels: registers torch.ops.marengine.{adaln_block, head_sample}";
  m.def(
      "cpu_kernels", [] { return std::string(marengine::cpu::kernels().name); },
      "Which build of the CPU kernels runs in this process ('avx512_bf16', 'avx512', 'avx2' or 'base'; "
      "MARENGINE_CPU_KERNELS forces one).");
  m.def(
      "cpu_kernels_supported", [] { return std::string(marengine::cpu::kernels_supported()); },
      "The builds of the CPU kernels this CPU can run, best first, comma-separated.");
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in.");
  m.def(
      "release_cpu_caches",
      [] {
        marengine::cpu::release_pack_cache();
        marengine::cpu::release_workspaces();
      },
      "Free the CPU sampler's cached packed weights and workspaces (they are rebuilt on demand).");
  m.def("content_hash", &marengine::cpu::content_hash_all,
        "A 64-bit fingerprint of the bytes of CPU tensors, in order (catches writes that bypass version counters).");
  m.def("forget_packed", &marengine::cpu::forget_packed,
        "Drop the CPU sampler's packed copies of these weight tensors (their bytes changed).");
  m.def("limits", &limits,
        "What the kernels take (csrc/kernel_limits.h): LayerNorm eps, weight dtypes, the CUDA kernels' width "
        "multiple, max channels and depth and path thresholds, whether CUDA is built, the CPU builds compiled in.");
  m.def("set_knobs", &set_knobs,
        "Set the environment knobs the kernels act on (name -> value; marengine/settings.py passes them). "
        "A name left out takes the kernels' default.",
        pybind11::arg("knobs"));
  m.def("knobs", &knobs, "The knobs set by set_knobs (name -> value).");
  m.def("philox_normals", &philox_normals, "Normals e0..e0+count-1 of the head_sample noise stream (CPU).",
        pybind11::arg("seed"), pybind11::arg("offset"), pybind11::arg("e0"), pybind11::arg("count"));
}
