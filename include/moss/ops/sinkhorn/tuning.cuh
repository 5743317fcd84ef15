// moss/ops/sinkhorn/tuning.cuh: launch shape of the Sinkhorn kernel.
//
// Instantiations: one kernel (not a template over dtypes or routers).
#pragma once

namespace moss::detail::sinkhorn {

/// Launch shape of the Sinkhorn kernel.
struct SinkhornTuning {
  int threads;      // the one block that iterates the scales over every token
  int expert_tile;  // column sums one thread keeps in registers per pass over its tokens
};

inline constexpr SinkhornTuning kSinkhornTuning{1024, 16};

}  // namespace moss::detail::sinkhorn
