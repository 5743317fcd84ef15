// moss/ops/causal_conv1d.hpp: depthwise causal 1-D convolution (docs/math.md §1.3), full
// sequence and one-token decode step.
//
//   out[b,d,t] = act( bias[d] + Σ_{k=0..W-1} weight[d,k] · x[b,d,t-(W-1)+k] ),  act = SiLU or identity
// where x at t < 0 is the initial state (its column W-1+t) or 0. The final state holds the last
// W-1 inputs (columns oldest → newest), taken from the initial state when L < W-1. States hold
// raw inputs x, not outputs, so a final state is a valid initial state for the next chunk and a
// valid decode state for `causal_conv1d_step`.
//
// Memory rules (checked): every element of an output (out, final_state; the step's out and
// state) is distinct memory (no zero or overlapping strides), and the outputs must not overlap
// any input or each other; in particular out must not alias x, and final_state must not
// alias initial_state (use two state buffers, or the step op for in-place decode). Any W ≥ 1 runs
// on the host; the CUDA kernels take W ∈ kCausalConv1dCudaWidths. The host also takes T = double
// (float64 arithmetic, for gradient checks); CUDA takes the storage types only. The backward pass
// is moss/ops/causal_conv1d_backward.hpp.
//
// This header gives the host backend; moss/ops/causal_conv1d/cuda.cuh (nvcc) adds the CUDA one.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/causal_conv1d/args.hpp"

namespace moss {

namespace detail {

/// `v` itself, or `v` named `field` when its creator left the default name, so that messages
/// always say which argument is wrong.
template <class T, std::size_t Rank>
TensorView<T, Rank> conv1d_named(const TensorView<T, Rank>& v, const char* field) {
  return std::strcmp(v.name, "tensor") == 0 ? v.named(field) : v;
}

/// True when the address ranges spanned by two present, non-empty views intersect.
template <class A, std::size_t RA, class B, std::size_t RB>
bool conv1d_views_overlap(const TensorView<A, RA>& a, const TensorView<B, RB>& b) {
  if (!present(a) || !present(b) || a.empty() || b.empty()) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<std::uintptr_t>(b.data);
  const auto a1 = a0 + static_cast<std::uintptr_t>(span_elements(a)) * sizeof(A);
  const auto b1 = b0 + static_cast<std::uintptr_t>(span_elements(b)) * sizeof(B);
  return a0 < b1 && b0 < a1;
}

/// Throws `shape_error` when output `o` overlaps `v` in memory.
template <class A, std::size_t RA, class B, std::size_t RB>
void conv1d_expect_disjoint(const char* where, const TensorView<A, RA>& o, const TensorView<B, RB>& v) {
  MOSS_EXPECTS(!conv1d_views_overlap(o, v), shape_error, where, ": ", o.name, " ", shape_string(o.shape), " overlaps ",
               v.name, " ", shape_string(v.shape), " in memory; ", o.name,
               " must not alias an input or another output (give it its own buffer)");
}

/// Throws `shape_error` unless the elements of output `v` are distinct memory: with its axes of
/// extent > 1 sorted by stride, each stride must step past everything the inner axes span.
template <class T, std::size_t Rank>
void conv1d_expect_distinct(const char* where, const TensorView<T, Rank>& v) {
  if (v.empty()) return;
  std::array<std::array<index_t, 2>, Rank> axes{};  // (stride, extent)
  for (std::size_t i = 0; i < Rank; ++i) axes[i] = {v.stride[i], v.shape[i] > 1 ? v.shape[i] : 1};
  std::sort(axes.begin(), axes.end());
  index_t span = 0;  // elements the inner axes reach past their first one
  for (const auto& [stride, extent] : axes) {
    if (extent == 1) continue;
    MOSS_EXPECTS(stride > span, shape_error, where, ": ", v.name, " ", shape_string(v.shape), " with strides ",
                 shape_string(v.stride),
                 " may reach some memory more than once (each stride must step past the span of the smaller ones);"
                 " an output needs distinct elements");
    span += (extent - 1) * stride;
  }
}

/// Checks weight (dim, W) and returns {dim, W}.
template <class T>
std::array<index_t, 2> conv1d_expect_weight(const char* where, const ConstView<T, 2>& weight) {
  expect_valid(where, weight);
  MOSS_EXPECTS(weight.shape[0] >= 1, config_error, where, ": ", weight.name, " is ", shape_string(weight.shape),
               " (dim, W) but dim must be at least 1");
  MOSS_EXPECTS(weight.shape[1] >= 1, config_error, where, ": ", weight.name, " is ", shape_string(weight.shape),
               " (dim, W) but the filter width W must be at least 1");
  return {weight.shape[0], weight.shape[1]};
}

}  // namespace detail

/// Checks the shapes, strides and memory layout of `causal_conv1d` arguments; throws
/// `config_error` (dim or W < 1) or `shape_error` naming `where` and the tensor.
template <class T>
void validate(const CausalConv1dArgs<T>& args, const char* where) {
  const auto weight = detail::conv1d_named(args.weight, "weight");
  const auto x = detail::conv1d_named(args.x, "x");
  const auto out = detail::conv1d_named(args.out, "out");
  const auto bias = detail::conv1d_named(args.bias, "bias");
  const auto initial_state = detail::conv1d_named(args.initial_state, "initial_state");
  const auto final_state = detail::conv1d_named(args.final_state, "final_state");

  const auto [dim, width] = detail::conv1d_expect_weight(where, weight);
  expect_valid(where, x);
  expect_shape(where, x, {any, dim, any}, "(batch, dim, L)");
  const index_t batch = x.shape[0], seqlen = x.shape[2];
  expect_valid(where, out);
  expect_shape(where, out, {batch, dim, seqlen}, "(batch, dim, L)");
  if (present(bias)) {
    expect_valid(where, bias);
    expect_shape(where, bias, {dim}, "(dim)");
  }
  if (present(initial_state)) {
    expect_valid(where, initial_state);
    expect_shape(where, initial_state, {batch, dim, width - 1}, "(batch, dim, W-1)");
  }
  if (present(final_state)) {
    expect_valid(where, final_state);
    expect_shape(where, final_state, {batch, dim, width - 1}, "(batch, dim, W-1)");
  }
  detail::conv1d_expect_distinct(where, out);
  if (present(final_state)) detail::conv1d_expect_distinct(where, final_state);
  for (const auto& o : {out, final_state}) {
    detail::conv1d_expect_disjoint(where, o, x);
    detail::conv1d_expect_disjoint(where, o, weight);
    detail::conv1d_expect_disjoint(where, o, bias);
    detail::conv1d_expect_disjoint(where, o, initial_state);
  }
  detail::conv1d_expect_disjoint(where, out, final_state);
}

/// Checks the shapes, strides and memory layout of `causal_conv1d_step` arguments; throws
/// `config_error` (dim or W < 1) or `shape_error` naming `where` and the tensor.
template <class T>
void validate(const CausalConv1dStepArgs<T>& args, const char* where) {
  const auto weight = detail::conv1d_named(args.weight, "weight");
  const auto state = detail::conv1d_named(args.state, "state");
  const auto x = detail::conv1d_named(args.x, "x");
  const auto bias = detail::conv1d_named(args.bias, "bias");
  const auto out = detail::conv1d_named(args.out, "out");

  const auto [dim, width] = detail::conv1d_expect_weight(where, weight);
  expect_valid(where, x);
  expect_shape(where, x, {any, dim}, "(batch, dim)");
  const index_t batch = x.shape[0];
  expect_valid(where, state);
  expect_shape(where, state, {batch, dim, width - 1}, "(batch, dim, W-1)");
  expect_valid(where, out);
  expect_shape(where, out, {batch, dim}, "(batch, dim)");
  if (present(bias)) {
    expect_valid(where, bias);
    expect_shape(where, bias, {dim}, "(dim)");
  }
  detail::conv1d_expect_distinct(where, out);
  detail::conv1d_expect_distinct(where, state);
  detail::conv1d_expect_disjoint(where, out, x);
  detail::conv1d_expect_disjoint(where, out, weight);
  detail::conv1d_expect_disjoint(where, out, bias);
  detail::conv1d_expect_disjoint(where, out, state);
  detail::conv1d_expect_disjoint(where, state, x);
  detail::conv1d_expect_disjoint(where, state, weight);
  detail::conv1d_expect_disjoint(where, state, bias);
}

/// Throws `unsupported_error` unless the CUDA kernels are compiled for filter width `width`.
inline void expect_causal_conv1d_cuda_width(index_t width, const char* where) {
  std::string supported;
  for (const int w : kCausalConv1dCudaWidths) {
    if (w == width) return;
    supported += (supported.empty() ? "" : ", ") + std::to_string(w);
  }
  raise<unsupported_error>(where, ": the CUDA kernels do not support filter width W = ", width,
                           " (weight is (dim, W)); supported on CUDA: W = ", supported,
                           "; the host backend takes any W >= 1");
}

}  // namespace moss

#include "moss/ops/causal_conv1d/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/causal_conv1d/cuda.cuh"
#endif
