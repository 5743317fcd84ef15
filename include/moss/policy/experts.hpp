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

}  // namespace moss
