// moss/ops/sinkhorn/host.hpp: `sinkhorn` on the CPU (the oracle of the CUDA path).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/sinkhorn.hpp"
#include "moss/ops/sinkhorn/math.hpp"

namespace moss {

/// The Sinkhorn-Knopp balanced matrix on the CPU (contract: moss/ops/sinkhorn.hpp), float32
/// sums in index order. `scores` holds the costs c while the scales iterate.
inline void sinkhorn(const Host&, const SinkhornArgs& a) {
  using namespace detail::sinkhorn;
  validate(a, "sinkhorn");
  const index_t T = a.logits.shape[0];
  const int X = static_cast<int>(a.logits.shape[1]);
  if (T == 0) return;
  float* c = a.scores.data;  // (T, X)
  for (index_t t = 0; t < T; ++t) cost_row(a.logits.data + t * X, c + t * X, X);
  std::vector<float> d0(static_cast<std::size_t>(T)), d1(static_cast<std::size_t>(X), 1.0f), col(d1.size());
  for (int round = 0; round < a.max_rounds; ++round) {
    for (index_t t = 0; t < T; ++t) d0[t] = row_scale(c + t * X, d1.data(), X, T);
    std::fill(col.begin(), col.end(), 0.0f);
    for (index_t t = 0; t < T; ++t)
      for (int i = 0; i < X; ++i) col[i] += d0[t] * c[t * X + i];
    float change = 0.0f;
    bool nan = false;
    for (int i = 0; i < X; ++i) {
      const float next = col_scale(col[i], X);
      nan = nan || std::isnan(next);
      change = std::max(change, std::fabs(next - d1[i]));
      d1[i] = next;
    }
    if (nan || !(change >= a.tolerance)) break;
  }
  for (index_t t = 0; t < T; ++t)
    for (int i = 0; i < X; ++i) c[t * X + i] = d1[i] * c[t * X + i] * d0[t];
}

}  // namespace moss
