// moss/ops/permute/tuning.cuh: launch shapes of the permutation kernels.
//
// Instantiations: gather and combine per dtype (3 + 3); one offsets scan; the other plan kernels
// are not templates.
#pragma once

namespace moss::detail::permute {

/// Launch shape of the permutation kernels.
struct PermuteTuning {
  int threads;          // per block of the element-wise plan kernels and the gather
  int max_blocks;       // grid-stride cap
  int combine_threads;  // per block of the combine (one token per block)
  int scan_threads;     // the one block of the offsets scan
  int scan_items;       // experts per thread of each scanned tile
};

inline constexpr PermuteTuning kPermuteTuning{256, 4096, 128, 128, 2};

}  // namespace moss::detail::permute
