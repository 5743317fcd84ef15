// moss/ops/rms_norm_backward.hpp: the backward pass of `rms_norm` with its pre-norm residual add
// (docs/math.md §4, conventions in docs/training.md).
//
// The forward works in place: it replaces the stream r by r' = r + delta (r' = r without delta)
// and normalises r'. After it, `residual` holds r', which is both the input of the
// normalisation and the stream the later layers read. So the backward takes
//   residual       r' (rows, dim): the stream as the forward left it (nothing else is saved)
//   dout           the gradient of out
//   dresidual_out  optional: the gradient of r' that arrives from the later layers (the stream's
//                  gradient after this op); absent means zero
// and, with s = 1 / sqrt(mean_j r'[j]² + eps) per row and g = dout ⊙ weight, writes
//   dresidual[i] = s · g[i] − r'[i] · (s³ / dim) · Σ_j g[j] · r'[j]  + dresidual_out[i]
//   ddelta       = dresidual, stored in Tdelta (r' = r + delta: both summands get r''s gradient)
//   dweight[i]   = Σ_rows dout[i] · (r'[i] · s)
// When the forward rounds r' to Tdelta (residual_in_fp32 false) the rounding is taken as the
// identity (its derivative almost everywhere), as autograd does for a dtype cast. Row sums run
// over i in increasing order; dweight sums over rows in increasing order: no atomics, the same
// inputs give the same bits.
#pragma once

#include <cstdint>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/rms_norm.hpp"

namespace moss {

/// Arguments of `rms_norm_backward`. Optional views have a null `data`; an absent gradient
/// output is not computed. All (rows, dim) views have unit inner stride and row stride ≥ dim.
/// @tparam Tdelta storage type of the forward's delta (and of ddelta).
/// @tparam Tout storage type of the forward's out (and of dout).
template <class Tdelta, class Tout>
requires RmsNormTypes<Tdelta, Tout>
struct RmsNormBackwardArgs {
  /// float32; double for the host's double instantiation.
  using Real = rms_norm_compute_t<Tdelta, Tout>;
  ConstView<Real, 2> residual;  // (rows, dim): the stream after the forward (r + delta), as it left it
  ConstView<Real, 1> weight;    // (dim), contiguous
  Real eps = static_cast<Real>(1e-5);
  ConstView<Tout, 2> dout;           // (rows, dim): gradient of out
  ConstView<Real, 2> dresidual_out;  // (rows, dim), optional: gradient of the stream from the later layers
  TensorView<Real, 2> dresidual;     // (rows, dim), optional: gradient of the stream before the op; may be
                                     // dresidual_out itself (same data and strides: updated in place)
  TensorView<Tdelta, 2> ddelta;      // (rows, dim), optional: gradient of delta (dresidual rounded to Tdelta)
  TensorView<Real, 1> dweight;       // (dim), optional, contiguous
  bool accumulate = false;           // add into dweight instead of overwriting it
};

namespace detail {

/// True when two present, non-empty views' address ranges intersect.
template <class A, std::size_t RA, class B, std::size_t RB>
bool rms_norm_views_overlap(const TensorView<A, RA>& a, const TensorView<B, RB>& b) {
  if (!present(a) || !present(b) || a.empty() || b.empty()) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<std::uintptr_t>(b.data);
  const auto a1 = a0 + static_cast<std::uintptr_t>(span_elements(a)) * sizeof(A);
  const auto b1 = b0 + static_cast<std::uintptr_t>(span_elements(b)) * sizeof(B);
  return a0 < b1 && b0 < a1;
}

/// Throws `shape_error` when output `o` overlaps `v` in memory.
template <class A, std::size_t RA, class B, std::size_t RB>
void rms_norm_expect_disjoint(const char* where, const TensorView<A, RA>& o, const TensorView<B, RB>& v) {
  MOSS_EXPECTS(!rms_norm_views_overlap(o, v), shape_error, where, ": ", o.name, " ", shape_string(o.shape),
               " overlaps ", v.name, " ", shape_string(v.shape), " in memory; ", o.name,
               " must not alias an input or another output (give it its own buffer)");
}

/// Checks a (rows, dim) view of the backward: shape, unit inner stride, rows that do not overlap.
template <class T>
void rms_norm_expect_rows(const char* where, const TensorView<T, 2>& v, index_t rows, index_t dim) {
  expect_valid(where, v);
  expect_shape(where, v, {rows, dim}, "(rows, dim)");
  expect_unit_inner_stride(where, v);
  MOSS_EXPECTS(rows <= 1 || v.stride[0] >= dim, shape_error, where, ": ", v.name, " has row stride ", v.stride[0],
               " but its rows are ", dim, " wide (rows must not overlap)");
}

}  // namespace detail

/// Checks `a` once at op entry: dim ≥ 1 and eps finite and ≥ 0 (`config_error`); residual, dout
/// and the present (rows, dim) views as in the forward, weight and dweight (dim) contiguous
/// (`shape_error` naming the tensor, its shape and the expected shape). Rows may be 0. The
/// outputs must not overlap an input or each other, except that dresidual may be exactly
/// dresidual_out (in place).
template <class Tdelta, class Tout>
void validate(const RmsNormBackwardArgs<Tdelta, Tout>& a, const char* where) {
  expect_valid(where, a.residual);
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  MOSS_EXPECTS(dim >= 1, config_error, where, ": ", a.residual.name, " is ", shape_string(a.residual.shape),
               " (rows, dim) but dim must be at least 1");
  MOSS_EXPECTS(std::isfinite(a.eps) && a.eps >= 0, config_error, where, ": eps is ", a.eps,
               " but must be finite and >= 0");
  detail::rms_norm_expect_rows(where, a.residual, rows, dim);
  expect_valid(where, a.weight);
  expect_shape(where, a.weight, {dim}, "(dim)");
  expect_contiguous(where, a.weight);
  detail::rms_norm_expect_rows(where, a.dout, rows, dim);
  if (present(a.dresidual_out)) detail::rms_norm_expect_rows(where, a.dresidual_out, rows, dim);
  if (present(a.dresidual)) detail::rms_norm_expect_rows(where, a.dresidual, rows, dim);
  if (present(a.ddelta)) detail::rms_norm_expect_rows(where, a.ddelta, rows, dim);
  if (present(a.dweight)) {
    expect_valid(where, a.dweight);
    expect_shape(where, a.dweight, {dim}, "(dim)");
    expect_contiguous(where, a.dweight);
  }
  const bool in_place =
      present(a.dresidual) && a.dresidual.data == a.dresidual_out.data && a.dresidual.stride == a.dresidual_out.stride;
  const auto disjoint_from_inputs = [&](const auto& o) {
    detail::rms_norm_expect_disjoint(where, o, a.residual);
    detail::rms_norm_expect_disjoint(where, o, a.weight);
    detail::rms_norm_expect_disjoint(where, o, a.dout);
  };
  disjoint_from_inputs(a.dresidual);
  disjoint_from_inputs(a.ddelta);
  disjoint_from_inputs(a.dweight);
  if (!in_place) detail::rms_norm_expect_disjoint(where, a.dresidual, a.dresidual_out);
  detail::rms_norm_expect_disjoint(where, a.ddelta, a.dresidual_out);
  detail::rms_norm_expect_disjoint(where, a.dweight, a.dresidual_out);
  detail::rms_norm_expect_disjoint(where, a.dresidual, a.ddelta);
  detail::rms_norm_expect_disjoint(where, a.dresidual, a.dweight);
  detail::rms_norm_expect_disjoint(where, a.ddelta, a.dweight);
}

}  // namespace moss

#include "moss/ops/rms_norm/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// runs the backward on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/rms_norm/backward_cuda.cuh"
#endif
