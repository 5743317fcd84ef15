// moss/ops/grouped_linear.hpp: every expert's linear map over its contiguous segment of rows,
// in one call (docs/math.md §2.6, step 3: one GEMM per expert over its contiguous segment).
//
//   y[r, :] = x[r, :] · weight[e]ᵀ (+ bias[e])   for offsets[e] ≤ r < offsets[e+1]
// Inputs in T, float32 accumulation, y rounded once. Rows at or past offsets[X] are not written.
//
// CUDA strategy (measured in bench/results/): one cublasGemmEx per non-empty expert, which
// reaches 93–96 % of a dense GEMM of equal FLOPs where cublasGemmGroupedBatchedEx reaches 39 %.
// It needs the row offsets on the host: pass `host_offsets` when the caller has them; otherwise
// the op copies `offsets` to the host and synchronises the stream once. A layer reads them once
// per permutation plan (`read_offsets`) and reuses them for every projection, so an MoE layer
// synchronises once per forward. With `resident_offsets` the op never reads the offsets on the
// host, so it can be captured in a CUDA graph; rows at or past offsets[X] are then written as
// zeros. On CUDA the few rows of a decode step go through a grouped matrix-vector kernel (one
// warp per output value, each row's expert found in the device offsets), more rows through
// moss's sync-free grouped GEMM (a persistent tile scheduler over the segments, tensor cores
// for f16 / bf16: moss/ops/grouped_linear/device_gemm.cuh).
#pragma once

#include <cstdint>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/permute.hpp"

namespace moss {

/// The CUDA kernel that reads resident offsets (`GroupedLinearArgs::resident_offsets`).
enum class ResidentKernel {
  automatic,      ///< the matrix-vector kernel for a few rows (a decode step), else the tiled GEMM
  matrix_vector,  ///< one warp per output value; every row reads its expert's whole matrix
  tiled,          ///< the sync-free grouped GEMM (moss/ops/grouped_linear/device_gemm.cuh)
};

/// Arguments of `grouped_linear`.
/// @tparam T storage type of x, weight, bias and y (float, f16 or bf16; on the host also double,
/// which then accumulates in double).
template <class T>
struct GroupedLinearArgs {
  ConstView<T, 2> x;                   // (rows, in), unit inner stride
  ConstView<T, 3> weight;              // (X, out, in), contiguous
  ConstView<T, 2> bias;                // (X, out), contiguous, optional
  ConstView<std::int32_t, 1> offsets;  // (X + 1), backend memory: non-decreasing, offsets[0] = 0, offsets[X] ≤ rows
  const std::int32_t* host_offsets = nullptr;  // (X + 1) the same offsets in host memory, if the caller has them
  TensorView<T, 2> y;                          // (rows, out), unit inner stride
  /// Read the offsets on the device only (no host synchronisation; meant for few rows: every
  /// row reads its expert's whole matrix); rows at or past offsets[X] are written as zeros.
  bool resident_offsets = false;
  /// With `resident_offsets` on CUDA: which kernel (tests and benchmarks force one; the host ignores it).
  ResidentKernel resident_kernel = ResidentKernel::automatic;
};

/// Checks `a` once at op entry (both backends); the offsets' values are checked where they are
/// read on the host (`check_offsets`).
template <class T>
void validate(const GroupedLinearArgs<T>& a, const char* where) {
  static_assert(HostReal<T>, "moss::grouped_linear: T must be float, moss::f16, moss::bf16 or (host only) double");
  expect_valid(where, a.x);
  expect_valid(where, a.weight);
  expect_valid(where, a.offsets);
  expect_valid(where, a.y);
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0], out = a.weight.shape[1];
  MOSS_EXPECTS(X >= 1 && in >= 1 && out >= 1, config_error, where, ": ", a.weight.name, " is ",
               shape_string(a.weight.shape), " (experts, out, in) but every extent must be at least 1");
  expect_shape(where, a.weight, {X, out, in}, "(experts, out, in)");
  expect_contiguous(where, a.weight);
  expect_shape(where, a.offsets, {X + 1}, "(experts + 1)");
  expect_contiguous(where, a.offsets);
  expect_shape(where, a.y, {rows, out}, "(rows, out)");
  expect_unit_inner_stride(where, a.x);
  expect_unit_inner_stride(where, a.y);
  MOSS_EXPECTS(rows <= 1 || a.x.stride[0] >= in, shape_error, where, ": ", a.x.name, " has row stride ", a.x.stride[0],
               " but its rows are ", in, " wide (rows must not overlap)");
  MOSS_EXPECTS(rows <= 1 || a.y.stride[0] >= out, shape_error, where, ": ", a.y.name, " has row stride ", a.y.stride[0],
               " but its rows are ", out, " wide (rows must not overlap)");
  if (present(a.bias)) {
    expect_valid(where, a.bias);
    expect_shape(where, a.bias, {X, out}, "(experts, out)");
    expect_contiguous(where, a.bias);
  }
}

namespace detail {

/// Checks host offsets: offsets[0] = 0, non-decreasing, offsets[X] ≤ rows (`shape_error`).
inline void check_offsets(const char* where, const std::int32_t* offsets, index_t num_experts, index_t rows) {
  MOSS_EXPECTS(offsets[0] == 0, shape_error, where, ": offsets[0] is ", offsets[0], ", expected 0");
  for (index_t e = 0; e < num_experts; ++e)
    MOSS_EXPECTS(offsets[e + 1] >= offsets[e], shape_error, where, ": offsets[", e + 1, "] = ", offsets[e + 1],
                 " is below offsets[", e, "] = ", offsets[e], " (segments must be non-decreasing)");
  MOSS_EXPECTS(offsets[num_experts] <= rows, shape_error, where, ": offsets[", num_experts,
               "] = ", offsets[num_experts], " exceeds the ", rows, " rows of x");
}

/// The segment of `v` in a non-decreasing prefix (prefix[0] ≤ v): the largest e < n with
/// prefix[e] ≤ v, so empty segments (equal neighbours) are skipped. Binary search.
template <class P, class V>
MOSS_HD int last_segment_at_most(const P* prefix, int n, V v) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= v)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// The row → expert map of `resident_offsets`: the expert e with offsets[e] ≤ r < offsets[e+1]
/// (the last such e when segments are empty), or −1 when r ≥ offsets[X].
MOSS_HD int expert_of_row(const std::int32_t* offsets, int num_experts, std::int64_t r) {
  return r >= offsets[num_experts] ? -1 : last_segment_at_most(offsets, num_experts, r);
}

/// Calls `run(LinearArgs<T>)` for each non-empty expert segment of `a`, in expert order, with
/// `off` the checked host offsets: the one loop both backends run.
template <class T, class Run>
void for_each_segment(const GroupedLinearArgs<T>& a, const std::int32_t* off, Run&& run) {
  const index_t X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  for (index_t e = 0; e < X; ++e) {
    const index_t r0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    LinearArgs<T> l;
    l.x = ConstView<T, 2>(a.x.data + r0 * a.x.stride[0], {n, in}, {a.x.stride[0], 1}, a.x.name);
    l.weight = ConstView<T, 2>(a.weight.data + e * out * in, {out, in}, a.weight.name);
    if (present(a.bias)) l.bias = ConstView<T, 1>(a.bias.data + e * out, {out}, a.bias.name);
    l.y = TensorView<T, 2>(a.y.data + r0 * a.y.stride[0], {n, out}, {a.y.stride[0], 1}, a.y.name);
    run(l);
  }
}

}  // namespace detail

/// The plan's row offsets in host memory, copied once (on CUDA: one synchronisation) and
/// cached in the plan for every later grouped GEMM over it.
template <class Backend>
const std::vector<std::int32_t>& read_offsets(const Backend& backend, PermutePlan& plan) {
  if (plan.host_offsets.empty()) {
    plan.host_offsets.resize(static_cast<std::size_t>(plan.num_experts + 1));
    download(backend, plan.host_offsets.data(), plan.offsets.data(), plan.num_experts + 1);
  }
  return plan.host_offsets;
}

}  // namespace moss

#include "moss/ops/grouped_linear/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/grouped_linear/cuda.cuh"
#endif
