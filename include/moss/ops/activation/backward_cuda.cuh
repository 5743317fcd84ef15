// moss/ops/activation/backward_cuda.cuh: `activation_backward` on CUDA (needs nvcc), queued on
// the stream; the kernel and the device derivatives are in backward_kernel.cuh.
//
// Instantiations: 3 activations × 3 dtypes = 9 kernels. Element-wise: no reductions, so the
// result is bitwise repeatable; it agrees with the host to a few ulp of float (the device's
// expf / erff), then one rounding to T.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/activation/backward_kernel.cuh"
#include "moss/ops/activation_backward.hpp"

namespace moss {

/// Writes dx = (dout · up) · act'(x) and dup = dout · act(x) (those that `a` asks for) on the
/// GPU, queued on `gpu.stream`; does not synchronise. All views are device memory; an output may
/// be an input itself (validate says which).
template <class Act, class T>
void activation_backward(const Cuda& gpu, const ActivationBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::activation_backward (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  static_assert(CudaDifferentiableActivation<Act>,
                "moss::activation_backward (cuda): Act needs a device derivative: specialise "
                "moss::ActivationGradCuda<Act> (moss/ops/activation/backward_kernel.cuh)");
  validate(a, "activation_backward");
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  const bool want_dx = present(a.dx), want_dup = present(a.dup);
  if (rows == 0 || cols == 0 || (!want_dx && !want_dup)) return;
  constexpr int V = cuda::kVec16<T>;
  const bool gated = present(a.up);
  const bool vector = cuda::vector_rows(a.x, V) && cuda::vector_rows(a.dout, V) &&
                      (!gated || cuda::vector_rows(a.up, V)) && (!want_dx || cuda::vector_rows(a.dx, V)) &&
                      (!want_dup || cuda::vector_rows(a.dup, V));
  const auto ld = [&](const auto& v) { return present(v) && rows > 1 ? v.stride[0] : cols; };
  const detail::act::BackwardParams<T> p{.x = a.x.data,
                                         .ldx = ld(a.x),
                                         .up = gated ? a.up.data : nullptr,
                                         .ldu = ld(a.up),
                                         .dout = a.dout.data,
                                         .ldd = ld(a.dout),
                                         .dx = want_dx ? a.dx.data : nullptr,
                                         .lddx = ld(a.dx),
                                         .dup = want_dup ? a.dup.data : nullptr,
                                         .lddup = ld(a.dup),
                                         .rows = rows,
                                         .cols = cols,
                                         .vector = vector};
  constexpr int threads = cuda::kElementwiseThreads;
  const index_t items = rows * ceil_div<index_t>(cols, vector ? V : 1);
  cuda::launch("activation_backward_kernel", detail::act::activation_backward_kernel<Act, T>,
               cuda::grid_blocks(items, threads), threads, 0, gpu.stream, p);
}

}  // namespace moss
