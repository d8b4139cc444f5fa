// kernels_dispatch.h -- with_const<Hi>(n, f): calls f(std::integral_constant<int, n>{}) for n
// in [2, Hi] and f(std::integral_constant<int, 1>{}) for any other n, which turns a runtime
// column count into a micro-kernel's template argument in one line.
//
// No include guard and no namespace of its own: it is included inside the namespace of each
// target region that dispatches to micro-kernels (kernels_impl.h, kernels_avx512_panels.h), so
// that it is compiled for that region's target. GCC and Clang inline a function only into a
// caller compiled for at least its target: one copy compiled for a narrower target would call
// the wider region's micro-kernels out of line. The includer includes <type_traits> first.

template <int Hi, class F>
static inline void with_const(int n, F&& f) {
  if constexpr (Hi > 1) {
    if (n != Hi) return with_const<Hi - 1>(n, f);
  }
  f(std::integral_constant<int, Hi>{});
}
