// moss/ops/linear.hpp: y = x · Wᵀ (+ bias), the projection of every Mamba layer.
//
// Inputs in T, float32 accumulation, one rounding when y is written in Tout (T or float).
// x and y may have any row stride (unit stride inside a row), so a column slice of a wider
// activation is a valid input or output without a copy. On CUDA this is cuBLAS(Lt).
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `linear`.
/// @tparam T storage type of x and weight (float, f16 or bf16).
/// @tparam Tout storage type of y (T or float).
template <class T, class Tout = T>
struct LinearArgs {
  ConstView<T, 2> x;          // (rows, in), unit inner stride
  ConstView<T, 2> weight;     // (out, in), contiguous
  ConstView<T, 1> bias;       // (out), optional
  TensorView<Tout, 2> y;      // (rows, out), unit inner stride
};

}  // namespace moss
