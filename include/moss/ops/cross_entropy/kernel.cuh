// moss/ops/cross_entropy/kernel.cuh: the kernels of `cross_entropy` on CUDA around its cuBLAS
// GEMMs: the row gather / scatter of the counted rows, the per-row softmax that turns a chunk's
// logits into the loss and the logits' gradient, and the final loss sum. Block reductions are
// moss::cuda::BlockReduce (a fixed order for the fixed block size), so every result is bitwise
// repeatable.
#pragma once

#include <cstdint>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/reduce.cuh"

namespace moss::detail {

/// Launch shape of the cross-entropy kernels.
struct CrossEntropyTuning {
  /// Threads of the one-block-per-row softmax (a vocabulary row of 32k–256k logits gives each
  /// thread 64–512 elements) and of the one-block loss sum.
  int softmax_threads;
  /// Threads per block of the grid-stride row copies.
  int copy_threads;
};

inline constexpr CrossEntropyTuning kCrossEntropyTuning{512, cuda::kElementwiseThreads};

/// dst[i, :] = src[rows[i], :] for i < n (dst contiguous (n, d), src row stride lds); grid-stride.
template <class T>
__global__ void cross_entropy_gather_kernel(const T* __restrict__ src, index_t lds,
                                            const std::int32_t* __restrict__ rows, index_t n, index_t d,
                                            T* __restrict__ dst) {
  const index_t total = n * d;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += index_t(gridDim.x) * blockDim.x) {
    const index_t i = e / d;
    dst[e] = src[index_t(rows[i]) * lds + (e - i * d)];
  }
}

/// dst[rows[i], :] = src[i, :] for i < n (src contiguous (n, d), dst row stride ldd); grid-stride.
template <class T>
__global__ void cross_entropy_scatter_kernel(const T* __restrict__ src, const std::int32_t* __restrict__ rows,
                                             index_t n, index_t d, T* __restrict__ dst, index_t ldd) {
  const index_t total = n * d;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += index_t(gridDim.x) * blockDim.x) {
    const index_t i = e / d;
    dst[index_t(rows[i]) * ldd + (e - i * d)] = src[e];
  }
}

/// One block per row i < n of a chunk's float logits (n, V), target target[i] ∈ [0, V):
///   m = max_v l[v];  e_v = exp(l[v] − m) (stored over l);  s = Σ_v e_v;
///   loss[i] = log s − (l[target] − m);  dl[i, v] = e_v / s − [v = target], rounded once to T.
/// dl may be the logits themselves (T = float): each element is read and then written by the
/// same thread, after both reductions. The gradient's factor dloss / N is applied by the GEMMs
/// that read dl (alpha), so dl stays in [−1, 1] and a 2-byte T does not flush it to zero.
template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_softmax_kernel(float* logits, index_t V, const std::int32_t* __restrict__ target, index_t n, T* dl,
                                 float* __restrict__ loss) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  for (index_t i = blockIdx.x; i < n; i += gridDim.x) {
    float* l = logits + i * V;
    T* g = dl + i * V;
    const index_t t = target[i];
    const float lt = l[t];  // read by every thread before the reductions' barriers, so before any store
    float m = -INFINITY;
    for (index_t v = threadIdx.x; v < V; v += kThreads) m = cuda::NanMax{}(m, l[v]);
    m = Reduce::max(m, storage);
    float s = 0.0f;
    for (index_t v = threadIdx.x; v < V; v += kThreads) {
      const float e = expf(l[v] - m);
      l[v] = e;
      s += e;
    }
    s = Reduce::sum(s, storage);
    const float inv = 1.0f / s;
    for (index_t v = threadIdx.x; v < V; v += kThreads) {
      const float p = l[v] * inv;
      g[v] = from_float<T>(v == t ? p - 1.0f : p);
    }
    if (threadIdx.x == 0) loss[i] = logf(s) - (lt - m);
  }
}

/// out[0] = Σ_{i < n} loss[i] in one block: thread j sums i ≡ j (mod kThreads) ascending, then
/// the block reduction adds the threads' sums (a fixed order that depends on n alone).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_loss_sum_kernel(const float* __restrict__ loss, index_t n, float* __restrict__ out) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  float s = 0.0f;
  for (index_t i = threadIdx.x; i < n; i += kThreads) s += loss[i];
  s = Reduce::sum(s, storage);
  if (threadIdx.x == 0) out[0] = s;
}

}  // namespace moss::detail
