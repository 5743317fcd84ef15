// moss/ops/grouped_linear/host.hpp: `grouped_linear` on the CPU: the host `linear` over each segment.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/ops/grouped_linear.hpp"

namespace moss {

/// Runs every expert's linear map over its segment on the CPU (the host `linear` per segment).
template <class T>
void grouped_linear(const Host& host, const GroupedLinearArgs<T>& a) {
  validate(a, "grouped_linear");
  const index_t X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  const std::int32_t* off = a.host_offsets ? a.host_offsets : a.offsets.data;
  detail::check_offsets("grouped_linear", off, X, a.x.shape[0]);
  for (index_t e = 0; e < X; ++e) {
    const index_t r0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    LinearArgs<T> l;
    l.x = ConstView<T, 2>(a.x.data + r0 * a.x.stride[0], {n, in}, {a.x.stride[0], 1}, a.x.name);
    l.weight = ConstView<T, 2>(a.weight.data + e * out * in, {out, in}, a.weight.name);
    if (present(a.bias)) l.bias = ConstView<T, 1>(a.bias.data + e * out, {out}, a.bias.name);
    l.y = TensorView<T, 2>(a.y.data + r0 * a.y.stride[0], {n, out}, {a.y.stride[0], 1}, a.y.name);
    linear(host, l);
  }
}

}  // namespace moss
