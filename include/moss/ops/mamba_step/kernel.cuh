// moss/ops/mamba_step/kernel.cuh: the two kernels of `mamba_step` on CUDA (needs nvcc).
//
// Both take a grid of (slice of kMambaStepSlice channels, sequence) with one thread per channel.
//  1. conv_xproj: the conv step of each channel (moss/ops/causal_conv1d/math.hpp's arithmetic,
//     the conv state shifted in place), v rounded to T and kept; then, per output j of x_proj
//     (one warp per output at a time), the slice's part Σ_{d in slice} x_proj[j, d]·v[d] (lanes
//     over d, a fixed shuffle tree) into partial[b, slice, j].
//  2. dt_scan: x_dbl[j] = Σ over the slices in increasing order, rounded to T (as a linear
//     layer's output; every block of the sequence adds the same few partials itself, which costs
//     less than a third launch); then per channel delta = Σ_r dt_proj[d, r]·x_dbl[r] (r increasing, rounded to
//     T) and the scan step of moss/ops/selective_scan/math.hpp over its N states in order.
// Every sum has one order fixed by the shapes: the same inputs give the same bits.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/reduce.cuh"
#include "moss/ops/causal_conv1d/args.hpp"
#include "moss/ops/causal_conv1d/math.hpp"
#include "moss/ops/selective_scan/math.hpp"

namespace moss::detail::mamba_step {

/// Channels per block of both kernels (one thread each).
inline constexpr int kMambaStepSlice = 256;
/// The widest conv the kernels hold (the CUDA conv's widths, kCausalConv1dCudaWidths).
inline constexpr int kMambaStepMaxWidth = 4;
static_assert(*std::max_element(kCausalConv1dCudaWidths.begin(), kCausalConv1dCudaWidths.end()) <= kMambaStepMaxWidth,
              "moss: mamba_step's kernels must hold every width of the CUDA conv");

/// Everything both kernels need, by value (contiguous views as flat pointers).
template <class T>
struct MambaStepParams {
  const T* xz = nullptr;           // (batch, 2·ED)
  T* conv_state = nullptr;         // (batch, ED, W − 1)
  const T* conv_weight = nullptr;  // (ED, W)
  const T* conv_bias = nullptr;    // (ED) or null
  const T* x_proj = nullptr;       // (XP, ED)
  const T* dt_proj = nullptr;      // (ED, R)
  const float* dt_bias = nullptr;  // (ED)
  const float* A = nullptr;        // (ED, N)
  const float* D = nullptr;        // (ED)
  float* ssm_state = nullptr;      // (batch, ED, N)
  T* out = nullptr;                // (batch, ED)
  T* v = nullptr;                  // (batch, ED) scratch: the conv output
  float* partial = nullptr;        // (batch, slices, XP) scratch
  index_t ED = 0;
  int W = 0, N = 0, R = 0, XP = 0, slices = 0;
};

/// Kernel 1: the conv step and the slice's part of x_proj.
template <class T>
__global__ void __launch_bounds__(kMambaStepSlice) mamba_step_conv_xproj_kernel(const MambaStepParams<T> p) {
  __shared__ float sv[kMambaStepSlice];
  const int slice = static_cast<int>(blockIdx.x);
  const index_t b = blockIdx.y;
  const index_t d0 = static_cast<index_t>(slice) * kMambaStepSlice;
  const index_t d = d0 + threadIdx.x;
  const int W = p.W;
  if (d < p.ED) {
    float w[kMambaStepMaxWidth], window[kMambaStepMaxWidth];
    T* state = p.conv_state + (b * p.ED + d) * (W - 1);
    const T u = p.xz[b * 2 * p.ED + d];
    for (int k = 0; k < W; ++k) w[k] = to_float(p.conv_weight[d * W + k]);
    for (int k = 0; k + 1 < W; ++k) window[k] = to_float(state[k]);
    window[W - 1] = to_float(u);
    const float bias = p.conv_bias ? to_float(p.conv_bias[d]) : 0.0f;
    const T v = from_float<T>(conv1d_output(w, window, W, bias, true));
    for (int k = 0; k + 2 < W; ++k) state[k] = state[k + 1];
    state[W - 2] = u;
    p.v[b * p.ED + d] = v;
    sv[threadIdx.x] = to_float(v);
  } else {
    sv[threadIdx.x] = 0.0f;
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  constexpr int kWarps = kMambaStepSlice / 32;
  const int width = static_cast<int>(p.ED - d0 < kMambaStepSlice ? p.ED - d0 : kMambaStepSlice);
  for (int j = warp; j < p.XP; j += kWarps) {
    const T* row = p.x_proj + static_cast<index_t>(j) * p.ED + d0;
    float acc = 0.0f;
    for (int i = lane; i < width; i += 32) acc += to_float(row[i]) * sv[i];
    acc = cuda::warp_sum(acc);
    if (lane == 0) p.partial[(b * p.slices + slice) * p.XP + j] = acc;
  }
}

/// Kernel 2: x_dbl from the partials, dt_proj and the scan step. Dynamic shared memory: XP floats.
template <class T>
__global__ void __launch_bounds__(kMambaStepSlice) mamba_step_dt_scan_kernel(const MambaStepParams<T> p) {
  extern __shared__ float x_dbl[];  // (XP): [dt_low | B | C], each rounded to T
  const index_t b = blockIdx.y;
  const index_t d = static_cast<index_t>(blockIdx.x) * kMambaStepSlice + threadIdx.x;
  for (int j = threadIdx.x; j < p.XP; j += kMambaStepSlice) {
    float s = 0.0f;
    for (int sl = 0; sl < p.slices; ++sl) s += p.partial[(b * p.slices + sl) * p.XP + j];
    x_dbl[j] = to_float(from_float<T>(s));
  }
  __syncthreads();
  if (d >= p.ED) return;
  float delta = 0.0f;
  const T* row = p.dt_proj + d * p.R;
  for (int r = 0; r < p.R; ++r) delta = fmaf(to_float(row[r]), x_dbl[r], delta);
  const float dt = scan::delta_value(to_float(from_float<T>(delta)), p.dt_bias[d], true);
  const float u = to_float(p.v[b * p.ED + d]);
  const float dt_u = dt * u;
  float* h = p.ssm_state + (b * p.ED + d) * p.N;
  const float* A = p.A + d * p.N;
  float y = 0.0f;
  for (int n = 0; n < p.N; ++n) {
    const float hn = scan::update_state(h[n], dt, scan::a_log2e(A[n]), dt_u, x_dbl[p.R + n]);
    h[n] = hn;
    y += x_dbl[p.R + p.N + n] * hn;
  }
  y = scan::add_skip(y, p.D[d], u);
  y = scan::gate(y, to_float(p.xz[b * 2 * p.ED + p.ED + d]));
  p.out[b * p.ED + d] = from_float<T>(y);
}

}  // namespace moss::detail::mamba_step
