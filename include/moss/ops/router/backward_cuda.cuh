// moss/ops/router/backward_cuda.cuh: `route_backward` on CUDA (needs nvcc), the formulas of
// moss/ops/router_backward.hpp in the host's order:
//   1. dlogits: one thread per token (softmax recomputed from the logits; the gate's, the aux
//      loss's and the z-loss's terms, each sum in the host's order);
//   2. dx[t, k] = Σ_i dlogits[t, i] · weight[i, k], one thread per (t, k), i ascending;
//   3. dweight[i, k] = Σ_t dlogits[t, i] · x[t, k], one thread per (i, k), t ascending, then
//      written or added (`accumulate`).
// No atomics: bitwise repeatable. The experts of the selection come from the forward on the
// device and are trusted, as the forward CUDA ops trust their plan (checking them would need a
// synchronisation): a pair whose expert is outside [0, X) adds nothing. Queued on the stream;
// never synchronises.
#pragma once

#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/router/host.hpp"
#include "moss/ops/router_backward.hpp"

namespace moss {

namespace detail::route_bwd {

template <class R>
__global__ void dlogits_kernel(R router, const float* logits, const std::int32_t* expert, const float* dgate,
                               const std::int32_t* counts, float aux_coef, float z_coef, bool aux, bool renorm,
                               index_t tokens, int X, float* dl) {
  constexpr int K = R::k;
  const index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* lg = logits + t * X;
  float* d = dl + t * X;
  float m = lg[0];
  for (int i = 1; i < X; ++i) m = fmaxf(m, lg[i]);
  float z = 0;
  for (int i = 0; i < X; ++i) z += expf(lg[i] - m);
  const auto p = [&](int i) { return expf(lg[i] - m) / z; };
  for (int j = 0; j < X; ++j) d[j] = 0;
  const std::int32_t* e = expert + t * K;
  const auto ok = [&](int s) { return e[s] >= 0 && e[s] < X; };
  if (dgate) {
    const float* dg = dgate + t * K;
    if constexpr (std::is_same_v<R, SinkhornTop1>) {
      if (ok(0)) {
        const float g = 1.0f / (1.0f + expf(-lg[e[0]]));
        d[e[0]] += dg[0] * g * (1.0f - g);
      }
    } else {
      if (renorm) {
        float total = 0;
        for (int s = 0; s < K; ++s)
          if (ok(s)) total += p(e[s]);
        float dot = 0;
        for (int s = 0; s < K; ++s)
          if (ok(s)) dot += dg[s] * (p(e[s]) / total);
        for (int s = 0; s < K; ++s)
          if (ok(s)) d[e[s]] += (p(e[s]) / total) * (dg[s] - dot);
      } else {
        float dot = 0;
        for (int s = 0; s < K; ++s)
          if (ok(s)) dot += dg[s] * p(e[s]);
        for (int j = 0; j < X; ++j) d[j] -= dot * p(j);
        for (int s = 0; s < K; ++s)
          if (ok(s)) d[e[s]] += dg[s] * p(e[s]);
      }
    }
  }
  if (aux) {
    const float denom = static_cast<float>(tokens) * static_cast<float>(K);
    float fp = 0;
    for (int i = 0; i < X; ++i) fp += (static_cast<float>(counts[i]) / denom) * p(i);
    const float scale = aux_coef * static_cast<float>(X) / static_cast<float>(tokens);
    for (int j = 0; j < X; ++j) d[j] += scale * p(j) * (static_cast<float>(counts[j]) / denom - fp);
  }
  if (z_coef != 0) {
    const float lse = m + logf(z);
    const float scale = z_coef * 2.0f * lse / static_cast<float>(tokens);
    for (int j = 0; j < X; ++j) d[j] += scale * p(j);
  }
}

template <class T>
__global__ void dx_kernel(const float* dl, const float* weight, index_t tokens, int X, index_t D, T* dx,
                          index_t ld_dx) {
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < tokens * D;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t t = idx / D, k = idx - t * D;
    float acc = 0;
    for (int i = 0; i < X; ++i) acc += dl[t * X + i] * weight[i * D + k];
    dx[t * ld_dx + k] = from_float<T>(acc);
  }
}

template <class T>
__global__ void dweight_kernel(const float* dl, const T* x, index_t ld_x, index_t tokens, int X, index_t D,
                               float* dweight, bool accumulate) {
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < X * D;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t i = idx / D, k = idx - i * D;
    float acc = 0;
    for (index_t t = 0; t < tokens; ++t) acc += dl[t * X + i] * to_float(x[t * ld_x + k]);
    dweight[idx] = accumulate ? dweight[idx] + acc : acc;
  }
}

}  // namespace detail::route_bwd

/// The router's backward on the GPU (this header's comment).
template <class T, class R>
void route_backward(const Cuda& gpu, const RouteBackwardArgs<T, R>& a) {
  static_assert(StorageType<T>,
                "moss::route_backward (cuda): T must be float, moss::f16 or moss::bf16; double is "
                "host-only");
  static_assert(detail::route::kBuiltinGate<R>, "moss::route_backward: supports the built-in routers only");
  validate(a, "route_backward");
  const index_t tokens = a.x.shape[0], D = a.x.shape[1];
  const int X = static_cast<int>(a.weight.shape[0]);
  const bool want_dx = present(a.dx) && tokens > 0, want_dw = present(a.dweight);
  if (!present(a.dlogits) && !want_dx && !want_dw) return;
  if (tokens == 0) {
    if (want_dw && !a.accumulate)
      MOSS_CUDA_CHECK(cudaMemsetAsync(a.dweight.data, 0, static_cast<std::size_t>(X * D) * sizeof(float), gpu.stream));
    return;
  }
  Buffer<float> own;
  float* dl = a.dlogits.data;
  if (!dl) {
    own = gpu.alloc<float>(tokens * X);
    dl = own.data();
  }
  const bool aux = R::aux_loss && a.aux_loss_coef != 0;
  constexpr int threads = cuda::kElementwiseThreads;
  cuda::launch("route_dlogits_kernel", detail::route_bwd::dlogits_kernel<R>,
               cuda::checked_grid(ceil_div<index_t>(tokens, threads), "route_backward"), threads, 0, gpu.stream,
               a.router, a.logits.data, a.expert.data, present(a.dgate) ? a.dgate.data : nullptr,
               aux ? a.counts.data : nullptr, static_cast<float>(a.aux_loss_coef), static_cast<float>(a.z_loss_coef),
               aux, detail::route::renormalizes(a.router), tokens, X, dl);
  if (want_dx)
    cuda::launch("route_dx_kernel", detail::route_bwd::dx_kernel<T>, cuda::grid_blocks(tokens * D, threads), threads, 0,
                 gpu.stream, dl, a.weight.data, tokens, X, D, a.dx.data, tokens > 1 ? a.dx.stride[0] : D);
  if (want_dw)
    cuda::launch("route_dweight_kernel", detail::route_bwd::dweight_kernel<T>, cuda::grid_blocks(X * D, threads),
                 threads, 0, gpu.stream, dl, a.x.data, tokens > 1 ? a.x.stride[0] : D, tokens, X, D, a.dweight.data,
                 a.accumulate);
}

}  // namespace moss
