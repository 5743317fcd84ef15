// moss/ops/causal_conv1d/kernel.cuh: the CUDA kernels of causal_conv1d (needs nvcc).
//
// The op is bandwidth-bound: every kernel reads each input once from DRAM and writes each
// output once, in 8- or 16-byte accesses where layout and alignment allow (a scalar path covers the
// rest), and keeps the W−1 previous inputs in registers.
//  - channel-last (unit stride along dim, and the generic fallback): a thread owns
//    kConv1dChannels consecutive channels and a run of timesteps; lanes of a warp cover
//    consecutive channels, so each row load is one coalesced 256- or 512-byte access.
//  - channel-first (unit stride along L): lanes own consecutive 16-byte pieces of one row; the
//    W−1 inputs before a lane's piece come from its left neighbour by warp shuffle.
//  - step: one thread per (batch, channel).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "moss/core/dtype.hpp"
#include "moss/cuda/vector.cuh"
#include "moss/ops/causal_conv1d/args.hpp"
#include "moss/ops/causal_conv1d/math.hpp"
#include "moss/ops/causal_conv1d/tuning.cuh"

namespace moss::detail {

/// Loads the first `n` of N elements spaced `stride` apart from `p` as float (the rest read as
/// zero): one 8- or 16-byte load when `vec` (unit stride, aligned to the vector) and n == N.
template <class T, int N>
MOSS_DEVICE void conv1d_load(const T* p, index_t stride, int n, bool vec, float (&v)[N]) {
  if (vec && n == N) {
    cuda::load_vec<N, cuda::Load::read_only>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = i < n ? to_float(p[i * stride]) : 0.0f;
  }
}

/// Stores the first `n` of N values at `p`, spaced `stride` apart, each rounded once to T: one
/// 8- or 16-byte store when `vec` and n == N.
template <class T, int N>
MOSS_DEVICE void conv1d_store(T* p, index_t stride, int n, bool vec, const float (&v)[N]) {
  if (vec && n == N) {
    // Streaming store (evict-first in L2): the output is not read again here, and the halo rows
    // that neighbouring runs re-read should be what stays in L2.
    cuda::store_vec<N, cuda::Store::streaming>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) p[i * stride] = from_float<T>(v[i]);
  }
}

/// Channel-last kernel. Thread (channel group, run) of sequence b owns channels c0 .. c0+C-1 and
/// timesteps t0 .. t_end-1. It streams its rows in order with the W−1 previous inputs in
/// registers, and computes its first W−1 outputs last: they need the W−1 inputs before t0 (the
/// halo), which are the previous run's last rows, read at about the same time by the previous
/// run's thread, so the second read hits L2 instead of DRAM.
/// @tparam kVec x and out take vector accesses and C divides dim (else scalar loads and stores,
/// one row at a time).
template <class T, int W, bool kVec>
__global__ void __launch_bounds__(kConv1dBlockThreads, kConv1dMinBlocksPerSm)
    causal_conv1d_channel_last_kernel(const CausalConv1dArgs<T> a, const Conv1dPlan plan) {
  static_assert(W >= 2, "causal_conv1d_channel_last_kernel: W = 1 has no state; the CUDA widths are 2, 3, 4");
  constexpr int C = kConv1dChannels;
  constexpr int U = kConv1dUnroll;
  const index_t dim = a.x.shape[1], seqlen = a.x.shape[2];
  index_t block = blockIdx.x;
  const index_t channel_block = block % plan.channel_blocks;
  block /= plan.channel_blocks;
  const index_t run_block = block % plan.run_blocks;
  const index_t b = block / plan.run_blocks;
  const index_t c0 = (channel_block * plan.block_x + threadIdx.x) * C;
  const index_t t0 = (run_block * plan.block_y + threadIdx.y) * plan.steps_per_thread;
  // Run 0 stays even when L = 0: it writes the final state. No barriers follow, so leaving is safe.
  if (c0 >= dim || (t0 > 0 && t0 >= seqlen)) return;
  const index_t t_end = t0 + plan.steps_per_thread < seqlen ? t0 + plan.steps_per_thread : seqlen;
  // Channels of this group that exist (all of them on the vector path: the plan takes it only
  // when C divides dim).
  const int n = kVec || dim - c0 >= C ? C : static_cast<int>(dim - c0);

  float w[C][W], bias[C];
#pragma unroll
  for (int i = 0; i < C; ++i) {
#pragma unroll
    for (int k = 0; k < W; ++k) w[i][k] = i < n ? to_float(a.weight(c0 + i, k)) : 0.0f;
    bias[i] = i < n && present(a.bias) ? to_float(a.bias(c0 + i)) : 0.0f;
  }

  const T* xp = a.x.data + b * a.x.stride[0] + c0 * a.x.stride[1];
  T* op = a.out.data + b * a.out.stride[0] + c0 * a.out.stride[1];
  const index_t x_dim = a.x.stride[1], x_time = a.x.stride[2];
  const index_t out_dim = a.out.stride[1], out_time = a.out.stride[2];
  auto load_x = [&](index_t t, float(&v)[C]) { conv1d_load<T>(xp + t * x_time, x_dim, n, kVec, v); };
  auto output = [&](const float(&xw)[W][C], index_t t) {  // xw: the window of timestep t
    float y[C];
#pragma unroll
    for (int i = 0; i < C; ++i) {
      float window[W];
#pragma unroll
      for (int k = 0; k < W; ++k) window[k] = xw[k][i];
      y[i] = conv1d_output(w[i], window, W, bias[i], a.silu);
    }
    conv1d_store<T>(op + t * out_time, out_dim, n, kVec, y);
  };
  auto step = [&](float(&win)[W - 1][C], const float(&xt)[C], index_t t) {  // output t, then shift xt in
    float xw[W][C];
#pragma unroll
    for (int k = 0; k < W; ++k)
#pragma unroll
      for (int i = 0; i < C; ++i) xw[k][i] = k < W - 1 ? win[k][i] : xt[i];
    output(xw, t);
#pragma unroll
    for (int k = 0; k < W - 1; ++k)
#pragma unroll
      for (int i = 0; i < C; ++i) win[k][i] = xw[k + 1][i];
  };

  // Inputs t0 .. t0+W-2 wait for the halo in shared memory (each thread its own column, so no
  // barrier and no bank conflicts): in registers they would cost (W−1)·C of them all run long.
  __shared__ float head[W - 1][C][kConv1dBlockThreads];
  const int tid = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  float win[W - 1][C];  // the W−1 most recent inputs
#pragma unroll
  for (int r = 0; r < W - 1; ++r) {
    if (t0 + r < t_end) {
      load_x(t0 + r, win[r]);
    } else {
#pragma unroll
      for (int i = 0; i < C; ++i) win[r][i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < C; ++i) head[r][i][tid] = win[r][i];
  }

  index_t t = t0 + W - 1;
  if constexpr (kVec) {
    // Software pipeline: the next U rows are in flight while the current U are computed, so a
    // thread always has U loads outstanding.
    using Raw = cuda::RawVector<T, C>;
    Raw next[U];
    if (t + U <= t_end) {
#pragma unroll
      for (int u = 0; u < U; ++u) next[u] = cuda::load_raw<T, C, cuda::Load::read_only>(xp + (t + u) * x_time);
    }
    for (; t + U <= t_end; t += U) {
      Raw rows[U];
#pragma unroll
      for (int u = 0; u < U; ++u) rows[u] = next[u];
      if (t + 2 * U <= t_end) {
#pragma unroll
        for (int u = 0; u < U; ++u) next[u] = cuda::load_raw<T, C, cuda::Load::read_only>(xp + (t + U + u) * x_time);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float xt[C];
        cuda::unpack<T, C>(rows[u], xt);
        step(win, xt, t + u);
      }
    }
  }
  for (; t < t_end; ++t) {
    float xt[C];
    load_x(t, xt);
    step(win, xt, t);
  }

  float halo[W - 1][C];  // inputs t0-W+1 .. t0-1: x, the initial state or zero
#pragma unroll
  for (int r = 0; r < W - 1; ++r) {
    const index_t tau = t0 - (W - 1) + r;
    if (tau >= 0) {
      load_x(tau, halo[r]);
    } else {
#pragma unroll
      for (int i = 0; i < C; ++i)
        halo[r][i] = i < n ? to_float(conv1d_input(a.x, a.initial_state, b, c0 + i, tau)) : 0.0f;
    }
  }
#pragma unroll
  for (int j = 0; j < W - 1; ++j) {
    if (t0 + j >= t_end) break;
    float xw[W][C];
#pragma unroll
    for (int k = 0; k < W; ++k)
#pragma unroll
      for (int i = 0; i < C; ++i) xw[k][i] = j + k < W - 1 ? halo[j + k][i] : head[j + k - (W - 1)][i][tid];
    output(xw, t0 + j);
  }

  if (present(a.final_state) && t_end == seqlen) {
#pragma unroll
    for (int j = 0; j < W - 1; ++j)
#pragma unroll
      for (int i = 0; i < C; ++i)
        if (i < n) a.final_state(b, c0 + i, j) = conv1d_input(a.x, a.initial_state, b, c0 + i, seqlen - (W - 1) + j);
  }
}

/// Channel-first kernel. Warp `segment` of row (b, d) covers timesteps s0 .. s0 + 32·V·S − 1 in
/// S slabs; in slab s lane l holds the V inputs from s0 + (32·s + l)·V. The W−1 inputs before a
/// lane's piece are its left neighbour's last ones (shuffle), lane 0's come from lane 31 of the
/// previous slab, and the segment's first lane reads them (x, initial state or zero) itself.
template <class T, int W>
__global__ void __launch_bounds__(kConv1dBlockThreads)
    causal_conv1d_channel_first_kernel(const CausalConv1dArgs<T> a, const Conv1dPlan plan) {
  constexpr int V = kConv1dVec<T>;
  constexpr int S = kConv1dSlabs;
  static_assert(W >= 2 && W - 1 <= V, "causal_conv1d_channel_first_kernel: the halo must fit in one lane's piece");
  constexpr unsigned kFullWarp = 0xffffffffu;
  const index_t dim = a.x.shape[1], seqlen = a.x.shape[2];
  const index_t warp = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const index_t segment = warp % plan.segments, row = warp / plan.segments;
  if (row >= a.x.shape[0] * dim) return;  // warp-uniform: the shuffles below always see full warps
  const index_t b = row / dim, d = row % dim;
  const index_t s0 = segment * (32 * V * S);

  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = to_float(a.weight(d, k));
  const float bias = present(a.bias) ? to_float(a.bias(d)) : 0.0f;

  const T* xp = a.x.data + b * a.x.stride[0] + d * a.x.stride[1];
  T* op = a.out.data + b * a.out.stride[0] + d * a.out.stride[1];
  const index_t x_time = a.x.stride[2], out_time = a.out.stride[2];
  auto piece = [&](int s) {  // (first timestep, valid elements) of this lane's piece in slab s
    const index_t t = s0 + (index_t(s) * 32 + lane) * V;
    const index_t left = seqlen - t;
    return std::pair<index_t, int>(t, left <= 0 ? 0 : (left < V ? static_cast<int>(left) : V));
  };

  float xr[S][V];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const auto [t, n] = piece(s);
    conv1d_load<T>(xp + t * x_time, x_time, n, plan.vec_x, xr[s]);
  }

#pragma unroll
  for (int s = 0; s < S; ++s) {
    float prev[W - 1];  // inputs before this lane's piece
#pragma unroll
    for (int k = 0; k < W - 1; ++k) {
      const float left = __shfl_up_sync(kFullWarp, xr[s][V - (W - 1) + k], 1);
      const float carry = s > 0 ? __shfl_sync(kFullWarp, xr[s > 0 ? s - 1 : 0][V - (W - 1) + k], 31) : 0.0f;
      prev[k] = lane > 0 ? left : carry;
    }
    if (s == 0 && lane == 0) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) prev[k] = to_float(conv1d_input(a.x, a.initial_state, b, d, s0 - (W - 1) + k));
    }
    const auto [t, n] = piece(s);
    if (n > 0) {
      float y[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        float window[W];
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const int idx = e + k - (W - 1);  // position in the piece; negative: before it
          window[k] = idx < 0 ? prev[idx + W - 1 < 0 ? 0 : idx + W - 1] : xr[s][idx < 0 ? 0 : idx];
        }
        y[e] = conv1d_output(w, window, W, bias, a.silu);
      }
      conv1d_store<T>(op + t * out_time, out_time, n, plan.vec_out, y);
    }
  }

  if (present(a.final_state) && lane == 0 && segment == plan.segments - 1) {
#pragma unroll
    for (int j = 0; j < W - 1; ++j)
      a.final_state(b, d, j) = conv1d_input(a.x, a.initial_state, b, d, seqlen - (W - 1) + j);
  }
}

/// Decode step: thread (b, d) computes one output and shifts x into its state row.
template <class T, int W>
__global__ void __launch_bounds__(kConv1dStepBlockThreads) causal_conv1d_step_kernel(const CausalConv1dStepArgs<T> a) {
  static_assert(W >= 2, "causal_conv1d_step_kernel: W = 1 has no state; the CUDA widths are 2, 3, 4");
  const index_t dim = a.x.shape[1];
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.x.shape[0] * dim) return;
  const index_t b = i / dim, d = i % dim;
  T state[W - 1];
#pragma unroll
  for (int k = 0; k < W - 1; ++k) state[k] = a.state(b, d, k);
  const T x = a.x(b, d);
  float w[W], window[W];
#pragma unroll
  for (int k = 0; k < W; ++k) {
    w[k] = to_float(a.weight(d, k));
    window[k] = to_float(k < W - 1 ? state[k < W - 1 ? k : 0] : x);
  }
  const float bias = present(a.bias) ? to_float(a.bias(d)) : 0.0f;
  a.out(b, d) = from_float<T>(conv1d_output(w, window, W, bias, a.silu));
#pragma unroll
  for (int k = 0; k < W - 2; ++k) a.state(b, d, k) = state[k + 1];
  a.state(b, d, W - 2) = x;
}

}  // namespace moss::detail
