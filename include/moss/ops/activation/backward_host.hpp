// moss/ops/activation/backward_host.hpp: the backward pass of `activation` on the CPU
// (docs/math.md §4), the reference of a future CUDA backward.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/ops/activation/math.hpp"
#include "moss/ops/activation_backward.hpp"

namespace moss {

/// Writes dx = (dout · up) · act'(x) and dup = dout · act(x) (those that `a` asks for) on the
/// CPU, in compute_t<T>. Each element's inputs are read before its outputs are written, so an
/// output may be an input itself.
template <DifferentiableActivation Act, HostReal T>
void activation_backward(const Host&, const ActivationBackwardArgs<T>& a) {
  using R = compute_t<T>;
  validate(a, "activation_backward");
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  const bool gated = present(a.up), want_dx = present(a.dx), want_dup = present(a.dup);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t c = 0; c < cols; ++c) {
      const R x = moss::widen(a.x.data[r * a.x.stride[0] + c]);
      const R dout = moss::widen(a.dout.data[r * a.dout.stride[0] + c]);
      const R up = gated ? moss::widen(a.up.data[r * a.up.stride[0] + c]) : R(1);
      const R dx = (gated ? dout * up : dout) * ActivationGrad<Act>::derivative(x);
      const R dup = want_dup ? dout * detail::activation_value<Act>(x) : R(0);
      if (want_dx) a.dx.data[r * a.dx.stride[0] + c] = moss::narrow<T>(dx);
      if (want_dup) a.dup.data[r * a.dup.stride[0] + c] = moss::narrow<T>(dup);
    }
  }
}

}  // namespace moss
