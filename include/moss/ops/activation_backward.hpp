// moss/ops/activation_backward.hpp: the backward pass of `activation` (docs/math.md §4,
// conventions in docs/training.md).
//
// For out = act(x) (Mlp) or out = act(x) · up (GatedMlp) and the gradient dout of out:
//   dx  = (dout · up) · act'(x)      (dout · act'(x) without up)
//   dup = dout · act(x)              (gated only)
// elementwise, in float32 (float64 for T = double), rounded once to T; act(x) is the forward's
// own value (Act::apply in float) and act' comes from ActivationGrad<Act>
// (moss/ops/activation/math.hpp: Relu, Gelu, Silu, or one's own specialisation). No reductions:
// the result of an element depends on that element alone.
#pragma once

#include <cstdint>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation/math.hpp"

namespace moss {

/// Arguments of `activation_backward`: the forward's inputs, the gradient of its output and the
/// gradients wanted (an absent one is not computed). All views are (rows, cols) with unit inner
/// stride and rows that do not overlap. An output may be one of the inputs itself (the same data
/// and strides: updated in place, as the forward's out may be x), never a partial overlap, and
/// dx and dup must not overlap.
/// @tparam T storage type (float, f16 or bf16; double on the host only).
template <HostReal T>
struct ActivationBackwardArgs {
  ConstView<T, 2> x;     // (rows, cols): the forward's input
  ConstView<T, 2> up;    // (rows, cols), optional: the forward's up (gated)
  ConstView<T, 2> dout;  // (rows, cols): gradient of out
  TensorView<T, 2> dx;   // (rows, cols), optional: gradient of x
  TensorView<T, 2> dup;  // (rows, cols), optional, gated only: gradient of up
};

namespace detail {

/// True when two present, non-empty views' address ranges intersect.
template <class A, class B>
bool act_views_overlap(const TensorView<A, 2>& a, const TensorView<B, 2>& b) {
  if (!present(a) || !present(b) || a.empty() || b.empty()) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<std::uintptr_t>(b.data);
  const auto a1 = a0 + static_cast<std::uintptr_t>(span_elements(a)) * sizeof(A);
  const auto b1 = b0 + static_cast<std::uintptr_t>(span_elements(b)) * sizeof(B);
  return a0 < b1 && b0 < a1;
}

/// Throws `shape_error` unless output `o` is exactly `v` (same data and strides, when
/// `same_ok`) or does not overlap it.
template <class A, class B>
void act_expect_same_or_disjoint(const char* where, const TensorView<A, 2>& o, const TensorView<B, 2>& v,
                                 bool same_ok) {
  const bool same = same_ok && present(o) && o.data == v.data && o.stride == v.stride;
  MOSS_EXPECTS(same || !act_views_overlap(o, v), shape_error, where, ": ", o.name, " ", shape_string(o.shape),
               " overlaps ", v.name, " ", shape_string(v.shape), " in memory; ", o.name,
               same_ok ? " may be that input itself (the same data and strides) or must not overlap it"
                       : " must not overlap it");
}

}  // namespace detail

/// Checks `a` once at op entry: x (rows, cols), dout, and up, dx and dup when present, (rows,
/// cols) with unit inner stride and non-overlapping rows; dup only with up; outputs are inputs
/// themselves or disjoint from them, and disjoint from each other. Throws `shape_error` naming
/// the tensor, its shape and the expected shape.
template <HostReal T>
void validate(const ActivationBackwardArgs<T>& a, const char* where) {
  expect_valid(where, a.x);
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  const auto check = [&](const auto& v) {
    if (!present(v)) return;
    expect_valid(where, v);
    expect_shape(where, v, {rows, cols}, "(rows, cols)");
    expect_unit_inner_stride(where, v);
    MOSS_EXPECTS(rows <= 1 || v.stride[0] >= cols, shape_error, where, ": ", v.name, " has row stride ", v.stride[0],
                 " but its rows are ", cols, " wide (rows must not overlap)");
  };
  check(a.x);
  expect_valid(where, a.dout);
  expect_shape(where, a.dout, {rows, cols}, "(rows, cols)");
  check(a.dout);
  check(a.up);
  check(a.dx);
  check(a.dup);
  MOSS_EXPECTS(!present(a.dup) || present(a.up), shape_error, where, ": ", a.dup.name, " ", shape_string(a.dup.shape),
               " is the gradient of up, but the activation is not gated (up is absent)");
  const auto same_or_disjoint_from_inputs = [&](const TensorView<T, 2>& o) {
    detail::act_expect_same_or_disjoint(where, o, a.x, true);
    detail::act_expect_same_or_disjoint(where, o, a.up, true);
    detail::act_expect_same_or_disjoint(where, o, a.dout, true);
  };
  same_or_disjoint_from_inputs(a.dx);
  same_or_disjoint_from_inputs(a.dup);
  detail::act_expect_same_or_disjoint(where, a.dx, a.dup, false);
}

}  // namespace moss

#include "moss/ops/activation/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// runs the backward on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/activation/backward_cuda.cuh"
#endif
