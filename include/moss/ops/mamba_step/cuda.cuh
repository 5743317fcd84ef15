// moss/ops/mamba_step/cuda.cuh: `mamba_step` on CUDA (needs nvcc): the two kernels of
// kernel.cuh, queued on the stream with their scratch from the backend's pool (stream-ordered, so
// a CUDA graph may capture the step); no cuBLAS call, no host synchronisation.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/mamba_step.hpp"
#include "moss/ops/mamba_step/kernel.cuh"

namespace moss {

/// One decode step of the mixer's core on the GPU (contract: moss/ops/mamba_step.hpp): the conv
/// step with a partial x_proj per slice of channels, then x_proj's sum, dt_proj and the scan step.
/// The CUDA conv's widths (2, 3, 4; every Mamba uses 4).
template <class T>
void mamba_step(const Cuda& gpu, const MambaStepArgs<T>& a) {
  static_assert(StorageType<T>, "moss::mamba_step (cuda): T must be float, moss::f16 or moss::bf16");
  using namespace detail::mamba_step;
  validate(a, "mamba_step");
  const index_t batch = a.xz.shape[0], ED = a.conv_weight.shape[0];
  const index_t W = a.conv_weight.shape[1], N = a.A.shape[1], R = a.dt_proj.shape[1];
  expect_causal_conv1d_cuda_width(W, "mamba_step (cuda)");  // the widths of the CUDA conv ops
  if (batch == 0 || ED == 0) return;
  MOSS_EXPECTS(batch <= 65535, unsupported_error, "mamba_step (cuda): batch ", batch,
               " exceeds the 65535 sequences of the grid's second axis");
  MambaStepParams<T> p;
  p.xz = a.xz.data;
  p.conv_state = a.conv_state.data;
  p.conv_weight = a.conv_weight.data;
  p.conv_bias = present(a.conv_bias) ? a.conv_bias.data : nullptr;
  p.x_proj = a.x_proj.data;
  p.dt_proj = a.dt_proj.data;
  p.dt_bias = a.dt_bias.data;
  p.A = a.A.data;
  p.D = a.D.data;
  p.ssm_state = a.ssm_state.data;
  p.out = a.out.data;
  p.ED = ED;
  p.W = static_cast<int>(W);
  p.N = static_cast<int>(N);
  p.R = static_cast<int>(R);
  p.XP = static_cast<int>(R + 2 * N);
  p.slices = static_cast<int>(ceil_div<index_t>(ED, kMambaStepSlice));
  Buffer<T> v = gpu.alloc<T>(batch * ED, "mamba_step conv output");
  Buffer<float> partial = gpu.alloc<float>(batch * p.slices * p.XP, "mamba_step x_proj partials");
  p.v = v.data();
  p.partial = partial.data();
  const dim3 grid(cuda::checked_grid(p.slices, "mamba_step (cuda)"), static_cast<unsigned>(batch));
  cuda::launch("mamba_step_conv_xproj_kernel", mamba_step_conv_xproj_kernel<T>, grid, dim3(kMambaStepSlice), 0,
               gpu.stream, p);
  const std::size_t smem = sizeof(float) * static_cast<std::size_t>(p.XP);
  auto dt_scan = mamba_step_dt_scan_kernel<T>;
  cuda::allow_dynamic_shared(dt_scan, smem);
  cuda::launch("mamba_step_dt_scan_kernel", dt_scan, grid, dim3(kMambaStepSlice), smem, gpu.stream, p);
}

}  // namespace moss
