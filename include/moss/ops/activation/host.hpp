// moss/ops/activation/host.hpp: `activation` on the CPU.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/ops/activation.hpp"

namespace moss {

/// Applies `Act` (times `up` when given) on the CPU.
template <Activation Act, class T>
void activation(const Host&, const ActivationArgs<T>& a) {
  validate(a, "activation");
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      float v = Act::apply(to_float(a.x.data[r * a.x.stride[0] + c]));
      if (present(a.up)) v *= to_float(a.up.data[r * a.up.stride[0] + c]);
      a.out.data[r * a.out.stride[0] + c] = from_float<T>(v);
    }
}

}  // namespace moss
