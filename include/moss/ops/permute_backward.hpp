// moss/ops/permute_backward.hpp: the backward passes of `gather_rows` and `combine_rows`
// (docs/math.md §2.6 and §4), which are each other's transposes.
//
//   gather_rows_backward   dx[t, :]  = Σ_{kept s} dout[row(t, s), :]              s ascending
//                          (a combine without weights; a token with no kept slot gets 0)
//   combine_rows_backward  dy[row(t, s), c] = w_c · dout[t, c],  w_c = g[t, s] on the weighted
//                          columns [weight_begin, weight_end), 1 elsewhere (a gather scaled by
//                          the gate; rows that no kept pair owns get 0)
//                          dgate[t, s] = Σ_{c weighted} dout[t, c] · y[row(t, s), c]   c ascending
//                          (0 for a dropped slot)
// Sums in compute_t<T> (float; double for T = double), each in the fixed order above, rounded
// once to the output's type, so the same inputs give bitwise the same gradients. Every output is
// optional (an absent view is not computed). On the host T may be double (moss::HostReal); on
// CUDA (under nvcc, moss/ops/permute/backward_cuda.cuh) T is a storage type and the plan is
// trusted as by the forward CUDA ops.
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/permute.hpp"

namespace moss {

/// Arguments of `gather_rows_backward`: the plan the forward gathered with and the gradient of
/// its output.
/// @tparam T storage type of the gathered rows and of x (float, f16, bf16; double on the host).
template <HostReal T>
struct GatherRowsBackwardArgs {
  ConstView<T, 2> dout;                 // (rows, D): gradient of the gathered rows, unit inner stride
  ConstView<std::int32_t, 2> pair_row;  // (tokens, K) from the plan: row of pair (t, s), −1 if dropped
  TensorView<T, 2> dx;                  // (tokens, D), unit inner stride, written (every element)
};

/// Arguments of `combine_rows_backward`: the forward's inputs and the gradient of its output.
/// @tparam T storage type of y, out and their gradients (float, f16, bf16; double on the host).
template <HostReal T>
struct CombineRowsBackwardArgs {
  ConstView<T, 2> dout;                 // (tokens, D): gradient of out, unit inner stride
  ConstView<T, 2> y;                    // (rows, D): the forward's expert outputs, unit inner stride (read for dgate)
  ConstView<std::int32_t, 2> pair_row;  // (tokens, K) from the plan
  ConstView<compute_t<T>, 2> gate;      // (tokens, K), optional: the forward's combine weights
  index_t weight_begin = 0;             // the forward's weighted columns [weight_begin, weight_end)
  index_t weight_end = 0;
  TensorView<T, 2> dy;                // (rows, D), optional, contiguous: gradient of y
  TensorView<compute_t<T>, 2> dgate;  // (tokens, K), optional, contiguous: gradient of gate
};

namespace detail::permute {

/// Checks a (rows, D) view with unit inner stride whose rows do not overlap.
template <class V>
void expect_rows(const char* where, const V& v, const Extents<2>& shape, const char* axes) {
  expect_valid(where, v);
  expect_shape(where, v, shape, axes);
  expect_unit_inner_stride(where, v);
  MOSS_EXPECTS(v.shape[0] <= 1 || v.stride[0] >= v.shape[1], shape_error, where, ": ", v.name, " has row stride ",
               v.stride[0], " but its rows are ", v.shape[1], " wide (rows must not overlap)");
}

}  // namespace detail::permute

/// Checks `a` once at op entry: pair_row (tokens, K) contiguous with K ≥ 1, dout (tokens·K, D)
/// and dx (tokens, D). Throws `shape_error` naming the tensor, its shape and the expected shape.
template <class T>
void validate(const GatherRowsBackwardArgs<T>& a, const char* where) {
  expect_valid(where, a.pair_row);
  expect_contiguous(where, a.pair_row);
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1];
  MOSS_EXPECTS(K >= 1, config_error, where, ": ", a.pair_row.name, " is ", shape_string(a.pair_row.shape),
               " (tokens, K) but K must be at least 1");
  expect_valid(where, a.dout);
  const index_t D = a.dout.shape[1];
  detail::permute::expect_rows(where, a.dout, {tokens * K, D}, "(tokens·K, d)");
  detail::permute::expect_rows(where, a.dx, {tokens, D}, "(tokens, d)");
}

/// Checks `a` once at op entry: pair_row (tokens, K) contiguous, dout (tokens, D), y (tokens·K,
/// D), the weighted columns inside [0, D) (`config_error`) and a gate when they are not empty,
/// gate and dgate (tokens, K) contiguous, dy (tokens·K, D) contiguous; dgate needs y.
template <class T>
void validate(const CombineRowsBackwardArgs<T>& a, const char* where) {
  expect_valid(where, a.pair_row);
  expect_contiguous(where, a.pair_row);
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1];
  MOSS_EXPECTS(K >= 1, config_error, where, ": ", a.pair_row.name, " is ", shape_string(a.pair_row.shape),
               " (tokens, K) but K must be at least 1");
  expect_valid(where, a.dout);
  const index_t D = a.dout.shape[1];
  detail::permute::expect_rows(where, a.dout, {tokens, D}, "(tokens, d)");
  MOSS_EXPECTS(0 <= a.weight_begin && a.weight_begin <= a.weight_end && a.weight_end <= D, config_error, where,
               ": weighted columns [", a.weight_begin, ", ", a.weight_end, ") are not inside [0, ", D, ")");
  if (present(a.gate)) {
    expect_valid(where, a.gate);
    expect_shape(where, a.gate, {tokens, K}, "(tokens, K)");
    expect_contiguous(where, a.gate);
  } else {
    // With no tokens there is nothing to weigh (and a (0, K) gate has no data to be present).
    MOSS_EXPECTS(a.weight_begin == a.weight_end || tokens == 0, config_error, where, ": columns [", a.weight_begin,
                 ", ", a.weight_end, ") are to be weighted but no gate was given");
  }
  if (present(a.dy)) {
    expect_valid(where, a.dy);
    expect_shape(where, a.dy, {tokens * K, D}, "(tokens·K, d)");
    expect_contiguous(where, a.dy);
  }
  if (present(a.dgate)) {
    expect_valid(where, a.dgate);
    expect_shape(where, a.dgate, {tokens, K}, "(tokens, K)");
    expect_contiguous(where, a.dgate);
    MOSS_EXPECTS(present(a.y) || tokens == 0, shape_error, where, ": ", a.dgate.name, " is wanted but ", a.y.name,
                 " (the forward's expert outputs) is absent");
    detail::permute::expect_rows(where, a.y, {tokens * K, D}, "(tokens·K, d)");
  }
}

}  // namespace moss

#include "moss/ops/permute/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, as the forward's does.
#if defined(__CUDACC__)
#include "moss/ops/permute/backward_cuda.cuh"
#endif
