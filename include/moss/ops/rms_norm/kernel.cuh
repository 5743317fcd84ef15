// moss/ops/rms_norm/kernel.cuh: the `rms_norm` kernel (one block per row) and the row
// helpers it shares with `embedding`: vector loads that widen to float, the grid of a
// one-block-per-row launch, and a block-wide sum.
#pragma once

#include <cstdint>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/rms_norm/math.hpp"

namespace moss::detail {

/// `kVec` consecutive elements of T as one aligned access (16 bytes for 4 floats, 8 for 4
/// halves): the compiler turns a load or store of it into a single vector instruction.
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) RowPack {
  T v[kVec];
};

/// Loads `kVec` elements at `p` (aligned to sizeof(T) · kVec) and widens them to float.
template <int kVec, class T>
MOSS_DEVICE void row_load(const T* p, float (&f)[kVec]) {
  const RowPack<T, kVec> q = *reinterpret_cast<const RowPack<T, kVec>*>(p);
#pragma unroll
  for (int j = 0; j < kVec; ++j) f[j] = to_float(q.v[j]);
}

/// Rounds `kVec` floats to T and stores them at `p` (aligned to sizeof(T) · kVec).
template <int kVec, class T>
MOSS_DEVICE void row_store(T* p, const float (&f)[kVec]) {
  RowPack<T, kVec> q;
#pragma unroll
  for (int j = 0; j < kVec; ++j) q.v[j] = from_float<T>(f[j]);
  *reinterpret_cast<RowPack<T, kVec>*>(p) = q;
}

/// True when `p` may be accessed `kVec` elements at a time.
template <int kVec, class T>
inline bool row_aligned(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * kVec) == 0;
}

/// Blocks for a one-block-per-row kernel: one per row, capped (the kernel loops over the rest).
inline unsigned row_blocks(index_t rows) {
  return static_cast<unsigned>(rows < (index_t(1) << 30) ? rows : (index_t(1) << 30));
}

/// Sum of `v` over the 32 lanes of a full warp, returned to every lane.
MOSS_DEVICE float row_warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), returned to every
/// thread in a fixed order (deterministic). `scratch` holds 32 floats of shared memory; the
/// trailing barrier lets the caller reuse it at once.
MOSS_DEVICE float row_block_sum(float v, float* scratch) {
  v = row_warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = row_warp_sum(lane < warps ? scratch[lane] : 0.0f);
  __syncthreads();
  return v;
}

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

/// One block per row (grid-stride over rows). Pass 1 adds delta, stores the new residual and
/// sums squares; pass 2 re-reads the row (from L1/L2: this block just touched it) and writes
/// the output. Each thread re-reads only the elements it stored itself, so no barrier is needed
/// between the passes beyond the one inside the reduction.
template <class Tdelta, class Tout, int kVec>
__global__ void rms_norm_kernel(const RmsNormParams<Tdelta, Tout> p) {
  __shared__ float scratch[32];
  const index_t step = index_t(blockDim.x) * kVec;
  for (index_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float* res = p.residual + row * p.ld_residual;
    float sum_squares = 0.0f;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec];
      row_load<kVec>(res + i, r);
      if (p.delta) {
        float d[kVec];
        row_load<kVec>(p.delta + row * p.ld_delta + i, d);
#pragma unroll
        for (int j = 0; j < kVec; ++j) r[j] = rms_norm_residual<Tdelta>(r[j], d[j], p.residual_in_fp32);
        row_store<kVec>(res + i, r);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum_squares += r[j] * r[j];
    }
    const float scale = rms_norm_scale(row_block_sum(sum_squares, scratch), p.dim, p.eps);
    Tout* out = p.out + row * p.ld_out;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float r[kVec], w[kVec], o[kVec];
      row_load<kVec>(res + i, r);
      row_load<kVec>(p.weight + i, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = rms_norm_output(r[j], scale, w[j]);
      row_store<kVec>(out + i, o);
    }
  }
}

}  // namespace moss::detail
