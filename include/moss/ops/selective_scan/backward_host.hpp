// moss/ops/selective_scan/backward_host.hpp: the CPU backward of the selective scan (the oracle
// of a later CUDA backward), formulas in docs/math.md §4.1.
//
// One (batch row b, channel d) at a time, b outer and d inner, in compute_t<T>:
//
// 1. Forward, keeping checkpoints. The channel's recurrence runs over all of L with the forward's
//    own loop body (`step_channel`, the same arithmetic as `selective_scan`'s host path), and the
//    state entering every k-th step (k = `kBackwardCheckpointSteps`) is kept: ⌈L/k⌉·N values.
// 2. Reverse, chunk by chunk. For the chunks of k steps from last to first, the k states of the
//    chunk are recomputed from its checkpoint (bitwise the forward's states: same inputs, same
//    operations), then the steps are walked from the chunk's last to its first with the adjoint
//    state λ = dL/dh (starting from dfinal_state or zero), which gives every gradient of the step.
//
// Memory: the checkpoints take N/k values per token of the channel being processed and the chunk
// k·N + 2k, so one channel at a time needs (⌈L/k⌉ + k)·N + 2k values of compute_t<T> instead of
// the L·N states a stored forward would keep; the host walks one channel at a time, so that is
// the whole state scratch. The reductions add dim·(N + 2) values (dA, dD, d delta_bias), and a
// (batch, groups, N, L) compute_t<T> buffer for each of dB / dC that is asked for (the group sums
// are rounded to T once), plus one of (1 or batch, groups, N, 1 or L) when dB / dC sums over
// batch or L.
//
// Fixed order of every reduction (no atomics, single thread: bitwise repeatable):
// - dA[d, n], dD[d], d delta_bias[d]: per (b, d), a partial summed over t from L − 1 down to 0,
//   starting at zero; the partials are then added over b in increasing order to zero (and the
//   total added to the output when `accumulate`).
// - dB[b, g, n, t] (dC alike): the channels d of group g in increasing order, starting at zero.
//   A dB with zero strides along batch / L then sums those over b increasing (outer) and t
//   increasing (inner).
// - du, ddelta: per step, dy·D first, then the states n = 0 .. N − 1 in order.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moss/ops/selective_scan/host.hpp"
#include "moss/ops/selective_scan/math.hpp"
#include "moss/ops/selective_scan_backward.hpp"

namespace moss {

namespace detail::scan {

/// Steps between two checkpoints of the host backward's forward recomputation.
inline constexpr index_t kBackwardCheckpointSteps = 64;

/// d softplus(x) / dx = σ(x), and 1 above 20 where the forward's softplus is x itself.
template <class R>
R softplus_grad(R x) {
  return x > R(20) ? R(1) : R(1) / (R(1) + std::exp(-x));
}

/// d silu(z) / dz = σ(z) · (1 + z · (1 − σ(z))).
template <class R>
R silu_grad(R z) {
  const R s = R(1) / (R(1) + std::exp(-z));
  return s * (R(1) + z * (R(1) - s));
}

/// Writes a (batch, groups, N, L) gradient of B or C, held in compute type R in logical order,
/// to `g` (rounded to T once), summing over batch and / or L where `g` has a zero stride there
/// (b increasing outer, t increasing inner).
template <class T, class R>
void write_bc_gradient(const std::vector<R>& full, const TensorView<T, 4>& g) {
  const index_t batch = g.shape[0], groups = g.shape[1], N = g.shape[2], L = g.shape[3];
  if (g.empty()) return;
  const bool sum_b = g.stride[0] == 0, sum_t = g.stride[3] == 0;
  if (!sum_b && !sum_t) {
    for (index_t b = 0; b < batch; ++b)
      for (index_t k = 0; k < groups; ++k)
        for (index_t n = 0; n < N; ++n)
          for (index_t t = 0; t < L; ++t) g(b, k, n, t) = from_compute<T>(full[((b * groups + k) * N + n) * L + t]);
    return;
  }
  const index_t rb = sum_b ? 1 : batch, rl = sum_t ? 1 : L;
  std::vector<R> red(static_cast<std::size_t>(rb * groups * N * rl), R(0));
  for (index_t b = 0; b < batch; ++b)
    for (index_t k = 0; k < groups; ++k)
      for (index_t n = 0; n < N; ++n)
        for (index_t t = 0; t < L; ++t)
          red[((((sum_b ? 0 : b) * groups + k) * N + n) * rl) + (sum_t ? 0 : t)] +=
              full[((b * groups + k) * N + n) * L + t];
  for (index_t b = 0; b < rb; ++b)
    for (index_t k = 0; k < groups; ++k)
      for (index_t n = 0; n < N; ++n)
        for (index_t t = 0; t < rl; ++t) g(b, k, n, t) = from_compute<T>(red[((b * groups + k) * N + n) * rl + t]);
}

/// The host backward of `a` (already validated) with checkpoints every `checkpoint_steps` ≥ 1
/// steps (the result does not depend on it, bit for bit; the tests vary it).
template <class T>
void backward_host(const SelectiveScanBackwardArgs<T>& a, index_t checkpoint_steps) {
  using R = compute_t<T>;
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  const index_t groups_b = a.B.shape[1], groups_c = a.C.shape[1];
  const index_t b_per_group = dim / groups_b, c_per_group = dim / groups_c;
  const bool has_d = present(a.D), has_z = present(a.z), has_dfinal = present(a.dfinal_state);
  const bool want_du = present(a.du), want_ddelta = present(a.ddelta), want_dz = present(a.dz);
  const bool want_db = present(a.dB), want_dc = present(a.dC);
  const index_t K = std::max<index_t>(1, checkpoint_steps);
  const index_t chunks = (L + K - 1) / K;
  const auto size = [](index_t n) { return static_cast<std::size_t>(n); };

  // Reductions over batch and time (dA, dD, d delta_bias) and over the channels of a group (dB, dC).
  std::vector<R> dA_sum(size(dim * N), R(0)), dD_sum(size(dim), R(0)), dbias_sum(size(dim), R(0));
  std::vector<R> dB_full(want_db ? size(batch * groups_b * N * L) : 0, R(0));
  std::vector<R> dC_full(want_dc ? size(batch * groups_c * N * L) : 0, R(0));

  // Per-channel scratch: checkpoints, the states / Δ / pre-gate y of one chunk, λ, dA partials.
  ChannelConstants<R> k(N);
  std::vector<R> ckpt(size(chunks * N)), hs(size(K * N)), dts(size(K)), ys(size(K));
  std::vector<R> h(size(N)), lam(size(N)), dA_part(size(N));

  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      k.load(a.A, a.D, a.delta_bias, d);
      const index_t gb = d / b_per_group, gc = d / c_per_group;
      const T* b_row = a.B.data + b * a.B.stride[0] + gb * a.B.stride[1];  // (N, L) of this channel's group
      const T* c_row = a.C.data + b * a.C.stride[0] + gc * a.C.stride[1];
      const index_t b_sn = a.B.stride[2], b_st = a.B.stride[3], c_sn = a.C.stride[2], c_st = a.C.stride[3];
      auto step = [&](R* state, index_t t) {  // the forward's step, z left out: returns y before the gate
        return step_channel<T, R>(state, k, to_compute(a.u(b, d, t)), to_compute(a.delta(b, d, t)), a.delta_softplus,
                                  b_row + t * b_st, b_sn, c_row + t * c_st, c_sn, has_d, nullptr);
      };

      // 1. Forward: the state entering each chunk.
      for (index_t n = 0; n < N; ++n) h[n] = present(a.initial_state) ? a.initial_state(b, d, n) : R(0);
      for (index_t t = 0; t < L; ++t) {
        if (t % K == 0) std::copy(h.begin(), h.end(), ckpt.begin() + (t / K) * N);
        step(h.data(), t);
      }

      // 2. Reverse, chunk by chunk.
      for (index_t n = 0; n < N; ++n) lam[n] = has_dfinal ? a.dfinal_state(b, d, n) : R(0);
      std::fill(dA_part.begin(), dA_part.end(), R(0));
      R dD_part = R(0), dbias_part = R(0);
      for (index_t c = chunks; c-- > 0;) {
        const index_t t0 = c * K, t1 = std::min(L, t0 + K);
        std::copy(ckpt.begin() + c * N, ckpt.begin() + (c + 1) * N, h.begin());
        for (index_t t = t0; t < t1; ++t) {
          ys[t - t0] = step(h.data(), t);
          std::copy(h.begin(), h.end(), hs.begin() + (t - t0) * N);
          dts[t - t0] = delta_value(to_compute(a.delta(b, d, t)), k.bias, a.delta_softplus);
        }
        for (index_t t = t1; t-- > t0;) {
          const R u = to_compute(a.u(b, d, t));
          const R dt = dts[t - t0];
          const R* h_t = hs.data() + (t - t0) * N;
          const R* h_prev = t == t0 ? ckpt.data() + c * N : hs.data() + (t - t0 - 1) * N;
          const R g = to_compute(a.dout(b, d, t));
          R dy = g;
          if (has_z) {
            const R zv = to_compute(a.z(b, d, t));
            if (want_dz) a.dz(b, d, t) = from_compute<T>(g * ys[t - t0] * silu_grad(zv));
            dy = g * silu(zv);
          }
          dD_part += dy * u;
          R du = has_d ? dy * k.d_skip : R(0);
          R ddt = R(0);
          const T* bt = b_row + t * b_st;
          const T* ct = c_row + t * c_st;
          for (index_t n = 0; n < N; ++n) {
            const R bn = to_compute(bt[n * b_sn]), cn = to_compute(ct[n * c_sn]);
            lam[n] += dy * cn;  // λ_t = dL/dh_t
            if (want_dc) dC_full[size(((b * groups_c + gc) * N + n) * L + t)] += dy * h_t[n];
            if (want_db) dB_full[size(((b * groups_b + gb) * N + n) * L + t)] += lam[n] * dt * u;
            const R decay = pow2(dt * k.a_scaled[n]);  // exp(Δ·A), as the forward computes it
            const R a_n = a.A(d, n);
            du += lam[n] * dt * bn;
            ddt += lam[n] * (h_prev[n] * decay * a_n + bn * u);
            dA_part[n] += lam[n] * h_prev[n] * decay * dt;
            lam[n] *= decay;  // → the part of dL/dh_{t−1} that flows through the recurrence
          }
          const R dx = a.delta_softplus ? ddt * softplus_grad(to_compute(a.delta(b, d, t)) + k.bias) : ddt;
          dbias_part += dx;
          if (want_du) a.du(b, d, t) = from_compute<T>(du);
          if (want_ddelta) a.ddelta(b, d, t) = from_compute<T>(dx);
        }
      }

      // λ is now dL/dh_{-1} (dfinal_state itself when L = 0).
      if (present(a.dinitial_state))
        for (index_t n = 0; n < N; ++n) a.dinitial_state(b, d, n) = lam[n];
      for (index_t n = 0; n < N; ++n) dA_sum[size(d * N + n)] += dA_part[n];
      dD_sum[size(d)] += dD_part;
      dbias_sum[size(d)] += dbias_part;
    }
  }

  if (present(a.dA))
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n)
        a.dA(d, n) = a.accumulate ? a.dA(d, n) + dA_sum[size(d * N + n)] : dA_sum[size(d * N + n)];
  for (index_t d = 0; d < dim; ++d) {
    if (present(a.dD)) a.dD(d) = a.accumulate ? a.dD(d) + dD_sum[size(d)] : dD_sum[size(d)];
    if (present(a.ddelta_bias))
      a.ddelta_bias(d) = a.accumulate ? a.ddelta_bias(d) + dbias_sum[size(d)] : dbias_sum[size(d)];
  }
  if (want_db) write_bc_gradient(dB_full, a.dB);
  if (want_dc) write_bc_gradient(dC_full, a.dC);
}

}  // namespace detail::scan

/// The selective-scan backward on the CPU (contract: moss/ops/selective_scan_backward.hpp):
/// validates once, then runs the checkpointed reverse pass described above.
template <class T>
void selective_scan_backward(const Host&, const SelectiveScanBackwardArgs<T>& args) {
  validate(args, "selective_scan_backward");
  detail::scan::backward_host(args, detail::scan::kBackwardCheckpointSteps);
}

}  // namespace moss
