// moss/ops/activation/kernel.cuh: the activation kernel (needs nvcc): a grid-stride loop over
// (row, 16-byte chunk) pairs, vector loads and stores when the rows are aligned.
#pragma once

#include <cuda_runtime.h>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"

namespace moss::detail::act {

/// out = Act(x) (· up) over a (rows, cols) tile.
template <class Act, class T>
__global__ void activation_kernel(const T* x, index_t ldx, const T* up, index_t ldu, T* out, index_t ldo, index_t rows,
                                  index_t cols, bool vector) {
  constexpr int V = cuda::kVec16<T>;
  const int width = vector ? V : 1;
  const index_t chunks = (cols + width - 1) / width;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / chunks, c = (i - r * chunks) * width;
    if (vector) {
      float v[V];
      float u[V] = {};
      cuda::load_vec<V>(x + r * ldx + c, v);
      if (up) cuda::load_vec<V>(up + r * ldu + c, u);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        v[j] = Act::apply(v[j]);
        if (up) v[j] *= u[j];
      }
      cuda::store_vec<V>(out + r * ldo + c, v);
    } else {
      float v = Act::apply(to_float(x[r * ldx + c]));
      if (up) v *= to_float(up[r * ldu + c]);
      out[r * ldo + c] = from_float<T>(v);
    }
  }
}

}  // namespace moss::detail::act
