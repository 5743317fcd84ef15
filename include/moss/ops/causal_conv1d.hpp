// moss/ops/causal_conv1d.hpp: depthwise causal 1-D convolution (REFERENCE.md §1), full
// sequence and one-token decode step.
//
//   out[b,d,t] = act( bias[d] + Σ_{k=0..W-1} weight[d,k] · x[b,d,t-(W-1)+k] ),  act = SiLU or identity
// where x at t < 0 is the initial state (its column W-1+t) or 0. The final state holds the last
// W-1 inputs (columns oldest → newest), taken from the initial state when L < W-1.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `causal_conv1d`. Optional inputs are views with a null `data`.
/// @tparam T storage type of x, weight, bias, states and out (float, f16 or bf16).
template <class T>
struct CausalConv1dArgs {
  ConstView<T, 3> x;                 // (batch, dim, L), any strides
  ConstView<T, 2> weight;            // (dim, W)
  ConstView<T, 1> bias;              // (dim), optional
  bool silu = false;
  ConstView<T, 3> initial_state;     // (batch, dim, W-1), optional
  TensorView<T, 3> out;              // (batch, dim, L), any strides
  TensorView<T, 3> final_state;      // (batch, dim, W-1), optional output
};

/// Arguments of `causal_conv1d_step`: one token per sequence; the state shifts left by one
/// column and takes x as its newest column.
template <class T>
struct CausalConv1dStepArgs {
  TensorView<T, 3> state;            // (batch, dim, W-1), read and written
  ConstView<T, 2> x;                 // (batch, dim)
  ConstView<T, 2> weight;            // (dim, W)
  ConstView<T, 1> bias;              // (dim), optional
  bool silu = false;
  TensorView<T, 2> out;              // (batch, dim)
};

}  // namespace moss
