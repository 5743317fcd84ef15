// moss/ops/permute.hpp: dispatch and combine of a sparse layer (docs/math.md §2, "Dispatch and
// combine"), three ops:
//
//   permute_plan     the (token, slot) pairs, enumerated slot-major (pair index p = s·T + t),
//                    stably sorted by expert. Expert e's kept pairs are the first
//                    min(count_e, C) of its segment, so capacity priority is exactly GShard's
//                    slot-major, first-come order; within an expert the rows are slot 0's
//                    tokens in token order, then slot 1's, ... Writes, for every pair, its row in
//                    the permuted buffer (−1 when dropped), for every row its pair, the per-expert
//                    row offsets of the kept pairs and the per-expert counts before capacity.
//   gather_rows      permuted[r] = x[token of row r] for the kept rows.
//   combine_rows     out[t] = Σ_s g[t,s]·y[row(t,s)] over the kept slots in slot order (slot 0
//                    first; no atomics, so the result is deterministic); only the columns in
//                    [weight_begin, weight_end) are multiplied by g, the others are summed as is.
//
// Integers are int32 (pair and row indices; tokens · K < 2^31). The plan is integer-exact, so
// host and CUDA build the same one. The CUDA plan never synchronises with the host. The host
// gather and combine check every index of the plan they are given (`shape_error`); the CUDA
// ones trust it (a plan made by `permute_plan` is always in range).
//
// Workspace (see moss/core/workspace.hpp): `permute_plan` on CUDA needs scratch for the sort
// keys and values, CUB's sort storage and the expert run bounds: `workspace_bytes(backend,
// args)` bytes, passed in `args.workspace` by a caller that plans its memory, else allocated
// from the backend's pool for the call. The host plan needs none; gather and combine need none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/core/workspace.hpp"

namespace moss {

/// Arguments of `permute_plan`.
struct PermutePlanArgs {
  ConstView<std::int32_t, 2> expert;     // (tokens, K), contiguous: every entry in [0, X)
  index_t num_experts = 0;               // X
  index_t capacity = 0;                  // pairs each expert keeps; 0: all (dropless)
  TensorView<std::int32_t, 1> pair_row;  // (tokens·K) written: row of pair (t, s) at index t·K + s, −1 if dropped
  TensorView<std::int32_t, 1> row_pair;  // (tokens·K) written: pair t·K + s of each kept row; −1 past the kept rows
  TensorView<std::int32_t, 1> offsets;   // (X + 1) written: expert e's kept rows are [offsets[e], offsets[e+1])
  TensorView<std::int32_t, 1> counts;    // (X) written: pairs assigned to e before capacity
  Workspace workspace;                   // optional: workspace_bytes(backend, *this) bytes of scratch
};

/// Arguments of `gather_rows`.
/// @tparam T storage type of x and out (float, f16, bf16; on the host also double).
template <class T>
struct GatherRowsArgs {
  ConstView<T, 2> x;                    // (tokens, D), unit inner stride
  ConstView<std::int32_t, 1> row_pair;  // (rows) from the plan
  ConstView<std::int32_t, 1> offsets;   // (X + 1) from the plan: rows [0, offsets[X]) are written
  index_t k = 1;                        // slots per token: the token of pair p is p / K
  TensorView<T, 2> out;                 // (rows, D), contiguous
};

namespace detail::permute {

/// The type of `combine_rows`' gate for storage type T: `compute_t<T>` (double for T = double,
/// else float; float also for a type validate rejects, so that its static_assert is what fires).
template <class T>
using gate_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace detail::permute

/// Arguments of `combine_rows`.
/// @tparam T storage type of y and out (float, f16, bf16; on the host also double, which then
/// sums in double: the gate is `compute_t<T>`).
template <class T>
struct CombineRowsArgs {
  ConstView<T, 2> y;                              // (rows, D), unit inner stride: one row per kept pair
  ConstView<std::int32_t, 2> pair_row;            // (tokens, K) from the plan
  ConstView<detail::permute::gate_t<T>, 2> gate;  // (tokens, K), optional: combine weights
  index_t weight_begin = 0;                       // columns [weight_begin, weight_end) are multiplied by the gate
  index_t weight_end = 0;
  TensorView<T, 2> out;  // (tokens, D), unit inner stride, written (every element)
};

/// The owned result of `permute_plan` on one backend, for a layer to reuse across its
/// projections. `host_offsets` is filled only where the host reads the offsets (the CUDA
/// grouped GEMM does so once per plan, see grouped_linear.hpp).
struct PermutePlan {
  Buffer<std::int32_t> pair_row, row_pair, offsets, counts;
  index_t tokens = 0, k = 1, num_experts = 0, capacity = 0;
  std::vector<std::int32_t> host_offsets;  // (X + 1) once read; empty before

  /// Rows of the permuted buffers: tokens·K (an upper bound of the kept rows under capacity).
  index_t rows() const { return tokens * k; }
  ConstView<std::int32_t, 2> pair_row_view() const { return {pair_row.data(), {tokens, k}, "pair_row"}; }
  ConstView<std::int32_t, 1> row_pair_view() const { return {row_pair.data(), {tokens * k}, "row_pair"}; }
  ConstView<std::int32_t, 1> offsets_view() const { return {offsets.data(), {num_experts + 1}, "offsets"}; }
  ConstView<std::int32_t, 1> counts_view() const { return {counts.data(), {num_experts}, "counts"}; }
};

/// Checks `a` once at op entry (both backends). The expert values themselves are checked on
/// the host backend; the CUDA plan treats an out-of-range expert as dropped (the router op
/// never writes one).
inline void validate(const PermutePlanArgs& a, const char* where) {
  expect_valid(where, a.expert);
  expect_contiguous(where, a.expert);
  const index_t tokens = a.expert.shape[0], K = a.expert.shape[1];
  MOSS_EXPECTS(K >= 1, config_error, where, ": ", a.expert.name, " is ", shape_string(a.expert.shape),
               " (tokens, K) but K must be at least 1");
  MOSS_EXPECTS(a.num_experts >= 1 && a.num_experts < INT32_MAX, config_error, where, ": num_experts is ", a.num_experts,
               ", expected ≥ 1");
  MOSS_EXPECTS(K <= a.num_experts, config_error, where, ": K = ", K, " slots but only ", a.num_experts, " experts");
  MOSS_EXPECTS(tokens <= INT32_MAX / K, unsupported_error, where, ": ", tokens, " tokens × K = ", K,
               " pairs exceed the int32 pair index");
  MOSS_EXPECTS(a.capacity >= 0, config_error, where, ": capacity is ", a.capacity, ", expected ≥ 0 (0 = dropless)");
  const index_t pairs = tokens * K;
  for (const auto* v : {&a.pair_row, &a.row_pair}) {
    expect_valid(where, *v);
    expect_shape(where, *v, {pairs}, "(tokens·K)");
    expect_contiguous(where, *v);
  }
  expect_valid(where, a.offsets);
  expect_shape(where, a.offsets, {a.num_experts + 1}, "(experts + 1)");
  expect_contiguous(where, a.offsets);
  expect_valid(where, a.counts);
  expect_shape(where, a.counts, {a.num_experts}, "(experts)");
  expect_contiguous(where, a.counts);
}

/// Bytes of scratch `permute_plan` needs on the host: none (it sorts in vectors).
inline std::size_t workspace_bytes(const Host&, const PermutePlanArgs& a) {
  validate(a, "workspace_bytes (permute_plan)");
  return 0;
}

/// Checks `a` once at op entry (both backends).
template <class T>
void validate(const GatherRowsArgs<T>& a, const char* where) {
  static_assert(HostReal<T>, "moss::gather_rows: T must be float, moss::f16, moss::bf16 or (host only) double");
  expect_valid(where, a.x);
  expect_valid(where, a.row_pair);
  expect_valid(where, a.offsets);
  expect_valid(where, a.out);
  const index_t tokens = a.x.shape[0], D = a.x.shape[1], rows = a.row_pair.shape[0];
  MOSS_EXPECTS(a.k >= 1, config_error, where, ": K is ", a.k, ", expected ≥ 1");
  MOSS_EXPECTS(rows == tokens * a.k, shape_error, where, ": ", a.row_pair.name, " is ", shape_string(a.row_pair.shape),
               " but ", a.x.name, " ", shape_string(a.x.shape), " with K = ", a.k, " has ", tokens * a.k, " pairs");
  MOSS_EXPECTS(a.offsets.shape[0] >= 2, shape_error, where, ": ", a.offsets.name, " is ", shape_string(a.offsets.shape),
               " but needs experts + 1 ≥ 2 entries");
  expect_contiguous(where, a.row_pair);
  expect_contiguous(where, a.offsets);
  expect_unit_inner_stride(where, a.x);
  MOSS_EXPECTS(tokens <= 1 || a.x.stride[0] >= D, shape_error, where, ": ", a.x.name, " has row stride ", a.x.stride[0],
               " but its rows are ", D, " wide (rows must not overlap)");
  expect_shape(where, a.out, {rows, D}, "(rows, d)");
  expect_contiguous(where, a.out);
}

/// Checks `a` once at op entry (both backends).
template <class T>
void validate(const CombineRowsArgs<T>& a, const char* where) {
  static_assert(HostReal<T>, "moss::combine_rows: T must be float, moss::f16, moss::bf16 or (host only) double");
  expect_valid(where, a.y);
  expect_valid(where, a.pair_row);
  expect_valid(where, a.out);
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.y.shape[1];
  expect_contiguous(where, a.pair_row);
  MOSS_EXPECTS(a.y.shape[0] == tokens * K, shape_error, where, ": ", a.y.name, " is ", shape_string(a.y.shape),
               " (rows, d) but the plan has ", tokens * K, " rows (tokens·K)");
  expect_unit_inner_stride(where, a.y);
  MOSS_EXPECTS(a.y.shape[0] <= 1 || a.y.stride[0] >= D, shape_error, where, ": ", a.y.name, " has row stride ",
               a.y.stride[0], " but its rows are ", D, " wide");
  expect_shape(where, a.out, {tokens, D}, "(tokens, d)");
  expect_unit_inner_stride(where, a.out);
  MOSS_EXPECTS(tokens <= 1 || a.out.stride[0] >= D, shape_error, where, ": ", a.out.name, " has row stride ",
               a.out.stride[0], " but its rows are ", D, " wide (rows must not overlap)");
  MOSS_EXPECTS(0 <= a.weight_begin && a.weight_begin <= a.weight_end && a.weight_end <= D, config_error, where,
               ": weighted columns [", a.weight_begin, ", ", a.weight_end, ") are not inside [0, ", D, ")");
  if (present(a.gate)) {
    expect_valid(where, a.gate);
    expect_shape(where, a.gate, {tokens, K}, "(tokens, K)");
    expect_contiguous(where, a.gate);
  } else {
    // With no tokens there is nothing to weigh (and a (0, K) gate has no data to be present).
    MOSS_EXPECTS(a.weight_begin == a.weight_end || tokens == 0, config_error, where, ": columns [", a.weight_begin,
                 ", ", a.weight_end, ") are to be weighted but no gate was given");
  }
}

/// The plan of `expert` (tokens, K) for X experts and capacity C (0: dropless) on `backend`;
/// the op's scratch comes from `workspace` when it has data, else from the backend's pool.
template <class Backend>
PermutePlan make_permute_plan(const Backend& backend, ConstView<std::int32_t, 2> expert, index_t num_experts,
                              index_t capacity, Workspace workspace = {}) {
  PermutePlan p;
  p.tokens = expert.shape[0];
  p.k = expert.shape[1];
  p.num_experts = num_experts;
  p.capacity = capacity;
  p.pair_row = backend.template alloc<std::int32_t>(p.rows());
  p.row_pair = backend.template alloc<std::int32_t>(p.rows());
  p.offsets = backend.template alloc<std::int32_t>(num_experts + 1);
  p.counts = backend.template alloc<std::int32_t>(num_experts);
  permute_plan(backend,
               PermutePlanArgs{expert, num_experts, capacity, p.pair_row.flat("pair_row"), p.row_pair.flat("row_pair"),
                               p.offsets.flat("offsets"), p.counts.flat("counts"), workspace});
  return p;
}

}  // namespace moss

#include "moss/ops/permute/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/permute/cuda.cuh"
#endif
