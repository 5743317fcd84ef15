// moss/ops/sinkhorn/math.hpp: the Sinkhorn-Knopp arithmetic (docs/math.md §2.2, SinkhornTop1),
// written once for host and device. Depends on no policy header, so a router struct may call
// the op.
#pragma once

#include <cmath>

#include "moss/core/config.hpp"
#include "moss/core/math.hpp"
#include "moss/core/tensor.hpp"

namespace moss::detail::sinkhorn {

/// ε of the scaling updates: keeps 1 / sum finite for an all-zero column or row.
inline constexpr float kEps = 1e-8f;

using moss::exp_f32;

/// c[i] = exp(logits[i] − max_j logits[j]) for one token (X entries). The max ignores NaN, so a
/// NaN logit gives a NaN cost; an all-NaN or all-(−inf) row gives NaN everywhere. The shift is
/// absorbed by the row scale d0 and keeps exp finite. `cost` may be `logits` (in place).
MOSS_HD void cost_row(const float* logits, float* cost, int num_experts) {
  float m = -INFINITY;
  for (int i = 0; i < num_experts; ++i) m = logits[i] > m ? logits[i] : m;
  for (int i = 0; i < num_experts; ++i) cost[i] = exp_f32(logits[i] - m);
}

/// The row scale d0[t] = 1 / (T · (Σ_i d1[i]·c[t,i] + ε)), summed in index order.
MOSS_HD float row_scale(const float* cost, const float* d1, int num_experts, index_t tokens) {
  float s = 0.0f;
  for (int i = 0; i < num_experts; ++i) s += d1[i] * cost[i];
  return 1.0f / (static_cast<float>(tokens) * (s + kEps));
}

/// The column scale d1[i] = 1 / (X · (Σ_t d0[t]·c[t,i] + ε)) from the column sum.
MOSS_HD float col_scale(float column_sum, int num_experts) {
  return 1.0f / (static_cast<float>(num_experts) * (column_sum + kEps));
}

}  // namespace moss::detail::sinkhorn
