// moss/ops/grouped_linear/host.hpp: `grouped_linear` on the CPU: the host `linear` over each segment.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/ops/grouped_linear.hpp"

namespace moss {

/// Runs every expert's linear map over its segment on the CPU (the host `linear` per segment).
template <class T>
void grouped_linear(const Host& host, const GroupedLinearArgs<T>& a) {
  validate(a, "grouped_linear");
  const std::int32_t* off = a.host_offsets ? a.host_offsets : a.offsets.data;
  detail::check_offsets("grouped_linear", off, a.weight.shape[0], a.x.shape[0]);
  detail::for_each_segment(a, off, [&](const LinearArgs<T>& l) { linear(host, l); });
  if (a.resident_offsets)  // the rows past the kept ones, as the CUDA kernel writes them
    for (index_t r = off[a.weight.shape[0]]; r < a.x.shape[0]; ++r)
      for (index_t o = 0; o < a.y.shape[1]; ++o) a.y.data[r * a.y.stride[0] + o] = T(0);
}

}  // namespace moss
