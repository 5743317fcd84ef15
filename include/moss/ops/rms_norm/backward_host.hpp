// moss/ops/rms_norm/backward_host.hpp: the backward pass of `rms_norm` on the CPU (docs/math.md
// §4): plain loops in float32 (float64 for the double instantiation), the reference of a
// future CUDA backward.
#pragma once

#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/rms_norm/math.hpp"
#include "moss/ops/rms_norm_backward.hpp"

namespace moss {

/// Writes the gradients `a` asks for (dresidual, ddelta, dweight) on the CPU. Per row: the sum
/// of squares of r' (as the forward sums it, so s is the forward's scale), then
/// Σ_j dout[j] · weight[j] · r'[j], then the row's gradients; dweight gathers the rows in order.
template <class Tdelta, class Tout>
void rms_norm_backward(const Host&, const RmsNormBackwardArgs<Tdelta, Tout>& a) {
  using R = rms_norm_compute_t<Tdelta, Tout>;
  validate(a, "rms_norm_backward");
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  const bool want_rows = present(a.dresidual) || present(a.ddelta);
  std::vector<R> dweight(present(a.dweight) ? static_cast<std::size_t>(dim) : 0, R(0));
  for (index_t r = 0; r < rows; ++r) {
    const R* res = a.residual.data + r * a.residual.stride[0];  // (dim)
    const Tout* dout = a.dout.data + r * a.dout.stride[0];      // (dim)
    R sum_squares = R(0);
    for (index_t i = 0; i < dim; ++i) sum_squares += res[i] * res[i];
    const R scale = rms_norm_scale(sum_squares, dim, a.eps);
    if (present(a.dweight))
      for (index_t i = 0; i < dim; ++i) dweight[i] += moss::widen(dout[i]) * (res[i] * scale);
    if (!want_rows) continue;
    R dot = R(0);  // Σ_j dout[j] · weight[j] · r'[j]
    for (index_t i = 0; i < dim; ++i) dot += moss::widen(dout[i]) * a.weight.data[i] * res[i];
    const R coef = dot * (scale * scale * scale) / static_cast<R>(dim);
    const R* dres_out = present(a.dresidual_out) ? a.dresidual_out.data + r * a.dresidual_out.stride[0] : nullptr;
    R* dres = present(a.dresidual) ? a.dresidual.data + r * a.dresidual.stride[0] : nullptr;
    Tdelta* ddelta = present(a.ddelta) ? a.ddelta.data + r * a.ddelta.stride[0] : nullptr;
    for (index_t i = 0; i < dim; ++i) {
      R g = moss::widen(dout[i]) * a.weight.data[i] * scale - res[i] * coef;
      if (dres_out) g += dres_out[i];  // read before dres[i] is written: dres may be dres_out
      if (dres) dres[i] = g;
      if (ddelta) ddelta[i] = moss::narrow<Tdelta>(g);
    }
  }
  if (present(a.dweight))
    for (index_t i = 0; i < dim; ++i) a.dweight.data[i] = a.accumulate ? a.dweight.data[i] + dweight[i] : dweight[i];
}

}  // namespace moss
