// moss/ops/permute/tuning.cuh: launch shapes of the permutation kernels.
//
// Instantiations: gather and combine per dtype (3 + 3); the plan kernels are not templates.
#pragma once

namespace moss::detail::permute {

/// Launch shape of the permutation kernels.
struct PermuteTuning {
  int threads;          // per block of the element-wise plan kernels and the gather
  int max_blocks;       // grid-stride cap
  int combine_threads;  // per block of the combine (one token per block)
};

inline constexpr PermuteTuning kPermuteTuning{256, 4096, 128};

}  // namespace moss::detail::permute
