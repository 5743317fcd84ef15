// moss/ops/rms_norm/tuning.cuh: block size of the `rms_norm` kernel.
//
// One block per row, each thread taking about `items_per_thread` elements in `vec`-wide
// accesses. Instantiations: rms_norm_kernel<Tdelta, Tout, vec> for the (Tdelta, Tout) pairs a
// caller uses × vec ∈ {1, 4}; a Mamba model in dtype T uses (T, T) and, for the final norm
// before an f32 head, (T, float): at most 4 kernels per model dtype.
#pragma once

#include "moss/core/tensor.hpp"
#include "moss/cuda/launch.cuh"

namespace moss::detail {

/// Not yet measured; chosen by reasoning, to be confirmed by a benchmark at d_model 768 / 2048:
/// 8 elements per thread is two 16-byte loads of the float residual, enough in flight to cover
/// HBM latency with several rows per SM, and keeps a 2048-wide row at 256 threads (8 blocks of
/// 256 fill an SM's 2048 threads). A row wider than max_threads · 8 loops inside the block.
inline constexpr cuda::RowTuning kRmsNormTuning{.items_per_thread = 8, .min_threads = 32, .max_threads = 512};

/// The launch for rows of `dim` elements: 4-element (16-byte float) accesses when `aligned`.
constexpr cuda::RowConfig rms_norm_config(index_t dim, bool aligned) { return kRmsNormTuning.config(dim, aligned, 4); }

}  // namespace moss::detail
