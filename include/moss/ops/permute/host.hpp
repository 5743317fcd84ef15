// moss/ops/permute/host.hpp: the permutation ops on the CPU (the oracle of the CUDA path).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/linear/math.hpp"
#include "moss/ops/permute.hpp"

namespace moss {

/// Builds the plan on the CPU (std::stable_sort of the slot-major pairs by expert). An expert
/// outside [0, X) is a `shape_error` naming the token and slot.
inline void permute_plan(const Host&, const PermutePlanArgs& a) {
  validate(a, "permute_plan");
  const index_t T = a.expert.shape[0], K = a.expert.shape[1], X = a.num_experts, P = T * K;
  std::vector<std::int32_t> order(static_cast<std::size_t>(P));  // slot-major pair indices s·T + t
  for (index_t p = 0; p < P; ++p) order[p] = static_cast<std::int32_t>(p);
  auto expert_of = [&](std::int32_t sm) { return a.expert.data[(sm % T) * K + sm / T]; };
  for (index_t t = 0; t < T; ++t)
    for (index_t s = 0; s < K; ++s) {
      const std::int32_t e = a.expert.data[t * K + s];
      MOSS_EXPECTS(e >= 0 && e < X, shape_error, "permute_plan: ", a.expert.name, "[", t, ", ", s, "] = ", e,
                   " is not an expert in [0, ", X, ")");
    }
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t l, std::int32_t r) { return expert_of(l) < expert_of(r); });
  std::vector<std::int32_t> counts(static_cast<std::size_t>(X), 0);
  for (index_t p = 0; p < P; ++p) ++counts[a.expert.data[p]];
  a.offsets.data[0] = 0;
  for (index_t e = 0; e < X; ++e) {
    const std::int32_t kept =
        a.capacity > 0 ? static_cast<std::int32_t>(std::min<index_t>(counts[e], a.capacity)) : counts[e];
    a.offsets.data[e + 1] = a.offsets.data[e] + kept;
    a.counts.data[e] = counts[e];
  }
  std::fill(a.row_pair.data, a.row_pair.data + P, -1);
  index_t start = 0;  // first sorted position of the current expert
  for (index_t i = 0; i < P; ++i) {
    const std::int32_t sm = order[i];
    const std::int32_t e = expert_of(sm);
    if (i == 0 || expert_of(order[i - 1]) != e) start = i;
    const index_t rank = i - start;
    const std::int32_t pair = (sm % T) * K + sm / T;  // t·K + s
    if (a.capacity > 0 && rank >= a.capacity) {
      a.pair_row.data[pair] = -1;
    } else {
      const std::int32_t row = a.offsets.data[e] + static_cast<std::int32_t>(rank);
      a.pair_row.data[pair] = row;
      a.row_pair.data[row] = pair;
    }
  }
}

/// Gathers the kept rows on the CPU.
template <class T>
void gather_rows(const Host&, const GatherRowsArgs<T>& a) {
  validate(a, "gather_rows");
  const index_t D = a.x.shape[1], rows = a.row_pair.shape[0];
  const index_t kept = a.offsets.data[a.offsets.shape[0] - 1];
  MOSS_EXPECTS(kept >= 0 && kept <= rows, shape_error, "gather_rows: ", a.offsets.name, " ends at ", kept,
               " kept rows but the plan has ", rows, " rows");
  for (index_t r = 0; r < kept; ++r) {
    const index_t pair = a.row_pair.data[r];
    MOSS_EXPECTS(pair >= 0 && pair < rows, shape_error, "gather_rows: ", a.row_pair.name, "[", r, "] = ", pair,
                 " is not a pair in [0, ", rows, ")");
    const index_t t = pair / a.k;
    const T* src = a.x.data + t * a.x.stride[0];
    std::copy(src, src + D, a.out.data + r * D);
  }
}

/// Combines the expert outputs on the CPU: sums in compute_t<T> (float32; double for T =
/// double) in slot order, rounded once.
template <class T>
void combine_rows(const Host&, const CombineRowsArgs<T>& a) {
  validate(a, "combine_rows");
  using C = compute_t<T>;
  const index_t T_ = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.y.shape[1];
  std::vector<C> acc(static_cast<std::size_t>(D));
  for (index_t t = 0; t < T_; ++t) {
    std::fill(acc.begin(), acc.end(), C(0));
    for (index_t s = 0; s < K; ++s) {
      const std::int32_t row = a.pair_row.data[t * K + s];
      if (row < 0) continue;
      MOSS_EXPECTS(row < a.y.shape[0], shape_error, "combine_rows: ", a.pair_row.name, "[", t, ", ", s, "] = ", row,
                   " is not a row of ", a.y.name, " ", shape_string(a.y.shape));
      const C g = present(a.gate) ? a.gate.data[t * K + s] : C(1);
      const T* y = a.y.data + row * a.y.stride[0];
      for (index_t c = 0; c < D; ++c) {
        const C v = moss::widen(y[c]);
        acc[c] += (c >= a.weight_begin && c < a.weight_end) ? g * v : v;
      }
    }
    T* out = a.out.data + t * a.out.stride[0];
    for (index_t c = 0; c < D; ++c) out[c] = moss::narrow<T>(acc[c]);
  }
}

}  // namespace moss
