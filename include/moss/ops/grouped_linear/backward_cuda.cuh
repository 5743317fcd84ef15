// moss/ops/grouped_linear/backward_cuda.cuh: `grouped_linear_backward` on CUDA (needs nvcc): the
// CUDA `linear_backward` over each expert's segment, experts in order, as on the host. So dX of a
// segment is one cublasGemmEx (the forward's per-segment strategy, moss/ops/grouped_linear.hpp),
// dW_e one cublasGemmEx with K = the segment's length, db_e the fixed-order column sums of
// moss/ops/linear/backward_cuda.cuh. An empty segment launches no GEMM: its dW_e and db_e are
// zeroed (left as they are when accumulating).
//
// Like the forward, the op needs the segment offsets on the host: pass `host_offsets` when the
// caller has them (a layer reads them once per plan, `read_offsets`); otherwise `offsets` is
// copied to the host and the stream synchronised once. With `resident_offsets` nothing is read on
// the host: moss's sync-free kernels of device_gemm.cuh run instead (capturable in a CUDA graph).
#pragma once

#include <cstdint>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear/device_gemm.cuh"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/linear/backward_cuda.cuh"

namespace moss {

namespace detail {

/// Queues the sync-free gradients of `a` (resident offsets, read on the device only): dX by the
/// grouped GEMM against W_eᵀ (rows past offsets[X] zeroed), dW_e by the weight-gradient kernel
/// (one block per output tile, rows in order), db_e by per-column sums; all deterministic.
template <class T>
void grouped_linear_backward_device(const Cuda& gpu, const GroupedLinearBackwardArgs<T>& a) {
  const index_t rows = a.x.shape[0], X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  const index_t ldy = rows > 1 ? a.dy.stride[0] : out, ldx = rows > 1 ? a.x.stride[0] : in;
  MOSS_EXPECTS(X <= kGroupedGemmMaxExperts, unsupported_error, "grouped_linear_backward (cuda, resident offsets): ", X,
               " experts exceed the ", kGroupedGemmMaxExperts, " the sync-free kernels schedule");
  if (present(a.dx))
    launch_grouped_gemm<true>(gpu, a.dy.data, ldy, a.weight.data, static_cast<const T*>(nullptr), a.offsets.data, X,
                              rows, in, out, a.dx.data, rows > 1 ? a.dx.stride[0] : in);
  if (present(a.dweight)) {
    const bool mma = mma_engine_applies<T>({a.dy.data, a.x.data}, {out, in, ldy, ldx});
    const index_t tiles = mma ? WgradSchedule<kMmaTileM, kWgradTileN>{out, in}.tiles(X)
                              : WgradSchedule<kFmaTileM, kFmaTileN>{out, in}.tiles(X);
    const int experts = static_cast<int>(X);
    if constexpr (!std::is_same_v<T, float>) {
      if (mma) {
        const std::size_t shared = kMmaStages * mma_stage_bytes(kWgradTileN);
        const auto kernel = grouped_wgrad_mma_kernel<T>;
        cuda::allow_dynamic_shared(kernel, shared);
        const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads, shared) / kGroupedGemmThreads;
        cuda::launch("grouped_wgrad_mma_kernel", kernel, static_cast<unsigned>(tiles < wave ? tiles : wave),
                     kGroupedGemmThreads, shared, gpu.stream, a.dy.data, ldy, a.x.data, ldx, a.offsets.data, experts,
                     rows, out, in, a.dweight.data, a.accumulate);
      }
    }
    if (!mma) {
      const auto kernel = grouped_wgrad_fma_kernel<T>;
      const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads) / kGroupedGemmThreads;
      cuda::launch("grouped_wgrad_fma_kernel", kernel, static_cast<unsigned>(tiles < wave ? tiles : wave),
                   kGroupedGemmThreads, 0, gpu.stream, a.dy.data, ldy, a.x.data, ldx, a.offsets.data, experts, rows,
                   out, in, a.dweight.data, a.accumulate);
    }
  }
  if (present(a.dbias)) {  // one grid row per expert: X ≤ kGroupedGemmMaxExperts fits grid.y
    const dim3 grid(static_cast<unsigned>(ceil_div<index_t>(out, kGroupedGemmThreads)), static_cast<unsigned>(X));
    cuda::launch("grouped_bias_grad_kernel", grouped_bias_grad_kernel<T>, grid, kGroupedGemmThreads, 0, gpu.stream,
                 a.dy.data, ldy, a.offsets.data, rows, out, a.dbias.data, a.accumulate);
  }
}

}  // namespace detail

/// The gradients of `grouped_linear` on the GPU, queued on `gpu.stream` (see
/// moss/ops/grouped_linear_backward.hpp): each present output is computed; an empty segment gives
/// dW_e = 0 and db_e = 0 (unchanged when accumulating), rows at or past offsets[X] get dX = 0.
/// Reads `offsets` to the host (one synchronisation) unless `host_offsets` is given or the
/// offsets are resident (`resident_offsets`: read on the device only); `offsets` is device
/// memory here. Deterministic (no atomics). T is a storage type: double is host-only.
template <class T>
void grouped_linear_backward(const Cuda& gpu, const GroupedLinearBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::grouped_linear_backward: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "grouped_linear_backward");
  if (a.resident_offsets) {
    detail::grouped_linear_backward_device(gpu, a);
    return;
  }
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0];
  std::vector<std::int32_t> read;
  const std::int32_t* off = a.host_offsets;
  if (!off) {
    read.resize(static_cast<std::size_t>(X + 1));
    download(gpu, read.data(), a.offsets.data, X + 1);
    off = read.data();
  }
  detail::check_offsets("grouped_linear_backward", off, X, rows);
  if (present(a.dx) && off[X] < rows) {
    // Rows past the last segment: zero bits, which are 0 in float, f16 and bf16.
    const index_t tail = rows - off[X];
    const index_t ld = rows > 1 ? a.dx.stride[0] : in;
    MOSS_CUDA_CHECK(cudaMemset2DAsync(a.dx.data + off[X] * ld, static_cast<std::size_t>(ld) * sizeof(T), 0,
                                      static_cast<std::size_t>(in) * sizeof(T), static_cast<std::size_t>(tail),
                                      gpu.stream));
  }
  detail::grouped_linear_backward_segments(gpu, a, off);
}

}  // namespace moss
