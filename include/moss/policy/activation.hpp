// moss/policy/activation.hpp: the activations of MLP experts and feed-forward blocks
// (docs/math.md §2, "Experts"). An activation is one struct with a `MOSS_HD static float
// apply(float)` and a config name; host loops and CUDA kernels call the same function.
#pragma once

#include <cmath>
#include <concepts>
#include <string_view>

#include "moss/core/config.hpp"

namespace moss {

/// max(x, 0).
struct Relu {
  static constexpr std::string_view name = "relu";
  MOSS_HD static float apply(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }
};
/// The exact (erf) GELU, PyTorch's default `nn.GELU()`: x · Φ(x).
struct Gelu {
  static constexpr std::string_view name = "gelu";
  MOSS_HD static float apply(float x) {
#if MOSS_DEVICE_PASS
    return 0.5f * x * (1.0f + ::erff(x * 0.70710678118654752f));
#else
    return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
#endif
  }
};
/// SiLU (swish): x · sigmoid(x).
struct Silu {
  static constexpr std::string_view name = "silu";
  MOSS_HD static float apply(float x) {
#if MOSS_DEVICE_PASS
    return x / (1.0f + ::expf(-x));
#else
    return x / (1.0f + std::exp(-x));
#endif
  }
};

/// An activation policy: a struct with `MOSS_HD static float apply(float)`.
template <class A>
concept Activation = requires(float x) {
  { A::apply(x) } -> std::convertible_to<float>;
  { A::name } -> std::convertible_to<std::string_view>;
};

}  // namespace moss
