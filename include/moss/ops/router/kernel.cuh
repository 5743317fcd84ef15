// moss/ops/router/kernel.cuh: the router kernels (needs nvcc).
//
// logits: one warp per token (a persistent grid of blocks striding over tokens). The router
// weight (X, D) is staged in shared memory once per block when it fits. Lane l accumulates the
// 16-byte chunks l, l + 32, ... of x[t] against up to kExpertTile experts at a time (re-reading
// the x chunk, from L1, per tile of experts), then the warp adds its partial sums by an xor
// butterfly: the order `detail::route::dot_in_kernel_order` replays on the host. The logits go
// to the warp's slice of shared memory and to global memory; lane 0 then selects.
// sinkhorn: one block iterates the balancing over all tokens (training mode only).
// stats: one block per tile of tokens writes per-tile partial sums; one block adds the tiles in
// order (no atomics: the statistics are deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/router/math.hpp"
#include "moss/policy/router.hpp"

namespace moss::detail::route {

/// Experts whose partial sums one lane keeps in registers at a time.
inline constexpr int kExpertTile = 16;

/// Everything the logits kernel needs, by value.
template <class T, class R>
struct RouteParams {
  R router;
  const T* x = nullptr;
  index_t x_row_stride = 0;
  const float* weight = nullptr;   // (X, D)
  float* logits = nullptr;         // (tokens, X)
  std::int32_t* expert = nullptr;  // (tokens, K)
  float* gate = nullptr;           // (tokens, K)
  index_t tokens = 0, D = 0;
  int X = 0;
  bool vector_x = false;  // x rows are 16-byte aligned: chunk loads are one uint4
  bool weight_in_smem = false;
  bool select = true;  // false: a balancing pass selects later
};

/// Loads chunk c (V elements, zero past D) of row x as floats.
template <class T>
MOSS_DEVICE void load_chunk(float (&v)[16 / sizeof(T)], const T* x, index_t c, index_t D, bool vector) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  const index_t i0 = c * V;
  if (vector && i0 + V <= D) {
    const uint4 q = *reinterpret_cast<const uint4*>(x + i0);
    const T* e = reinterpret_cast<const T*>(&q);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = to_float(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = i0 + j < D ? to_float(x[i0 + j]) : 0.0f;
  }
}

/// Logits (and, unless balancing follows, the selection) of every token. Dynamic shared
/// memory: the weight (X·D floats) when staged, then 32·... one X-float slice per warp.
template <class T, class R, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) route_logits_kernel(const RouteParams<T, R> p) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  extern __shared__ __align__(16) unsigned char smem[];
  float* w_smem = reinterpret_cast<float*>(smem);
  float* warp_logits = w_smem + (p.weight_in_smem ? p.X * p.D : 0);
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  float* my_logits = warp_logits + warp * p.X;
  if (p.weight_in_smem) {
    for (index_t i = threadIdx.x; i < p.X * p.D; i += blockDim.x) w_smem[i] = p.weight[i];
    __syncthreads();
  }
  const float* w = p.weight_in_smem ? w_smem : p.weight;
  const index_t chunks = (p.D + V - 1) / V;

  for (index_t t = static_cast<index_t>(blockIdx.x) * kWarps + warp; t < p.tokens;
       t += static_cast<index_t>(gridDim.x) * kWarps) {
    const T* x = p.x + t * p.x_row_stride;
    for (int e0 = 0; e0 < p.X; e0 += kExpertTile) {
      float acc[kExpertTile];
#pragma unroll
      for (int e = 0; e < kExpertTile; ++e) acc[e] = 0.0f;
      for (index_t c = lane; c < chunks; c += 32) {
        float xv[V];
        load_chunk<T>(xv, x, c, p.D, p.vector_x);
        const index_t i0 = c * V;
#pragma unroll
        for (int e = 0; e < kExpertTile; ++e) {
          if (e0 + e >= p.X) break;
          const float* wr = w + (e0 + e) * p.D + i0;
#pragma unroll
          for (int j = 0; j < V; ++j)
            if (i0 + j < p.D) acc[e] = fma_f32(xv[j], wr[j], acc[e]);
        }
      }
#pragma unroll
      for (int e = 0; e < kExpertTile; ++e) {
        float s = acc[e];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0 && e0 + e < p.X) my_logits[e0 + e] = s;
      }
    }
    __syncwarp();
    for (int e = lane; e < p.X; e += 32) p.logits[t * p.X + e] = my_logits[e];
    if (p.select && lane == 0) p.router.select(my_logits, my_logits, p.X, p.expert + t * R::k, p.gate + t * R::k);
    __syncwarp();
  }
}

/// The selection from logits and balanced scores (both (tokens, X)), one thread per token.
template <class R>
__global__ void route_select_kernel(R router, const float* logits, const float* scores, index_t tokens, int X,
                                    std::int32_t* expert, float* gate) {
  for (index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; t < tokens;
       t += static_cast<index_t>(gridDim.x) * blockDim.x)
    router.select(logits + t * X, scores + t * X, X, expert + t * R::k, gate + t * R::k);
}

/// Block-wide sum of one value per thread in a fixed order (a shared-memory tree); every
/// thread gets the result. `scratch` holds blockDim.x floats; blockDim.x is a power of two.
MOSS_DEVICE float block_sum(float v, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
    __syncthreads();
  }
  const float r = scratch[0];
  __syncthreads();
  return r;
}

/// Sinkhorn balancing (see kSinkhornTol) in one block: `scores` (tokens, X) first receives the
/// costs, then the balanced matrix. `d0` is scratch of `tokens` floats. Dynamic shared memory:
/// blockDim.x floats (reductions) + 2·X floats (d1 and its update).
__global__ void route_sinkhorn_kernel(const float* logits, index_t tokens, int X, float* scores, float* d0) {
  extern __shared__ float sh[];
  float* scratch = sh;
  float* d1 = sh + blockDim.x;
  float* d1_next = d1 + X;
  for (index_t i = threadIdx.x; i < tokens * X; i += blockDim.x) {
    const index_t t = i / X;
    scores[i] = sinkhorn_cost(logits + t * X, X, static_cast<int>(i - t * X));
  }
  for (int i = threadIdx.x; i < X; i += blockDim.x) d1[i] = 1.0f;
  __syncthreads();
  for (int round = 0; round < kSinkhornRounds; ++round) {
    for (index_t t = threadIdx.x; t < tokens; t += blockDim.x) {
      float s = 0.0f;
      for (int i = 0; i < X; ++i) s += d1[i] * scores[t * X + i];
      d0[t] = 1.0f / (static_cast<float>(tokens) * (s + kSinkhornEps));
    }
    __syncthreads();
    for (int i = 0; i < X; ++i) {
      float s = 0.0f;
      for (index_t t = threadIdx.x; t < tokens; t += blockDim.x) s += d0[t] * scores[t * X + i];
      s = block_sum(s, scratch);
      if (threadIdx.x == 0) d1_next[i] = 1.0f / (static_cast<float>(X) * (s + kSinkhornEps));
    }
    __syncthreads();
    float change = 0.0f;
    for (int i = 0; i < X; ++i) change = fmaxf(change, fabsf(d1_next[i] - d1[i]));
    // NaN in change: fmaxf drops it, so test every entry for NaN too.
    bool nan = false;
    for (int i = 0; i < X; ++i) nan = nan || (d1_next[i] != d1_next[i]);
    __syncthreads();
    for (int i = threadIdx.x; i < X; i += blockDim.x) d1[i] = d1_next[i];
    __syncthreads();
    if (nan || !(change >= kSinkhornTol)) break;
  }
  for (index_t i = threadIdx.x; i < tokens * X; i += blockDim.x) {
    const index_t t = i / X;
    scores[i] = d1[i - t * X] * scores[i] * d0[t];
  }
}

/// Per-tile partial sums of the statistics: partial[tile, i] = Σ_t p[t, i] (i < X) and
/// partial[tile, X] = Σ_t logsumexp(logits_t)², over the tile's blockDim.x tokens.
/// Dynamic shared memory: blockDim.x floats.
__global__ void router_stats_partial_kernel(const float* logits, index_t tokens, int X, float* partial) {
  extern __shared__ float scratch[];
  const index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  const bool ok = t < tokens;
  const float* lg = logits + (ok ? t : 0) * X;
  const float m = ok ? max_logit(lg, X) : 0.0f;
  const float s = ok ? sum_exp(lg, X, m) : 1.0f;
  for (int i = 0; i < X; ++i) {
    const float v = block_sum(ok ? exp_f32(lg[i] - m) / s : 0.0f, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x * (X + 1) + i] = v;
  }
  const float lse = ok ? m + logf(s) : 0.0f;
  const float z = block_sum(ok ? lse * lse : 0.0f, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x * (X + 1) + X] = z;
}

/// Adds the tiles' partial sums in tile order and writes [aux, z, P_0..P_{X-1}].
__global__ void router_stats_final_kernel(const float* partial, int tiles, index_t tokens, int X, index_t k,
                                          const std::int32_t* counts, bool aux_loss, float aux_coef, float z_coef,
                                          float* out) {
  for (int i = threadIdx.x; i <= X; i += blockDim.x) {
    float s = 0.0f;
    for (int b = 0; b < tiles; ++b) s += partial[b * (X + 1) + i];
    if (i < X) {
      out[2 + i] = tokens > 0 ? s / static_cast<float>(tokens) : 0.0f;
    } else {
      out[1] = tokens > 0 ? z_coef * s / static_cast<float>(tokens) : 0.0f;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float aux = 0.0f;
    const float pairs = static_cast<float>(tokens) * static_cast<float>(k);
    for (int i = 0; i < X; ++i) aux += (pairs > 0 ? counts[i] / pairs : 0.0f) * out[2 + i];
    out[0] = aux_loss ? aux_coef * static_cast<float>(X) * aux : 0.0f;
  }
}

}  // namespace moss::detail::route
