// moss/ops/rms_norm/backward_kernel.cuh: the kernels of `rms_norm_backward` on CUDA (needs nvcc).
//
// Two kernels, no atomics:
//  - rows: one block per chunk of consecutive rows, the rows of a chunk in increasing order.
//    Per row two block reductions (the sum of squares, then Σ dout · weight · r'), then the
//    row's gradients; with dweight it also adds the row's dout · (r' · s) into the chunk's
//    partial row of a workspace (each element read and written by the one thread that owns it).
//  - dweight: one thread per column sums the chunks' partials in increasing chunk order and
//    writes (or adds into) dweight.
// The chunking depends on the row count alone, so the same inputs give the same bits.
#pragma once

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/rms_norm/kernel.cuh"
#include "moss/ops/rms_norm/math.hpp"
#include "moss/ops/rms_norm/tuning.cuh"

namespace moss::detail {

/// Most row chunks (so most partial rows of the dweight workspace: 1024 · dim floats, 8 MiB at
/// dim 2048). Not measured; chosen by reasoning: 1024 blocks of up to 512 threads fill an
/// H100's 132 SMs several times over, and the dweight kernel then sums at most 1024 partials
/// per column.
inline constexpr index_t kRmsNormBackwardMaxChunks = 1024;
/// Fewest rows per chunk: short chunks would only add partial rows.
inline constexpr index_t kRmsNormBackwardMinChunkRows = 4;
/// Threads per block of the dweight kernel (one column per thread).
inline constexpr int kRmsNormBackwardDweightThreads = 256;

/// Rows per chunk for `rows` ≥ 1 rows: enough that there are at most kRmsNormBackwardMaxChunks
/// chunks, at least kRmsNormBackwardMinChunkRows.
constexpr index_t rms_norm_backward_chunk_rows(index_t rows) {
  const index_t per = ceil_div<index_t>(rows, kRmsNormBackwardMaxChunks);
  return per < kRmsNormBackwardMinChunkRows ? kRmsNormBackwardMinChunkRows : per;
}
static_assert(rms_norm_backward_chunk_rows(1) == 4 && rms_norm_backward_chunk_rows(16384) == 16);

/// Pointers and sizes of one `rms_norm_backward` launch (row strides in elements).
template <class Tdelta, class Tout>
struct RmsNormBackwardParams {
  const float* residual;  // (rows, dim): r'
  index_t ld_residual;
  const float* weight;  // (dim)
  float eps;
  const Tout* dout;  // (rows, dim)
  index_t ld_dout;
  const float* dresidual_out;  // (rows, dim), null when absent
  index_t ld_dresidual_out;
  float* dresidual;  // (rows, dim), null when absent; may be dresidual_out itself
  index_t ld_dresidual;
  Tdelta* ddelta;  // (rows, dim), null when absent
  index_t ld_ddelta;
  float* dweight_partial;  // (chunks, dim) workspace, null when dweight is absent
  index_t rows;
  index_t dim;
  index_t chunk_rows;  // rows per chunk (the last may be shorter)
};

/// One block per chunk of rows. Each thread owns the same elements of every row (i = tid · kVec
/// + m · blockDim · kVec), so its partial dweight elements are its own: no barrier guards them.
/// An element's inputs are read before its outputs are written, so dresidual may be
/// dresidual_out.
template <class Tdelta, class Tout, int kVec>
__global__ void rms_norm_backward_rows_kernel(const RmsNormBackwardParams<Tdelta, Tout> p) {
  __shared__ RmsNormBlockSum::TempStorage scratch;
  const index_t step = index_t(blockDim.x) * kVec;
  const bool want_rows = p.dresidual || p.ddelta;  // uniform over the block
  const index_t chunk = blockIdx.x;
  const index_t r0 = chunk * p.chunk_rows;
  const index_t r1 = r0 + p.chunk_rows < p.rows ? r0 + p.chunk_rows : p.rows;
  float* partial = p.dweight_partial ? p.dweight_partial + chunk * p.dim : nullptr;
  for (index_t row = r0; row < r1; ++row) {
    const float* res = p.residual + row * p.ld_residual;
    const Tout* dout = p.dout + row * p.ld_dout;
    float sum_squares = 0.0f, dot = 0.0f;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec], g[kVec], w[kVec];
      cuda::load_vec<kVec>(res + i, r);
      cuda::load_vec<kVec>(dout + i, g);
      cuda::load_vec<kVec>(p.weight + i, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        sum_squares += r[j] * r[j];
        dot += g[j] * w[j] * r[j];
      }
    }
    const float scale = rms_norm_scale(RmsNormBlockSum::sum(sum_squares, scratch), p.dim, p.eps);
    const float coef =
        want_rows ? RmsNormBlockSum::sum(dot, scratch) * (scale * scale * scale) / static_cast<float>(p.dim) : 0.0f;
    const float* dres_out = p.dresidual_out ? p.dresidual_out + row * p.ld_dresidual_out : nullptr;
    float* dres = p.dresidual ? p.dresidual + row * p.ld_dresidual : nullptr;
    Tdelta* ddelta = p.ddelta ? p.ddelta + row * p.ld_ddelta : nullptr;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec], g[kVec];
      cuda::load_vec<kVec>(res + i, r);
      cuda::load_vec<kVec>(dout + i, g);
      if (partial) {
        float pw[kVec];
        if (row == r0) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) pw[j] = 0.0f;
        } else {
          cuda::load_vec<kVec>(partial + i, pw);
        }
#pragma unroll
        for (int j = 0; j < kVec; ++j) pw[j] += g[j] * (r[j] * scale);
        cuda::store_vec<kVec>(partial + i, pw);
      }
      if (!want_rows) continue;
      float w[kVec], o[kVec];
      cuda::load_vec<kVec>(p.weight + i, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = g[j] * w[j] * scale - r[j] * coef;
      if (dres_out) {
        float d[kVec];
        cuda::load_vec<kVec>(dres_out + i, d);  // before dres is written: dres may be dres_out
#pragma unroll
        for (int j = 0; j < kVec; ++j) o[j] += d[j];
      }
      if (dres) cuda::store_vec<kVec>(dres + i, o);
      if (ddelta) cuda::store_vec<kVec>(ddelta + i, o);
    }
  }
}

/// One thread per column (grid-stride): dweight[i] = Σ_chunks partial[c, i] in increasing c,
/// written or added into dweight. (A template, so that a header included by several translation
/// units defines it once.)
template <class R>
__global__ void rms_norm_backward_dweight_kernel(const R* partial, index_t chunks, index_t dim, R* dweight,
                                                 bool accumulate) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < dim; i += index_t(gridDim.x) * blockDim.x) {
    R sum = R(0);
    for (index_t c = 0; c < chunks; ++c) sum += partial[c * dim + i];
    dweight[i] = accumulate ? dweight[i] + sum : sum;
  }
}

}  // namespace moss::detail
