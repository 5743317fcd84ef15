// moss/ops/causal_conv1d/math.hpp: the arithmetic of causal_conv1d, written once for the host
// oracle and the CUDA kernels.
//
// One output is act(bias + Σ_k w[k] · window[k]) with window[k] the input at t − (W−1) + k
// (oldest first), summed in that order in float32. Inputs before t = 0 come from the initial
// state or are zero; `conv1d_input` says which. The host op also instantiates with T = double
// (compute_t<T>, docs/training.md): the double overloads below are the same formulas in float64,
// host only; the float ones stay the exact matches of every float call, on host and device.
#pragma once

#include <cmath>
#include <type_traits>

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

/// SiLU in double (the host's double instantiation).
inline double conv1d_silu(double x) { return x / (1.0 + std::exp(-x)); }

/// One output of the convolution in double: the float overload's formula and order.
inline double conv1d_output(const double* w, const double* window, int width, double bias, bool silu) {
  double acc = bias;
  for (int k = 0; k < width; ++k) acc += w[k] * window[k];
  return silu ? conv1d_silu(acc) : acc;
}

/// d silu(a) / da = σ(a) · (1 + a · (1 − σ(a))), written as mamba_ssm's backward writes it, in
/// the arithmetic type R (float or double). Host only (the backward pass of docs/math.md §4).
template <class R>
R conv1d_silu_grad(R a) {
  const R sigmoid = R(1) / (R(1) + std::exp(-a));
  return sigmoid * (R(1) + a * (R(1) - sigmoid));
}

/// `x` (float, f16, bf16 or double) in the arithmetic type of the op, `compute_t<T>`: exact.
template <class T>
auto conv1d_widen(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return x;
  } else {
    return to_float(x);
  }
}

/// An arithmetic value `v` (compute_t<T>) stored as T, rounded once to nearest even.
template <class T, class C>
T conv1d_narrow(C v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return from_float<T>(v);
  }
}

}  // namespace moss::detail
