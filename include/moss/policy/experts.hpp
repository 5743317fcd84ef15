// moss/policy/experts.hpp: how many experts a sparse block has (docs/math.md §2, "Experts").
//
//   moss::Experts<8>   eight experts, fixed in the type (a config that says otherwise is refused)
//   moss::Experts<>    the count comes from the config (`num_experts`)
//   moss::Experts<8, moss::SyncFreeGemm>   the same with the sync-free grouped GEMM (capturable)
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

/// Grouped-GEMM strategy (the `Gemm` slot of `Experts<N, Gemm>`): how a routed block's expert
/// stacks run their full-sequence GEMMs. moss's two, or one's own with the same members:
///   static constexpr bool sync_free;   // true: the GEMMs read the segment offsets on the device only
///   template <class Backend, class Args> static void run(const Backend&, Args grouped_linear_args);
/// `run` gets `GroupedLinearArgs` with `host_offsets` set (read once per routing decision) when
/// `sync_free` is false, and `resident_offsets` set when it is true; a sync-free strategy must
/// write the rows at or past offsets[X] as zeros (the experts' activations run over every row).
/// One cuBLAS GEMM per expert segment (the fastest for long prefill): the segment offsets are read
/// on the host once per routing decision (on CUDA one synchronisation).
struct SegmentGemms {
  static constexpr bool sync_free = false;
  template <class Backend, class Args>
  static void run(const Backend& backend, Args a) {
    grouped_linear(backend, a);
  }
};
/// moss's sync-free grouped GEMM (moss/ops/grouped_linear/device_gemm.cuh): nothing waits for
/// the host, so a routed layer can be captured in a CUDA graph. Rows dropped by a capacity limit
/// are written as zeros.
struct SyncFreeGemm {
  static constexpr bool sync_free = true;
  template <class Backend, class Args>
  static void run(const Backend& backend, Args a) {
    a.resident_offsets = true;
    grouped_linear(backend, a);
  }
};

/// The expert count: fixed in the type (`Experts<8>`) or read from the config (`Experts<>`), and
/// the grouped-GEMM strategy of the block's expert stacks.
/// @tparam N the fixed count (≥ 1), or kExpertsFromConfig (the default) for a runtime count.
/// @tparam Gemm SegmentGemms (default), SyncFreeGemm, or one's own strategy.
template <index_t N = kExpertsFromConfig, class Gemm = SegmentGemms>
struct Experts {
  static_assert(
      requires { Gemm::sync_free; },
      "moss::Experts<N, Gemm>: Gemm must be a grouped-GEMM strategy (moss::SegmentGemms, moss::SyncFreeGemm "
      "or a type with `static constexpr bool sync_free` and a static `run(backend, args)`)");
  /// The grouped-GEMM strategy.
  using gemm = Gemm;
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

/// The grouped-GEMM strategy of expert policy E: E::gemm, or SegmentGemms when E has none.
template <class E>
struct expert_gemm {
  using type = SegmentGemms;
};
template <class E>
requires requires { typename E::gemm; }
struct expert_gemm<E> {
  using type = typename E::gemm;
};
template <class E>
using expert_gemm_t = typename expert_gemm<E>::type;

/// An expert-count policy: `Experts<N>`.
template <class E>
concept ExpertCount = requires(index_t n) {
  { E::fixed } -> std::convertible_to<index_t>;
  { E::resolve(n, "") } -> std::convertible_to<index_t>;
};

}  // namespace moss
