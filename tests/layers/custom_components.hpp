// tests/layers/custom_components.hpp: parts of one's own, each one struct written outside
// include/moss, as a user writes them in their own file (docs/math.md §2.2 and §3): a router
// with a setting saved in config.json, a weight placement and a routing scope. The host tests
// (components_test.cpp) and the CUDA tests (moe_layers_cuda_test.cu) both run them.
#pragma once

#include <cmath>
#include <cstddef>
#include <optional>
#include <string_view>
#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/error.hpp"
#include "moss/io/json.hpp"
#include "moss/policy/rom.hpp"
#include "moss/policy/router.hpp"

namespace moss::test {

/// Auxiliary-loss-free load balancing (DeepSeek-V3 style): experts are ranked by logit + b_i, a
/// bias per expert held in the router (a training loop nudges it towards balance; here it is a
/// setting), and the combine weight is the softmax probability of the logits, so the bias steers
/// the choice without entering the output. Its bias is saved in the block's config.json section
/// as "expert_bias" (at most kMaxExperts numbers; missing ones are 0).
/// @tparam K experts per token.
template <int K>
struct BiasBalancedTopK {
  static constexpr int k = K;
  static constexpr bool aux_loss = false;  // the bias replaces the load-balancing loss
  static constexpr std::string_view name = "bias_balanced_top_k";
  static constexpr int kMaxExperts = 16;
  float bias[kMaxExperts] = {};  ///< b_i, added to logit i for ranking only

  /// Ranks logit + bias; a layer of more than kMaxExperts experts gets NaN weights (loud, never
  /// silently unbalanced).
  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    if (num_experts > kMaxExperts) {
      for (int s = 0; s < K; ++s) {
        experts[s] = s;
        weights[s] = NAN;
      }
      return;
    }
    float biased[kMaxExperts];
    for (int i = 0; i < num_experts; ++i) biased[i] = scores[i] + bias[i];
    select_top_k<K>(biased, num_experts, experts);
    for (int s = 0; s < K; ++s) weights[s] = softmax_at(logits, num_experts, experts[s]);
  }

  /// Reads "expert_bias" (an array of at most kMaxExperts numbers) when present.
  void read_settings(const io::JsonRef& section) {
    const std::optional<io::JsonRef> b = section.find("expert_bias");
    if (!b || b->is_null()) return;
    MOSS_EXPECTS(b->is_array(), config_error, b->where(), " is ", b->kind(), ", expected an array of at most ",
                 kMaxExperts, " numbers");
    MOSS_EXPECTS(b->size() <= static_cast<std::size_t>(kMaxExperts), config_error, b->where(), " has ", b->size(),
                 " numbers but ", name, " holds at most ", kMaxExperts);
    for (int i = 0; i < kMaxExperts; ++i)
      bias[i] = static_cast<std::size_t>(i) < b->size()
                    ? static_cast<float>(b->at(static_cast<std::size_t>(i)).as_double())
                    : 0.0f;
  }
  /// Writes "expert_bias" (all kMaxExperts numbers, each the shortest form of its float).
  void write_settings(io::Json& section) const {
    io::Json b = io::Json::array();
    for (float v : bias) b.push_back(io::json_number(v));
    section["expert_bias"] = std::move(b);
  }
};

/// A weight placement: g multiplies the Conv Proj experts only.
struct WeightConv {
  static constexpr std::string_view name = "conv";
  template <class P>
  static constexpr bool weighs = std::is_same_v<P, Conv>;
};

/// A routing scope: Conv and Gate Proj share one router on the layer input ("router_in"), Out
/// Proj has its own router on its own input m = y ⊙ silu(z) ("router_out"); g multiplies where
/// the placement says, each projection by its own router's g.
struct InOutRouting {
  static constexpr std::string_view name = "in_out";
  template <class P>
  static constexpr std::string_view router = std::is_same_v<P, Out> ? std::string_view("router_out")
                                                                    : std::string_view("router_in");
  template <class P>
  static constexpr bool on_layer_input = !std::is_same_v<P, Out>;
  template <class W, class P>
  static constexpr bool weighs = W::template weighs<P>;
};

static_assert(Router<BiasBalancedTopK<2>> && ConfigurableRouter<BiasBalancedTopK<2>> &&
              !ScoringRouter<BiasBalancedTopK<2>>);
static_assert(WeightPlacement<WeightConv>);
static_assert(RoutingScope<InOutRouting>);

}  // namespace moss::test
