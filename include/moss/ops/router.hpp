// moss/ops/router.hpp: the router of a sparse layer (docs/math.md §2) and its statistics.
//
//   logits[t, i]  = x[t, :] · weight[i, :]           float32 (x in T, weight float32)
//   expert[t, s], gate[t, s] = router.select(logits[t], scores[t])   s < K, slot 0 the best
//
// Three ops compute it:
//   route          logits, then the selection with scores = logits, for any router;
//   route_logits   the logits alone (bit-identical to `route`'s);
//   route_select   the selection from given logits and scores, e.g. a batch-level score such
//                  as the Sinkhorn-balanced matrix (moss/ops/sinkhorn.hpp) that a router
//                  struct computes between the two.
//
// The logits are bit-identical on every backend for identical inputs: both sum the dot product
// in the same order (`detail::route::dot_in_kernel_order`), so host and CUDA select the same
// experts; probabilities and gates may differ by rounding (the device's expf). A router that
// reads a computed activation (a later layer's input, RoM's per-projection Out router) sees
// inputs that already differ by rounding between backends, so near-ties may route differently.
//
// `router_stats` turns the logits and the permutation's per-expert counts into the layer's
// statistics: the load-balancing loss, the z-loss and the mean probability of each expert.
//
//   moss::route(moss::Host{}, args);           // the CPU oracle, this header
//   moss::route(moss::Cuda{stream}, args);     // moss/ops/router/cuda.cuh
#pragma once

#include <cstdint>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/policy/router.hpp"

namespace moss {

/// The largest expert count the router kernels support.
inline constexpr index_t kMaxExperts = 256;

namespace detail::route {

/// The real type of the router's weight, logits and gates for storage type T: `compute_t<T>`
/// (double for the host's T = double, else float; float also for a type validate rejects, so
/// that its static_assert is what fires).
template <class T>
using real_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace detail::route

/// Arguments of `route`.
/// @tparam T storage type of x (float, f16 or bf16; on the host also double, and then weight,
/// logits and gate are double: `compute_t<T>`).
/// @tparam R the router policy.
template <class T, Router R>
struct RouteArgs {
  R router{};
  ConstView<T, 2> x;                               // (tokens, D), unit inner stride
  ConstView<detail::route::real_t<T>, 2> weight;   // (X, D), contiguous: the router's classifier
  TensorView<detail::route::real_t<T>, 2> logits;  // (tokens, X), contiguous, written
  TensorView<std::int32_t, 2> expert;              // (tokens, K), contiguous, written
  TensorView<detail::route::real_t<T>, 2> gate;    // (tokens, K), contiguous, written: combine weights
};

/// Arguments of `route_logits`: the logits alone.
/// @tparam T storage type of x (float, f16 or bf16; on the host also double, and then weight and
/// logits are double).
template <class T>
struct RouteLogitsArgs {
  ConstView<T, 2> x;                               // (tokens, D), unit inner stride
  ConstView<detail::route::real_t<T>, 2> weight;   // (X, D), contiguous: the router's classifier
  TensorView<detail::route::real_t<T>, 2> logits;  // (tokens, X), contiguous, written
};

/// Arguments of `route_select`: the per-token selection from given logits and scores.
/// @tparam R the router policy.
/// @tparam C the real type of logits, scores and gate: float, or double on the host (then the
/// experts are ranked by the scores rounded to float, and the gates are computed in double).
template <Router R, class C = float>
struct RouteSelectArgs {
  R router{};
  ConstView<C, 2> logits;              // (tokens, X), contiguous: what the weights are computed from
  ConstView<C, 2> scores;              // (tokens, X), contiguous: what the experts are ranked by
  TensorView<std::int32_t, 2> expert;  // (tokens, K), contiguous, written
  TensorView<C, 2> gate;               // (tokens, K), contiguous, written: combine weights
};

/// Number of floats `router_stats` writes: aux loss, z-loss, then the X mean probabilities.
constexpr index_t router_stats_size(index_t num_experts) { return 2 + num_experts; }

/// Arguments of `router_stats`.
struct RouterStatsArgs {
  ConstView<float, 2> logits;         // (tokens, X) from `route`
  ConstView<std::int32_t, 1> counts;  // (X) pairs assigned to each expert before capacity (the permutation's)
  index_t k = 1;                      // experts per token
  bool aux_loss = true;               // false: the aux loss is 0 (routers without one, e.g. Sinkhorn)
  float aux_loss_coef = 0.01f;
  float z_loss_coef = 0.001f;
  TensorView<float, 1> out;  // (2 + X): [aux, z, P_0 .. P_{X-1}], written
};

namespace detail::route {

/// Checks a (rows, cols) output view: the shape and contiguity.
template <class V>
void expect_output(const char* where, const V& v, const Extents<2>& shape, const char* axes) {
  expect_valid(where, v);
  expect_shape(where, v, shape, axes);
  expect_contiguous(where, v);
}

}  // namespace detail::route

namespace detail::route {

/// Checks the expert count X of a router call: 1 ≤ X ≤ kMaxExperts (`config_error` /
/// `unsupported_error`) and K ≤ X; `v` is the (…, X) view that carries X.
template <class V>
void expect_experts(const char* where, const V& v, index_t X, index_t k, const char* axes) {
  MOSS_EXPECTS(X >= 1, config_error, where, ": ", v.name, " is ", shape_string(v.shape), " ", axes,
               " but there must be at least one expert");
  MOSS_EXPECTS(X <= kMaxExperts, unsupported_error, where, ": ", X, " experts; supported: 1 to ", kMaxExperts);
  MOSS_EXPECTS(k <= X, config_error, where, ": the router picks K = ", k, " experts per token but there are only ", X);
}

/// Checks the inputs and the logits of a logits computation (shared by `route` and
/// `route_logits`): D ≥ 1, the expert count (K = `k`), the shapes and strides.
template <class T>
void expect_logits_args(const char* where, const ConstView<T, 2>& x, const ConstView<real_t<T>, 2>& weight,
                        const TensorView<real_t<T>, 2>& logits, index_t k) {
  static_assert(HostReal<T>, "moss::route: T must be float, moss::f16, moss::bf16 or (host only) double");
  expect_valid(where, x);
  expect_valid(where, weight);
  const index_t tokens = x.shape[0], D = x.shape[1], X = weight.shape[0];
  MOSS_EXPECTS(D >= 1, config_error, where, ": ", x.name, " is ", shape_string(x.shape),
               " (tokens, d_model) but d_model must be at least 1");
  expect_experts(where, weight, X, k, "(experts, d_model)");
  expect_shape(where, weight, {X, D}, "(experts, d_model)");
  expect_contiguous(where, weight);
  expect_unit_inner_stride(where, x);
  MOSS_EXPECTS(tokens <= 1 || x.stride[0] >= D, shape_error, where, ": ", x.name, " has row stride ", x.stride[0],
               " but its rows are ", D, " wide (rows must not overlap)");
  expect_output(where, logits, {tokens, X}, "(tokens, experts)");
}

/// Checks the selection outputs (tokens, K) and the int32 pair index.
template <class C>
void expect_selection(const char* where, index_t tokens, index_t k, const TensorView<std::int32_t, 2>& expert,
                      const TensorView<C, 2>& gate) {
  MOSS_EXPECTS(tokens <= INT32_MAX / k, unsupported_error, where, ": ", tokens, " tokens × K = ", k,
               " pairs exceed the int32 pair index");
  expect_output(where, expert, {tokens, k}, "(tokens, K)");
  expect_output(where, gate, {tokens, k}, "(tokens, K)");
}

}  // namespace detail::route

/// Checks `a` once at op entry (both backends): 1 ≤ X ≤ kMaxExperts and K ≤ X (`config_error` /
/// `unsupported_error`), D ≥ 1, the shapes and strides of every view (`shape_error`).
template <class T, Router R>
void validate(const RouteArgs<T, R>& a, const char* where) {
  detail::route::expect_logits_args(where, a.x, a.weight, a.logits, R::k);
  detail::route::expect_selection(where, a.x.shape[0], R::k, a.expert, a.gate);
}

/// Checks `a` once at op entry (both backends): as for `route`, without the selection.
template <class T>
void validate(const RouteLogitsArgs<T>& a, const char* where) {
  detail::route::expect_logits_args(where, a.x, a.weight, a.logits, 1);
}

/// Checks `a` once at op entry (both backends): 1 ≤ X ≤ kMaxExperts, K ≤ X, logits and scores
/// contiguous (tokens, X), expert and gate contiguous (tokens, K).
template <Router R, class C>
void validate(const RouteSelectArgs<R, C>& a, const char* where) {
  static_assert(std::is_same_v<C, float> || std::is_same_v<C, double>,
                "moss::route_select: the logits must be float (or, on the host, double)");
  expect_valid(where, a.logits);
  expect_valid(where, a.scores);
  const index_t tokens = a.logits.shape[0], X = a.logits.shape[1];
  detail::route::expect_experts(where, a.logits, X, R::k, "(tokens, experts)");
  expect_contiguous(where, a.logits);
  expect_shape(where, a.scores, {tokens, X}, "(tokens, experts)");
  expect_contiguous(where, a.scores);
  detail::route::expect_selection(where, tokens, R::k, a.expert, a.gate);
}

/// Checks `a` once at op entry (both backends).
inline void validate(const RouterStatsArgs& a, const char* where) {
  expect_valid(where, a.logits);
  const index_t X = a.logits.shape[1];
  MOSS_EXPECTS(X >= 1 && X <= kMaxExperts, unsupported_error, where, ": ", X, " experts; supported: 1 to ",
               kMaxExperts);
  MOSS_EXPECTS(a.k >= 1 && a.k <= X, config_error, where, ": K = ", a.k, " with ", X, " experts");
  expect_contiguous(where, a.logits);
  expect_valid(where, a.counts);
  expect_shape(where, a.counts, {X}, "(experts)");
  expect_contiguous(where, a.counts);
  expect_valid(where, a.out);
  expect_shape(where, a.out, {router_stats_size(X)}, "(2 + experts)");
  expect_contiguous(where, a.out);
}

}  // namespace moss

#include "moss/ops/router/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/router/cuda.cuh"
#endif
