// moss/ops/router_backward.hpp: the backward pass of the router (docs/math.md §2.1–2.4 and §4).
//
// Given the forward's x, weight, logits and selection, the gradient `dgate` of the combine
// weights and the coefficients of the two auxiliary losses, it forms
//   dlogits = ∂(Σ dgate · gate)/∂logits + α · ∂aux/∂logits + β · ∂z/∂logits
// with the selection (argmax / top-k / the Sinkhorn assignment) a constant, and then, through the
// router's linear map logits = x · weightᵀ,
//   dx[t, k]      = Σ_i dlogits[t, i] · weight[i, k]      i ascending, rounded once to T
//   dweight[i, k] = Σ_t dlogits[t, i] · x[t, k]            t ascending
// Per token, with p = softmax(logits[t]) and g the gates of the K chosen experts e_s:
//   Top1Switch, TopK:    g_s = p_{e_s}:  dlogits[j] += Σ_s dgate_s · p_{e_s} · (δ_{j e_s} − p_j)
//   TopK, renormalised:  g_s = p_{e_s} / Σ_s' p_{e_s'} (a softmax over the chosen logits):
//                        dlogits[e_s] += g_s · (dgate_s − Σ_s' dgate_s' · g_s'), 0 elsewhere
//   SinkhornTop1:        g = σ(logits[e]):  dlogits[e] += dgate · g · (1 − g)   (the balanced
//                        assignment only chose e)
//   aux (R::aux_loss):   α · X · Σ_i f_i · P_i,  f_i = counts_i / (T·K) a constant, P_i = mean_t p_ti:
//                        dlogits[t, j] += α · X / T · p_tj · (f_j − Σ_i f_i · p_ti)
//   z:                   β · mean_t lse_t²:  dlogits[t, j] += β · 2 · lse_t · p_tj / T
// In compute_t<T> (float; double for T = double), each sum in the order given, so the same
// inputs give bitwise the same gradients. Every output is optional; dweight is overwritten, or
// added to when `accumulate` is set. On the host T may be double (moss::HostReal); the CUDA
// overload (moss/ops/router/backward_cuda.cuh, under nvcc) trusts the selection's experts.
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/router.hpp"

namespace moss {

/// Arguments of `route_backward`: the forward's inputs and outputs, the gradient of the gates,
/// the auxiliary losses' coefficients, and the gradients wanted.
/// @tparam T storage type of x and dx (float, f16, bf16; double on the host).
/// @tparam R the router policy (Top1Switch, TopK<K> or SinkhornTop1).
template <HostReal T, Router R>
struct RouteBackwardArgs {
  R router{};                           // the forward's router (TopK's renormalize flag matters)
  ConstView<T, 2> x;                    // (tokens, D), unit inner stride: the forward's input (read for dweight)
  ConstView<compute_t<T>, 2> weight;    // (X, D), contiguous: the router's classifier (read for dx)
  ConstView<compute_t<T>, 2> logits;    // (tokens, X), contiguous: the forward's logits
  ConstView<std::int32_t, 2> expert;    // (tokens, K), contiguous: the forward's selection
  ConstView<compute_t<T>, 2> dgate;     // (tokens, K), contiguous, optional: gradient of the gates
  ConstView<std::int32_t, 1> counts;    // (X), optional: pairs per expert before capacity (for aux)
  compute_t<T> aux_loss_coef = 0;       // α: the aux loss' weight in the total loss (needs counts)
  compute_t<T> z_loss_coef = 0;         // β: the z-loss' weight in the total loss
  TensorView<compute_t<T>, 2> dlogits;  // (tokens, X), contiguous, optional: gradient of the logits
  TensorView<T, 2> dx;                  // (tokens, D), unit inner stride, optional: gradient of x
  TensorView<compute_t<T>, 2> dweight;  // (X, D), contiguous, optional: gradient of weight
  bool accumulate = false;              // add into dweight instead of overwriting it
};

/// Checks `a` once at op entry: 1 ≤ X ≤ kMaxExperts and K ≤ X (`config_error` /
/// `unsupported_error`), D ≥ 1; x (tokens, D), weight (X, D), logits (tokens, X), expert and
/// dgate (tokens, K), counts (X) (required when the aux loss applies with α ≠ 0), dlogits
/// (tokens, X), dx (tokens, D), dweight (X, D). Throws `shape_error` naming the tensor, its shape
/// and the expected shape.
template <class T, class R>
void validate(const RouteBackwardArgs<T, R>& a, const char* where) {
  expect_valid(where, a.x);
  expect_valid(where, a.weight);
  expect_valid(where, a.logits);
  expect_valid(where, a.expert);
  const index_t tokens = a.x.shape[0], D = a.x.shape[1], X = a.weight.shape[0];
  MOSS_EXPECTS(D >= 1, config_error, where, ": ", a.x.name, " is ", shape_string(a.x.shape),
               " (tokens, d_model) but d_model must be at least 1");
  detail::route::expect_experts(where, a.weight, X, R::k, "(experts, d_model)");
  expect_shape(where, a.weight, {X, D}, "(experts, d_model)");
  expect_contiguous(where, a.weight);
  expect_unit_inner_stride(where, a.x);
  MOSS_EXPECTS(tokens <= 1 || a.x.stride[0] >= D, shape_error, where, ": ", a.x.name, " has row stride ", a.x.stride[0],
               " but its rows are ", D, " wide (rows must not overlap)");
  expect_shape(where, a.logits, {tokens, X}, "(tokens, experts)");
  expect_contiguous(where, a.logits);
  expect_shape(where, a.expert, {tokens, index_t{R::k}}, "(tokens, K)");
  expect_contiguous(where, a.expert);
  if (present(a.dgate)) {
    expect_valid(where, a.dgate);
    expect_shape(where, a.dgate, {tokens, index_t{R::k}}, "(tokens, K)");
    expect_contiguous(where, a.dgate);
  }
  if (R::aux_loss && a.aux_loss_coef != 0) {
    MOSS_EXPECTS(present(a.counts), shape_error, where, ": ", a.counts.name,
                 " (the per-expert counts before capacity) is absent but the aux loss has coefficient ",
                 a.aux_loss_coef);
    expect_valid(where, a.counts);
    expect_shape(where, a.counts, {X}, "(experts)");
    expect_contiguous(where, a.counts);
  }
  if (present(a.dlogits)) detail::route::expect_output(where, a.dlogits, {tokens, X}, "(tokens, experts)");
  if (present(a.dx)) {
    expect_valid(where, a.dx);
    expect_shape(where, a.dx, {tokens, D}, "(tokens, d_model)");
    expect_unit_inner_stride(where, a.dx);
    MOSS_EXPECTS(tokens <= 1 || a.dx.stride[0] >= D, shape_error, where, ": ", a.dx.name, " has row stride ",
                 a.dx.stride[0], " but its rows are ", D, " wide (rows must not overlap)");
  }
  if (present(a.dweight)) detail::route::expect_output(where, a.dweight, {X, D}, "(experts, d_model)");
}

}  // namespace moss

#include "moss/ops/router/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op.
#if defined(__CUDACC__)
#include "moss/ops/router/backward_cuda.cuh"
#endif
