// moss/ops/rms_norm/backward_cuda.cuh: `rms_norm_backward` on CUDA (needs nvcc), queued on the
// stream; the kernels are in backward_kernel.cuh.
//
// Instantiations: the rows kernel per (Tdelta, Tout) pair × vec ∈ {1, 4}, one dweight kernel.
// dweight is summed over rows in a fixed order (chunks of consecutive rows, then the chunks in
// order): the same inputs give the same bits, but the order differs from the host's one running
// sum, so the two agree to rounding, not bitwise.
#pragma once

#include <cuda_runtime.h>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/rms_norm/backward_kernel.cuh"
#include "moss/ops/rms_norm/tuning.cuh"
#include "moss/ops/rms_norm_backward.hpp"

namespace moss {

namespace detail {

/// True when every row of every view of `a` is whole, aligned 4-element vectors.
template <class Tdelta, class Tout>
bool rms_norm_backward_vectorizable(const RmsNormBackwardArgs<Tdelta, Tout>& a) {
  return cuda::vector_rows(a.residual, 4) && cuda::vector_rows(a.dout, 4) && cuda::vector_rows(a.weight, 4) &&
         (!present(a.dresidual_out) || cuda::vector_rows(a.dresidual_out, 4)) &&
         (!present(a.dresidual) || cuda::vector_rows(a.dresidual, 4)) &&
         (!present(a.ddelta) || cuda::vector_rows(a.ddelta, 4));
}

}  // namespace detail

/// Writes the gradients `a` asks for (dresidual, ddelta, dweight; docs/math.md §4) on the GPU,
/// queued on `gpu.stream`; does not synchronise. All views are device memory. dweight takes a
/// (chunks, dim) float workspace from `gpu.alloc` (chunks ≤ 1024), freed on the stream.
template <class Tdelta, class Tout>
void rms_norm_backward(const Cuda& gpu, const RmsNormBackwardArgs<Tdelta, Tout>& a) {
  static_assert(StorageType<Tdelta> && StorageType<Tout>,
                "moss::rms_norm_backward (cuda): Tdelta and Tout must be float, moss::f16 or moss::bf16; double is "
                "host-only");
  validate(a, "rms_norm_backward");
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  const bool want_rows = present(a.dresidual) || present(a.ddelta);
  const bool want_dweight = present(a.dweight);
  if (!want_rows && !want_dweight) return;
  if (rows == 0) {  // no rows: dweight is a sum of nothing
    if (want_dweight && !a.accumulate)
      MOSS_CUDA_CHECK(cudaMemsetAsync(a.dweight.data, 0, static_cast<std::size_t>(dim) * sizeof(float), gpu.stream));
    return;
  }
  const index_t chunk_rows = detail::rms_norm_backward_chunk_rows(rows);
  const index_t chunks = ceil_div<index_t>(rows, chunk_rows);
  Buffer<float> partial;
  if (want_dweight) partial = gpu.alloc<float>(chunks * dim, "rms_norm_backward dweight partials");
  const detail::RmsNormBackwardParams<Tdelta, Tout> p{
      .residual = a.residual.data,
      .ld_residual = a.residual.stride[0],
      .weight = a.weight.data,
      .eps = a.eps,
      .dout = a.dout.data,
      .ld_dout = a.dout.stride[0],
      .dresidual_out = present(a.dresidual_out) ? a.dresidual_out.data : nullptr,
      .ld_dresidual_out = a.dresidual_out.stride[0],
      .dresidual = present(a.dresidual) ? a.dresidual.data : nullptr,
      .ld_dresidual = a.dresidual.stride[0],
      .ddelta = present(a.ddelta) ? a.ddelta.data : nullptr,
      .ld_ddelta = a.ddelta.stride[0],
      .dweight_partial = want_dweight ? partial.data() : nullptr,
      .rows = rows,
      .dim = dim,
      .chunk_rows = chunk_rows};
  const cuda::RowConfig cfg = detail::rms_norm_config(dim, detail::rms_norm_backward_vectorizable(a));
  const auto kernel = cfg.vec == 4 ? detail::rms_norm_backward_rows_kernel<Tdelta, Tout, 4>
                                   : detail::rms_norm_backward_rows_kernel<Tdelta, Tout, 1>;
  cuda::launch("rms_norm_backward_rows_kernel", kernel, cuda::checked_grid(chunks, "rms_norm_backward (cuda)"),
               cfg.threads, 0, gpu.stream, p);
  if (!want_dweight) return;
  constexpr int threads = detail::kRmsNormBackwardDweightThreads;
  cuda::launch("rms_norm_backward_dweight_kernel", detail::rms_norm_backward_dweight_kernel<float>,
               cuda::grid_blocks(dim, threads), threads, 0, gpu.stream, static_cast<const float*>(partial.data()),
               chunks, dim, a.dweight.data, a.accumulate);
}

}  // namespace moss
