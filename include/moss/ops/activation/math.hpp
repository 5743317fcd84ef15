// moss/ops/activation/math.hpp: the float64 form and the derivative of each activation policy
// (moss/policy/activation.hpp), for the host's double instantiation of `activation` and for
// `activation_backward` (docs/math.md §4, docs/training.md). Host only for now.
//
// `ActivationGrad<Act>` is specialised for Relu, Gelu and Silu; an activation of one's own
// becomes differentiable (and usable with T = double) by specialising it too, with
//   static double value(double x);        // Act::apply in float64
//   static float derivative(float x);     // d Act / dx in float32
//   static double derivative(double x);   // the same in float64
// The float forward keeps calling Act::apply itself, so its results do not change.
#pragma once

#include <cmath>
#include <concepts>
#include <type_traits>

#include "moss/core/dtype.hpp"
#include "moss/policy/activation.hpp"

namespace moss {

/// The float64 value and the derivative of activation `Act`; specialised below for the
/// built-in activations (the primary template is left undefined).
template <class Act>
struct ActivationGrad;

/// ReLU: max(x, 0); the derivative is 1 for x > 0 and 0 otherwise (0 at x = 0, as PyTorch's
/// threshold_backward); NaN stays NaN.
template <>
struct ActivationGrad<Relu> {
  static double value(double x) { return x > 0.0 ? x : (x != x ? x : 0.0); }
  template <class R>
  static R derivative_of(R x) {
    return x > R(0) ? R(1) : (x != x ? x : R(0));
  }
  static float derivative(float x) { return derivative_of(x); }
  static double derivative(double x) { return derivative_of(x); }
};

/// Exact (erf) GELU x · Φ(x); the derivative is Φ(x) + x · φ(x), φ the standard normal density
/// (its limits 0 and 1 at ∓∞).
template <>
struct ActivationGrad<Gelu> {
  static double value(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752)); }
  template <class R>
  static R derivative_of(R x) {
    if (std::isinf(x)) return x > R(0) ? R(1) : R(0);
    const R cdf = R(0.5) * (R(1) + std::erf(x * R(0.70710678118654752)));
    const R pdf = R(0.39894228040143268) * std::exp(R(-0.5) * x * x);  // 1/√(2π) · e^(−x²/2)
    return cdf + x * pdf;
  }
  static float derivative(float x) { return derivative_of(x); }
  static double derivative(double x) { return derivative_of(x); }
};

/// SiLU x · σ(x); the derivative is σ(x) · (1 + x · (1 − σ(x))) (its limits 0 and 1 at ∓∞).
template <>
struct ActivationGrad<Silu> {
  static double value(double x) { return x / (1.0 + std::exp(-x)); }
  template <class R>
  static R derivative_of(R x) {
    if (std::isinf(x)) return x > R(0) ? R(1) : R(0);
    const R sigmoid = R(1) / (R(1) + std::exp(-x));
    return sigmoid * (R(1) + x * (R(1) - sigmoid));
  }
  static float derivative(float x) { return derivative_of(x); }
  static double derivative(double x) { return derivative_of(x); }
};

/// An activation with a backward pass: an `Activation` whose `ActivationGrad` gives its float64
/// value and its derivative in float and double.
template <class Act>
concept DifferentiableActivation = Activation<Act> && requires(float f, double d) {
  { ActivationGrad<Act>::value(d) } -> std::same_as<double>;
  { ActivationGrad<Act>::derivative(f) } -> std::same_as<float>;
  { ActivationGrad<Act>::derivative(d) } -> std::same_as<double>;
};

namespace detail {

/// Act(x) in the arithmetic type R: Act::apply itself in float (the forward's own function, on
/// host and device alike), ActivationGrad<Act>::value in double.
template <class Act, class R>
R activation_value(R x) {
  if constexpr (std::is_same_v<R, double>) {
    return ActivationGrad<Act>::value(x);
  } else {
    return Act::apply(x);
  }
}

}  // namespace detail

}  // namespace moss
