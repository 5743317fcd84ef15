// moss/policy/experts.hpp: how many experts a sparse block has (docs/math.md §2, "Experts").
//
//   moss::Experts<8>   eight experts, fixed in the type (a config that says otherwise is refused)
//   moss::Experts<>    the count comes from the config (`num_experts`)
// The expert kinds themselves (LinearExpert, Mlp<Act>, GatedMlp<Act>, or one's own) are
// components with parameters and an `apply`: see moss/layers/experts.hpp.
#pragma once

#include <concepts>

#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/policy/activation.hpp"

namespace moss {

/// The template argument of `Experts<>`: the count is read from the config. Not 0, so that a
/// spelled-out `Experts<0>` (a block without experts) is refused instead of silently meaning
/// "from the config".
inline constexpr index_t kExpertsFromConfig = -1;

/// The expert count: fixed in the type (`Experts<8>`) or read from the config (`Experts<>`).
/// @tparam N the fixed count (≥ 1), or kExpertsFromConfig (the default) for a runtime count.
template <index_t N = kExpertsFromConfig>
struct Experts {
  static_assert(N != 0,
                "moss::Experts<0>: a sparse block needs at least one expert; write moss::Experts<> to read the "
                "count from the config");
  static_assert(N >= 0 || N == kExpertsFromConfig,
                "moss::Experts<N>: N must be positive (or left out, moss::Experts<>, to read the count from the "
                "config)");
  /// The fixed count, or 0 when it comes from the config (what the layers test for).
  static constexpr index_t fixed = N > 0 ? N : 0;
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

}  // namespace moss
