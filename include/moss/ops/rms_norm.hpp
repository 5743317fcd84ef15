// moss/ops/rms_norm.hpp: RMS normalisation, with the pre-norm residual add of a Mamba block.
//
//   residual[r,:] += delta[r,:]            (when delta is given; rounded to the storage type of
//                                            the model when residual_in_fp32 is false)
//   out[r,i] = residual[r,i] / sqrt(mean_i(residual[r,:]²) + eps) · weight[i]
// The residual stream is float32; the output is in Tout; arithmetic is float32.
#pragma once

#include <cmath>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `rms_norm`.
/// @tparam Tdelta storage type of the optional delta added to the residual first.
/// @tparam Tout storage type of the normalised output.
template <class Tdelta, class Tout>
struct RmsNormArgs {
  TensorView<float, 2> residual;  // (rows, dim), unit inner stride; read, written when delta is present
  ConstView<Tdelta, 2> delta;     // (rows, dim), unit inner stride, optional: added to residual first
  bool residual_in_fp32 = true;   // false: the sum is rounded to Tdelta before it is stored
  ConstView<float, 1> weight;     // (dim)
  float eps = 1e-5f;
  TensorView<Tout, 2> out;  // (rows, dim), unit inner stride
};

/// Checks `a` once at op entry (both backends): dim ≥ 1, eps finite and ≥ 0 (`config_error`);
/// residual, delta (when present) and out (rows, dim) with unit inner stride and a row stride
/// ≥ dim, weight (dim) contiguous (`shape_error`). Rows may be 0.
template <class Tdelta, class Tout>
void validate(const RmsNormArgs<Tdelta, Tout>& a, const char* where) {
  static_assert(StorageType<Tdelta>, "moss::rms_norm: Tdelta must be float, moss::f16 or moss::bf16");
  static_assert(StorageType<Tout>, "moss::rms_norm: Tout must be float, moss::f16 or moss::bf16");
  expect_valid(where, a.residual);
  expect_valid(where, a.weight);
  expect_valid(where, a.out);
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  MOSS_EXPECTS(dim >= 1, config_error, where, ": ", a.residual.name, " is ", shape_string(a.residual.shape),
               " (rows, dim) but dim must be at least 1");
  MOSS_EXPECTS(std::isfinite(a.eps) && a.eps >= 0.0f, config_error, where, ": eps is ", a.eps,
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
