// moss/ops/embedding/backward_host.hpp: `embedding_backward` on the CPU.
//
// The (id, row) pairs are sorted (ids first, rows second: a total order, so the sort's result
// does not depend on the sort), then each run of equal ids is one segment whose dout rows are
// summed in ascending row order into a zeroed sum. This is the order the CUDA kernel will use.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/embedding/math.hpp"
#include "moss/ops/embedding_backward.hpp"

namespace moss {

/// dtable[v, :] = Σ_{ids[r] = v} dout[r, :] on the CPU, in compute_t<T>: written (rows of
/// unseen ids become zero) or added when `a.accumulate`. Every id is checked first; a bad one
/// throws `shape_error` ("embedding_backward: ids[r] = id is outside the table's rows [0, V)",
/// the first bad position) and leaves dtable untouched.
template <class T>
void embedding_backward(const Host&, const EmbeddingBackwardArgs<T>& a) {
  validate(a, "embedding_backward");
  using C = compute_t<T>;
  const index_t rows = a.ids.shape[0];
  const index_t vocab = a.dtable.shape[0];
  const index_t dim = a.dtable.shape[1];
  std::vector<std::pair<std::int64_t, index_t>> order(static_cast<std::size_t>(rows));  // (id, row)
  for (index_t r = 0; r < rows; ++r) {
    const std::int64_t id = a.ids(r);
    if (!embedding_id_valid(id, vocab)) detail::raise_bad_embedding_id("embedding_backward", r, id, vocab);
    order[static_cast<std::size_t>(r)] = {id, r};
  }
  std::sort(order.begin(), order.end());

  if (!a.accumulate) {
    for (index_t v = 0; v < vocab; ++v) std::fill_n(a.dtable.data + v * a.dtable.stride[0], dim, C(0));
  }
  std::vector<C> sum(static_cast<std::size_t>(dim));
  for (std::size_t s = 0; s < order.size();) {
    const std::int64_t id = order[s].first;
    std::fill(sum.begin(), sum.end(), C(0));
    for (; s < order.size() && order[s].first == id; ++s) {
      const C* g = a.dout.data + order[s].second * a.dout.stride[0];
      for (index_t i = 0; i < dim; ++i) sum[static_cast<std::size_t>(i)] += g[i];
    }
    C* dst = a.dtable.data + id * a.dtable.stride[0];
    if (a.accumulate) {
      for (index_t i = 0; i < dim; ++i) dst[i] += sum[static_cast<std::size_t>(i)];
    } else {
      std::copy(sum.begin(), sum.end(), dst);
    }
  }
}

}  // namespace moss
