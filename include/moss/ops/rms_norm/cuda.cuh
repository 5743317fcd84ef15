// moss/ops/rms_norm/cuda.cuh: `rms_norm` on CUDA.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/ops/rms_norm.hpp"
#include "moss/ops/rms_norm/kernel.cuh"
#include "moss/ops/rms_norm/tuning.cuh"

namespace moss {

namespace detail {

/// True when every row of every tensor of `a` starts on a 4-element boundary, so the kernel
/// may move 4 elements per access.
template <class Tdelta, class Tout>
bool rms_norm_vectorizable(const RmsNormArgs<Tdelta, Tout>& a) {
  const index_t rows = a.residual.shape[0];
  const index_t dim = a.residual.shape[1];
  const auto stride_ok = [rows](index_t s) { return rows <= 1 || s % 4 == 0; };
  bool ok = dim % 4 == 0 && row_aligned<4>(a.residual.data) && stride_ok(a.residual.stride[0]) &&
            row_aligned<4>(a.out.data) && stride_ok(a.out.stride[0]) && row_aligned<4>(a.weight.data);
  if (present(a.delta)) ok = ok && row_aligned<4>(a.delta.data) && stride_ok(a.delta.stride[0]);
  return ok;
}

}  // namespace detail

/// Adds delta to the residual stream (when given) and writes the RMS-normalised rows to out, on
/// the GPU, queued on `gpu.stream`. Does not synchronise.
template <class Tdelta, class Tout>
void rms_norm(const Cuda& gpu, const RmsNormArgs<Tdelta, Tout>& a) {
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
  const detail::RmsNormConfig cfg = detail::rms_norm_config(dim, detail::rms_norm_vectorizable(a));
  const unsigned blocks = detail::row_blocks(rows);
  if (cfg.vec == 4) {
    detail::rms_norm_kernel<Tdelta, Tout, 4><<<blocks, cfg.threads, 0, gpu.stream>>>(p);
  } else {
    detail::rms_norm_kernel<Tdelta, Tout, 1><<<blocks, cfg.threads, 0, gpu.stream>>>(p);
  }
  MOSS_CHECK_LAUNCH("rms_norm_kernel", gpu.stream);
}

}  // namespace moss
