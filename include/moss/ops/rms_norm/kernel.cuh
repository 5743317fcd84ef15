// moss/ops/rms_norm/kernel.cuh: the `rms_norm` kernel (one block per row).
#pragma once

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/rms_norm/math.hpp"
#include "moss/ops/rms_norm/tuning.cuh"

namespace moss::detail {

/// Pointers and sizes of one `rms_norm` launch (row strides in elements).
template <class Tdelta, class Tout>
struct RmsNormParams {
  float* residual;  // (rows, dim)
  index_t ld_residual;
  const Tdelta* delta;  // (rows, dim), null when absent
  index_t ld_delta;
  bool residual_in_fp32;
  const float* weight;  // (dim)
  float eps;
  Tout* out;  // (rows, dim)
  index_t ld_out;
  index_t rows;
  index_t dim;
};

/// The block-wide sum of squares: any power-of-two block the tuning table picks.
using RmsNormBlockSum = cuda::BlockReduceUpTo<float, kRmsNormTuning.max_threads>;

/// One block per row (grid-stride over rows). Pass 1 adds delta, stores the new residual and
/// sums squares; pass 2 re-reads the row (from L1/L2: this block just touched it) and writes
/// the output. Each thread re-reads only the elements it stored itself, so no barrier is needed
/// between the passes beyond the one inside the reduction.
template <class Tdelta, class Tout, int kVec>
__global__ void rms_norm_kernel(const RmsNormParams<Tdelta, Tout> p) {
  __shared__ RmsNormBlockSum::TempStorage scratch;
  const index_t step = index_t(blockDim.x) * kVec;
  for (index_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float* res = p.residual + row * p.ld_residual;
    float sum_squares = 0.0f;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec];
      cuda::load_vec<kVec>(res + i, r);
      if (p.delta) {
        float d[kVec];
        cuda::load_vec<kVec>(p.delta + row * p.ld_delta + i, d);
#pragma unroll
        for (int j = 0; j < kVec; ++j) r[j] = rms_norm_residual<Tdelta>(r[j], d[j], p.residual_in_fp32);
        cuda::store_vec<kVec>(res + i, r);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum_squares += r[j] * r[j];
    }
    const float scale = rms_norm_scale(RmsNormBlockSum::sum(sum_squares, scratch), p.dim, p.eps);
    Tout* out = p.out + row * p.ld_out;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec], w[kVec], o[kVec];
      cuda::load_vec<kVec>(res + i, r);
      cuda::load_vec<kVec>(p.weight + i, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = rms_norm_output(r[j], scale, w[j]);
      cuda::store_vec<kVec>(out + i, o);
    }
  }
}

}  // namespace moss::detail
