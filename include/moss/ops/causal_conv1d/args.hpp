// moss/ops/causal_conv1d/args.hpp: the argument structs of `causal_conv1d` and
// `causal_conv1d_step` and the CUDA widths, apart from the op's public header so the kernel and
// tuning headers can use them without including it (the public header brings the CUDA
// implementation under nvcc, which needs the kernels declared first).
#pragma once

#include <array>

#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `causal_conv1d`. Optional inputs are views with a null `data`.
/// @tparam T storage type of x, weight, bias, states and out (float, f16 or bf16; double on the
/// host only, for float64 gradient checks).
template <class T>
struct CausalConv1dArgs {
  ConstView<T, 3> x;       // (batch, dim, L), any strides
  ConstView<T, 2> weight;  // (dim, W)
  ConstView<T, 1> bias;    // (dim), optional
  bool silu = false;
  ConstView<T, 3> initial_state;  // (batch, dim, W-1), optional
  TensorView<T, 3> out;           // (batch, dim, L), any strides
  TensorView<T, 3> final_state;   // (batch, dim, W-1), optional output
};

/// Arguments of `causal_conv1d_step`: one token per sequence; the state shifts left by one
/// column and takes x as its newest column.
template <class T>
struct CausalConv1dStepArgs {
  TensorView<T, 3> state;  // (batch, dim, W-1), read and written
  ConstView<T, 2> x;       // (batch, dim)
  ConstView<T, 2> weight;  // (dim, W)
  ConstView<T, 1> bias;    // (dim), optional
  bool silu = false;
  TensorView<T, 2> out;  // (batch, dim)
};

/// The filter widths W the CUDA kernels are compiled for (the host backend takes any W ≥ 1).
inline constexpr std::array<int, 3> kCausalConv1dCudaWidths{2, 3, 4};

}  // namespace moss
