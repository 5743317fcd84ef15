// moss/ops/rms_norm/math.hpp: the arithmetic of `rms_norm`, written once for host and CUDA.
// The double overloads are the same formulas in float64 for the host's double instantiation
// (docs/training.md), host only; the float ones stay the exact matches of every float call.
#pragma once

#include <math.h>

#include <cmath>
#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// The residual stream after the block's delta is added: float32, or the sum rounded to the
/// model's storage type `Tdelta` when the stream is not kept in float32.
template <class Tdelta>
MOSS_HD float rms_norm_residual(float residual, float delta, bool residual_in_fp32) {
  const float sum = residual + delta;
  return residual_in_fp32 ? sum : to_float(from_float<Tdelta>(sum));
}

/// 1 / sqrt(mean of squares + eps) of a row of `dim` values whose squares sum to `sum_squares`.
MOSS_HD float rms_norm_scale(float sum_squares, index_t dim, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
}

/// One normalised element: residual · scale · weight, multiplied in this order.
MOSS_HD float rms_norm_output(float residual, float scale, float weight) { return residual * scale * weight; }

/// The residual stream after the delta is added, in double: no rounding (Tdelta is double).
template <class Tdelta>
double rms_norm_residual(double residual, double delta, bool /*residual_in_fp32*/) {
  return residual + delta;
}

/// 1 / sqrt(mean of squares + eps) in double.
inline double rms_norm_scale(double sum_squares, index_t dim, double eps) {
  return 1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps);
}

/// One normalised element in double: residual · scale · weight, in this order.
inline double rms_norm_output(double residual, double scale, double weight) { return residual * scale * weight; }

}  // namespace moss
