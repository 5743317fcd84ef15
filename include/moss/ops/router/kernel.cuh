// moss/ops/router/kernel.cuh: the router kernels (needs nvcc).
//
// logits: one warp per TPW consecutive tokens at a time (a persistent grid of blocks striding
// over tokens; `route` uses TPW = 1, the test and benchmark hook `run_route` also 4). The router
// weight (X, D) is staged in shared memory once per block when it fits. Lane l accumulates the
// 16-byte chunks l, l + 32, ... of x[t] against up to kExpertTileFor<TPW> experts at a time
// (re-reading the x chunk, from L1, per tile of experts), then the warp adds its partial sums by
// an xor butterfly: the order `detail::route::dot_in_kernel_order` replays on the host. The
// logits go to the warp's slice of shared memory and to global memory; lane i then selects for
// token i (`route`), or nothing is selected (`route_logits`: the router type is `LogitsOnly`).
// select: one thread per token, from given logits and scores (`route_select`).
// stats: one block per tile of tokens writes per-tile partial sums (moss::cuda::BlockReduce);
// one block adds the tiles in order (no atomics: the statistics are deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/router/math.hpp"
#include "moss/policy/router.hpp"

namespace moss::detail::route {

/// Experts whose partial sums one lane keeps in registers at a time.
inline constexpr int kExpertTile = 16;

/// The router type of a logits kernel that selects nothing (`route_logits`).
struct LogitsOnly {
  static constexpr int k = 1;
};

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
};

/// Loads chunk c (V elements, zero past D) of row x as floats.
template <class T>
MOSS_DEVICE void load_chunk(float (&v)[cuda::kVec16<T>], const T* x, index_t c, index_t D, bool vector) {
  constexpr int V = cuda::kVec16<T>;
  const index_t i0 = c * V;
  if (vector && i0 + V <= D) {
    cuda::load_vec<V>(x + i0, v);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = i0 + j < D ? to_float(x[i0 + j]) : 0.0f;
  }
}

/// Experts whose partial sums a lane keeps per token when a warp takes TPW tokens at a time (the
/// registers of TPW · kExpertTile partial sums would not fit for TPW > 1).
template <int TPW>
inline constexpr int kExpertTileFor = TPW == 1 ? kExpertTile : kExpertTile / 2;

/// Logits (and, unless R is `LogitsOnly`, the selection) of every token. Dynamic shared
/// memory: the weight (X·D floats) when staged, then one TPW·X-float slice per warp. A warp
/// takes TPW consecutive tokens at a time: each weight element read from shared memory serves
/// TPW tokens (the weight reads, 4·X bytes per x element, are what bounds TPW = 1). Every
/// token's sums are the same multiply-adds in the same order whatever TPW: the same bits.
template <class T, class R, int kWarps, int TPW = 1>
__global__ void __launch_bounds__(kWarps * 32) route_logits_kernel(const RouteParams<T, R> p) {
  constexpr int V = cuda::kVec16<T>;
  constexpr int ET = kExpertTileFor<TPW>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* w_smem = reinterpret_cast<float*>(smem);
  float* warp_logits = w_smem + (p.weight_in_smem ? p.X * p.D : 0);
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  float* my_logits = warp_logits + warp * TPW * p.X;  // token i's logits at i·X
  if (p.weight_in_smem) {
    for (index_t i = threadIdx.x; i < p.X * p.D; i += blockDim.x) w_smem[i] = p.weight[i];
    __syncthreads();
  }
  const float* w = p.weight_in_smem ? w_smem : p.weight;
  const index_t chunks = (p.D + V - 1) / V;

  for (index_t t0 = (static_cast<index_t>(blockIdx.x) * kWarps + warp) * TPW; t0 < p.tokens;
       t0 += static_cast<index_t>(gridDim.x) * kWarps * TPW) {
    const T* x[TPW];
    bool live[TPW];  // token t0 + i exists
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      live[i] = t0 + i < p.tokens;
      x[i] = p.x + (live[i] ? t0 + i : t0) * p.x_row_stride;
    }
    for (int e0 = 0; e0 < p.X; e0 += ET) {
      float acc[TPW][ET];
#pragma unroll
      for (int i = 0; i < TPW; ++i)
#pragma unroll
        for (int e = 0; e < ET; ++e) acc[i][e] = 0.0f;
      for (index_t c = lane; c < chunks; c += 32) {
        float xv[TPW][V];
#pragma unroll
        for (int i = 0; i < TPW; ++i) {
          if (live[i]) {
            load_chunk<T>(xv[i], x[i], c, p.D, p.vector_x);
          } else {
#pragma unroll
            for (int j = 0; j < V; ++j) xv[i][j] = 0.0f;
          }
        }
        const index_t i0 = c * V;
#pragma unroll
        for (int e = 0; e < ET; ++e) {
          if (e0 + e >= p.X) break;
          const float* wr = w + (e0 + e) * p.D + i0;
#pragma unroll
          for (int j = 0; j < V; ++j)
            if (i0 + j < p.D) {
              const float wv = wr[j];
#pragma unroll
              for (int i = 0; i < TPW; ++i) acc[i][e] = fma_f32(xv[i][j], wv, acc[i][e]);
            }
        }
      }
      // The xor butterfly is written out (not moss::cuda::warp_sum): its order is the contract
      // the host replays (`butterfly_sum`).
#pragma unroll
      for (int i = 0; i < TPW; ++i)
#pragma unroll
        for (int e = 0; e < ET; ++e) {
          float s = acc[i][e];
          for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
          if (lane == 0 && live[i] && e0 + e < p.X) my_logits[i * p.X + e0 + e] = s;
        }
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      if (!live[i]) continue;
      for (int e = lane; e < p.X; e += 32) p.logits[(t0 + i) * p.X + e] = my_logits[i * p.X + e];
    }
    if constexpr (!std::is_same_v<R, LogitsOnly>) {
      if (lane < TPW && live[lane]) {  // lane i selects token t0 + i
        const float* lg = my_logits + lane * p.X;
        p.router.select(lg, lg, p.X, p.expert + (t0 + lane) * R::k, p.gate + (t0 + lane) * R::k);
      }
    }
    __syncwarp();
  }
}

/// The selection from given logits and scores (both (tokens, X)), one thread per token.
template <class R>
__global__ void route_select_kernel(R router, const float* logits, const float* scores, index_t tokens, int X,
                                    std::int32_t* expert, float* gate) {
  for (index_t t = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; t < tokens;
       t += static_cast<index_t>(gridDim.x) * blockDim.x)
    router.select(logits + t * X, scores + t * X, X, expert + t * R::k, gate + t * R::k);
}

/// Per-tile partial sums of the statistics: partial[tile, i] = Σ_t p[t, i] (i < X) and
/// partial[tile, X] = Σ_t logsumexp(logits_t)², over the tile's kThreads tokens (a block
/// reduction in a fixed order: deterministic).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    router_stats_partial_kernel(const float* logits, index_t tokens, int X, float* partial) {
  using Reduce = cuda::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage scratch;
  const index_t t = blockIdx.x * static_cast<index_t>(kThreads) + threadIdx.x;
  const bool ok = t < tokens;
  const float* lg = logits + (ok ? t : 0) * X;
  const float m = ok ? max_logit(lg, X) : 0.0f;
  const float s = ok ? sum_exp(lg, X, m) : 1.0f;
  for (int i = 0; i < X; ++i) {
    const float v = Reduce::sum(ok ? exp_f32(lg[i] - m) / s : 0.0f, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x * (X + 1) + i] = v;
  }
  const float lse = ok ? m + logf(s) : 0.0f;
  const float z = Reduce::sum(ok ? lse * lse : 0.0f, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x * (X + 1) + X] = z;
}

/// Adds the tiles' partial sums in tile order and writes [aux, z, P_0..P_{X-1}]. A template (as
/// every kernel of a header must be: a plain __global__ function is defined again by every
/// translation unit that includes the header; tests/CMakeLists.txt: link check).
template <class = void>
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
