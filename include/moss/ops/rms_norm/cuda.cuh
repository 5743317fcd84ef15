// moss/ops/rms_norm/cuda.cuh: `rms_norm` on CUDA.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/rms_norm.hpp"
#include "moss/ops/rms_norm/kernel.cuh"
#include "moss/ops/rms_norm/tuning.cuh"

namespace moss {

namespace detail {

/// True when every row of every tensor of `a` is whole, aligned 4-element vectors, so the
/// kernel may move 4 elements per access.
template <class Tdelta, class Tout>
bool rms_norm_vectorizable(const RmsNormArgs<Tdelta, Tout>& a) {
  return cuda::vector_rows(a.residual, 4) && cuda::vector_rows(a.out, 4) && cuda::vector_rows(a.weight, 4) &&
         (!present(a.delta) || cuda::vector_rows(a.delta, 4));
}

}  // namespace detail

/// Adds delta to the residual stream (when given) and writes the RMS-normalised rows to out, on
/// the GPU, queued on `gpu.stream`. Does not synchronise.
template <class Tdelta, class Tout>
void rms_norm(const Cuda& gpu, const RmsNormArgs<Tdelta, Tout>& a) {
  static_assert(StorageType<Tdelta> && StorageType<Tout>,
                "moss::rms_norm (cuda): Tdelta and Tout must be float, moss::f16 or moss::bf16; double is host-only");
  validate(a, "rms_norm");
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  if (rows == 0) return;
  const detail::RmsNormParams<Tdelta, Tout> p{.residual = a.residual.data,
                                              .ld_residual = a.residual.stride[0],
                                              .delta = a.delta.data,  // null when absent
                                              .ld_delta = a.delta.stride[0],
                                              .residual_in_fp32 = a.residual_in_fp32,
                                              .weight = a.weight.data,
                                              .eps = a.eps,
                                              .out = a.out.data,
                                              .ld_out = a.out.stride[0],
                                              .rows = rows,
                                              .dim = dim};
  const cuda::RowConfig cfg = detail::rms_norm_config(dim, detail::rms_norm_vectorizable(a));
  const unsigned blocks = cuda::row_blocks(rows);
  const auto kernel =
      cfg.vec == 4 ? detail::rms_norm_kernel<Tdelta, Tout, 4> : detail::rms_norm_kernel<Tdelta, Tout, 1>;
  cuda::launch("rms_norm_kernel", kernel, blocks, cfg.threads, 0, gpu.stream, p);
}

}  // namespace moss
