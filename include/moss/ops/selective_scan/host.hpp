// moss/ops/selective_scan/host.hpp: the CPU selective scan, the oracle of the CUDA kernels, and
// the CPU paths of the scan strategies.
//
// The oracle: plain float32 loops over math.hpp, batch and channel outer, time, then states
// inner, with the states of one channel in a small array. It is SequentialScan's (and AutoScan's)
// CPU path, the model's CPU forward. ChunkedScan's CPU path is the same segment decomposition as
// its kernels, each segment scanned by the oracle and the segments joined by math.hpp's pair.
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

/// The CPU oracle of the full-sequence scan (arguments already validated).
template <class T>
void oracle_scan(const SelectiveScanArgs<T>& a) {
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

/// `v` restricted to steps [from, from + len) of its time axis `axis`.
template <class V>
V time_slice(V v, std::size_t axis, index_t from, index_t len) {
  if (v.data) v.data += from * v.stride[axis];
  v.shape[axis] = len;
  return v;
}

/// The number of segments of `segment_len` ≥ 1 steps covering L (1 when L = 0).
inline index_t segment_count(index_t L, index_t segment_len) {
  return L == 0 ? 1 : (L + segment_len - 1) / segment_len;
}

/// The scratch of a chunked scan in K segments (nothing when K < 2).
struct SegmentScratch {
  float* ends = nullptr;        // (K - 1, batch, dim, N): end states, then the states entering segments 1 .. K-1
  float* delta_sums = nullptr;  // (K - 1, batch, dim): Σ Δ of segments 1 .. K-2 (slot 0 unused)
};

/// Takes the scratch of a chunked scan of `a` in `segments` segments from `layout` (measuring
/// when the layout has no memory): the same pieces on both backends.
template <class T>
SegmentScratch segment_scratch(WorkspaceLayout& layout, const SelectiveScanArgs<T>& a, index_t segments) {
  if (segments < 2) return {};
  const index_t rows = (segments - 1) * a.u.shape[0] * a.u.shape[1];
  SegmentScratch s;
  s.ends = layout.take<float>(rows * a.A.shape[1]);
  s.delta_sums = layout.take<float>(rows);
  return s;
}

/// The chunked scan on the CPU with segments of `segment_len` ≥ 1 steps (docs/math.md §1):
/// pass 1 scans segments 0 .. K-2 (segment 0 from the initial state, writing its outputs; the
/// others from zero, their outputs overwritten later) into the end states, the carries join
/// them with `apply(ScanPair{segment_decay(A, Σ Δ), end}, h)`, the rescan recomputes segments
/// 1 .. K-1 from their entering states, in `scratch` (`segment_scratch` for K segments).
template <class T>
void segmented_scan(const SelectiveScanArgs<T>& a, index_t segment_len, const SegmentScratch& scratch) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  const index_t K = segment_count(L, segment_len);
  if (K < 2 || batch == 0 || dim == 0) return oracle_scan(a);
  const index_t states = batch * dim * N;
  float* ends = scratch.ends;              // (K - 1, batch, dim, N)
  float* delta_sums = scratch.delta_sums;  // (K - 1, batch, dim); slot 0 unused
  auto segment = [&](index_t s) {
    const index_t from = s * segment_len, len = from + segment_len < L ? segment_len : L - from;
    SelectiveScanArgs<T> g = a;
    g.u = time_slice(a.u, 2, from, len);
    g.delta = time_slice(a.delta, 2, from, len);
    g.z = time_slice(a.z, 2, from, len);
    g.B = time_slice(a.B, 3, from, len);
    g.C = time_slice(a.C, 3, from, len);
    g.out = time_slice(a.out, 2, from, len);
    g.initial_state = {};
    g.final_state = {};
    return g;
  };
  auto state_view = [&](index_t slot) { return TensorView<float, 3>(ends + slot * states, {batch, dim, N}); };

  // Pass 1: end states (and Σ Δ) of segments 0 .. K-2.
  for (index_t s = 0; s + 1 < K; ++s) {
    SelectiveScanArgs<T> g = segment(s);
    if (s == 0) g.initial_state = a.initial_state;
    g.final_state = state_view(s);
    oracle_scan(g);
    if (s == 0) continue;
    for (index_t b = 0; b < batch; ++b)
      for (index_t d = 0; d < dim; ++d) {
        const float bias = present(a.delta_bias) ? a.delta_bias(d) : 0.0f;
        float sum = 0.0f;
        for (index_t t = 0; t < g.delta.shape[2]; ++t)
          sum += delta_value(to_float(g.delta(b, d, t)), bias, a.delta_softplus);
        delta_sums[(s * batch + b) * dim + d] = sum;
      }
  }
  // The carries: slot s becomes the state entering segment s + 1.
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n) {
        const float a_scaled = a_log2e(a.A(d, n));
        const index_t i = (b * dim + d) * N + n;
        float h = ends[i];
        for (index_t s = 1; s + 1 < K; ++s) {
          h = apply(ScanPair{segment_decay(a_scaled, delta_sums[(s * batch + b) * dim + d]), ends[s * states + i]}, h);
          ends[s * states + i] = h;
        }
      }
  // The rescan of segments 1 .. K-1.
  for (index_t s = 1; s < K; ++s) {
    SelectiveScanArgs<T> g = segment(s);
    g.initial_state = state_view(s - 1);
    if (s + 1 == K) g.final_state = a.final_state;
    oracle_scan(g);
  }
}

}  // namespace detail::scan

template <class T>
void SequentialScan::run(const Host&, const SelectiveScanArgs<T>& a) {
  detail::scan::oracle_scan(a);
}

template <class T>
void AutoScan::run(const Host&, const SelectiveScanArgs<T>& a) {
  detail::scan::oracle_scan(a);
}

template <class T>
std::size_t ChunkedScan::workspace_bytes(const Host&, const SelectiveScanArgs<T>& a) {
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return 0;
  WorkspaceLayout measure;
  detail::scan::segment_scratch(measure, a, detail::scan::segment_count(a.u.shape[2], kHostSegment));
  return measure.bytes();
}

template <class T>
void ChunkedScan::run(const Host& host, const SelectiveScanArgs<T>& a) {
  const OpWorkspace<Host> ws(host, a.workspace, workspace_bytes(host, a), "selective_scan (host, chunked)");
  WorkspaceLayout layout = ws.layout();
  const detail::scan::SegmentScratch scratch =
      detail::scan::segment_scratch(layout, a, detail::scan::segment_count(a.u.shape[2], kHostSegment));
  detail::scan::segmented_scan(a, kHostSegment, scratch);
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
