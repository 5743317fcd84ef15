// moss/ops/permute/backward_cuda.cuh: `gather_rows_backward` and `combine_rows_backward` on CUDA
// (needs nvcc). Queued on the stream; neither synchronises with the host. No atomics: every
// output element is written by one thread (dgate by one warp), each sum in a fixed order.
//
//   gather_rows_backward   dx[t] = Σ_{kept s} dout[row(t, s)], s ascending: exactly the
//                          forward's unweighted combine, so it runs the forward's combine_kernel
//                          (one block per token, float32 sums in slot order, rounded once). The
//                          arithmetic is the host's, term for term, so the results are bitwise
//                          the host's.
//   combine_rows_backward  dy is zeroed (rows no kept pair owns stay 0), then one warp per pair
//                          (t, s) writes dy[row(t, s), c] = w_c · dout[t, c] (bitwise the host's)
//                          and sums dgate[t, s] = Σ_{c weighted} dout[t, c] · y[row(t, s), c]:
//                          lane l takes c ≡ l (mod 32) ascending, then the lanes are added by the
//                          fixed butterfly of cuda::warp_sum (not the host's sequential order, so
//                          dgate agrees with the host to float rounding).
//
// As the forward CUDA ops, these trust the plan (one made by `permute_plan` is always in range);
// the host ops check every index (`shape_error`). combine_rows_backward treats a row outside
// [0, tokens·K) as dropped rather than writing out of bounds.
#pragma once

#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/reduce.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute/cuda.cuh"
#include "moss/ops/permute/kernel.cuh"
#include "moss/ops/permute/tuning.cuh"
#include "moss/ops/permute_backward.hpp"

namespace moss {

namespace detail::permute {

/// One warp per pair p = t·K + s (grid-stride over warps): dy[row, c] = w_c · dout[t, c] when
/// `dy`, dgate[p] = Σ_{c ∈ [w0, w1)} dout[t, c] · y[row, c] when `dgate` (0 for a dropped pair).
template <class T>
__global__ void combine_backward_kernel(const T* __restrict__ dout, index_t ld_dout, const T* __restrict__ y,
                                        index_t ld_y, const std::int32_t* __restrict__ pair_row,
                                        const float* __restrict__ gate, index_t pairs, index_t k, index_t D, index_t w0,
                                        index_t w1, T* __restrict__ dy, float* __restrict__ dgate) {
  const int lane = static_cast<int>(threadIdx.x) % cuda::kWarpThreads;
  const index_t warps = static_cast<index_t>(gridDim.x) * (blockDim.x / cuda::kWarpThreads);
  for (index_t p = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / cuda::kWarpThreads; p < pairs; p += warps) {
    const index_t row = pair_row[p];  // the same for the whole warp: every branch below is warp-uniform
    if (row < 0 || row >= pairs) {
      if (dgate && lane == 0) dgate[p] = 0.0f;
      continue;
    }
    const T* g = dout + (p / k) * ld_dout;
    const float w = gate ? gate[p] : 1.0f;
    if (dy) {
      T* dst = dy + row * D;
      for (index_t c = lane; c < D; c += cuda::kWarpThreads) {
        const float v = to_float(g[c]);
        dst[c] = from_float<T>((c >= w0 && c < w1) ? w * v : v);
      }
    }
    if (dgate) {
      const T* yr = y + row * ld_y;
      float acc = 0.0f;
      for (index_t c = w0 + lane; c < w1; c += cuda::kWarpThreads) acc += to_float(g[c]) * to_float(yr[c]);
      acc = cuda::warp_sum(acc);
      if (lane == 0) dgate[p] = acc;
    }
  }
}

}  // namespace detail::permute

/// The gradient of `gather_rows` on the GPU: dx[t] = Σ_{kept s} dout[row(t, s)], s ascending,
/// float32 sums rounded once (0 for a token whose every slot was dropped). Bitwise the host's.
template <class T>
void gather_rows_backward(const Cuda& gpu, const GatherRowsBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::gather_rows_backward: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  using namespace detail::permute;
  validate(a, "gather_rows_backward");
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.dout.shape[1];
  if (tokens == 0) return;
  const bool vector = cuda::vector_rows(a.dout, cuda::kVec16<T>) && cuda::vector_rows(a.dx, cuda::kVec16<T>);
  constexpr int threads = kPermuteTuning.combine_threads;
  const float* no_gate = nullptr;
  cuda::launch("combine_kernel (gather_rows_backward)", combine_kernel<T>, cuda::grid_blocks(tokens, 1), threads, 0,
               gpu.stream, a.dout.data, tokens * K > 1 ? a.dout.stride[0] : D, a.pair_row.data, no_gate, tokens, K, D,
               index_t(0), index_t(0), a.dx.data, tokens > 1 ? a.dx.stride[0] : D, vector);
}

/// The gradients of `combine_rows` on the GPU: dy (every row written; rows no kept pair owns get
/// 0) and dgate (0 for a dropped slot), each only when its view is present.
template <class T>
void combine_rows_backward(const Cuda& gpu, const CombineRowsBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::combine_rows_backward: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  using namespace detail::permute;
  validate(a, "combine_rows_backward");
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.dout.shape[1], rows = tokens * K;
  const bool want_dy = present(a.dy), want_dg = present(a.dgate);
  if (rows == 0 || (!want_dy && !want_dg)) return;
  if (want_dy && D > 0)
    MOSS_CUDA_CHECK(cudaMemsetAsync(a.dy.data, 0, static_cast<std::size_t>(rows * D) * sizeof(T), gpu.stream));
  constexpr int threads = kPermuteTuning.threads;
  cuda::launch("combine_backward_kernel", combine_backward_kernel<T>, blocks_for(rows * cuda::kWarpThreads, threads),
               threads, 0, gpu.stream, a.dout.data, tokens > 1 ? a.dout.stride[0] : D,
               want_dg ? a.y.data : static_cast<const T*>(nullptr), want_dg && rows > 1 ? a.y.stride[0] : D,
               a.pair_row.data, present(a.gate) ? a.gate.data : static_cast<const float*>(nullptr), rows, K, D,
               a.weight_begin, a.weight_end, want_dy ? a.dy.data : static_cast<T*>(nullptr),
               want_dg ? a.dgate.data : static_cast<float*>(nullptr));
}

}  // namespace moss
