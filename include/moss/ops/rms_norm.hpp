// moss/ops/rms_norm.hpp: RMS normalisation, with the pre-norm residual add of a Mamba block.
//
//   residual[r,:] += delta[r,:]            (when delta is given; rounded to the storage type of
//                                            the model when residual_in_fp32 is false)
//   out[r,i] = residual[r,i] / sqrt(mean_i(residual[r,:]²) + eps) · weight[i]
// The residual stream is float32; the output is in Tout; arithmetic is float32.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `rms_norm`.
/// @tparam Tdelta storage type of the optional delta added to the residual first.
/// @tparam Tout storage type of the normalised output.
template <class Tdelta, class Tout>
struct RmsNormArgs {
  TensorView<float, 2> residual;     // (rows, dim), read; written when delta is present
  ConstView<Tdelta, 2> delta;        // (rows, dim), optional: added to residual first
  bool residual_in_fp32 = true;      // false: the sum is rounded to Tdelta before it is stored
  ConstView<float, 1> weight;        // (dim)
  float eps = 1e-5f;
  TensorView<Tout, 2> out;           // (rows, dim), unit inner stride
};

}  // namespace moss
