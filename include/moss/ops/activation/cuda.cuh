// moss/ops/activation/cuda.cuh: `activation` on CUDA (needs nvcc), queued on the stream.
//
// Instantiations: 3 activations × 3 dtypes = 9 kernels.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation/kernel.cuh"

namespace moss {

/// Applies `Act` (times `up` when given) on the GPU.
template <Activation Act, class T>
void activation(const Cuda& gpu, const ActivationArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::activation (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(a, "activation");
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  if (rows == 0 || cols == 0) return;
  constexpr int V = cuda::kVec16<T>;
  const bool vector =
      cuda::vector_rows(a.x, V) && cuda::vector_rows(a.out, V) && (!present(a.up) || cuda::vector_rows(a.up, V));
  const index_t ldx = rows > 1 ? a.x.stride[0] : cols, ldo = rows > 1 ? a.out.stride[0] : cols;
  const index_t ldu = present(a.up) ? (rows > 1 ? a.up.stride[0] : cols) : 0;
  constexpr int threads = cuda::kElementwiseThreads;
  const index_t items = rows * ceil_div<index_t>(cols, vector ? V : 1);
  cuda::launch("activation_kernel", detail::act::activation_kernel<Act, T>, cuda::grid_blocks(items, threads), threads,
               0, gpu.stream, a.x.data, ldx, present(a.up) ? a.up.data : nullptr, ldu, a.out.data, ldo, rows, cols,
               vector);
}

}  // namespace moss
