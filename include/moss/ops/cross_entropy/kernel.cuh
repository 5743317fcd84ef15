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

/// The softmax of one row `l` of V float logits with target t ∈ [0, V) (see the kernel below):
/// exp(l − max) stored over l, loss = log Σ − (l[t] − max), and g[v] = (e_v / Σ − [v = t]) · scale
/// rounded once to T (kScaled; else without the factor). Every thread of the block calls it.
template <class T, int kThreads, bool kScaled>
MOSS_DEVICE float cross_entropy_softmax_row(float* l, T* g, index_t V, index_t t, float scale,
                                            typename cuda::BlockReduce<float, kThreads>::TempStorage& storage) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
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
    const float d = v == t ? p - 1.0f : p;
    if constexpr (kScaled)
      g[v] = from_float<T>(d * scale);
    else
      g[v] = from_float<T>(d);
  }
  return logf(s) - (lt - m);
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
  __shared__ typename cuda::BlockReduce<float, kThreads>::TempStorage storage;
  for (index_t i = blockIdx.x; i < n; i += gridDim.x) {
    const float li =
        cross_entropy_softmax_row<T, kThreads, false>(logits + i * V, dl + i * V, V, target[i], 1.0f, storage);
    if (threadIdx.x == 0) loss[i] = li;
  }
}

/// The resident form's softmax (cross_entropy_resident): as above for rows with target[i] ≥ 0,
/// with dl already multiplied by *scale (dloss / N, computed on the device: the GEMMs then run
/// with alpha 1; a 2-byte T keeps the product's 8 exponent bits, so nothing flushes); a row with
/// target −1 (ignored or bad) gets loss 0 and a zero dl row.
template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_softmax_scaled_kernel(float* logits, index_t V, const std::int32_t* __restrict__ target, index_t n,
                                        T* dl, float* __restrict__ loss, const float* __restrict__ scale) {
  __shared__ typename cuda::BlockReduce<float, kThreads>::TempStorage storage;
  const float sc = *scale;
  for (index_t i = blockIdx.x; i < n; i += gridDim.x) {
    const std::int32_t t = target[i];
    if (t < 0) {
      for (index_t v = threadIdx.x; v < V; v += kThreads) dl[i * V + v] = from_float<T>(0.0f);
      if (threadIdx.x == 0) loss[i] = 0.0f;
      continue;
    }
    const float li = cross_entropy_softmax_row<T, kThreads, true>(logits + i * V, dl + i * V, V, t, sc, storage);
    if (threadIdx.x == 0) loss[i] = li;
  }
}

/// The resident form's targets, one block: tgt[r] = targets[r] when it is a valid id, else −1
/// (ignore_index, or a bad id, which also lowers *bad_row to r when bad_row is given); *count =
/// the valid rows (a block sum in a fixed order); *scale = dloss / count (0 when none).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_targets_kernel(const std::int64_t* __restrict__ targets, index_t stride, index_t tokens,
                                 index_t vocab, std::int64_t ignore_index, float dloss, std::int32_t* __restrict__ tgt,
                                 std::int64_t* __restrict__ count, float* __restrict__ scale,
                                 unsigned long long* bad_row) {
  using Reduce = cuda::BlockReduce<index_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  index_t c = 0;
  for (index_t r = threadIdx.x; r < tokens; r += kThreads) {
    const std::int64_t t = targets[r * stride];
    const bool ok = t != ignore_index && t >= 0 && t < vocab;
    if (t != ignore_index && !ok && bad_row) atomicMin(bad_row, static_cast<unsigned long long>(r));
    tgt[r] = ok ? static_cast<std::int32_t>(t) : -1;
    c += ok ? 1 : 0;
  }
  c = Reduce::sum(c, storage);
  if (threadIdx.x == 0) {
    *count = c;
    *scale = c > 0 ? dloss / static_cast<float>(c) : 0.0f;
  }
}

/// dst[i, :] = src[i, :] for rows whose tgt[i] ≥ 0, else 0 (dst contiguous (n, d), src row stride
/// lds): an ignored row's H enters neither the logits nor dW, whatever it holds. Grid-stride.
template <class T>
__global__ void cross_entropy_masked_rows_kernel(const T* __restrict__ src, index_t lds,
                                                 const std::int32_t* __restrict__ tgt, index_t n, index_t d,
                                                 T* __restrict__ dst) {
  const index_t total = n * d;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += index_t(gridDim.x) * blockDim.x) {
    const index_t i = e / d;
    dst[e] = tgt[i] >= 0 ? src[i * lds + (e - i * d)] : from_float<T>(0.0f);
  }
}

/// *out = (Σ_{i < n} loss[i]) / *count (0 when the count is 0), the sum in
/// cross_entropy_loss_sum_kernel's order.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_loss_mean_kernel(const float* __restrict__ loss, index_t n, const std::int64_t* __restrict__ count,
                                   float* __restrict__ out) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  float s = 0.0f;
  for (index_t i = threadIdx.x; i < n; i += kThreads) s += loss[i];
  s = Reduce::sum(s, storage);
  if (threadIdx.x == 0) *out = *count > 0 ? s / static_cast<float>(*count) : 0.0f;
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
