// moss/ops/rms_norm/math.hpp: the arithmetic of `rms_norm`, written once for host and CUDA.
#pragma once

#include <math.h>

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

}  // namespace moss
