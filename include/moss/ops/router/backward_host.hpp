// moss/ops/router/backward_host.hpp: `route_backward` on the CPU. Single-threaded, in
// compute_t<T> (float; double for T = double); every sum in the order given in
// moss/ops/router_backward.hpp: per token the experts ascending, dx over experts ascending,
// dweight over tokens ascending.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/linear/math.hpp"
#include "moss/ops/router/host.hpp"
#include "moss/ops/router_backward.hpp"

namespace moss {

/// The gradients of the router on the CPU (see moss/ops/router_backward.hpp): dlogits, dx and
/// dweight, each only when its view is present. An expert outside [0, X) in `expert` is a
/// `shape_error` naming the token and slot, raised before anything is written.
template <class T, class R>
void route_backward(const Host&, const RouteBackwardArgs<T, R>& a) {
  validate(a, "route_backward");
  static_assert(detail::route::kBuiltinGate<R>, "moss::route_backward: supports the built-in routers only");
  using C = compute_t<T>;
  constexpr int K = R::k;
  const index_t tokens = a.x.shape[0], D = a.x.shape[1], X = a.weight.shape[0];
  for (index_t t = 0; t < tokens; ++t)
    for (int s = 0; s < K; ++s) {
      const std::int32_t e = a.expert.data[t * K + s];
      MOSS_EXPECTS(e >= 0 && e < X, shape_error, "route_backward: ", a.expert.name, "[", t, ", ", s, "] = ", e,
                   " is not an expert in [0, ", X, ")");
    }
  const bool want_dl = present(a.dlogits), want_dx = present(a.dx) && tokens > 0, want_dw = present(a.dweight);
  if (!want_dl && !want_dx && !want_dw) return;

  const bool aux = R::aux_loss && a.aux_loss_coef != 0 && tokens > 0;
  std::vector<C> f(static_cast<std::size_t>(X), C(0));
  if (aux)
    for (index_t i = 0; i < X; ++i)
      f[i] = static_cast<C>(a.counts.data[i]) / (static_cast<C>(tokens) * static_cast<C>(K));
  const bool renorm = detail::route::renormalizes(a.router);

  std::vector<C> dl(static_cast<std::size_t>(tokens * X), C(0));
  std::vector<C> p(static_cast<std::size_t>(X));
  for (index_t t = 0; t < tokens; ++t) {
    const C* lg = a.logits.data + t * X;
    C* d = dl.data() + t * X;
    C m = lg[0];
    for (index_t i = 1; i < X; ++i) m = std::max(m, lg[i]);
    C z = 0;
    for (index_t i = 0; i < X; ++i) z += p[i] = std::exp(lg[i] - m);
    for (index_t i = 0; i < X; ++i) p[i] /= z;
    const std::int32_t* e = a.expert.data + t * K;
    if (present(a.dgate)) {
      const C* dg = a.dgate.data + t * K;
      if constexpr (std::is_same_v<R, SinkhornTop1>) {
        const C g = C(1) / (C(1) + std::exp(-lg[e[0]]));
        d[e[0]] += dg[0] * g * (C(1) - g);
      } else if (renorm) {
        C total = 0;
        for (int s = 0; s < K; ++s) total += p[e[s]];
        C dot = 0;
        for (int s = 0; s < K; ++s) dot += dg[s] * (p[e[s]] / total);
        for (int s = 0; s < K; ++s) d[e[s]] += (p[e[s]] / total) * (dg[s] - dot);
      } else {
        C dot = 0;  // Σ_s dgate_s · p_{e_s}
        for (int s = 0; s < K; ++s) dot += dg[s] * p[e[s]];
        for (index_t j = 0; j < X; ++j) d[j] -= dot * p[j];
        for (int s = 0; s < K; ++s) d[e[s]] += dg[s] * p[e[s]];
      }
    }
    if (aux) {
      C fp = 0;  // Σ_i f_i · p_ti
      for (index_t i = 0; i < X; ++i) fp += f[i] * p[i];
      const C scale = a.aux_loss_coef * static_cast<C>(X) / static_cast<C>(tokens);
      for (index_t j = 0; j < X; ++j) d[j] += scale * p[j] * (f[j] - fp);
    }
    if (a.z_loss_coef != 0) {
      const C lse = m + std::log(z);
      const C scale = a.z_loss_coef * C(2) * lse / static_cast<C>(tokens);
      for (index_t j = 0; j < X; ++j) d[j] += scale * p[j];
    }
  }

  if (want_dl) std::copy(dl.begin(), dl.end(), a.dlogits.data);
  if (want_dx) {
    std::vector<C> acc(static_cast<std::size_t>(D));
    for (index_t t = 0; t < tokens; ++t) {
      std::fill(acc.begin(), acc.end(), C(0));
      for (index_t i = 0; i < X; ++i) {
        const C g = dl[t * X + i];
        const C* w = a.weight.data + i * D;
        for (index_t k = 0; k < D; ++k) acc[k] += g * w[k];
      }
      T* dst = a.dx.data + t * a.dx.stride[0];
      for (index_t k = 0; k < D; ++k) dst[k] = moss::narrow<T>(acc[k]);
    }
  }
  if (want_dw) {
    std::vector<C> dw(static_cast<std::size_t>(X * D), C(0)), xr(static_cast<std::size_t>(D));
    for (index_t t = 0; t < tokens; ++t) {
      for (index_t k = 0; k < D; ++k) xr[k] = moss::widen(a.x.data[t * a.x.stride[0] + k]);
      for (index_t i = 0; i < X; ++i) {
        const C g = dl[t * X + i];
        C* acc = dw.data() + i * D;
        for (index_t k = 0; k < D; ++k) acc[k] += g * xr[k];
      }
    }
    if (a.accumulate) {
      for (index_t i = 0; i < X * D; ++i) a.dweight.data[i] += dw[i];
    } else {
      std::copy(dw.begin(), dw.end(), a.dweight.data);
    }
  }
}

}  // namespace moss
