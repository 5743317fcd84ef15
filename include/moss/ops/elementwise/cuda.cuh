// moss/ops/elementwise/cuda.cuh: `add_into` and `multiply` on CUDA (needs nvcc): one grid-stride
// kernel each, one element per thread and step, queued on the stream.
#pragma once

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/elementwise.hpp"

namespace moss {

namespace detail::elementwise {

template <class T>
__global__ void add_into_kernel(const T* x, T* y, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(to_float(y[i]) + to_float(x[i]));
}

template <class T>
__global__ void multiply_kernel(const T* a, const T* b, T* out, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(to_float(a[i]) * to_float(b[i]));
}

template <class F>  // F = float (a template so that every translation unit may include this header)
__global__ void negated_exp_kernel(const F* x, F* out, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = -expf(x[i]);
}

template <class A, class B>
__global__ void convert_kernel(const A* x, B* out, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<B>(to_float(x[i]));
}

}  // namespace detail::elementwise

/// y[i] += x[i] on the GPU.
template <class T>
void add_into(const Cuda& gpu, ConstView<T, 1> x, TensorView<T, 1> y) {
  static_assert(StorageType<T>, "moss::add_into (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate_add_into(x, y, "add_into");
  const index_t n = x.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("add_into_kernel", detail::elementwise::add_into_kernel<T>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, x.data, y.data, n);
}

/// out[i] = a[i] · b[i] on the GPU.
template <class T>
void multiply(const Cuda& gpu, ConstView<T, 1> a, ConstView<T, 1> b, TensorView<T, 1> out) {
  static_assert(StorageType<T>, "moss::multiply (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate_multiply(a, b, out, "multiply");
  const index_t n = a.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("multiply_kernel", detail::elementwise::multiply_kernel<T>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, a.data, b.data, out.data, n);
}

/// out[i] = x[i] converted to out's type on the GPU (through float, rounded once).
template <class A, class B>
void convert(const Cuda& gpu, ConstView<A, 1> x, TensorView<B, 1> out) {
  static_assert(StorageType<A> && StorageType<B>,
                "moss::convert (cuda): A and B must be float, moss::f16 or moss::bf16; double is host-only");
  validate_convert(x, out, "convert");
  const index_t n = x.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("convert_kernel", detail::elementwise::convert_kernel<A, B>, cuda::grid_blocks(n, threads), threads, 0,
               gpu.stream, x.data, out.data, n);
}

/// out[i] = −exp(x[i]) on the GPU (expf: may differ from the host's std::exp in the last bit).
inline void negated_exp(const Cuda& gpu, ConstView<float, 1> x, TensorView<float, 1> out) {
  validate_add_into(x, out, "negated_exp");
  const index_t n = x.shape[0];
  if (n == 0) return;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("negated_exp_kernel", detail::elementwise::negated_exp_kernel<float>, cuda::grid_blocks(n, threads),
               threads, 0, gpu.stream, x.data, out.data, n);
}

}  // namespace moss
