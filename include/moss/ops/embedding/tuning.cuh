// moss/ops/embedding/tuning.cuh: block size of the `embedding` kernel.
//
// One block per row, each thread copying about `items_per_thread` elements in `vec`-wide
// accesses. Instantiations: embedding_kernel<T, vec> for T ∈ {float, f16, bf16} × vec ∈ {1, 4}.
#pragma once

#include "moss/core/tensor.hpp"
#include "moss/cuda/launch.cuh"

namespace moss::detail {

/// Not yet measured; chosen by reasoning, to be confirmed by a benchmark at d_model 768 / 2048:
/// a row copy has no reduction, so a 2048-wide row at 256 threads moves two 16-byte float
/// stores per thread; narrower rows use fewer threads rather than idle ones.
inline constexpr cuda::RowTuning kEmbeddingTuning{.items_per_thread = 8, .min_threads = 32, .max_threads = 256};

/// The launch for rows of `dim` elements: 4-element (16-byte float) stores when `aligned`.
constexpr cuda::RowConfig embedding_config(index_t dim, bool aligned) {
  return kEmbeddingTuning.config(dim, aligned, 4);
}

}  // namespace moss::detail
