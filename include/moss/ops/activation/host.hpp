// moss/ops/activation/host.hpp: `activation` on the CPU.
#pragma once

#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation/math.hpp"

namespace moss {

/// Applies `Act` (times `up` when given) on the CPU: float32 arithmetic through Act::apply, or
/// float64 through ActivationGrad<Act>::value when T is double (which needs a differentiable
/// activation).
template <Activation Act, class T>
requires(!std::is_same_v<T, double> || DifferentiableActivation<Act>) void activation(const Host&,
                                                                                      const ActivationArgs<T>& a) {
  validate(a, "activation");
  using R = compute_t<T>;
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      R v = detail::activation_value<Act>(moss::widen(a.x.data[r * a.x.stride[0] + c]));
      if (present(a.up)) v *= moss::widen(a.up.data[r * a.up.stride[0] + c]);
      a.out.data[r * a.out.stride[0] + c] = moss::narrow<T>(v);
    }
}

}  // namespace moss
