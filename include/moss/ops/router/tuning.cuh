// moss/ops/router/tuning.cuh: launch shapes of the router kernels.
//
// Instantiations: per dtype one logits-only kernel (`route_logits`), per (dtype, router) one
// logits kernel that selects (`route`), per router one select kernel (`route_select`); the
// statistics kernels are not templates.
#pragma once

namespace moss::detail::route {

/// Launch shape of the router kernels.
struct RouteTuning {
  int warps_per_block;    // tokens in flight per block of the logits kernel (one warp each)
  int blocks_per_sm;      // persistent grid of the logits kernel: the weight is staged once per block
  int smem_weight_bytes;  // stage the weight in shared memory up to this size (else read through L1)
  int select_threads;     // per block of the select kernel
  int stats_threads;      // tokens per tile of the statistics (a power of two)
};

inline constexpr RouteTuning kRouteTuning{8, 2, 96 * 1024, 256, 256};

}  // namespace moss::detail::route
