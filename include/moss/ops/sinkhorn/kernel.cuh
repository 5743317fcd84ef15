// moss/ops/sinkhorn/kernel.cuh: the Sinkhorn kernel (needs nvcc).
//
// One block iterates the whole balancing (every round needs every token's row scale before any
// column scale), so the op never returns to the host between rounds. Thread j owns tokens j,
// j + threads, ...: it writes their costs into `scores`, then each round computes their row
// scales d0 (kept in the workspace) and its partial column sums over them, up to `kTile`
// columns per pass over its rows; a block reduction (moss::cuda::BlockReduce: a fixed order, so
// deterministic) adds the partials. The column scales d1 live in shared memory; `__syncthreads_or` decides, the
// same way in every thread, whether another round runs.
#pragma once

#include <cuda_runtime.h>

#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/ops/sinkhorn/math.hpp"

namespace moss::detail::sinkhorn {

/// Floats of dynamic shared memory per column-scale array: X rounded up to a multiple of 4, so
/// that the compiler's vectorised reads of d1 (compute-sanitizer memcheck saw a 12-byte read at
/// d1 with X = 1) stay inside the allocation.
inline constexpr int padded_experts(int X) { return (X + 3) / 4 * 4; }

/// The balanced matrix of exp(logits) (tokens, X) into `scores`; `d0` is scratch of `tokens`
/// floats. Dynamic shared memory: 2 · padded_experts(X) floats (d1 and its update). One block of
/// kThreads.
template <int kThreads, int kTile>
__global__ void __launch_bounds__(kThreads) sinkhorn_kernel(const float* logits, index_t tokens, int X, float tolerance,
                                                            int max_rounds, float* scores, float* d0) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_temp;
  extern __shared__ float sh[];
  float* d1 = sh;
  float* d1_next = sh + padded_experts(X);
  const int tid = static_cast<int>(threadIdx.x);
  for (index_t t = tid; t < tokens; t += kThreads) cost_row(logits + t * X, scores + t * X, X);
  for (int i = tid; i < X; i += kThreads) d1[i] = 1.0f;
  __syncthreads();
  for (int round = 0; round < max_rounds; ++round) {
    // Row scales of this thread's tokens (read back by the same thread below).
    for (index_t t = tid; t < tokens; t += kThreads) d0[t] = row_scale(scores + t * X, d1, X, tokens);
    for (int e0 = 0; e0 < X; e0 += kTile) {
      float acc[kTile];
#pragma unroll
      for (int e = 0; e < kTile; ++e) acc[e] = 0.0f;
      for (index_t t = tid; t < tokens; t += kThreads) {
        const float s = d0[t];
        const float* c = scores + t * X + e0;
#pragma unroll
        for (int e = 0; e < kTile; ++e)
          if (e0 + e < X) acc[e] += s * c[e];
      }
#pragma unroll
      for (int e = 0; e < kTile; ++e) {
        if (e0 + e >= X) break;                              // the same in every thread
        const float sum = Reduce::sum(acc[e], reduce_temp);  // ends with a barrier
        if (tid == 0) d1_next[e0 + e] = col_scale(sum, X);
      }
    }
    __syncthreads();  // thread 0's d1_next is read by every thread below
    bool nan = false, moved = false;
    for (int i = tid; i < X; i += kThreads) {
      nan = nan || d1_next[i] != d1_next[i];
      moved = moved || fabsf(d1_next[i] - d1[i]) >= tolerance;
    }
    // Both are barriers: every read of d1 above is done before it is overwritten.
    const bool any_nan = __syncthreads_or(nan) != 0;
    const bool any_moved = __syncthreads_or(moved) != 0;
    for (int i = tid; i < X; i += kThreads) d1[i] = d1_next[i];
    __syncthreads();
    if (any_nan || !any_moved) break;
  }
  // Every d0 and d1 is written before the last barrier.
  for (index_t i = tid; i < tokens * X; i += kThreads) {
    const index_t t = i / X;
    scores[i] = d1[i - t * X] * scores[i] * d0[t];
  }
}

}  // namespace moss::detail::sinkhorn
