// moss/ops/causal_conv1d/backward_kernel.cuh: the kernels of `causal_conv1d_backward` on CUDA
// (needs nvcc).
//
// Two kernels, no atomics:
//  - sequence: one thread per (sequence b, run of timesteps, channel d), channels fastest. It
//    recomputes the pre-activation over its run (and over the W−1 steps after it, whose g its
//    last inputs feed), forms g = dout · silu'(pre) (or dout), writes the input gradients of its
//    run (dx; the first run of a sequence also dinitial_state) and the run's partial sums
//    Σ_t g · in(t − (W−1) + k) and Σ_t g (t increasing) into a workspace slot.
//  - parameters: one thread per (d, k), k = 0 … W (k = W is the bias), sums the slots in
//    increasing order (b ascending, then the runs in time order) and writes or adds the result
//    into dweight / dbias.
// The runs depend on the shape alone (not on the device), so the same inputs give the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/causal_conv1d/math.hpp"

// Full unrolling of the W-wide loops (the arrays then stay in registers) in the device pass of
// the host-and-device routines below; g++ would warn about the pragma in the host pass.
#if MOSS_DEVICE_PASS
#define MOSS_CONV1D_BACKWARD_UNROLL _Pragma("unroll")
#else
#define MOSS_CONV1D_BACKWARD_UNROLL
#endif

namespace moss::detail {

/// Threads per block of both backward kernels (no barriers: this only sets the granule).
inline constexpr int kConv1dBackwardBlockThreads = 128;
/// Shortest run of timesteps per thread: a run recomputes W−1 steps past its end and reads the
/// W−1 inputs before its start, so 32 steps cost at most 3/32 extra work at W = 4.
inline constexpr index_t kConv1dBackwardMinSteps = 32;
/// Threads the runs are sized for: about one wave of 2048 threads on each of an H100's 132 SMs
/// (a fixed number, not the device's, so the summation order does not depend on the device).
inline constexpr index_t kConv1dBackwardTargetThreads = index_t(1) << 18;

/// Timesteps per run for `lanes` = batch · dim threads per run and sequences of `seqlen`.
constexpr index_t conv1d_backward_steps(index_t lanes, index_t seqlen) {
  const index_t runs = lanes > 0 && kConv1dBackwardTargetThreads / lanes > 1 ? kConv1dBackwardTargetThreads / lanes : 1;
  const index_t steps = ceil_div<index_t>(seqlen, runs);
  return steps > kConv1dBackwardMinSteps ? steps : kConv1dBackwardMinSteps;
}
static_assert(conv1d_backward_steps(8 * 4096, 2048) == 256);
static_assert(conv1d_backward_steps(1 * 1024, 2048) == 32);

/// d silu(a) / da = σ(a) · (1 + a · (1 − σ(a))) in float, host and device (conv1d_silu_grad's
/// formula; the IEEE expf on the device).
MOSS_HD float conv1d_backward_silu_grad(float a) {
#if MOSS_DEVICE_PASS
  const float sigmoid = 1.0f / (1.0f + ::expf(-a));
#else
  const float sigmoid = 1.0f / (1.0f + std::exp(-a));
#endif
  return sigmoid * (1.0f + a * (1.0f - sigmoid));
}

/// The views and the run layout of one `causal_conv1d_backward` launch (absent views have a
/// null `data`).
template <class T>
struct Conv1dBackwardParams {
  ConstView<T, 3> x;                // (batch, dim, L)
  ConstView<T, 2> weight;           // (dim, W)
  ConstView<T, 1> bias;             // (dim)
  bool silu;                        //
  ConstView<T, 3> initial_state;    // (batch, dim, W-1)
  ConstView<T, 3> dout;             // (batch, dim, L)
  ConstView<T, 3> dfinal_state;     // (batch, dim, W-1)
  TensorView<T, 3> dx;              // (batch, dim, L)
  TensorView<T, 3> dinitial_state;  // (batch, dim, W-1)
  index_t steps;                    // timesteps per run
  index_t runs;                     // runs per sequence (≥ 1: run 0 exists even when L = 0)
  float* partial;                   // (batch · runs, dim, W + 1) slots, null when no parameter gradient is wanted
};

/// The work of sequence-kernel thread (b, run, d), host and device (the host runs it in the
/// tests, to check the indexing without a GPU). g at time t is kept for the W most recent t
/// (gw[k] = g(t − k)); the input gradient at τ = t − (W−1) is complete once g(t) is known.
template <class T, int W>
MOSS_HD void conv1d_backward_thread(const Conv1dBackwardParams<T>& p, index_t b, index_t run, index_t d) {
  static_assert(W >= 2, "conv1d_backward_thread: the CUDA widths are 2, 3, 4");
  const index_t dim = p.x.shape[1], seqlen = p.x.shape[2];
  const index_t t0 = run * p.steps;
  const index_t t1 = t0 + p.steps < seqlen ? t0 + p.steps : seqlen;  // this run's timesteps: t0 .. t1-1

  float w[W];
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int k = 0; k < W; ++k) w[k] = to_float(p.weight(d, k));
  const float bias = present(p.bias) ? to_float(p.bias(d)) : 0.0f;

  // win[k]: the input at t − (W−1) + k; before the loop, the W−1 inputs before t0.
  float win[W];
  win[0] = 0.0f;
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int k = 0; k < W - 1; ++k) win[k + 1] = to_float(conv1d_input(p.x, p.initial_state, b, d, t0 - (W - 1) + k));
  float gw[W];
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int k = 0; k < W; ++k) gw[k] = 0.0f;
  float dw[W], db = 0.0f;
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int k = 0; k < W; ++k) dw[k] = 0.0f;

  const bool want_inputs = present(p.dx) || present(p.dinitial_state);
  const index_t emit_from = t0 == 0 ? -(W - 1) : t0;  // the first run also owns the state's columns
  const index_t t_last = want_inputs ? t1 + (W - 2) : t1 - 1;
  for (index_t t = t0; t <= t_last; ++t) {
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = W - 1; k > 0; --k) gw[k] = gw[k - 1];
    gw[0] = 0.0f;
    if (t < seqlen) {
      MOSS_CONV1D_BACKWARD_UNROLL
      for (int k = 0; k < W - 1; ++k) win[k] = win[k + 1];
      win[W - 1] = to_float(p.x(b, d, t));
      float g = to_float(p.dout(b, d, t));
      if (p.silu) g *= conv1d_backward_silu_grad(conv1d_output(w, win, W, bias, false));
      gw[0] = g;
      if (t < t1) {
        db += g;
        MOSS_CONV1D_BACKWARD_UNROLL
        for (int k = 0; k < W; ++k) dw[k] += g * win[k];
      }
    }
    if (!want_inputs) continue;
    const index_t tau = t - (W - 1);
    if (tau < emit_from) continue;
    float acc = 0.0f;  // Σ_k w[k] · g(τ + (W−1) − k), k ascending, times outside [0, L) left out
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = 0; k < W; ++k)
      if (t - k >= 0 && t - k < seqlen) acc += w[k] * gw[k];
    if (present(p.dfinal_state) && tau >= seqlen - (W - 1))
      acc += to_float(p.dfinal_state(b, d, tau - (seqlen - (W - 1))));
    if (tau >= 0) {
      if (present(p.dx)) p.dx(b, d, tau) = from_float<T>(acc);
    } else if (present(p.dinitial_state)) {
      p.dinitial_state(b, d, (W - 1) + tau) = from_float<T>(acc);
    }
  }

  if (p.partial) {
    float* slot = p.partial + ((b * p.runs + run) * dim + d) * (W + 1);
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = 0; k < W; ++k) slot[k] = dw[k];
    slot[W] = db;
  }
}

/// Sequence kernel: one thread per (b, run, d), channels fastest.
template <class T, int W>
__global__ void __launch_bounds__(kConv1dBackwardBlockThreads)
    causal_conv1d_backward_kernel(const Conv1dBackwardParams<T> p) {
  const index_t batch = p.x.shape[0], dim = p.x.shape[1];
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch * p.runs * dim) return;
  conv1d_backward_thread<T, W>(p, i / dim / p.runs, (i / dim) % p.runs, i % dim);
}

/// The work of parameter-kernel thread j = d · (W + 1) + k, host and device: sums slot s = 0 …
/// slots−1 of its (d, k) in order and writes (or, with `accumulate`, adds) dweight(d, k) for
/// k < W, dbias(d) for k = W.
template <class R>
MOSS_HD void conv1d_backward_param_thread(const R* partial, index_t slots, index_t dim, int width,
                                          const TensorView<R, 2>& dweight, const TensorView<R, 1>& dbias,
                                          bool accumulate, index_t j) {
  const index_t per_slot = dim * (width + 1);
  const index_t d = j / (width + 1);
  const int k = static_cast<int>(j % (width + 1));
  if (k < width ? !present(dweight) : !present(dbias)) return;
  R sum = R(0);
  for (index_t s = 0; s < slots; ++s) sum += partial[s * per_slot + j];
  R& dst = k < width ? dweight(d, k) : dbias(d);
  dst = accumulate ? dst + sum : sum;
}

/// Parameter kernel: one thread per (d, k), k = 0 … W.
template <class R>
__global__ void __launch_bounds__(kConv1dBackwardBlockThreads)
    causal_conv1d_backward_params_kernel(const R* partial, index_t slots, index_t dim, int width,
                                         const TensorView<R, 2> dweight, const TensorView<R, 1> dbias,
                                         bool accumulate) {
  const index_t j = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < dim * (width + 1)) conv1d_backward_param_thread(partial, slots, dim, width, dweight, dbias, accumulate, j);
}

}  // namespace moss::detail
