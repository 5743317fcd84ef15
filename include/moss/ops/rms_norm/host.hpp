// moss/ops/rms_norm/host.hpp: `rms_norm` on the CPU (the oracle of the CUDA kernel).
#pragma once

#include "moss/backend/host.hpp"
#include "moss/ops/rms_norm.hpp"
#include "moss/ops/rms_norm/math.hpp"

namespace moss {

/// Adds delta to the residual stream (when given) and writes the RMS-normalised rows to out.
/// One pass per row accumulates the sum of squares, a second writes the output; float32
/// arithmetic, or float64 when Tdelta = Tout = double.
template <class Tdelta, class Tout>
void rms_norm(const Host&, const RmsNormArgs<Tdelta, Tout>& a) {
  using R = rms_norm_compute_t<Tdelta, Tout>;
  validate(a, "rms_norm");
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  const bool has_delta = present(a.delta);
  for (index_t r = 0; r < rows; ++r) {
    R* res = a.residual.data + r * a.residual.stride[0];  // (dim)
    R sum_squares = R(0);
    for (index_t i = 0; i < dim; ++i) {
      R v = res[i];
      if (has_delta) {
        v = rms_norm_residual<Tdelta>(v, moss::widen(a.delta.data[r * a.delta.stride[0] + i]), a.residual_in_fp32);
        res[i] = v;
      }
      sum_squares += v * v;
    }
    const R scale = rms_norm_scale(sum_squares, dim, a.eps);
    Tout* out = a.out.data + r * a.out.stride[0];  // (dim)
    for (index_t i = 0; i < dim; ++i) out[i] = moss::narrow<Tout>(rms_norm_output(res[i], scale, a.weight.data[i]));
  }
}

}  // namespace moss
