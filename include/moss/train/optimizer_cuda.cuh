// moss/train/optimizer_cuda.cuh: AdamW and the global gradient norm on CUDA (needs nvcc),
// included by moss/train/optimizer.hpp and moss/train/clip.hpp under nvcc.
//
// `adamw_step(Cuda, AdamWArgs<float>)`: one thread per element, the host's formula and order
// (moss/train/optimizer.hpp) with every product and sum rounded separately (__fmul_rn,
// __fadd_rn, ...: no fused multiply-add), so the GPU's update is bitwise the host's.
// `global_norm(Cuda, grads)`: √(Σ g²) in float64 over a list of contiguous float32 views:
// per-block partial sums (a fixed grid for each tensor's length, each block's threads striding
// in index order, cub's block reduction) into a device buffer, then one block sums the partials
// in order (tensors in list order). Deterministic run to run; not bitwise the host's sequential
// sum (another order). The norm is returned to the host: one synchronisation per call.
// `scale(Cuda, g, s)`: g ← g · s (clipping).
#pragma once

#include <cmath>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/reduce.cuh"
#include "moss/train/clip.hpp"
#include "moss/train/optimizer.hpp"

namespace moss {

namespace detail::optim {

/// One element of AdamW, every product and sum rounded separately (the host's bits).
MOSS_DEVICE void adamw_element(float* p, const float* g, float* m, float* v, index_t i, const AdamWScalars& s) {
  const float gi = g[i];
  const float pi = s.decay ? __fmul_rn(p[i], s.keep) : p[i];
  const float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(s.one_minus_b1, gi));
  const float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(s.one_minus_b2, __fmul_rn(gi, gi)));
  m[i] = mi;
  v[i] = vi;
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
  p[i] = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
}

template <class F>  // F = float (a template so that every translation unit may include this header)
__global__ void adamw_kernel(F* p, const float* g, float* m, float* v, index_t n, AdamWScalars s) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    adamw_element(p, g, m, v, i, s);
}

inline constexpr int kNormThreads = 256;
/// Blocks per tensor of the norm's first pass: enough to fill a GPU, fixed by the length only.
inline index_t norm_blocks(index_t n) { return std::min<index_t>(ceil_div<index_t>(n, 4 * kNormThreads), 256); }

template <class F>
__global__ void square_sum_kernel(const F* g, index_t n, double* partial) {
  using Reduce = cuda::BlockReduce<double, kNormThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double s = 0;
  for (index_t i = blockIdx.x * static_cast<index_t>(kNormThreads) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * kNormThreads) {
    const double x = g[i];
    s += x * x;
  }
  s = Reduce::sum(s, storage);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <class F>
__global__ void sum_partials_kernel(const F* partial, index_t n, F* out) {
  using Reduce = cuda::BlockReduce<double, kNormThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double s = 0;
  for (index_t i = threadIdx.x; i < n; i += kNormThreads) s += partial[i];
  s = Reduce::sum(s, storage);
  if (threadIdx.x == 0) *out = s;
}

/// Queues the first pass of the norm: each tensor's per-block sums of squares, in list order,
/// into partial (norm_blocks(n) per non-empty tensor).
inline void queue_square_sums(const Cuda& gpu, const std::vector<TensorView<float, 1>>& grads, double* partial) {
  index_t at = 0;
  for (const auto& g : grads) {
    const index_t n = g.shape[0];
    if (n == 0) continue;
    const index_t b = norm_blocks(n);
    cuda::launch("square_sum_kernel", square_sum_kernel<float>, static_cast<unsigned>(b), kNormThreads, 0, gpu.stream,
                 static_cast<const float*>(g.data), n, partial + at);
    at += b;
  }
}
template <class F>
__global__ void scale_kernel(F* g, index_t n, F s) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    g[i] = __fmul_rn(g[i], s);
}

}  // namespace detail::optim

/// One AdamW update on the GPU (formula: moss/train/optimizer.hpp), bitwise the host's.
inline void adamw_step(const Cuda& gpu, const AdamWArgs<float>& a) {
  validate(a, "adamw_step");
  const index_t n = a.param.shape[0];
  if (n == 0) return;
  const AdamWScalars s = adamw_scalars(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.decay, a.step);
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("adamw_kernel", detail::optim::adamw_kernel<float>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, a.param.data, a.grad.data, a.m.data, a.v.data, n, s);
}

/// *out = Σ g² in float64 over contiguous float32 gradients (this header's kernels and order),
/// left in device memory with no synchronisation (the resident training step's norm,
/// moss/train/resident.hpp). The partial sums' scratch comes from the stream's pool.
inline void global_norm_sq_into(const Cuda& gpu, const std::vector<TensorView<float, 1>>& grads, double* out) {
  index_t blocks = 0;
  for (const auto& g : grads) {
    expect_valid("global_norm (cuda)", g);
    expect_contiguous("global_norm (cuda)", g);
    blocks += g.shape[0] > 0 ? detail::optim::norm_blocks(g.shape[0]) : 0;
  }
  if (blocks == 0) {
    MOSS_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), gpu.stream));
    return;
  }
  Buffer<double> partial = gpu.alloc<double>(blocks, "global norm partial sums");
  detail::optim::queue_square_sums(gpu, grads, partial.data());
  cuda::launch("sum_partials_kernel", detail::optim::sum_partials_kernel<double>, 1u, detail::optim::kNormThreads, 0,
               gpu.stream, static_cast<const double*>(partial.data()), blocks, out);
}

/// The global L2 norm of contiguous float32 gradients on the GPU (this header's comment);
/// synchronises once to return it.
inline double global_norm(const Cuda& gpu, const std::vector<TensorView<float, 1>>& grads) {
  Buffer<double> sum = gpu.alloc<double>(1, "global norm");
  global_norm_sq_into(gpu, grads, sum.data());
  double s = 0;
  download(gpu, &s, sum.data(), 1);
  return std::sqrt(s);
}

/// g ← g · s on the GPU (clipping).
inline void scale(const Cuda& gpu, TensorView<float, 1> g, float s) {
  expect_contiguous("scale (cuda)", g);
  const index_t n = g.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("scale_kernel", detail::optim::scale_kernel<float>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, g.data, n, s);
}

}  // namespace moss
