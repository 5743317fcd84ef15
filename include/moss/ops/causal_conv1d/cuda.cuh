// moss/ops/causal_conv1d/cuda.cuh: the CUDA backend of causal_conv1d (needs nvcc).
//
// Validates, picks the kernel from x's layout (unit stride along dim → channel-last kernel,
// unit stride along L → channel-first kernel, anything else → the channel-last kernel's scalar
// path), sizes the launch from tuning.cuh and the device's occupancy, launches on the
// backend's stream.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/causal_conv1d/kernel.cuh"
#include "moss/ops/causal_conv1d/tuning.cuh"

namespace moss {

namespace detail {

/// A sequence kernel of causal_conv1d.
template <class T>
using Conv1dSequenceKernel = void (*)(const CausalConv1dArgs<T>, const Conv1dPlan);

/// The channel-last kernel for width W ∈ {2, 3, 4} (checked by the caller).
template <class T>
Conv1dSequenceKernel<T> conv1d_channel_last_kernel(index_t width, bool vec) {
  switch (width) {
    case 2:
      return vec ? causal_conv1d_channel_last_kernel<T, 2, true> : causal_conv1d_channel_last_kernel<T, 2, false>;
    case 3:
      return vec ? causal_conv1d_channel_last_kernel<T, 3, true> : causal_conv1d_channel_last_kernel<T, 3, false>;
    default:
      return vec ? causal_conv1d_channel_last_kernel<T, 4, true> : causal_conv1d_channel_last_kernel<T, 4, false>;
  }
}

/// The channel-first kernel for width W ∈ {2, 3, 4} (checked by the caller).
template <class T>
Conv1dSequenceKernel<T> conv1d_channel_first_kernel(index_t width) {
  switch (width) {
    case 2:
      return causal_conv1d_channel_first_kernel<T, 2>;
    case 3:
      return causal_conv1d_channel_first_kernel<T, 3>;
    default:
      return causal_conv1d_channel_first_kernel<T, 4>;
  }
}

/// The launch `causal_conv1d` uses for `args` (W ∈ {2, 3, 4}) on the current device.
/// `steps_per_thread` > 0 overrides the channel-last kernel's run length (benchmark sweeps).
template <class T>
Conv1dPlan plan_causal_conv1d(const CausalConv1dArgs<T>& args, index_t steps_per_thread = 0) {
  const auto resident_threads = [&](bool vec) {
    return cuda::resident_threads(conv1d_channel_last_kernel<T>(args.weight.shape[1], vec), kConv1dBlockThreads);
  };
  return make_conv1d_plan(args, resident_threads, steps_per_thread);
}

/// Runs `causal_conv1d` on CUDA with validated arguments and a plan from `plan_causal_conv1d`
/// (the public overload and the benchmarks' sweeps both end here).
template <class T>
void run_causal_conv1d(const Cuda& gpu, const CausalConv1dArgs<T>& args, const Conv1dPlan& plan) {
  const index_t width = args.weight.shape[1];
  expect_causal_conv1d_cuda_width(width, "causal_conv1d (cuda)");
  const bool nothing_to_write = args.out.empty() && (!present(args.final_state) || args.final_state.empty());
  if (nothing_to_write) return;
  const unsigned blocks = cuda::checked_grid(plan.blocks, "causal_conv1d (cuda)");
  if (plan.kernel == Conv1dKernel::channel_last) {
    cuda::launch("causal_conv1d_channel_last_kernel", conv1d_channel_last_kernel<T>(width, plan.vec_x && plan.vec_out),
                 blocks, dim3(plan.block_x, plan.block_y), 0, gpu.stream, args, plan);
  } else {
    cuda::launch("causal_conv1d_channel_first_kernel", conv1d_channel_first_kernel<T>(width), blocks, plan.block_x, 0,
                 gpu.stream, args, plan);
  }
}

}  // namespace detail

/// Runs the depthwise causal convolution on the GPU, queued on `gpu.stream` (W ∈ 2, 3, 4; any
/// strides; vector accesses when x and out have unit stride along dim or L and aligned rows).
template <class T>
void causal_conv1d(const Cuda& gpu, const CausalConv1dArgs<T>& args) {
  static_assert(StorageType<T>,
                "moss::causal_conv1d (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(args, "causal_conv1d");
  expect_causal_conv1d_cuda_width(args.weight.shape[1], "causal_conv1d (cuda)");
  detail::run_causal_conv1d(gpu, args, detail::plan_causal_conv1d(args));
}

/// Runs one decode step on the GPU, queued on `gpu.stream` (W ∈ 2, 3, 4): out = conv(state, x),
/// then each state row shifts left and takes x as its newest column.
template <class T>
void causal_conv1d_step(const Cuda& gpu, const CausalConv1dStepArgs<T>& args) {
  static_assert(StorageType<T>,
                "moss::causal_conv1d_step (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(args, "causal_conv1d_step");
  const index_t width = args.weight.shape[1];
  expect_causal_conv1d_cuda_width(width, "causal_conv1d_step (cuda)");
  const index_t threads = args.x.shape[0] * args.x.shape[1];
  if (threads == 0) return;
  const unsigned blocks =
      cuda::checked_grid(ceil_div<index_t>(threads, detail::kConv1dStepBlockThreads), "causal_conv1d_step (cuda)");
  auto kernel = width == 2   ? detail::causal_conv1d_step_kernel<T, 2>
                : width == 3 ? detail::causal_conv1d_step_kernel<T, 3>
                             : detail::causal_conv1d_step_kernel<T, 4>;
  cuda::launch("causal_conv1d_step_kernel", kernel, blocks, detail::kConv1dStepBlockThreads, 0, gpu.stream, args);
}

}  // namespace moss
