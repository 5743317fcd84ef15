// moss/ops/permute/backward_host.hpp: `gather_rows_backward` and `combine_rows_backward` on the
// CPU. Single-threaded, in compute_t<T> (float; double for T = double); every sum in the order
// given in moss/ops/permute_backward.hpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/linear/math.hpp"
#include "moss/ops/permute_backward.hpp"

namespace moss {

namespace detail::permute {

/// The row of pair (t, s) from the plan, checked against the `rows` rows (`shape_error`); −1 when
/// the pair was dropped.
inline index_t checked_row(const char* where, const ConstView<std::int32_t, 2>& pair_row, index_t t, index_t s,
                           index_t rows) {
  const index_t row = pair_row.data[t * pair_row.shape[1] + s];
  MOSS_EXPECTS(row >= -1 && row < rows, shape_error, where, ": ", pair_row.name, "[", t, ", ", s, "] = ", row,
               " is not a row in [0, ", rows, ") nor −1 (dropped)");
  return row;
}

}  // namespace detail::permute

/// The gradient of `gather_rows` on the CPU: dx[t] = Σ_{kept s} dout[row(t, s)], s ascending,
/// summed in compute_t<T> and rounded once (0 for a token whose every slot was dropped).
template <class T>
void gather_rows_backward(const Host&, const GatherRowsBackwardArgs<T>& a) {
  validate(a, "gather_rows_backward");
  using C = compute_t<T>;
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.dout.shape[1], rows = tokens * K;
  std::vector<C> acc(static_cast<std::size_t>(D));
  for (index_t t = 0; t < tokens; ++t) {
    std::fill(acc.begin(), acc.end(), C(0));
    for (index_t s = 0; s < K; ++s) {
      const index_t row = detail::permute::checked_row("gather_rows_backward", a.pair_row, t, s, rows);
      if (row < 0) continue;
      const T* g = a.dout.data + row * a.dout.stride[0];
      for (index_t c = 0; c < D; ++c) acc[c] += moss::widen(g[c]);
    }
    T* dst = a.dx.data + t * a.dx.stride[0];
    for (index_t c = 0; c < D; ++c) dst[c] = moss::narrow<T>(acc[c]);
  }
}

/// The gradients of `combine_rows` on the CPU: dy (every row written; rows no kept pair owns get
/// 0) and dgate (0 for a dropped slot), each only when its view is present.
template <class T>
void combine_rows_backward(const Host&, const CombineRowsBackwardArgs<T>& a) {
  validate(a, "combine_rows_backward");
  using C = compute_t<T>;
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.dout.shape[1], rows = tokens * K;
  const bool want_dy = present(a.dy), want_dg = present(a.dgate);
  // Check the whole plan before writing anything.
  for (index_t t = 0; t < tokens; ++t)
    for (index_t s = 0; s < K; ++s) detail::permute::checked_row("combine_rows_backward", a.pair_row, t, s, rows);
  if (want_dy) std::fill(a.dy.data, a.dy.data + rows * D, moss::narrow<T>(C(0)));
  for (index_t t = 0; t < tokens; ++t) {
    const T* g = a.dout.data + t * a.dout.stride[0];
    for (index_t s = 0; s < K; ++s) {
      const index_t row = a.pair_row.data[t * K + s];
      if (row < 0) {
        if (want_dg) a.dgate.data[t * K + s] = C(0);
        continue;
      }
      if (want_dy) {
        const C w = present(a.gate) ? a.gate.data[t * K + s] : C(1);
        T* dst = a.dy.data + row * D;
        for (index_t c = 0; c < D; ++c) {
          const C v = moss::widen(g[c]);
          dst[c] = moss::narrow<T>((c >= a.weight_begin && c < a.weight_end) ? w * v : v);
        }
      }
      if (want_dg) {
        const T* y = a.y.data + row * a.y.stride[0];
        C acc(0);
        for (index_t c = a.weight_begin; c < a.weight_end; ++c) acc += moss::widen(g[c]) * moss::widen(y[c]);
        a.dgate.data[t * K + s] = acc;
      }
    }
  }
}

}  // namespace moss
