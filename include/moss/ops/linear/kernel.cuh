// moss/ops/linear/kernel.cuh: the two small kernels around the cuBLAS GEMM of `linear`.
//
// The GEMM is cuBLAS's. These only move the bias into the form cuBLAS wants: a copy in the
// output type for the cuBLASLt BIAS epilogue (whose bias must have D's type and be aligned),
// and a broadcast into y for the cublasGemmEx fallback, which then adds the product with beta = 1.
// Both conversions are exact (Tout is T or float), so y is still rounded once, by cuBLAS.
#pragma once

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::detail {

/// dst[i] = src[i] in Tout, for i < n (grid-stride).
template <class T, class Tout>
__global__ void linear_bias_copy_kernel(const T* __restrict__ src, index_t n, Tout* __restrict__ dst) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x) {
    dst[i] = from_float<Tout>(to_float(src[i]));
  }
}

/// y[r, o] = bias[o] for every row r < rows (grid-stride over rows · out elements).
template <class T, class Tout>
__global__ void linear_bias_fill_kernel(const T* __restrict__ bias, index_t rows, index_t out, Tout* __restrict__ y,
                                        index_t ldy) {
  const index_t n = rows * out;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / out;
    const index_t o = i - r * out;
    y[r * ldy + o] = from_float<Tout>(to_float(bias[o]));
  }
}

}  // namespace moss::detail
