// moss/ops/selective_scan/host.hpp: the CPU selective scan, the oracle of the CUDA kernels.
//
// Plain float32 loops over math.hpp: batch and channel outer, time, then states inner, with the
// states of one channel in a small array. It is also the CPU path of the model's forward.
#pragma once

#include <vector>

#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan/math.hpp"

namespace moss {

namespace detail::scan {

/// Everything per channel that does not change along time: A·log2(e), D and delta_bias.
struct ChannelConstants {
  std::vector<float> a_scaled;  // (N)
  float d_skip = 0.0f;
  float bias = 0.0f;

  explicit ChannelConstants(index_t N) : a_scaled(static_cast<std::size_t>(N)) {}
  void load(const ConstView<float, 2>& A /* (dim, N) */, const ConstView<float, 1>& D,
            const ConstView<float, 1>& delta_bias, index_t d) {
    for (std::size_t n = 0; n < a_scaled.size(); ++n) a_scaled[n] = a_log2e(A(d, n));
    d_skip = present(D) ? D(d) : 0.0f;
    bias = present(delta_bias) ? delta_bias(d) : 0.0f;
  }
};

/// Advances the N states of one channel by one step and returns the channel's output value:
/// the loop body shared by `selective_scan` and `selective_scan_step`, so that scanning a
/// sequence token by token reproduces the full scan exactly.
/// `b_row` / `c_row` point at B[.., n = 0] and C[.., n = 0] of this step, `b_sn` / `c_sn` are the
/// strides along n.
template <class T>
float step_channel(float* h /* (N) */, const ChannelConstants& k, float u, float delta_raw, bool use_softplus,
                   const T* b_row, index_t b_sn, const T* c_row, index_t c_sn, bool has_d, const T* z) {
  const float dt = delta_value(delta_raw, k.bias, use_softplus);
  const float dt_u = dt * u;
  float y = 0.0f;
  const std::size_t N = k.a_scaled.size();
  for (std::size_t n = 0; n < N; ++n) {
    const index_t i = static_cast<index_t>(n);
    h[n] = update_state(h[n], dt, k.a_scaled[n], dt_u, to_float(b_row[i * b_sn]));
    y += to_float(c_row[i * c_sn]) * h[n];
  }
  if (has_d) y = add_skip(y, k.d_skip, u);
  if (z) y = gate(y, to_float(*z));
  return y;
}

}  // namespace detail::scan

/// Runs the selective scan on the CPU (see the contract in moss/ops/selective_scan.hpp).
template <class T>
void selective_scan(const Host&, const SelectiveScanArgs<T>& a) {
  validate(a, "selective_scan");
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  if (batch == 0 || dim == 0) return;
  const index_t b_per_group = dim / a.B.shape[1], c_per_group = dim / a.C.shape[1];
  const bool has_d = present(a.D), has_z = present(a.z);
  detail::scan::ChannelConstants k(N);
  std::vector<float> h(static_cast<std::size_t>(N));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      k.load(a.A, a.D, a.delta_bias, d);
      for (index_t n = 0; n < N; ++n) h[n] = present(a.initial_state) ? a.initial_state(b, d, n) : 0.0f;
      for (index_t t = 0; t < L; ++t) {
        const float y = detail::scan::step_channel(h.data(), k, to_float(a.u(b, d, t)), to_float(a.delta(b, d, t)),
                                                   a.delta_softplus, &a.B(b, d / b_per_group, 0, t), a.B.stride[2],
                                                   &a.C(b, d / c_per_group, 0, t), a.C.stride[2], has_d,
                                                   has_z ? &a.z(b, d, t) : nullptr);
        a.out(b, d, t) = from_float<T>(y);
      }
      if (present(a.final_state))
        for (index_t n = 0; n < N; ++n) a.final_state(b, d, n) = h[n];
    }
  }
}

/// Advances every sequence by one token on the CPU, updating `state` in place.
template <class T>
void selective_scan_step(const Host&, const SelectiveScanStepArgs<T>& a) {
  validate(a, "selective_scan_step");
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], N = a.A.shape[1];
  if (batch == 0 || dim == 0) return;
  const index_t b_per_group = dim / a.B.shape[1], c_per_group = dim / a.C.shape[1];
  const bool has_d = present(a.D), has_z = present(a.z);
  detail::scan::ChannelConstants k(N);
  std::vector<float> h(static_cast<std::size_t>(N));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      k.load(a.A, a.D, a.delta_bias, d);
      for (index_t n = 0; n < N; ++n) h[n] = a.state(b, d, n);
      const float y = detail::scan::step_channel(
          h.data(), k, to_float(a.u(b, d)), to_float(a.delta(b, d)), a.delta_softplus, &a.B(b, d / b_per_group, 0),
          a.B.stride[2], &a.C(b, d / c_per_group, 0), a.C.stride[2], has_d, has_z ? &a.z(b, d) : nullptr);
      for (index_t n = 0; n < N; ++n) a.state(b, d, n) = h[n];
      a.out(b, d) = from_float<T>(y);
    }
  }
}

}  // namespace moss
