// moss/ops/router/host.hpp: `route`, `route_logits`, `route_select` and `router_stats` on the CPU (the
// oracle of the CUDA path).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router/math.hpp"

namespace moss {

namespace detail::route {

/// logits[t, i] = x[t] · weight[i] in the kernel's summation order, for every token; for
/// T = double, in double summed in element order (no backend to agree with).
template <class T>
void logits_host(const ConstView<T, 2>& x, const ConstView<real_t<T>, 2>& weight,
                 const TensorView<real_t<T>, 2>& logits) {
  const index_t tokens = x.shape[0], D = x.shape[1];
  const int X = static_cast<int>(weight.shape[0]);
  for (index_t t = 0; t < tokens; ++t)
    for (int i = 0; i < X; ++i) {
      if constexpr (std::is_same_v<T, double>) {
        double s = 0;
        for (index_t k = 0; k < D; ++k) s += x.data[t * x.stride[0] + k] * weight.data[i * D + k];
        logits.data[t * X + i] = s;
      } else {
        logits.data[t * X + i] = dot_in_kernel_order(x.data + t * x.stride[0], weight.data + i * D, D);
      }
    }
}

/// True for the routers whose gate `gates_real` knows (the built-in ones).
template <class R>
inline constexpr bool kBuiltinGate = std::is_same_v<R, Top1Switch> || std::is_same_v<R, SinkhornTop1>;
template <int K>
inline constexpr bool kBuiltinGate<TopK<K>> = true;

/// The renormalise flag of a router (TopK's; false for the others).
template <class R>
bool renormalizes(const R& router) {
  if constexpr (requires { router.renormalize; }) {
    return router.renormalize;
  } else {
    return false;
  }
}

/// The combine weights of one token's chosen experts in the real type C, as the built-in
/// routers define them (docs/math.md §2.2): softmax probabilities (Top1Switch, TopK), divided by
/// their sum when TopK renormalises; sigmoid of the logit (SinkhornTop1).
template <Router R, class C>
void gates_real(const R& router, const C* logits, int X, const std::int32_t* experts, C* gates) {
  static_assert(kBuiltinGate<R>, "moss::route: double routing on the host supports the built-in routers only");
  if constexpr (std::is_same_v<R, SinkhornTop1>) {
    gates[0] = C(1) / (C(1) + std::exp(-logits[experts[0]]));
  } else {
    C m = logits[0];
    for (int i = 1; i < X; ++i) m = std::max(m, logits[i]);
    C z = 0;
    for (int i = 0; i < X; ++i) z += std::exp(logits[i] - m);
    C total = 0;
    for (int s = 0; s < R::k; ++s) total += gates[s] = std::exp(logits[experts[s]] - m) / z;
    if (renormalizes(router))
      for (int s = 0; s < R::k; ++s) gates[s] /= total;
  }
}

/// router.select(logits[t], scores[t]) for every token; logits and scores (tokens, X)
/// contiguous, expert and gate (tokens, K) contiguous. In double the experts come from
/// router.select on the scores and logits rounded to float, the gates from `gates_real`.
template <Router R, class C>
void select_host(const R& router, const C* logits, const C* scores, index_t tokens, int X, std::int32_t* expert,
                 C* gate) {
  if constexpr (std::is_same_v<C, double>) {
    std::vector<float> lf(static_cast<std::size_t>(X)), sf(static_cast<std::size_t>(X)), gf(R::k);
    std::vector<int> ef(R::k);
    for (index_t t = 0; t < tokens; ++t) {
      for (int i = 0; i < X; ++i) {
        lf[i] = static_cast<float>(logits[t * X + i]);
        sf[i] = static_cast<float>(scores[t * X + i]);
      }
      router.select(lf.data(), sf.data(), X, ef.data(), gf.data());
      for (int s = 0; s < R::k; ++s) expert[t * R::k + s] = ef[s];
      gates_real(router, logits + t * X, X, expert + t * R::k, gate + t * R::k);
    }
  } else {
    for (index_t t = 0; t < tokens; ++t)
      router.select(logits + t * X, scores + t * X, X, expert + t * R::k, gate + t * R::k);
  }
}

}  // namespace detail::route

/// Routes every token on the CPU: float32 logits in the kernel's summation order, then the
/// router's selection ranking the logits themselves (scores = logits).
template <class T, Router R>
void route(const Host&, const RouteArgs<T, R>& a) {
  validate(a, "route");
  detail::route::logits_host(a.x, a.weight, a.logits);
  detail::route::select_host(a.router, a.logits.data, a.logits.data, a.x.shape[0], static_cast<int>(a.weight.shape[0]),
                             a.expert.data, a.gate.data);
}

/// The logits alone on the CPU, bit-identical to `route`'s.
template <class T>
void route_logits(const Host&, const RouteLogitsArgs<T>& a) {
  validate(a, "route_logits");
  detail::route::logits_host(a.x, a.weight, a.logits);
}

/// The router's selection on the CPU from given logits and scores.
template <Router R, class C>
void route_select(const Host&, const RouteSelectArgs<R, C>& a) {
  validate(a, "route_select");
  detail::route::select_host(a.router, a.logits.data, a.scores.data, a.logits.shape[0],
                             static_cast<int>(a.logits.shape[1]), a.expert.data, a.gate.data);
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
