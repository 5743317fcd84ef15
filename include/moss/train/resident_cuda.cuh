// moss/train/resident_cuda.cuh: the CUDA forms of moss/train/resident.hpp (needs nvcc; included
// by it under nvcc). Each queues one small kernel on the stream and waits for nothing.
#pragma once

#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/train/optimizer_cuda.cuh"
#include "moss/train/resident.hpp"

namespace moss {

namespace detail::resident {

inline constexpr int kControlThreads = 256;

/// Step 2 in one block: thread 0 the per-step part, then the tensors across the threads.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) step_control_kernel(const StepControlParams p) {
  __shared__ bool skipped;
  __shared__ double lr;
  if (threadIdx.x == 0) {
    double r = 0.0;
    skipped = control_step(p, r);
    lr = r;
  }
  __syncthreads();
  if (skipped) return;
  for (index_t i = threadIdx.x; i < p.tensors; i += kThreads) control_tensor(p, i, lr);
}

/// g ← g · *factor (step 3).
template <class F>
__global__ void scale_by_kernel(F* g, index_t n, const F* factor) {
  const F s = *factor;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    g[i] = __fmul_rn(g[i], s);
}

/// AdamW with the scalars of step 2; nothing when the step is skipped (step 4).
template <class F>
__global__ void adamw_resident_kernel(F* p, const float* g, float* m, float* v, index_t n,
                                      const ResidentStepScalars* state, const AdamWScalars* scalars) {
  if (state->skipped) return;
  const AdamWScalars s = *scalars;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    detail::optim::adamw_element(p, g, m, v, i, s);
}

}  // namespace detail::resident

/// Step 2 on the GPU: one block.
inline void step_control(const Cuda& gpu, const StepControlParams& p) {
  constexpr int threads = detail::resident::kControlThreads;
  cuda::launch("step_control_kernel", detail::resident::step_control_kernel<threads>, 1u, threads, 0, gpu.stream, p);
}

/// Step 3 on the GPU: g ← g · *factor (factor in device memory).
inline void scale_by(const Cuda& gpu, TensorView<float, 1> g, const float* factor) {
  expect_contiguous("scale_by (cuda)", g);
  const index_t n = g.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("scale_by_kernel", detail::resident::scale_by_kernel<float>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, g.data, n, factor);
}

/// Step 4 on the GPU: AdamW with the tensor's scalars from step 2 (a.lr and a.step are not
/// used), nothing when the step is skipped; bitwise the eager `adamw_step` given the same
/// scalars.
inline void adamw_step_resident(const Cuda& gpu, const AdamWArgs<float>& a, const ResidentAdamW& r) {
  validate(a, "adamw_step_resident");
  const index_t n = a.param.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("adamw_resident_kernel", detail::resident::adamw_resident_kernel<float>, cuda::grid_blocks(n, threads),
               threads, 0, gpu.stream, a.param.data, a.grad.data, a.m.data, a.v.data, n, r.state, r.scalars);
}

}  // namespace moss
