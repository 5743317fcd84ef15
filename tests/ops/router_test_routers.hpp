// tests/ops/router_test_routers.hpp: router structs of the router tests (host and CUDA).
#pragma once

#include "moss/core/config.hpp"
#include "moss/policy/router.hpp"

namespace moss::test {

/// A router that shows which matrix it was given: the expert is the argmax of `scores` (ties →
/// lowest index, NaN only when all are NaN), its weight the expert's raw logit.
struct ArgmaxScores {
  static constexpr int k = 1;
  static constexpr bool aux_loss = true;
  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    int best = 0;
    for (int i = 1; i < num_experts; ++i)
      if (!(scores[i] != scores[i]) && ((scores[best] != scores[best]) || scores[i] > scores[best])) best = i;
    experts[0] = best;
    weights[0] = logits[best];
  }
};
static_assert(Router<ArgmaxScores>);

}  // namespace moss::test
