// moss/ops/activation/cuda.cuh: `activation` on CUDA (needs nvcc), queued on the stream.
//
// Instantiations: 3 activations × 3 dtypes = 9 kernels.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation/kernel.cuh"

namespace moss {

/// Applies `Act` (times `up` when given) on the GPU.
template <Activation Act, class T>
void activation(const Cuda& gpu, const ActivationArgs<T>& a) {
  validate(a, "activation");
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  if (rows == 0 || cols == 0) return;
  constexpr index_t V = 16 / sizeof(T);
  auto aligned = [&](const void* p, index_t ld) {
    return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && (rows <= 1 || ld % V == 0);
  };
  const index_t ldx = rows > 1 ? a.x.stride[0] : cols, ldo = rows > 1 ? a.out.stride[0] : cols;
  const index_t ldu = present(a.up) ? (rows > 1 ? a.up.stride[0] : cols) : 0;
  const bool vector = cols % V == 0 && aligned(a.x.data, ldx) && aligned(a.out.data, ldo) &&
                      (!present(a.up) || aligned(a.up.data, ldu));
  constexpr int threads = 256;
  const index_t items = rows * ceil_div<index_t>(cols, vector ? V : 1);
  const unsigned blocks = static_cast<unsigned>(std::clamp<index_t>(ceil_div<index_t>(items, threads), 1, 65535));
  detail::act::activation_kernel<Act, T><<<blocks, threads, 0, gpu.stream>>>(
      a.x.data, ldx, present(a.up) ? a.up.data : nullptr, ldu, a.out.data, ldo, rows, cols, vector);
  MOSS_CHECK_LAUNCH("activation_kernel", gpu.stream);
}

}  // namespace moss
