// moss/ops/elementwise.hpp: the element-wise glue a backward pass needs between ops, over flat
// contiguous vectors:
//
//   add_into(backend, x, y)        y[i] = y[i] + x[i]      (two gradients of one tensor summed)
//   multiply(backend, a, b, out)   out[i] = a[i] · b[i]    (e.g. dA_log = dA ⊙ A)
//   negated_exp(backend, x, out)   out[i] = −exp(x[i])     (Mamba's A from A_log, after a step)
//   convert(backend, x, out)       out[i] = x[i] in out's type, rounded once (float32 master
//                                  weights to bf16 parameters, and back)
//
// Arithmetic in compute_t<T> (float32; double for the host's double instantiation), rounded
// once to T. One element per index, no reduction: the result does not depend on the backend's
// order. `out` (and `y`) may be one of the inputs itself (same data: in place); any other overlap
// is a `shape_error`. The CUDA overloads (under nvcc) queue on the stream and never synchronise.
#pragma once

#include <cmath>
#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

namespace detail {

/// Checks an element-wise operand: valid, contiguous, `n` elements.
template <class T>
void elementwise_expect(const char* where, const TensorView<T, 1>& v, index_t n) {
  expect_valid(where, v);
  expect_shape(where, v, {n}, "(n), like the first operand");
  expect_contiguous(where, v);
}

/// Throws `shape_error` when output `o` partly overlaps input `v` (the same start is allowed).
template <class A, class B>
void elementwise_expect_aliasing(const char* where, const TensorView<A, 1>& o, const TensorView<B, 1>& v) {
  if (o.empty() || v.empty() || static_cast<const void*>(o.data) == static_cast<const void*>(v.data)) return;
  const auto o0 = reinterpret_cast<std::uintptr_t>(o.data), v0 = reinterpret_cast<std::uintptr_t>(v.data);
  const auto o1 = o0 + static_cast<std::uintptr_t>(o.shape[0]) * sizeof(A);
  const auto v1 = v0 + static_cast<std::uintptr_t>(v.shape[0]) * sizeof(B);
  MOSS_EXPECTS(!(o0 < v1 && v0 < o1), shape_error, where, ": ", o.name, " ", shape_string(o.shape), " partly overlaps ",
               v.name, " ", shape_string(v.shape), " in memory (an output may be an input itself, or distinct memory)");
}

}  // namespace detail

/// Checks `y += x`: both valid, contiguous, the same length, y not partly overlapping x.
template <class T>
void validate_add_into(ConstView<T, 1> x, TensorView<T, 1> y, const char* where) {
  expect_valid(where, x);
  expect_contiguous(where, x);
  detail::elementwise_expect(where, y, x.shape[0]);
  detail::elementwise_expect_aliasing(where, y, x);
}

/// Checks `out = a ⊙ b`: all valid, contiguous, the same length, out not partly overlapping a or b.
template <class T>
void validate_multiply(ConstView<T, 1> a, ConstView<T, 1> b, TensorView<T, 1> out, const char* where) {
  expect_valid(where, a);
  expect_contiguous(where, a);
  detail::elementwise_expect(where, b, a.shape[0]);
  detail::elementwise_expect(where, out, a.shape[0]);
  detail::elementwise_expect_aliasing(where, out, a);
  detail::elementwise_expect_aliasing(where, out, b);
}

/// y[i] += x[i] on the host.
template <HostReal T>
void add_into(const Host&, ConstView<T, 1> x, TensorView<T, 1> y) {
  validate_add_into(x, y, "add_into");
  using C = compute_t<T>;
  for (index_t i = 0; i < x.shape[0]; ++i) y.data[i] = narrow<T>(static_cast<C>(widen(y.data[i]) + widen(x.data[i])));
}

/// out[i] = a[i] · b[i] on the host.
template <HostReal T>
void multiply(const Host&, ConstView<T, 1> a, ConstView<T, 1> b, TensorView<T, 1> out) {
  validate_multiply(a, b, out, "multiply");
  using C = compute_t<T>;
  for (index_t i = 0; i < a.shape[0]; ++i) out.data[i] = narrow<T>(static_cast<C>(widen(a.data[i]) * widen(b.data[i])));
}

/// out[i] = −exp(x[i]) on the host (float32; the value Mamba derives A from A_log with).
inline void negated_exp(const Host&, ConstView<float, 1> x, TensorView<float, 1> out) {
  validate_add_into(x, out, "negated_exp");  // same length, contiguous, out is x or distinct
  for (index_t i = 0; i < x.shape[0]; ++i) out.data[i] = -std::exp(x.data[i]);
}

/// Checks `out = x` converted: both valid, contiguous, the same length, not overlapping.
template <class A, class B>
void validate_convert(ConstView<A, 1> x, TensorView<B, 1> out, const char* where) {
  expect_valid(where, x);
  expect_contiguous(where, x);
  detail::elementwise_expect(where, out, x.shape[0]);
  MOSS_EXPECTS(x.shape[0] == 0 || static_cast<const void*>(x.data) != static_cast<const void*>(out.data), shape_error,
               where, ": ", out.name, " is ", x.name, " itself (a conversion needs distinct memory)");
  detail::elementwise_expect_aliasing(where, out, TensorView<A, 1>(const_cast<A*>(x.data), x.shape, x.name));
}

/// out[i] = x[i] converted to out's element type on the host (through float, rounded once).
template <HostReal A, HostReal B>
void convert(const Host&, ConstView<A, 1> x, TensorView<B, 1> out) {
  validate_convert(x, out, "convert");
  for (index_t i = 0; i < x.shape[0]; ++i) out.data[i] = narrow<B>(widen(x.data[i]));
}

}  // namespace moss

// Under nvcc the CUDA implementation comes with the op.
#if defined(__CUDACC__)
#include "moss/ops/elementwise/cuda.cuh"
#endif
