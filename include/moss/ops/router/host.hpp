// moss/ops/router/host.hpp: `route` and `router_stats` on the CPU (the oracle of the CUDA path).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router/math.hpp"

namespace moss {

namespace detail::route {

/// The Sinkhorn-balanced scores (tokens, X) of `logits` (see `kSinkhornTol`), in float32 with
/// sums in index order.
inline std::vector<float> sinkhorn_scores(const ConstView<float, 2>& logits) {
  const index_t T = logits.shape[0];
  const int X = static_cast<int>(logits.shape[1]);
  std::vector<float> cost(static_cast<std::size_t>(T * X));
  for (index_t t = 0; t < T; ++t)
    for (int i = 0; i < X; ++i) cost[t * X + i] = sinkhorn_cost(logits.data + t * X, X, i);
  std::vector<float> d0(static_cast<std::size_t>(T), 1.0f), d1(static_cast<std::size_t>(X), 1.0f), col(d1.size());
  for (int round = 0; round < kSinkhornRounds; ++round) {
    for (index_t t = 0; t < T; ++t) {
      float s = 0.0f;
      for (int i = 0; i < X; ++i) s += d1[i] * cost[t * X + i];
      d0[t] = 1.0f / (static_cast<float>(T) * (s + kSinkhornEps));
    }
    std::fill(col.begin(), col.end(), 0.0f);
    for (index_t t = 0; t < T; ++t)
      for (int i = 0; i < X; ++i) col[i] += d0[t] * cost[t * X + i];
    float change = 0.0f;
    for (int i = 0; i < X; ++i) {
      const float next = 1.0f / (static_cast<float>(X) * (col[i] + kSinkhornEps));
      change = std::max(change, std::fabs(next - d1[i]));
      d1[i] = next;
    }
    if (!(change >= kSinkhornTol)) break;  // NaN stops too: it propagates into every score
  }
  for (index_t t = 0; t < T; ++t)
    for (int i = 0; i < X; ++i) cost[t * X + i] = d1[i] * cost[t * X + i] * d0[t];
  return cost;
}

}  // namespace detail::route

/// Routes every token on the CPU: float32 logits in the kernel's summation order, then the
/// router's selection (with Sinkhorn balancing first when the router asks for it).
template <class T, Router R>
void route(const Host&, const RouteArgs<T, R>& a) {
  validate(a, "route");
  const index_t tokens = a.x.shape[0], D = a.x.shape[1];
  const int X = static_cast<int>(a.weight.shape[0]);
  for (index_t t = 0; t < tokens; ++t)
    for (int i = 0; i < X; ++i)
      a.logits.data[t * X + i] =
          detail::route::dot_in_kernel_order(a.x.data + t * a.x.stride[0], a.weight.data + i * D, D);
  std::vector<float> balanced;
  if (router_wants_balance(a.router) && tokens > 0) balanced = detail::route::sinkhorn_scores(a.logits);
  for (index_t t = 0; t < tokens; ++t) {
    const float* lg = a.logits.data + t * X;
    const float* scores = balanced.empty() ? lg : balanced.data() + t * X;
    a.router.select(lg, scores, X, a.expert.data + t * R::k, a.gate.data + t * R::k);
  }
}

/// The router statistics on the CPU (sums in token order):
///   P_i = mean_t softmax(logits_t)_i,  f_i = counts_i / (T·K),
///   aux = α · X · Σ_i f_i · P_i  (0 when `aux_loss` is false),  z = β · mean_t logsumexp(logits_t)².
/// With no tokens every value is 0.
inline void router_stats(const Host&, const RouterStatsArgs& a) {
  validate(a, "router_stats");
  const index_t T = a.logits.shape[0];
  const int X = static_cast<int>(a.logits.shape[1]);
  std::fill(a.out.data, a.out.data + router_stats_size(X), 0.0f);
  if (T == 0) return;
  std::vector<double> prob(static_cast<std::size_t>(X), 0.0);
  double z = 0.0;
  for (index_t t = 0; t < T; ++t) {
    const float* lg = a.logits.data + t * X;
    const float m = detail::route::max_logit(lg, X);
    const float s = detail::route::sum_exp(lg, X, m);
    for (int i = 0; i < X; ++i) prob[i] += detail::route::exp_f32(lg[i] - m) / s;
    const double lse = detail::route::log_sum_exp(lg, X);
    z += lse * lse;
  }
  double aux = 0.0;
  const double pairs = static_cast<double>(T) * static_cast<double>(a.k);
  for (int i = 0; i < X; ++i) {
    prob[i] /= static_cast<double>(T);
    aux += (a.counts.data[i] / pairs) * prob[i];
    a.out.data[2 + i] = static_cast<float>(prob[i]);
  }
  a.out.data[0] = a.aux_loss ? static_cast<float>(a.aux_loss_coef * X * aux) : 0.0f;
  a.out.data[1] = static_cast<float>(a.z_loss_coef * z / static_cast<double>(T));
}

}  // namespace moss
