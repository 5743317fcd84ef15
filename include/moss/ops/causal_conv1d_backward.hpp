// moss/ops/causal_conv1d_backward.hpp: the backward pass of `causal_conv1d` (docs/math.md §4,
// conventions in docs/training.md).
//
// With a[b,d,t] = bias[d] + Σ_k weight[d,k] · x[b,d,t-(W-1)+k] the pre-activation (recomputed
// here from the forward's inputs, as mamba_ssm does, so the forward saves nothing) and
//   g[b,d,t] = dout[b,d,t] · silu'(a[b,d,t])          (dout itself without the fused SiLU)
// the gradients are
//   dx[b,d,τ]            = Σ_k weight[d,k] · g[b,d,τ+(W-1)-k]  (+ dfinal_state where x[b,d,τ] is in the final state)
//   dinitial_state[b,d,j] = the same sum at τ = j-(W-1) < 0    (+ dfinal_state where the state column is)
//   dweight[d,k]          = Σ_b Σ_t g[b,d,t] · x[b,d,t-(W-1)+k]   (the input at t < 0 as the forward read it)
//   dbias[d]              = Σ_b Σ_t g[b,d,t]
// The sums over batch and time run b outer, t inner, in increasing order; each dx element sums
// its k in increasing order, then adds dfinal_state. No atomics: the same inputs give the same
// bits.
//
// dinitial_state is the gradient with respect to the state the forward read: the initial_state
// when one was given, else the zero state (that gradient is well defined too, and a caller that
// does not need it leaves dinitial_state absent). dbias may likewise be asked for without a bias.
#pragma once

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/causal_conv1d.hpp"

namespace moss {

/// Arguments of `causal_conv1d_backward`. The first five fields are the forward's inputs (the
/// same views, or copies of what they held); optional views have a null `data`, and an absent
/// gradient output is not computed.
/// @tparam T storage type of the forward (float, f16 or bf16; double on the host only). The
/// gradients of activations (dx, dinitial_state) are stored in T, those of the parameters
/// (dweight, dbias) in compute_t<T>.
template <HostReal T>
struct CausalConv1dBackwardArgs {
  ConstView<T, 3> x;              // (batch, dim, L), any strides: the forward's input
  ConstView<T, 2> weight;         // (dim, W)
  ConstView<T, 1> bias;           // (dim), optional
  bool silu = false;              // the forward applied SiLU
  ConstView<T, 3> initial_state;  // (batch, dim, W-1), optional

  ConstView<T, 3> dout;          // (batch, dim, L), any strides: gradient of out
  ConstView<T, 3> dfinal_state;  // (batch, dim, W-1), optional: gradient of final_state

  TensorView<T, 3> dx;                  // (batch, dim, L), any strides, optional
  TensorView<compute_t<T>, 2> dweight;  // (dim, W), optional
  TensorView<compute_t<T>, 1> dbias;    // (dim), optional
  TensorView<T, 3> dinitial_state;      // (batch, dim, W-1), optional
  bool accumulate = false;              // add into dweight and dbias instead of overwriting them
};

/// Checks the shapes, strides and memory layout of `causal_conv1d_backward` arguments; throws
/// `config_error` (dim or W < 1) or `shape_error` naming `where`, the tensor, its shape and the
/// expected shape. Every gradient output must be distinct memory and overlap no input and no
/// other output.
template <HostReal T>
void validate(const CausalConv1dBackwardArgs<T>& args, const char* where) {
  const auto weight = detail::conv1d_named(args.weight, "weight");
  const auto x = detail::conv1d_named(args.x, "x");
  const auto bias = detail::conv1d_named(args.bias, "bias");
  const auto initial_state = detail::conv1d_named(args.initial_state, "initial_state");
  const auto dout = detail::conv1d_named(args.dout, "dout");
  const auto dfinal_state = detail::conv1d_named(args.dfinal_state, "dfinal_state");
  const auto dx = detail::conv1d_named(args.dx, "dx");
  const auto dweight = detail::conv1d_named(args.dweight, "dweight");
  const auto dbias = detail::conv1d_named(args.dbias, "dbias");
  const auto dinitial_state = detail::conv1d_named(args.dinitial_state, "dinitial_state");

  const auto [dim, width] = detail::conv1d_expect_weight(where, weight);
  expect_valid(where, x);
  expect_shape(where, x, {any, dim, any}, "(batch, dim, L)");
  const index_t batch = x.shape[0], seqlen = x.shape[2];
  if (present(bias)) {
    expect_valid(where, bias);
    expect_shape(where, bias, {dim}, "(dim)");
  }
  if (present(initial_state)) {
    expect_valid(where, initial_state);
    expect_shape(where, initial_state, {batch, dim, width - 1}, "(batch, dim, W-1)");
  }
  expect_valid(where, dout);
  expect_shape(where, dout, {batch, dim, seqlen}, "(batch, dim, L)");
  if (present(dfinal_state)) {
    expect_valid(where, dfinal_state);
    expect_shape(where, dfinal_state, {batch, dim, width - 1}, "(batch, dim, W-1)");
  }
  if (present(dx)) {
    expect_valid(where, dx);
    expect_shape(where, dx, {batch, dim, seqlen}, "(batch, dim, L)");
    detail::conv1d_expect_distinct(where, dx);
  }
  if (present(dweight)) {
    expect_valid(where, dweight);
    expect_shape(where, dweight, {dim, width}, "(dim, W)");
    detail::conv1d_expect_distinct(where, dweight);
  }
  if (present(dbias)) {
    expect_valid(where, dbias);
    expect_shape(where, dbias, {dim}, "(dim)");
    detail::conv1d_expect_distinct(where, dbias);
  }
  if (present(dinitial_state)) {
    expect_valid(where, dinitial_state);
    expect_shape(where, dinitial_state, {batch, dim, width - 1}, "(batch, dim, W-1)");
    detail::conv1d_expect_distinct(where, dinitial_state);
  }
  const auto disjoint_from_inputs = [&](const auto& o) {
    detail::conv1d_expect_disjoint(where, o, x);
    detail::conv1d_expect_disjoint(where, o, weight);
    detail::conv1d_expect_disjoint(where, o, bias);
    detail::conv1d_expect_disjoint(where, o, initial_state);
    detail::conv1d_expect_disjoint(where, o, dout);
    detail::conv1d_expect_disjoint(where, o, dfinal_state);
  };
  disjoint_from_inputs(dx);
  disjoint_from_inputs(dweight);
  disjoint_from_inputs(dbias);
  disjoint_from_inputs(dinitial_state);
  detail::conv1d_expect_disjoint(where, dx, dweight);
  detail::conv1d_expect_disjoint(where, dx, dbias);
  detail::conv1d_expect_disjoint(where, dx, dinitial_state);
  detail::conv1d_expect_disjoint(where, dweight, dbias);
  detail::conv1d_expect_disjoint(where, dweight, dinitial_state);
  detail::conv1d_expect_disjoint(where, dbias, dinitial_state);
}

}  // namespace moss

#include "moss/ops/causal_conv1d/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// runs the backward on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/causal_conv1d/backward_cuda.cuh"
#endif
