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
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0], out = a.weight.shape[1];
  const std::int32_t* off = a.host_offsets ? a.host_offsets : a.offsets.data;
  detail::check_offsets("grouped_linear_backward", off, X, rows);
  if (present(a.dx))
    for (index_t r = off[X]; r < rows; ++r) {
      T* dst = a.dx.data + r * a.dx.stride[0];
      std::fill(dst, dst + in, moss::narrow<T>(C(0)));
    }
  for (index_t e = 0; e < X; ++e) {
    const index_t r0 = off[e], n = off[e + 1] - off[e];
    LinearBackwardArgs<T> l;
    l.dy = ConstView<T, 2>(a.dy.data + r0 * a.dy.stride[0], {n, out}, {a.dy.stride[0], 1}, a.dy.name);
    l.x = ConstView<T, 2>(a.x.data + r0 * a.x.stride[0], {n, in}, {a.x.stride[0], 1}, a.x.name);
    l.weight = ConstView<T, 2>(a.weight.data + e * out * in, {out, in}, a.weight.name);
    if (present(a.dx) && n > 0)
      l.dx = TensorView<T, 2>(a.dx.data + r0 * a.dx.stride[0], {n, in}, {a.dx.stride[0], 1}, a.dx.name);
    if (present(a.dweight)) l.dweight = TensorView<C, 2>(a.dweight.data + e * out * in, {out, in}, a.dweight.name);
    if (present(a.dbias)) l.dbias = TensorView<C, 1>(a.dbias.data + e * out, {out}, a.dbias.name);
    l.accumulate = a.accumulate;
    if (!present(l.dx) && !present(l.dweight) && !present(l.dbias)) continue;
    linear_backward(host, l);
  }
}

}  // namespace moss
