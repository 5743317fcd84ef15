// moss/ops/causal_conv1d/math.hpp: the arithmetic of causal_conv1d, written once for the host
// oracle and the CUDA kernels.
//
// One output is act(bias + Σ_k w[k] · window[k]) with window[k] the input at t − (W−1) + k
// (oldest first), summed in that order in float32. Inputs before t = 0 come from the initial
// state or are zero; `conv1d_input` says which.
#pragma once

#include <cmath>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::detail {

/// SiLU x · σ(x) = x / (1 + e^−x) in float32 (large negative x gives −0: e^−x overflows to inf).
/// On the device the exponential and the division are the special-function-unit forms (a few
/// ulp, far inside the 1e-5 float32 contract): the IEEE forms' slow paths cost registers and
/// instructions that a bandwidth-bound kernel needs for loads in flight.
MOSS_HD float conv1d_silu(float x) {
#if MOSS_DEVICE_PASS
  return __fdividef(x, 1.0f + __expf(-x));
#else
  return x / (1.0f + std::exp(-x));
#endif
}

/// One output of the convolution: act(bias + Σ_{k<width} w[k] · window[k]), act = SiLU when
/// `silu`. `window[k]` is the input at t − (width−1) + k. Called with a compile-time width in
/// the kernels, where the loop unrolls and both arrays stay in registers.
MOSS_HD float conv1d_output(const float* w, const float* window, int width, float bias, bool silu) {
  float acc = bias;
  for (int k = 0; k < width; ++k) acc += w[k] * window[k];
  return silu ? conv1d_silu(acc) : acc;
}

/// The input of sequence (b, d) at time `tau` as stored: x for tau ≥ 0; for tau < 0 the initial
/// state's column W−1+tau when one is given, else zero. Final states are these raw values
/// (tau = L−(W−1) .. L−1), so a state round-trips bit for bit.
template <class T>
MOSS_HD T conv1d_input(const ConstView<T, 3>& x,              // (batch, dim, L)
                       const ConstView<T, 3>& initial_state,  // (batch, dim, W-1), optional
                       index_t b, index_t d, index_t tau) {
  if (tau >= 0) return x(b, d, tau);
  if (present(initial_state)) return initial_state(b, d, initial_state.shape[2] + tau);
  return T{};
}

}  // namespace moss::detail
