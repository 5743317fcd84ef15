// moss/ops/rms_norm/tuning.cuh: block size of the `rms_norm` kernel.
//
// One block per row, each thread taking about `items_per_thread` elements in `vec`-wide
// accesses. Instantiations: rms_norm_kernel<Tdelta, Tout, vec> for the (Tdelta, Tout) pairs a
// caller uses × vec ∈ {1, 4}; a Mamba model in dtype T uses (T, T) and, for the final norm
// before an f32 head, (T, float): at most 4 kernels per model dtype.
#pragma once

#include "moss/core/tensor.hpp"

namespace moss::detail {

/// Launch shape of one `rms_norm` call.
struct RmsNormConfig {
  int threads;  // per block (a power of two, 32 … max_threads): one block per row
  int vec;      // elements per access: 4 (16-byte float loads) or 1 (unaligned rows)
};

/// Not yet measured; chosen by reasoning, to be confirmed by a benchmark at d_model 768 / 2048:
/// 8 elements per thread is two 16-byte loads of the float residual, enough in flight to cover
/// HBM latency with several rows per SM, and keeps a 2048-wide row at 256 threads (8 blocks of
/// 256 fill an SM's 2048 threads). A row wider than max_threads · 8 loops inside the block.
struct RmsNormTuning {
  int items_per_thread;
  int min_threads;
  int max_threads;
};
inline constexpr RmsNormTuning kRmsNormTuning{8, 32, 512};

/// Threads for a row of `dim` elements: the smallest power of two in [min, max] giving each
/// thread at most `items_per_thread` elements.
constexpr int row_threads(index_t dim, int items_per_thread, int min_threads, int max_threads) {
  int t = min_threads;
  while (t < max_threads && index_t(t) * items_per_thread < dim) t *= 2;
  return t;
}

/// The configuration for rows of `dim` elements, vectorised when `aligned`.
constexpr RmsNormConfig rms_norm_config(index_t dim, bool aligned) {
  const RmsNormTuning& k = kRmsNormTuning;
  return {row_threads(dim, k.items_per_thread, k.min_threads, k.max_threads), aligned ? 4 : 1};
}

}  // namespace moss::detail
