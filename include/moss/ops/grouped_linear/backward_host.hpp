// moss/ops/grouped_linear/backward_host.hpp: `grouped_linear_backward` on the CPU: the host
// `linear_backward` over each expert's segment, experts in order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/linear/backward_host.hpp"
#include "moss/ops/linear/math.hpp"

namespace moss {

/// The gradients of `grouped_linear` on the CPU (see moss/ops/grouped_linear_backward.hpp): each
/// present output is computed; an empty segment gives dW_e = 0 and db_e = 0 (unchanged when
/// accumulating), rows at or past offsets[X] get dX = 0.
template <class T>
void grouped_linear_backward(const Host& host, const GroupedLinearBackwardArgs<T>& a) {
  validate(a, "grouped_linear_backward");
  using C = compute_t<T>;
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0];
  const std::int32_t* off = a.host_offsets ? a.host_offsets : a.offsets.data;
  detail::check_offsets("grouped_linear_backward", off, X, rows);
  if (present(a.dx))
    for (index_t r = off[X]; r < rows; ++r) {
      T* dst = a.dx.data + r * a.dx.stride[0];
      std::fill(dst, dst + in, moss::narrow<T>(C(0)));
    }
  detail::grouped_linear_backward_segments(host, a, off);
}

}  // namespace moss
