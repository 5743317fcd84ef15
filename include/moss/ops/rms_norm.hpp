// moss/ops/rms_norm.hpp: RMS normalisation, with the pre-norm residual add of a Mamba block.
//
//   residual[r,:] += delta[r,:]            (when delta is given; rounded to the storage type of
//                                            the model when residual_in_fp32 is false)
//   out[r,i] = residual[r,i] / sqrt(mean_i(residual[r,:]²) + eps) · weight[i]
// The residual stream is float32; the output is in Tout; arithmetic is float32. On the host the
// op also instantiates with Tdelta = Tout = double: then the stream, the weight, eps and every
// product and sum are float64 (rms_norm_compute_t; gradient checks, docs/training.md). CUDA takes
// the storage types only. The backward pass is moss/ops/rms_norm_backward.hpp.
#pragma once

#include <cmath>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// The arithmetic type of `rms_norm` over (Tdelta, Tout), which is also the type of its residual
/// stream, weight and eps: float32 (compute_t of the storage types), or double when the host op
/// is instantiated with Tdelta = Tout = double. Defined for any pair so that `validate` can
/// name a wrong type.
template <class Tdelta, class Tout>
using rms_norm_compute_t = std::conditional_t<std::is_same_v<Tout, double>, double, float>;

/// The (Tdelta, Tout) pairs `rms_norm` takes: two storage types, or double twice (host only).
template <class Tdelta, class Tout>
concept RmsNormTypes = (StorageType<Tdelta> && StorageType<Tout>) ||
                       (std::is_same_v<Tdelta, double> && std::is_same_v<Tout, double>);

/// Arguments of `rms_norm`.
/// @tparam Tdelta storage type of the optional delta added to the residual first.
/// @tparam Tout storage type of the normalised output.
template <class Tdelta, class Tout>
struct RmsNormArgs {
  /// float; double for the host's double instantiation.
  using Real = rms_norm_compute_t<Tdelta, Tout>;
  TensorView<Real, 2> residual;  // (rows, dim), unit inner stride; read, written when delta is present
  ConstView<Tdelta, 2> delta;    // (rows, dim), unit inner stride, optional: added to residual first
  bool residual_in_fp32 = true;  // false: the sum is rounded to Tdelta before it is stored
  ConstView<Real, 1> weight;     // (dim)
  Real eps = static_cast<Real>(1e-5);
  TensorView<Tout, 2> out;  // (rows, dim), unit inner stride
};

/// Checks `a` once at op entry (both backends): the types (a static_assert; double on the host
/// only, see the CUDA overload), dim ≥ 1, eps finite and ≥ 0 (`config_error`);
/// residual, delta (when present) and out (rows, dim) with unit inner stride and a row stride
/// ≥ dim, weight (dim) contiguous (`shape_error`). Rows may be 0.
template <class Tdelta, class Tout>
void validate(const RmsNormArgs<Tdelta, Tout>& a, const char* where) {
  static_assert(
      StorageType<Tdelta> || (std::is_same_v<Tdelta, double> && std::is_same_v<Tout, double>),
      "moss::rms_norm: Tdelta must be float, moss::f16 or moss::bf16 (or double with Tout double, on the host)");
  static_assert(
      StorageType<Tout> || (std::is_same_v<Tout, double> && std::is_same_v<Tdelta, double>),
      "moss::rms_norm: Tout must be float, moss::f16 or moss::bf16 (or double with Tdelta double, on the host)");
  expect_valid(where, a.residual);
  expect_valid(where, a.weight);
  expect_valid(where, a.out);
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  MOSS_EXPECTS(dim >= 1, config_error, where, ": ", a.residual.name, " is ", shape_string(a.residual.shape),
               " (rows, dim) but dim must be at least 1");
  MOSS_EXPECTS(std::isfinite(a.eps) && a.eps >= 0, config_error, where, ": eps is ", a.eps,
               " but must be finite and >= 0");
  expect_shape(where, a.weight, {dim}, "(dim)");
  expect_contiguous(where, a.weight);
  expect_shape(where, a.out, {rows, dim}, "(rows, dim)");
  expect_unit_inner_stride(where, a.residual);
  expect_unit_inner_stride(where, a.out);
  MOSS_EXPECTS(rows <= 1 || a.residual.stride[0] >= dim, shape_error, where, ": ", a.residual.name, " has row stride ",
               a.residual.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
  MOSS_EXPECTS(rows <= 1 || a.out.stride[0] >= dim, shape_error, where, ": ", a.out.name, " has row stride ",
               a.out.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
  if (present(a.delta)) {
    expect_valid(where, a.delta);
    expect_shape(where, a.delta, {rows, dim}, "(rows, dim)");
    expect_unit_inner_stride(where, a.delta);
    MOSS_EXPECTS(rows <= 1 || a.delta.stride[0] >= dim, shape_error, where, ": ", a.delta.name, " has row stride ",
                 a.delta.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
  }
}

}  // namespace moss

#include "moss/ops/rms_norm/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/rms_norm/cuda.cuh"
#endif
