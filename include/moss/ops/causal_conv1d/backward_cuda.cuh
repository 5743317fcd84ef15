// moss/ops/causal_conv1d/backward_cuda.cuh: `causal_conv1d_backward` on CUDA (needs nvcc),
// queued on the stream; the kernels are in backward_kernel.cuh.
//
// Instantiations: 3 dtypes × 3 widths (2, 3, 4) sequence kernels and one parameter kernel.
// dweight and dbias are summed per (sequence, run of timesteps), then over the runs in a fixed
// order: bitwise repeatable, but not the host's single running sum, so the two agree to
// rounding. The input gradients (dx, dinitial_state) sum the same W terms in the same order as
// the host. Threads run along channels, so x, dout and dx with unit stride along dim (the
// channel-last layout) are read and written coalesced, 4 channels per thread and access when
// aligned; other strides work, more slowly, one channel per thread.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/causal_conv1d/backward_kernel.cuh"
#include "moss/ops/causal_conv1d_backward.hpp"

namespace moss {

namespace detail {

/// The sequence kernel for width W ∈ {2, 3, 4} (checked by the caller), C channels per thread and
/// U timesteps per load group.
template <class T, int C, int U>
auto conv1d_backward_kernel(index_t width) {
  switch (width) {
    case 2:
      return causal_conv1d_backward_kernel<T, 2, C, U>;
    case 3:
      return causal_conv1d_backward_kernel<T, 3, C, U>;
    default:
      return causal_conv1d_backward_kernel<T, 4, C, U>;
  }
}

/// Whether the sequence kernel may take C channels per thread in vector accesses: x, dout and
/// (when written) dx with unit channel stride, aligned to C elements at every row start, and C
/// dividing dim.
template <class T>
bool conv1d_backward_vector(const CausalConv1dBackwardArgs<T>& a, index_t C) {
  const bool dx = present(a.dx) && !a.dx.empty();
  return a.x.shape[1] % C == 0 && cuda::vector_aligned(a.x, C, 1) && cuda::vector_aligned(a.dout, C, 1) &&
         (!dx || cuda::vector_aligned(a.dx, C, 1));
}

/// causal_conv1d_backward's validation and launches, U timesteps' rows loaded together.
template <class T, int U>
void launch_conv1d_backward(const Cuda& gpu, const CausalConv1dBackwardArgs<T>& args) {
  validate(args, "causal_conv1d_backward");
  const index_t width = args.weight.shape[1];
  expect_causal_conv1d_cuda_width(width, "causal_conv1d_backward (cuda)");
  const index_t batch = args.x.shape[0], dim = args.x.shape[1], seqlen = args.x.shape[2];
  const bool want_dx = present(args.dx) && !args.dx.empty();
  const bool want_dstate = present(args.dinitial_state) && !args.dinitial_state.empty();
  const bool want_params = present(args.dweight) || present(args.dbias);
  if (!want_dx && !want_dstate && !want_params) return;

  constexpr index_t kVec = kConv1dBackwardVec<T>;
  const index_t steps = conv1d_backward_steps(batch * ceil_div(dim, kVec), seqlen);
  const index_t runs = seqlen > 0 ? ceil_div<index_t>(seqlen, steps) : 1;  // run 0 owns the state's columns
  const index_t slots = batch * runs;
  Buffer<float> partial;
  if (want_params && slots > 0)
    partial = gpu.alloc<float>(slots * dim * (width + 1), "causal_conv1d_backward parameter partials");
  constexpr int threads = kConv1dBackwardBlockThreads;
  if (slots > 0) {
    Conv1dBackwardParams<T> p{.x = args.x,
                              .weight = args.weight,
                              .bias = args.bias,
                              .silu = args.silu,
                              .initial_state = args.initial_state,
                              .dout = args.dout,
                              .dfinal_state = args.dfinal_state,
                              .dx = want_dx ? args.dx : TensorView<T, 3>{},
                              .dinitial_state = want_dstate ? args.dinitial_state : TensorView<T, 3>{},
                              .steps = steps,
                              .runs = runs,
                              .partial = want_params ? partial.data() : nullptr};
    const bool vec = conv1d_backward_vector(args, kVec);
    const unsigned blocks = cuda::checked_grid(ceil_div<index_t>(slots * (vec ? dim / kVec : dim), threads),
                                               "causal_conv1d_backward (cuda)");
    cuda::launch(
        "causal_conv1d_backward_kernel",
        vec ? conv1d_backward_kernel<T, static_cast<int>(kVec), U>(width) : conv1d_backward_kernel<T, 1, U>(width),
        blocks, threads, 0, gpu.stream, p);
  }
  if (!want_params) return;
  const unsigned blocks =
      cuda::checked_grid(ceil_div<index_t>(dim * (width + 1), kConv1dParamColumns), "causal_conv1d_backward (cuda)");
  const dim3 block(kConv1dParamColumns, kConv1dParamGroups);
  cuda::launch("causal_conv1d_backward_params_kernel", causal_conv1d_backward_params_kernel<float>, blocks, block, 0,
               gpu.stream, static_cast<const float*>(partial.data()), slots, dim, static_cast<int>(width), args.dweight,
               args.dbias, args.accumulate);
}

}  // namespace detail

/// Writes the gradients of causal_conv1d's inputs that `args` asks for (docs/math.md §4) on the
/// GPU, queued on `gpu.stream`; does not synchronise (W ∈ 2, 3, 4; any strides; all views
/// device memory). dweight / dbias take a (batch · runs, dim, W + 1) float workspace from
/// `gpu.alloc`, freed on the stream.
template <class T>
void causal_conv1d_backward(const Cuda& gpu, const CausalConv1dBackwardArgs<T>& args) {
  static_assert(StorageType<T>,
                "moss::causal_conv1d_backward (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  detail::launch_conv1d_backward<T, detail::kConv1dBackwardLoadSteps>(gpu, args);
}

namespace detail {

/// The test and benchmark hook: causal_conv1d_backward with `load_steps` (1, 4 or 8) timesteps'
/// rows loaded together instead of kConv1dBackwardLoadSteps (0). The results are the same bits.
template <class T>
void run_conv1d_backward(const Cuda& gpu, const CausalConv1dBackwardArgs<T>& args, int load_steps) {
  switch (load_steps) {
    case 0:
      return causal_conv1d_backward(gpu, args);
    case 1:
      return launch_conv1d_backward<T, 1>(gpu, args);
    case 4:
      return launch_conv1d_backward<T, 4>(gpu, args);
    case 8:
      return launch_conv1d_backward<T, 8>(gpu, args);
    default:
      raise<config_error>("run_conv1d_backward: load_steps is ", load_steps, ", expected 0, 1, 4 or 8");
  }
}

}  // namespace detail

}  // namespace moss
