// moss/policy/experts.hpp: expert kinds, their activations, and the expert count
// (REFERENCE.md §2, "Experts").
//
//   moss::Experts<8>          eight experts, fixed in the type (a config that says otherwise is refused)
//   moss::Experts<>           the count comes from the config (`num_experts`)
//   moss::LinearExpert        W_i x (+ bias): RoM's projections
//   moss::Mlp<moss::Relu>     wo_i · act(wi_i · x): Switch / MoE-Mamba experts
//   moss::GatedMlp<moss::Silu> down_i · (act(gate_i · x) ⊙ up_i · x): SwiGLU (BlackMamba's paper)
// Weights of an expert container are stacked on a leading expert axis: (X, out, in).
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>

#include "moss/core/config.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// The expert count: fixed in the type (`Experts<8>`) or read from the config (`Experts<>`).
/// @tparam N the fixed count, or 0 for a runtime count.
template <index_t N = 0>
struct Experts {
  static_assert(N >= 0, "moss::Experts<N>: N must be positive (or 0 for a count read from the config)");
  static constexpr index_t fixed = N;
  /// The count to use given the config's `num_experts`; throws `config_error` when they disagree.
  static index_t resolve(index_t configured, const char* where) {
    if constexpr (N > 0) {
      MOSS_EXPECTS(configured == 0 || configured == N, config_error, where, ": the type fixes ", N,
                   " experts (moss::Experts<", N, ">) but the config has num_experts = ", configured);
      return N;
    } else {
      MOSS_EXPECTS(configured >= 1, config_error, where, ": num_experts is ", configured,
                   ", expected ≥ 1 (or fix the count in the type, moss::Experts<N>)");
      return configured;
    }
  }
};

/// An expert-count policy: `Experts<N>`.
template <class E>
concept ExpertCount = requires(index_t n) {
  { E::fixed } -> std::convertible_to<index_t>;
  { E::resolve(n, "") } -> std::convertible_to<index_t>;
};

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

/// Which of the three expert kinds a type is.
enum class ExpertKind : std::uint8_t { linear, mlp, gated_mlp };

/// A linear expert W_i x (+ bias): one (out, in) matrix per expert. RoM's projections.
struct LinearExpert {
  static constexpr ExpertKind kind = ExpertKind::linear;
  static constexpr std::string_view name = "linear";
};

/// An MLP expert wo_i · act(wi_i · x) of hidden width d_ff (MoE-Mamba: ReLU).
template <Activation Act>
struct Mlp {
  using activation = Act;
  static constexpr ExpertKind kind = ExpertKind::mlp;
  static constexpr std::string_view name = "mlp";
};

/// A gated MLP expert down_i · (act(gate_i · x) ⊙ (up_i · x)); `GatedMlp<Silu>` is SwiGLU.
template <Activation Act>
struct GatedMlp {
  using activation = Act;
  static constexpr ExpertKind kind = ExpertKind::gated_mlp;
  static constexpr std::string_view name = "gated_mlp";
};

/// An expert-kind policy of a feed-forward block: `Mlp<Act>` or `GatedMlp<Act>`.
template <class E>
concept FeedForwardExpert =
    (E::kind == ExpertKind::mlp || E::kind == ExpertKind::gated_mlp) && Activation<typename E::activation>;

}  // namespace moss
