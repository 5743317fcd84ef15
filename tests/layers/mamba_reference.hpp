// tests/layers/mamba_reference.hpp: an independent float64 Mamba-1 mixer (docs/math.md §1),
// written from the formulas without any moss op, for the layer tests.
#pragma once

#include <cmath>
#include <vector>

#include "moss/layers/mamba.hpp"

namespace moss::test {

/// The mixer's weights as doubles (Hugging Face layout).
struct MambaRefWeights {
  index_t D, ED, N, W, R;
  std::vector<double> in_proj, in_bias, conv_w, conv_b, x_proj, dt_proj, dt_bias, A_log, Dskip, out_proj, out_bias;
};

/// A host buffer's elements as doubles.
template <class T>
std::vector<double> widen(const Buffer<T>& b) {
  std::vector<double> r(static_cast<std::size_t>(b.size()));
  for (index_t i = 0; i < b.size(); ++i) r[i] = static_cast<double>(to_float(b.data()[i]));
  return r;
}

/// A host tensor's elements as doubles, row-major (empty for an absent tensor).
template <class T, std::size_t Rank>
std::vector<double> widen(const Tensor<T, Rank>& t) {
  return widen(t.buffer());
}

/// Copies host-backend params into doubles.
template <class T>
MambaRefWeights ref_weights(const MambaDims& d, const MambaParams<T>& p) {
  MambaRefWeights w{d.d_model, d.d_inner, d.d_state, d.d_conv, d.dt_rank, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  w.in_proj = widen(p.in_proj);
  w.in_bias = widen(p.in_proj_bias);
  w.conv_w = widen(p.conv_weight);
  w.conv_b = widen(p.conv_bias);
  w.x_proj = widen(p.x_proj);
  w.dt_proj = widen(p.dt_proj);
  w.dt_bias = widen(p.dt_bias);
  w.A_log = widen(p.A_log);
  w.Dskip = widen(p.D);
  w.out_proj = widen(p.out_proj);
  w.out_bias = widen(p.out_proj_bias);
  return w;
}

/// out (batch, L, D) = mixer(x (batch, L, D)) in float64; optional per-sequence initial states
/// conv0 (batch, ED, W−1), h0 (batch, ED, N); writes the final states into conv1 / h1 if given.
inline std::vector<double> ref_mamba(const MambaRefWeights& w, const std::vector<double>& x, index_t batch, index_t L,
                                     const std::vector<double>* conv0 = nullptr,
                                     const std::vector<double>* h0 = nullptr, std::vector<double>* conv1 = nullptr,
                                     std::vector<double>* h1 = nullptr) {
  const index_t D = w.D, ED = w.ED, N = w.N, W = w.W, R = w.R;
  std::vector<double> out(static_cast<std::size_t>(batch * L * D));
  if (conv1) conv1->assign(static_cast<std::size_t>(batch * ED * (W - 1)), 0.0);
  if (h1) h1->assign(static_cast<std::size_t>(batch * ED * N), 0.0);
  auto silu = [](double v) { return v / (1 + std::exp(-v)); };
  for (index_t b = 0; b < batch; ++b) {
    // in_proj: u (L, ED), z (L, ED)
    std::vector<double> u(L * ED), z(L * ED);
    for (index_t t = 0; t < L; ++t)
      for (index_t o = 0; o < 2 * ED; ++o) {
        double s = w.in_bias.empty() ? 0.0 : w.in_bias[o];
        for (index_t i = 0; i < D; ++i) s += w.in_proj[o * D + i] * x[(b * L + t) * D + i];
        (o < ED ? u[t * ED + o] : z[t * ED + o - ED]) = s;
      }
    // conv over the history [initial state | u]
    std::vector<double> v(L * ED);
    for (index_t c = 0; c < ED; ++c) {
      auto hist = [&](index_t t) -> double {  // input at time t (negative: from the initial state)
        if (t >= 0) return u[t * ED + c];
        if (!conv0) return 0.0;
        return (*conv0)[(b * ED + c) * (W - 1) + (W - 1 + t)];
      };
      for (index_t t = 0; t < L; ++t) {
        double s = w.conv_b.empty() ? 0.0 : w.conv_b[c];
        for (index_t k = 0; k < W; ++k) s += w.conv_w[c * W + k] * hist(t - (W - 1) + k);
        v[t * ED + c] = silu(s);
      }
      if (conv1)
        for (index_t k = 0; k < W - 1; ++k) (*conv1)[(b * ED + c) * (W - 1) + k] = hist(L - (W - 1) + k);
    }
    // x_proj, dt_proj, scan, gate
    std::vector<double> h(ED * N, 0.0);
    if (h0) std::copy(h0->begin() + b * ED * N, h0->begin() + (b + 1) * ED * N, h.begin());
    std::vector<double> y(L * ED);
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> xd(R + 2 * N, 0.0);
      for (index_t o = 0; o < R + 2 * N; ++o)
        for (index_t i = 0; i < ED; ++i) xd[o] += w.x_proj[o * ED + i] * v[t * ED + i];
      for (index_t c = 0; c < ED; ++c) {
        double dt = w.dt_bias[c];
        for (index_t r = 0; r < R; ++r) dt += w.dt_proj[c * R + r] * xd[r];
        dt = dt > 20 ? dt : std::log1p(std::exp(dt));
        double acc = 0;
        for (index_t n = 0; n < N; ++n) {
          const double A = -std::exp(w.A_log[c * N + n]);
          double& hs = h[c * N + n];
          hs = std::exp(dt * A) * hs + dt * xd[R + n] * v[t * ED + c];
          acc += xd[R + N + n] * hs;
        }
        acc += w.Dskip[c] * v[t * ED + c];
        y[t * ED + c] = acc * silu(z[t * ED + c]);
      }
    }
    if (h1) std::copy(h.begin(), h.end(), h1->begin() + b * ED * N);
    for (index_t t = 0; t < L; ++t)
      for (index_t o = 0; o < D; ++o) {
        double s = w.out_bias.empty() ? 0.0 : w.out_bias[o];
        for (index_t i = 0; i < ED; ++i) s += w.out_proj[o * ED + i] * y[t * ED + i];
        out[(b * L + t) * D + o] = s;
      }
  }
  return out;
}

}  // namespace moss::test
