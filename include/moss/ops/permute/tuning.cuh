// moss/ops/permute/tuning.cuh: launch shapes of the permutation kernels.
//
// Instantiations: gather and combine per dtype (3 + 3); one offsets scan; one small plan; the
// other plan kernels are templates of no parameter.
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

/// The small plan (one block, small_plan_kernel) takes up to this many pairs (tokens · K) and
/// experts: its ranks cost O(P²) comparisons spread over the block, at most 2 · 512 shared-memory
/// reads per thread here, against the large plan's nine launches (a decode step's tokens · K is
/// far below it). Shared memory: (P + 2X + 1) int32, 8 KiB at most.
inline constexpr int kSmallPlanPairs = 512;
inline constexpr int kSmallPlanExperts = 1024;
inline constexpr int kSmallPlanThreads = 256;

}  // namespace moss::detail::permute
