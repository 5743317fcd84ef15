// moss/ops/selective_scan.hpp: the Mamba-1 selective scan (docs/math.md §1), full sequence and
// one-token decode step, and the scan strategies (how the full sequence is computed).
//
//   Δ[b,d,t]   = softplus?(delta[b,d,t] + delta_bias[d])
//   h[b,d,n,t] = exp(Δ·A[d,n]) · h[b,d,n,t-1] + Δ · B[b,g(d),n,t] · u[b,d,t]   (h[-1] = initial state or 0)
//   y[b,d,t]   = Σ_n C[b,g(d),n,t] · h[b,d,n,t] + D[d] · u[b,d,t]
//   out[b,d,t] = y · silu(z[b,d,t])   (when z is given; else y)
// with g(d) = d / (dim / groups). All arithmetic is float32; the state is float32. On the host
// T may also be double (moss::HostReal), and then every value and the arithmetic are double: the
// precision of the gradient checks (docs/training.md). The CUDA path takes moss::StorageType only.
//
// Every tensor is a strided view: (batch, dim, L) activations may have unit stride along L
// ("channel-first") or along dim ("channel-last", the layout of a (batch, L, d_inner) buffer).
// B and C are (batch, groups, N, L) views; a constant (dim, N) B or C is the same view with
// groups = dim and zero strides on batch and L (see `constant_bc`). B and C may have different
// group counts (a constant B with a variable C, say). Inputs may have zero strides; the outputs
// `out`, `final_state` (and the step's `state` and `out`) must not alias any input or each other.
//
//   moss::selective_scan(moss::Host{}, args);                      // AutoScan: the CPU oracle
//   moss::selective_scan(moss::Cuda{stream}, args);                // AutoScan: picks by shape
//   moss::selective_scan<moss::ChunkedScan>(moss::Cuda{stream}, args);
//
// A strategy is one struct (`ScanStrategy`): a `name` and a static `run` per backend; the CUDA
// `run` of the built-in ones is defined in moss/ops/selective_scan/cuda.cuh, which this header
// includes under nvcc. `selective_scan<S>` validates once, then calls `S::run`.
#pragma once

#include <concepts>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/core/workspace.hpp"

namespace moss {

/// Arguments of `selective_scan`. Optional inputs are views with a null `data`.
/// @tparam T storage type of u, delta, z, B, C and out (float, f16 or bf16; on the host also
/// double, docs/training.md). A, D, delta_bias and the states are `compute_t<T>`: float32 for
/// the storage types, double for double.
template <class T>
struct SelectiveScanArgs {
  ConstView<T, 3> u;                      // (batch, dim, L)
  ConstView<T, 3> delta;                  // (batch, dim, L)
  ConstView<compute_t<T>, 2> A;           // (dim, N)
  ConstView<T, 4> B;                      // (batch, groups, N, L)
  ConstView<T, 4> C;                      // (batch, groups, N, L)
  ConstView<compute_t<T>, 1> D;           // (dim), optional
  ConstView<T, 3> z;                      // (batch, dim, L), optional
  ConstView<compute_t<T>, 1> delta_bias;  // (dim), optional
  bool delta_softplus = false;
  ConstView<compute_t<T>, 3> initial_state;  // (batch, dim, N), optional
  TensorView<T, 3> out;                      // (batch, dim, L)
  TensorView<compute_t<T>, 3> final_state;   // (batch, dim, N), optional output
  Workspace workspace;  // scratch of strategies that need it (`workspace_bytes`); none: the backend's pool
};

/// Arguments of `selective_scan_step`: one token per sequence, the state updated in place.
/// @tparam T as for `SelectiveScanArgs` (double on the host only).
template <class T>
struct SelectiveScanStepArgs {
  TensorView<compute_t<T>, 3> state;      // (batch, dim, N), read and written
  ConstView<T, 2> u;                      // (batch, dim)
  ConstView<T, 2> delta;                  // (batch, dim)
  ConstView<compute_t<T>, 2> A;           // (dim, N)
  ConstView<T, 3> B;                      // (batch, groups, N)
  ConstView<T, 3> C;                      // (batch, groups, N)
  ConstView<compute_t<T>, 1> D;           // (dim), optional
  ConstView<T, 2> z;                      // (batch, dim), optional
  ConstView<compute_t<T>, 1> delta_bias;  // (dim), optional
  bool delta_softplus = false;
  TensorView<T, 2> out;  // (batch, dim)
};

/// The largest d_state the kernels support.
inline constexpr index_t kMaxStateSize = 256;

/// The (batch, groups = dim, N, L) view of a constant (dim, N) B or C: zero strides along
/// batch and L, so every step of every sequence reads row d of `bc` for channel d.
template <class T>
ConstView<std::remove_const_t<T>, 4> constant_bc(const TensorView<T, 2>& bc /* (dim, N) */, index_t batch, index_t L) {
  return {bc.data, {batch, bc.shape[0], bc.shape[1], L}, {0, bc.stride[0], bc.stride[1], 0}, bc.name};
}

/// The (batch, groups = dim, N) view of a constant (dim, N) B or C for `selective_scan_step`.
template <class T>
ConstView<std::remove_const_t<T>, 3> constant_bc(const TensorView<T, 2>& bc /* (dim, N) */, index_t batch) {
  return {bc.data, {batch, bc.shape[0], bc.shape[1]}, {0, bc.stride[0], bc.stride[1]}, bc.name};
}

namespace detail::scan {

/// Checks an optional view: when present, its strides and shape.
template <class T, std::size_t Rank>
void expect_optional(const char* where, const TensorView<T, Rank>& v, const Extents<Rank>& expected, const char* axes) {
  if (!present(v)) return;
  expect_valid(where, v);
  expect_shape(where, v, expected, axes);
}

/// Checks that an output writes distinct elements: no zero stride along an axis of extent > 1.
template <class T, std::size_t Rank>
void expect_distinct_elements(const char* where, const TensorView<T, Rank>& v) {
  if (v.empty()) return;
  for (std::size_t i = 0; i < Rank; ++i)
    MOSS_EXPECTS(v.shape[i] <= 1 || v.stride[i] != 0, shape_error, where, ": output ", v.name, " ",
                 shape_string(v.shape), " has strides ", shape_string(v.stride),
                 "; an output needs a non-zero stride along every axis longer than 1");
}

/// Checks that `groups` (of B or C) is at least 1 and divides `dim`.
template <class T, std::size_t Rank>
void expect_groups(const char* where, const TensorView<T, Rank>& v, index_t dim) {
  const index_t groups = v.shape[1];
  MOSS_EXPECTS(groups >= 1 && dim % groups == 0, config_error, where, ": ", v.name, " ", shape_string(v.shape), " has ",
               groups, " groups, which must be at least 1 and divide dim = ", dim);
}

/// Checks d_state: 1 ≤ N ≤ kMaxStateSize.
inline void expect_state_size(const char* where, index_t N) {
  MOSS_EXPECTS(N >= 1, config_error, where, ": d_state N (A.shape[1]) is ", N, "; expected at least 1");
  MOSS_EXPECTS(N <= kMaxStateSize, unsupported_error, where, ": d_state N = ", N, " is not supported; supported: 1 to ",
               kMaxStateSize);
}

}  // namespace detail::scan

/// Checks every shape, stride and size of a `selective_scan` call; throws `shape_error`,
/// `config_error` (groups, N < 1) or `unsupported_error` (N > kMaxStateSize) naming `where`.
template <class T>
void validate(const SelectiveScanArgs<T>& a, const char* where) {
  const auto u = a.u.named("u");
  const auto A = a.A.named("A");
  const auto B = a.B.named("B");
  const auto C = a.C.named("C");
  const auto out = a.out.named("out");
  expect_valid(where, u);
  const index_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2];
  const auto delta = a.delta.named("delta");
  expect_valid(where, delta);
  expect_shape(where, delta, {batch, dim, L}, "(batch, dim, L)");
  expect_valid(where, A);
  expect_shape(where, A, {dim, any}, "(dim, N)");
  const index_t N = A.shape[1];
  detail::scan::expect_state_size(where, N);
  for (const auto& bc : {B, C}) {
    expect_valid(where, bc);
    expect_shape(where, bc, {batch, any, N, L}, "(batch, groups, N, L)");
    detail::scan::expect_groups(where, bc, dim);
  }
  detail::scan::expect_optional(where, a.D.named("D"), {dim}, "(dim)");
  detail::scan::expect_optional(where, a.z.named("z"), {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_optional(where, a.delta_bias.named("delta_bias"), {dim}, "(dim)");
  detail::scan::expect_optional(where, a.initial_state.named("initial_state"), {batch, dim, N}, "(batch, dim, N)");
  expect_valid(where, out);
  expect_shape(where, out, {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_distinct_elements(where, out);
  const auto final_state = a.final_state.named("final_state");
  detail::scan::expect_optional(where, final_state, {batch, dim, N}, "(batch, dim, N)");
  if (present(final_state)) detail::scan::expect_distinct_elements(where, final_state);
}

struct Cuda;  // moss/backend/cuda.cuh

/// A scan strategy for storage type T: a struct with `static constexpr std::string_view name`
/// and `static void run(const Host&, const SelectiveScanArgs<T>&)` (its CPU path, also what the
/// CUDA tests compare with), and, to run on the GPU, `static void run(const Cuda&, ...)`. It may
/// add `static std::size_t workspace_bytes(const Backend&, const SelectiveScanArgs<T>&)` when it
/// needs scratch (taken from `args.workspace`, or from the backend's pool when that has no data).
/// `run` is called by `selective_scan` after validation, with batch, dim ≥ 0 and any L ≥ 0.
template <class S, class T>
concept ScanStrategy = requires(const Host& host, const SelectiveScanArgs<T>& a) {
  { S::name } -> std::convertible_to<std::string_view>;
  S::run(host, a);
};

/// The per-thread sequential recurrence (docs/math.md §1): a thread keeps a channel's states in
/// registers and walks all of L, in step groups; a block covers a tile of channels of one batch
/// row. Fast when batch · dim fills the GPU (batch 8 × dim 4096: 256 blocks on 132 SMs). Its CPU
/// path is the oracle.
struct SequentialScan {
  static constexpr std::string_view name = "sequential";
  template <class T>
  static void run(const Host&, const SelectiveScanArgs<T>& a);
  template <class T>
  static void run(const Cuda& gpu, const SelectiveScanArgs<T>& a);  // selective_scan/cuda.cuh
};

/// The chunked parallel scan for few (batch, channel) rows and long L (docs/math.md §1): L is
/// split into K segments scanned side by side. Pass 1 scans segments 0 .. K-2 (segment 0 from
/// the initial state, the others from zero) and keeps each one's end state and Σ Δ; the carries
/// walk the segments with the pair h ↦ exp(A·Σ Δ)·h + end (`detail::scan::ScanPair`); the rescan
/// recomputes segments 1 .. K-1 from their true entering states and writes out and the final
/// state. About (2K - 1) / K times the sequential work, spread over K times the blocks.
/// Scratch (`workspace_bytes`): (K - 1) · batch · dim · N floats of states and (K - 1) · batch ·
/// dim of Σ Δ, laid out as moss/core/workspace.hpp says.
struct ChunkedScan {
  static constexpr std::string_view name = "chunked";
  /// Steps per segment of the CPU path.
  static constexpr index_t kHostSegment = 256;
  template <class T>
  static void run(const Host&, const SelectiveScanArgs<T>& a);
  template <class T>
  static void run(const Cuda& gpu, const SelectiveScanArgs<T>& a);  // selective_scan/cuda.cuh
  template <class T>
  static std::size_t workspace_bytes(const Host&, const SelectiveScanArgs<T>& a);
  template <class T>
  static std::size_t workspace_bytes(const Cuda& gpu, const SelectiveScanArgs<T>& a);  // selective_scan/cuda.cuh
};

/// The default: picks by shape. On the CPU, SequentialScan (the oracle). On the GPU,
/// ChunkedScan when the sequential kernel's blocks (batch × dim / channels per block) fill at
/// most a quarter of one wave of resident blocks (batch ≤ 2 at dim 4096, N 16 on 132 SMs) and
/// L ≥ 512, else SequentialScan. Why a quarter: with K segments pass 1 and the rescan each walk
/// L / K steps, so the best case is K / 2 times faster than one walk of L, and K is about the
/// number of times the sequential blocks fit into a wave: K = 2 gains nothing, K ≥ 4 halves the
/// time or better, while the carries and two more launches cost a few microseconds.
struct AutoScan {
  static constexpr std::string_view name = "auto";
  template <class T>
  static void run(const Host&, const SelectiveScanArgs<T>& a);
  template <class T>
  static void run(const Cuda& gpu, const SelectiveScanArgs<T>& a);  // selective_scan/cuda.cuh
  template <class T>
  static std::size_t workspace_bytes(const Host&, const SelectiveScanArgs<T>&) {
    return 0;
  }
  template <class T>
  static std::size_t workspace_bytes(const Cuda& gpu, const SelectiveScanArgs<T>& a);  // selective_scan/cuda.cuh
};

/// Runs the selective scan with strategy `Strategy` (default AutoScan) on `backend` (contract:
/// above): validates the arguments once, then calls `Strategy::run`.
template <class Strategy = AutoScan, class Backend, class T>
void selective_scan(const Backend& backend, const SelectiveScanArgs<T>& args) {
  static_assert(ScanStrategy<Strategy, T>, "moss::selective_scan: the strategy is not a moss::ScanStrategy");
  validate(args, "selective_scan");
  Strategy::run(backend, args);
}

/// Bytes of scratch `selective_scan<Strategy>(backend, args)` takes from `args.workspace` (or,
/// when that has no data, from the backend's pool); 0 for strategies without `workspace_bytes`.
template <class Strategy = AutoScan, class Backend, class T>
std::size_t workspace_bytes(const Backend& backend, const SelectiveScanArgs<T>& args) {
  static_assert(ScanStrategy<Strategy, T>, "moss::workspace_bytes: the strategy is not a moss::ScanStrategy");
  validate(args, "selective_scan workspace_bytes");
  if constexpr (requires { Strategy::workspace_bytes(backend, args); })
    return Strategy::workspace_bytes(backend, args);
  else
    return 0;
}

/// Checks every shape, stride and size of a `selective_scan_step` call (see the other overload).
template <class T>
void validate(const SelectiveScanStepArgs<T>& a, const char* where) {
  const auto u = a.u.named("u");
  const auto A = a.A.named("A");
  const auto B = a.B.named("B");
  const auto C = a.C.named("C");
  const auto state = a.state.named("state");
  const auto out = a.out.named("out");
  expect_valid(where, u);
  const index_t batch = u.shape[0], dim = u.shape[1];
  const auto delta = a.delta.named("delta");
  expect_valid(where, delta);
  expect_shape(where, delta, {batch, dim}, "(batch, dim)");
  expect_valid(where, A);
  expect_shape(where, A, {dim, any}, "(dim, N)");
  const index_t N = A.shape[1];
  detail::scan::expect_state_size(where, N);
  for (const auto& bc : {B, C}) {
    expect_valid(where, bc);
    expect_shape(where, bc, {batch, any, N}, "(batch, groups, N)");
    detail::scan::expect_groups(where, bc, dim);
  }
  detail::scan::expect_optional(where, a.D.named("D"), {dim}, "(dim)");
  detail::scan::expect_optional(where, a.z.named("z"), {batch, dim}, "(batch, dim)");
  detail::scan::expect_optional(where, a.delta_bias.named("delta_bias"), {dim}, "(dim)");
  expect_valid(where, state);
  expect_shape(where, state, {batch, dim, N}, "(batch, dim, N)");
  detail::scan::expect_distinct_elements(where, state);
  expect_valid(where, out);
  expect_shape(where, out, {batch, dim}, "(batch, dim)");
  detail::scan::expect_distinct_elements(where, out);
}

}  // namespace moss

#include "moss/ops/selective_scan/host.hpp"
#if defined(__CUDACC__)
#include "moss/ops/selective_scan/cuda.cuh"
#endif
