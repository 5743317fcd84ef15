// moss/ops/embedding/tuning.cuh: block size of the `embedding` kernel.
//
// One block per row, each thread copying about `items_per_thread` elements in `vec`-wide
// accesses. Instantiations: embedding_kernel<T, vec> for T ∈ {float, f16, bf16} × vec ∈ {1, 4}.
#pragma once

#include "moss/ops/rms_norm/tuning.cuh"

namespace moss::detail {

/// Launch shape of one `embedding` call.
struct EmbeddingConfig {
  int threads;  // per block (a power of two): one block per row
  int vec;      // elements per access: 4 (16-byte float stores) or 1 (unaligned rows)
};

/// Not yet measured; chosen by reasoning, to be confirmed by a benchmark at d_model 768 / 2048:
/// a row copy has no reduction, so a 2048-wide row at 256 threads moves two 16-byte float
/// stores per thread; narrower rows use fewer threads rather than idle ones.
struct EmbeddingTuning {
  int items_per_thread;
  int min_threads;
  int max_threads;
};
inline constexpr EmbeddingTuning kEmbeddingTuning{8, 32, 256};

/// The configuration for rows of `dim` elements, vectorised when `aligned`.
constexpr EmbeddingConfig embedding_config(index_t dim, bool aligned) {
  const EmbeddingTuning& k = kEmbeddingTuning;
  return {row_threads(dim, k.items_per_thread, k.min_threads, k.max_threads), aligned ? 4 : 1};
}

}  // namespace moss::detail
