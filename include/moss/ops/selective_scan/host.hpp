// moss/ops/selective_scan/host.hpp: the CPU selective scan, the oracle of the CUDA kernels, and
// the CPU paths of the scan strategies.
//
// The oracle: plain float32 loops over math.hpp, batch and channel outer, time, then states
// inner, with the states of one channel in a small array. It is SequentialScan's (and AutoScan's)
// CPU path, the model's CPU forward. ChunkedScan's CPU path is the same segment decomposition as
// its kernels, each segment scanned by the oracle and the segments joined by math.hpp's pair.
// Everything here is templated on the storage type T and computes in R = compute_t<T>: float32
// for the storage types, double for T = double (docs/training.md).
#pragma once

#include <type_traits>
#include <vector>

#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan/math.hpp"

namespace moss {

namespace detail::scan {

/// A stored value of T in the compute type: `to_float` for the storage types, the value itself
/// for double.
template <class T>
compute_t<T> to_compute(T x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return to_float(x);
}

/// A compute-type value stored as T: `from_float<T>` (one rounding) for the storage types, the
/// value itself for double.
template <class T>
T from_compute(compute_t<T> x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return from_float<T>(x);
}

/// The segment pair of compute type R (math.hpp): ScanPair for float, ScanPairF64 for double.
template <class R>
using ScanPairOf = std::conditional_t<std::is_same_v<R, double>, ScanPairF64, ScanPair>;

/// Everything per channel that does not change along time: A·log2(e), D and delta_bias, in the
/// compute type R.
template <class R>
struct ChannelConstants {
  std::vector<R> a_scaled;  // (N)
  R d_skip = R(0);
  R bias = R(0);

  explicit ChannelConstants(index_t N) : a_scaled(static_cast<std::size_t>(N)) {}
  void load(const ConstView<R, 2>& A /* (dim, N) */, const ConstView<R, 1>& D, const ConstView<R, 1>& delta_bias,
            index_t d) {
    for (std::size_t n = 0; n < a_scaled.size(); ++n) a_scaled[n] = a_log2e(A(d, n));
    d_skip = present(D) ? D(d) : R(0);
    bias = present(delta_bias) ? delta_bias(d) : R(0);
  }
};

/// Advances the N states of one channel by one step and returns the channel's output value:
/// the loop body shared by `selective_scan` and `selective_scan_step`, so that scanning a
/// sequence token by token reproduces the full scan exactly.
/// `b_row` / `c_row` point at B[.., n = 0] and C[.., n = 0] of this step, `b_sn` / `c_sn` are the
/// strides along n.
template <class T, class R = compute_t<T>>
R step_channel(R* h /* (N) */, const ChannelConstants<R>& k, R u, R delta_raw, bool use_softplus, const T* b_row,
               index_t b_sn, const T* c_row, index_t c_sn, bool has_d, const T* z) {
  const R dt = delta_value(delta_raw, k.bias, use_softplus);
  const R dt_u = dt * u;
  R y = R(0);
  const std::size_t N = k.a_scaled.size();
  for (std::size_t n = 0; n < N; ++n) {
    const index_t i = static_cast<index_t>(n);
    h[n] = update_state(h[n], dt, k.a_scaled[n], dt_u, to_compute(b_row[i * b_sn]));
    y += to_compute(c_row[i * c_sn]) * h[n];
  }
  if (has_d) y = add_skip(y, k.d_skip, u);
  if (z) y = gate(y, to_compute(*z));
  return y;
}

/// The CPU oracle of the full-sequence scan (arguments already validated).
template <class T>
void oracle_scan(const SelectiveScanArgs<T>& a) {
  using R = compute_t<T>;
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  if (batch == 0 || dim == 0) return;
  const index_t b_per_group = dim / a.B.shape[1], c_per_group = dim / a.C.shape[1];
  const bool has_d = present(a.D), has_z = present(a.z);
  detail::scan::ChannelConstants<R> k(N);
  std::vector<R> h(static_cast<std::size_t>(N));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      k.load(a.A, a.D, a.delta_bias, d);
      for (index_t n = 0; n < N; ++n) h[n] = present(a.initial_state) ? a.initial_state(b, d, n) : R(0);
      for (index_t t = 0; t < L; ++t) {
        const R y = detail::scan::step_channel(h.data(), k, to_compute(a.u(b, d, t)), to_compute(a.delta(b, d, t)),
                                               a.delta_softplus, &a.B(b, d / b_per_group, 0, t), a.B.stride[2],
                                               &a.C(b, d / c_per_group, 0, t), a.C.stride[2], has_d,
                                               has_z ? &a.z(b, d, t) : nullptr);
        a.out(b, d, t) = from_compute<T>(y);
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

/// The scratch of a chunked scan in K segments (nothing when K < 2), in compute type R.
template <class R>
struct BasicSegmentScratch {
  R* ends = nullptr;        // (K - 1, batch, dim, N): end states, then the states entering segments 1 .. K-1
  R* delta_sums = nullptr;  // (K - 1, batch, dim): Σ Δ of segments 1 .. K-2 (slot 0 unused)
};
/// The float32 scratch of the storage types (and of the CUDA kernels).
using SegmentScratch = BasicSegmentScratch<float>;

/// Takes the scratch of a chunked scan of `a` in `segments` segments from `layout` (measuring
/// when the layout has no memory): the same pieces on both backends.
template <class T>
BasicSegmentScratch<compute_t<T>> segment_scratch(WorkspaceLayout& layout, const SelectiveScanArgs<T>& a,
                                                  index_t segments) {
  using R = compute_t<T>;
  if (segments < 2) return {};
  const index_t rows = (segments - 1) * a.u.shape[0] * a.u.shape[1];
  BasicSegmentScratch<R> s;
  s.ends = layout.take<R>(rows * a.A.shape[1]);
  s.delta_sums = layout.take<R>(rows);
  return s;
}

/// The chunked scan on the CPU with segments of `segment_len` ≥ 1 steps (docs/math.md §1):
/// pass 1 scans segments 0 .. K-2 (segment 0 from the initial state, writing its outputs; the
/// others from zero, their outputs overwritten later) into the end states, the carries join
/// them with `apply(ScanPair{segment_decay(A, Σ Δ), end}, h)`, the rescan recomputes segments
/// 1 .. K-1 from their entering states, in `scratch` (`segment_scratch` for K segments).
template <class T>
void segmented_scan(const SelectiveScanArgs<T>& a, index_t segment_len,
                    const BasicSegmentScratch<compute_t<T>>& scratch) {
  using R = compute_t<T>;
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  const index_t K = segment_count(L, segment_len);
  if (K < 2 || batch == 0 || dim == 0) return oracle_scan(a);
  const index_t states = batch * dim * N;
  R* ends = scratch.ends;              // (K - 1, batch, dim, N)
  R* delta_sums = scratch.delta_sums;  // (K - 1, batch, dim); slot 0 unused
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
  auto state_view = [&](index_t slot) { return TensorView<R, 3>(ends + slot * states, {batch, dim, N}); };

  // Pass 1: end states (and Σ Δ) of segments 0 .. K-2.
  for (index_t s = 0; s + 1 < K; ++s) {
    SelectiveScanArgs<T> g = segment(s);
    if (s == 0) g.initial_state = a.initial_state;
    g.final_state = state_view(s);
    oracle_scan(g);
    if (s == 0) continue;
    for (index_t b = 0; b < batch; ++b)
      for (index_t d = 0; d < dim; ++d) {
        const R bias = present(a.delta_bias) ? a.delta_bias(d) : R(0);
        R sum = R(0);
        for (index_t t = 0; t < g.delta.shape[2]; ++t)
          sum += delta_value(to_compute(g.delta(b, d, t)), bias, a.delta_softplus);
        delta_sums[(s * batch + b) * dim + d] = sum;
      }
  }
  // The carries: slot s becomes the state entering segment s + 1.
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n) {
        const R a_scaled = a_log2e(a.A(d, n));
        const index_t i = (b * dim + d) * N + n;
        R h = ends[i];
        for (index_t s = 1; s + 1 < K; ++s) {
          h = apply(ScanPairOf<R>{segment_decay(a_scaled, delta_sums[(s * batch + b) * dim + d]), ends[s * states + i]},
                    h);
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
  const detail::scan::BasicSegmentScratch<compute_t<T>> scratch =
      detail::scan::segment_scratch(layout, a, detail::scan::segment_count(a.u.shape[2], kHostSegment));
  detail::scan::segmented_scan(a, kHostSegment, scratch);
}

/// Advances every sequence by one token on the CPU, updating `state` in place.
template <class T>
void selective_scan_step(const Host&, const SelectiveScanStepArgs<T>& a) {
  using R = compute_t<T>;
  validate(a, "selective_scan_step");
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], N = a.A.shape[1];
  if (batch == 0 || dim == 0) return;
  const index_t b_per_group = dim / a.B.shape[1], c_per_group = dim / a.C.shape[1];
  const bool has_d = present(a.D), has_z = present(a.z);
  detail::scan::ChannelConstants<R> k(N);
  std::vector<R> h(static_cast<std::size_t>(N));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      k.load(a.A, a.D, a.delta_bias, d);
      for (index_t n = 0; n < N; ++n) h[n] = a.state(b, d, n);
      const R y = detail::scan::step_channel(h.data(), k, detail::scan::to_compute(a.u(b, d)),
                                             detail::scan::to_compute(a.delta(b, d)), a.delta_softplus,
                                             &a.B(b, d / b_per_group, 0), a.B.stride[2], &a.C(b, d / c_per_group, 0),
                                             a.C.stride[2], has_d, has_z ? &a.z(b, d) : nullptr);
      for (index_t n = 0; n < N; ++n) a.state(b, d, n) = h[n];
      a.out(b, d) = detail::scan::from_compute<T>(y);
    }
  }
}

}  // namespace moss
