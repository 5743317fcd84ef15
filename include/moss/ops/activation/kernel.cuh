// moss/ops/activation/kernel.cuh: the activation kernel (needs nvcc): a grid-stride loop over
// (row, 16-byte chunk) pairs, vector loads and stores when the rows are aligned.
#pragma once

#include <cuda_runtime.h>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::detail::act {

/// out = Act(x) (· up) over a (rows, cols) tile.
template <class Act, class T>
__global__ void activation_kernel(const T* x, index_t ldx, const T* up, index_t ldu, T* out, index_t ldo, index_t rows,
                                  index_t cols, bool vector) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  const int width = vector ? V : 1;
  const index_t chunks = (cols + width - 1) / width;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / chunks, c = (i - r * chunks) * width;
    if (vector) {
      const uint4 qx = *reinterpret_cast<const uint4*>(x + r * ldx + c);
      uint4 qu{};
      if (up) qu = *reinterpret_cast<const uint4*>(up + r * ldu + c);
      const T* ex = reinterpret_cast<const T*>(&qx);
      const T* eu = reinterpret_cast<const T*>(&qu);
      uint4 qo;
      T* eo = reinterpret_cast<T*>(&qo);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float v = Act::apply(to_float(ex[j]));
        if (up) v *= to_float(eu[j]);
        eo[j] = from_float<T>(v);
      }
      *reinterpret_cast<uint4*>(out + r * ldo + c) = qo;
    } else {
      float v = Act::apply(to_float(x[r * ldx + c]));
      if (up) v *= to_float(up[r * ldu + c]);
      out[r * ldo + c] = from_float<T>(v);
    }
  }
}

}  // namespace moss::detail::act
