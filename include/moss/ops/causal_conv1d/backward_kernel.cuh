// moss/ops/causal_conv1d/backward_kernel.cuh: the kernels of `causal_conv1d_backward` on CUDA
// (needs nvcc).
//
// Two kernels, no atomics:
//  - sequence: one thread per (sequence b, run of timesteps, channel d, or 4 channels in vector
//    accesses when the layout allows: unit channel stride, aligned), channels fastest. It
//    recomputes the pre-activation over its run (and over the W−1 steps after it, whose g its
//    last inputs feed), forms g = dout · silu'(pre) (or dout), writes the input gradients of its
//    run (dx; the first run of a sequence also dinitial_state) and the run's partial sums
//    Σ_t g · in(t − (W−1) + k) and Σ_t g (t increasing) into a workspace slot.
//  - parameters: kConv1dParamGroups threads per (d, k), k = 0 … W (k = W is the bias), each
//    summing every G-th slot in increasing order (slots: b ascending, then the runs in time
//    order); the group sums are added in increasing group and written or added into dweight /
//    dbias.
// The runs depend on the shape alone (not on the device), so the same inputs give the same bits.
// Measured (H100, bf16, the canonical shape, bench/results/2026-12-07-h100.md): 0.442 ms with 4
// channels per thread against 0.457 ms with 1 in the same run (0.2 ms was predicted; mamba_ssm's
// kernel takes 0.282): fewer load instructions did not move it, so they are not what bounds it.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"
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

/// Channels per thread of the vector path: 4, as the forward's channel-last kernel (8 bytes of
/// f16 / bf16, 16 of float; 8 channels would need about twice the registers at W = 4).
template <class T>
inline constexpr int kConv1dBackwardVec = 4;

/// Timesteps per run for `lanes` threads per run (batch · ⌈dim / kConv1dBackwardVec⌉, whichever
/// path runs: the runs, and so the order of the parameter sums, depend on the shapes and T
/// alone) and sequences of `seqlen`.
constexpr index_t conv1d_backward_steps(index_t lanes, index_t seqlen) {
  const index_t runs = lanes > 0 && kConv1dBackwardTargetThreads / lanes > 1 ? kConv1dBackwardTargetThreads / lanes : 1;
  const index_t steps = ceil_div<index_t>(seqlen, runs);
  return steps > kConv1dBackwardMinSteps ? steps : kConv1dBackwardMinSteps;
}
static_assert(conv1d_backward_steps(8 * 4096, 2048) == 256);
static_assert(conv1d_backward_steps(1 * 1024, 2048) == 32);

/// d silu(a) / da = σ(a) · (1 + a · (1 − σ(a))) in float, host and device (conv1d_silu_grad's
/// formula; on the device the special-function-unit exponential and division of the forward's
/// `conv1d_silu`, a few ulp: the IEEE forms' slow paths cost instructions and registers).
MOSS_HD float conv1d_backward_silu_grad(float a) {
#if MOSS_DEVICE_PASS
  const float sigmoid = __fdividef(1.0f, 1.0f + __expf(-a));  // the forward's SFU forms (math.hpp)
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

/// Loads channels d .. d+C−1 of a (batch, dim, L) view at (b, t) as float: one vector access on
/// the device when `vec` (unit channel stride, aligned), else element by element.
template <int C, class T>
MOSS_HD void conv1d_backward_load(const ConstView<T, 3>& v, index_t b, index_t d, index_t t, bool vec,
                                  float (&out)[C]) {
  const T* p = v.data + b * v.stride[0] + d * v.stride[1] + t * v.stride[2];
#if MOSS_DEVICE_PASS
  if (vec) {
    cuda::load_vec<C, cuda::Load::read_only>(p, out);
    return;
  }
#endif
  (void)vec;
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int c = 0; c < C; ++c) out[c] = to_float(p[c * v.stride[1]]);
}

/// Stores C floats into channels d .. d+C−1 of `v` at (b, t), each rounded once to T.
template <int C, class T>
MOSS_HD void conv1d_backward_store(const TensorView<T, 3>& v, index_t b, index_t d, index_t t, bool vec,
                                   const float (&in)[C]) {
  T* p = v.data + b * v.stride[0] + d * v.stride[1] + t * v.stride[2];
#if MOSS_DEVICE_PASS
  if (vec) {
    cuda::store_vec<C, cuda::Store::streaming>(p, in);
    return;
  }
#endif
  (void)vec;
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int c = 0; c < C; ++c) p[c * v.stride[1]] = from_float<T>(in[c]);
}

/// Timesteps whose rows a sequence-kernel thread loads together before using them: the loads of
/// one group are in flight at once (a thread that loads one row, then waits for it, keeps too
/// few bytes in flight to cover the memory latency at the occupancy its registers allow).
inline constexpr int kConv1dBackwardLoadSteps = 4;

/// The work of sequence-kernel thread (b, run, channels d0 .. d0+C−1), host and device (the host
/// runs it in the tests, to check the indexing without a GPU). Each channel's arithmetic is the
/// single-channel one (C = 1), in the same order; C > 1 only shares the loop and, with `vec`,
/// makes each row access one vector of C channels. g at time t is kept for the W most recent t
/// (gw[k] = g(t − k)); the input gradient at τ = t − (W−1) is complete once g(t) is known. The
/// rows of x and dout are read U timesteps at a time, then used in order (U changes which loads
/// are in flight together, never a result).
template <class T, int W, int C = 1, int U = kConv1dBackwardLoadSteps>
MOSS_HD void conv1d_backward_thread(const Conv1dBackwardParams<T>& p, index_t b, index_t run, index_t d0,
                                    bool vec = false) {
  static_assert(W >= 2, "conv1d_backward_thread: the CUDA widths are 2, 3, 4");
  static_assert(U >= 1, "conv1d_backward_thread: at least one timestep per load group");
  const index_t dim = p.x.shape[1], seqlen = p.x.shape[2];
  const index_t t0 = run * p.steps;
  const index_t t1 = t0 + p.steps < seqlen ? t0 + p.steps : seqlen;  // this run's timesteps: t0 .. t1-1

  float w[C][W], bias[C];
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int c = 0; c < C; ++c) {
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = 0; k < W; ++k) w[c][k] = to_float(p.weight(d0 + c, k));
    bias[c] = present(p.bias) ? to_float(p.bias(d0 + c)) : 0.0f;
  }

  // win[c][k]: the input at t − (W−1) + k; before the loop, the W−1 inputs before t0.
  float win[C][W], gw[C][W], dw[C][W], db[C];
  MOSS_CONV1D_BACKWARD_UNROLL
  for (int c = 0; c < C; ++c) {
    win[c][0] = 0.0f;
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = 0; k < W - 1; ++k)
      win[c][k + 1] = to_float(conv1d_input(p.x, p.initial_state, b, d0 + c, t0 - (W - 1) + k));
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int k = 0; k < W; ++k) gw[c][k] = dw[c][k] = 0.0f;
    db[c] = 0.0f;
  }

  const bool want_inputs = present(p.dx) || present(p.dinitial_state);
  const index_t emit_from = t0 == 0 ? -(W - 1) : t0;  // the first run also owns the state's columns
  const index_t t_last = want_inputs ? t1 + (W - 2) : t1 - 1;
  // Step t: take in x(t) and dout(t) (xv, gv; t < L), then emit the input gradient at t − (W−1).
  const auto step = [&](index_t t, const float(&xv)[C], const float(&gv)[C]) {
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int c = 0; c < C; ++c) {
      MOSS_CONV1D_BACKWARD_UNROLL
      for (int k = W - 1; k > 0; --k) gw[c][k] = gw[c][k - 1];
      gw[c][0] = 0.0f;
      if (t < seqlen) {
        MOSS_CONV1D_BACKWARD_UNROLL
        for (int k = 0; k < W - 1; ++k) win[c][k] = win[c][k + 1];
        win[c][W - 1] = xv[c];
        float g = gv[c];
        if (p.silu) g *= conv1d_backward_silu_grad(conv1d_output(w[c], win[c], W, bias[c], false));
        gw[c][0] = g;
        if (t < t1) {
          db[c] += g;
          MOSS_CONV1D_BACKWARD_UNROLL
          for (int k = 0; k < W; ++k) dw[c][k] += g * win[c][k];
        }
      }
    }
    if (!want_inputs) return;
    const index_t tau = t - (W - 1);
    if (tau < emit_from) return;
    float acc[C];
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int c = 0; c < C; ++c) {
      acc[c] = 0.0f;  // Σ_k w[k] · g(τ + (W−1) − k), k ascending, times outside [0, L) left out
      MOSS_CONV1D_BACKWARD_UNROLL
      for (int k = 0; k < W; ++k)
        if (t - k >= 0 && t - k < seqlen) acc[c] += w[c][k] * gw[c][k];
      if (present(p.dfinal_state) && tau >= seqlen - (W - 1))
        acc[c] += to_float(p.dfinal_state(b, d0 + c, tau - (seqlen - (W - 1))));
    }
    if (tau >= 0) {
      if (present(p.dx)) conv1d_backward_store<C>(p.dx, b, d0, tau, vec, acc);
    } else if (present(p.dinitial_state)) {
      MOSS_CONV1D_BACKWARD_UNROLL
      for (int c = 0; c < C; ++c) p.dinitial_state(b, d0 + c, (W - 1) + tau) = from_float<T>(acc[c]);
    }
  };

  for (index_t tg = t0; tg <= t_last; tg += U) {
    float xv[U][C] = {}, gv[U][C] = {};  // the group's rows (rows at t ≥ L are not read)
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int u = 0; u < U; ++u) {
      if (tg + u > t_last || tg + u >= seqlen) break;
      conv1d_backward_load<C>(p.x, b, d0, tg + u, vec, xv[u]);
      conv1d_backward_load<C>(p.dout, b, d0, tg + u, vec, gv[u]);
    }
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int u = 0; u < U; ++u) {
      if (tg + u > t_last) break;
      step(tg + u, xv[u], gv[u]);
    }
  }

  if (p.partial) {
    MOSS_CONV1D_BACKWARD_UNROLL
    for (int c = 0; c < C; ++c) {
      float* slot = p.partial + ((b * p.runs + run) * dim + d0 + c) * (W + 1);
      MOSS_CONV1D_BACKWARD_UNROLL
      for (int k = 0; k < W; ++k) slot[k] = dw[c][k];
      slot[W] = db[c];
    }
  }
}

/// Sequence kernel: one thread per (b, run, group of C channels), channel groups fastest; with C
/// > 1 every row access is one vector (the caller checked layout and alignment); U timesteps'
/// rows loaded together.
template <class T, int W, int C, int U>
__global__ void __launch_bounds__(kConv1dBackwardBlockThreads)
    causal_conv1d_backward_kernel(const Conv1dBackwardParams<T> p) {
  const index_t batch = p.x.shape[0], groups = p.x.shape[1] / C;
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch * p.runs * groups) return;
  conv1d_backward_thread<T, W, C, U>(p, i / groups / p.runs, (i / groups) % p.runs, (i % groups) * C, C > 1);
}

/// Slot groups of the parameter kernel: thread (j, g) sums slots g, g + G, g + 2G, … in
/// increasing order, then the G group sums are added in increasing g. G is fixed (not the
/// device's), so the order, and the bits, depend on the shapes alone; G threads per (d, k) give
/// the loads of the ~20 MB workspace enough parallelism.
inline constexpr int kConv1dParamGroups = 8;

/// Group g's sum, in increasing slot order, of the partials at position j of each slot (slots
/// of `per_slot` floats), host and device.
template <class R>
MOSS_HD R conv1d_backward_param_group(const R* partial, index_t slots, index_t per_slot, index_t j, int g) {
  R sum = R(0);
  for (index_t s = g; s < slots; s += kConv1dParamGroups) sum += partial[s * per_slot + j];
  return sum;
}

/// Writes (or, with `accumulate`, adds) the summed gradient of j = d · (W + 1) + k: dweight(d,
/// k) for k < W, dbias(d) for k = W (an absent one is skipped).
template <class R>
MOSS_HD void conv1d_backward_param_write(const TensorView<R, 2>& dweight, const TensorView<R, 1>& dbias, int width,
                                         bool accumulate, index_t j, R sum) {
  const index_t d = j / (width + 1);
  const int k = static_cast<int>(j % (width + 1));
  if (k < width ? !present(dweight) : !present(dbias)) return;
  R& dst = k < width ? dweight(d, k) : dbias(d);
  dst = accumulate ? dst + sum : sum;
}

/// The parameter kernel's work for j = d · (W + 1) + k, on the host (the tests' emulation): the
/// group sums in increasing g, added in the kernel's order.
template <class R>
void conv1d_backward_param_thread(const R* partial, index_t slots, index_t dim, int width,
                                  const TensorView<R, 2>& dweight, const TensorView<R, 1>& dbias, bool accumulate,
                                  index_t j) {
  const index_t per_slot = dim * (width + 1);
  R sum = R(0);
  for (int g = 0; g < kConv1dParamGroups; ++g) sum += conv1d_backward_param_group(partial, slots, per_slot, j, g);
  conv1d_backward_param_write(dweight, dbias, width, accumulate, j, sum);
}

/// Columns j of one parameter-kernel block: one warp's width, so each slot's row is read whole.
inline constexpr int kConv1dParamColumns = 32;

/// Parameter kernel: blocks of (kConv1dParamColumns, kConv1dParamGroups) threads; thread (x, g)
/// sums group g of column j = blockIdx.x · kConv1dParamColumns + x, and thread (x, 0) adds the
/// groups' sums in increasing g.
template <class R>
__global__ void __launch_bounds__(kConv1dParamColumns* kConv1dParamGroups)
    causal_conv1d_backward_params_kernel(const R* partial, index_t slots, index_t dim, int width,
                                         const TensorView<R, 2> dweight, const TensorView<R, 1> dbias,
                                         bool accumulate) {
  static_assert(std::is_same_v<R, float>, "causal_conv1d_backward_params_kernel: float partials");
  __shared__ R sums[kConv1dParamGroups][kConv1dParamColumns];
  const index_t per_slot = dim * (width + 1);
  const index_t j = index_t(blockIdx.x) * kConv1dParamColumns + threadIdx.x;
  const bool valid = j < per_slot;
  sums[threadIdx.y][threadIdx.x] =
      valid ? conv1d_backward_param_group(partial, slots, per_slot, j, static_cast<int>(threadIdx.y)) : 0.0f;
  __syncthreads();
  if (threadIdx.y != 0 || !valid) return;
  R sum = 0.0f;
#pragma unroll
  for (int g = 0; g < kConv1dParamGroups; ++g) sum += sums[g][threadIdx.x];
  conv1d_backward_param_write(dweight, dbias, width, accumulate, j, sum);
}

}  // namespace moss::detail
