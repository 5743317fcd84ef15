// moss/ops/mamba_step.hpp: one decode step of the Mamba mixer's core, between in_proj and
// out_proj (docs/math.md §1, "Decode"): for one new token per sequence,
//
//   v     = SiLU(conv1d step of u over conv_state, + conv_bias)     conv_state ← its last W−1 inputs
//   x_dbl = x_proj · v = [dt_low | B | C]                            (R + 2N values, rounded to T)
//   delta = dt_proj · dt_low                                          (rounded to T)
//   y     = selective_scan_step(u = v, delta, A, B, C, D, z, dt_bias, softplus)   ssm_state updated
//
// with [u | z] = xz, the in_proj output. This is what `MambaCore::step` does, op by op.
//
//   moss::mamba_step(moss::Host{}, args);           // the ops in turn (mamba_step_composed)
//   moss::mamba_step(moss::Cuda{stream}, args);     // two fused kernels (mamba_step/cuda.cuh)
//
// `mamba_step_composed(backend, args)` is the op-by-op form on any backend (four ops: the conv
// step, two linear layers, the scan step); on CUDA `mamba_step` instead runs two kernels (the conv
// step with a partial x_proj per slice of channels, then the x_proj sum, dt_proj and the scan
// step), no cuBLAS call and no host synchronisation: fewer launches for a decode step, whose
// kernels each take a few microseconds. The two agree to float rounding (the x_proj and dt_proj
// sums are added in other orders), the rounding points (v, x_dbl, delta stored as T) the same.
#pragma once

#include <cstddef>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/selective_scan.hpp"

namespace moss {

/// Arguments of `mamba_step` (every view contiguous; `conv_bias` optional).
/// @tparam T storage type of the activations and projection weights (float, f16, bf16).
template <class T>
struct MambaStepArgs {
  ConstView<T, 2> xz;              // (batch, 2·ED): [u | z], the in_proj output
  TensorView<T, 3> conv_state;     // (batch, ED, W − 1), read and written
  ConstView<T, 2> conv_weight;     // (ED, W)
  ConstView<T, 1> conv_bias;       // (ED), optional
  ConstView<T, 2> x_proj;          // (R + 2N, ED)
  ConstView<T, 2> dt_proj;         // (ED, R)
  ConstView<float, 1> dt_bias;     // (ED)
  ConstView<float, 2> A;           // (ED, N)
  ConstView<float, 1> D;           // (ED)
  TensorView<float, 3> ssm_state;  // (batch, ED, N), read and written
  TensorView<T, 2> out;            // (batch, ED): the gated scan output, out_proj's input
};

/// Checks every shape and layout of `a`; `shape_error` / `config_error` naming the tensor.
template <class T>
void validate(const MambaStepArgs<T>& a, const char* where) {
  expect_valid(where, a.xz);
  expect_contiguous(where, a.xz);
  const index_t batch = a.xz.shape[0];
  expect_valid(where, a.conv_weight);
  expect_contiguous(where, a.conv_weight);
  const index_t ED = a.conv_weight.shape[0], W = a.conv_weight.shape[1];
  MOSS_EXPECTS(W >= 2, config_error, where, ": ", a.conv_weight.name, " is ", shape_string(a.conv_weight.shape),
               " (ED, W); the conv width W must be at least 2");
  expect_shape(where, a.xz, {batch, 2 * ED}, "(batch, 2·ED)");
  expect_valid(where, a.conv_state);
  expect_contiguous(where, a.conv_state);
  expect_shape(where, a.conv_state, {batch, ED, W - 1}, "(batch, ED, W − 1)");
  if (present(a.conv_bias)) {
    expect_valid(where, a.conv_bias);
    expect_contiguous(where, a.conv_bias);
    expect_shape(where, a.conv_bias, {ED}, "(ED)");
  }
  expect_valid(where, a.A);
  expect_contiguous(where, a.A);
  expect_shape(where, a.A, {ED, any}, "(ED, N)");
  const index_t N = a.A.shape[1];
  expect_valid(where, a.dt_proj);
  expect_contiguous(where, a.dt_proj);
  expect_shape(where, a.dt_proj, {ED, any}, "(ED, R)");
  const index_t R = a.dt_proj.shape[1];
  MOSS_EXPECTS(N >= 1 && R >= 1, config_error, where, ": d_state N = ", N, " and dt_rank R = ", R,
               " (from A and dt_proj) must be at least 1");
  expect_valid(where, a.x_proj);
  expect_contiguous(where, a.x_proj);
  expect_shape(where, a.x_proj, {R + 2 * N, ED}, "(R + 2N, ED)");
  expect_valid(where, a.dt_bias);
  expect_contiguous(where, a.dt_bias);
  expect_shape(where, a.dt_bias, {ED}, "(ED)");
  expect_valid(where, a.D);
  expect_contiguous(where, a.D);
  expect_shape(where, a.D, {ED}, "(ED)");
  expect_valid(where, a.ssm_state);
  expect_contiguous(where, a.ssm_state);
  expect_shape(where, a.ssm_state, {batch, ED, N}, "(batch, ED, N)");
  expect_valid(where, a.out);
  expect_contiguous(where, a.out);
  expect_shape(where, a.out, {batch, ED}, "(batch, ED)");
}

/// The step op by op on `backend` (any backend with the four ops): the definition `mamba_step`
/// is held to, and what `MambaCore::step` runs.
template <class Backend, class T>
void mamba_step_composed(const Backend& backend, const MambaStepArgs<T>& a) {
  validate(a, "mamba_step");
  const index_t batch = a.xz.shape[0], ED = a.conv_weight.shape[0];
  const index_t N = a.A.shape[1], R = a.dt_proj.shape[1], XP = R + 2 * N;
  Buffer<T> v = backend.template alloc<T>(batch * ED);
  causal_conv1d_step(
      backend, CausalConv1dStepArgs<T>{a.conv_state, ConstView<T, 2>(a.xz.data, {batch, ED}, {2 * ED, 1}, "u"),
                                       a.conv_weight, a.conv_bias, true, v.template view<2>({batch, ED}, "conv_out")});
  Buffer<T> x_dbl = backend.template alloc<T>(batch * XP);
  linear(backend, LinearArgs<T>{ConstView<T, 2>(v.data(), {batch, ED}, "conv_out"),
                                a.x_proj,
                                {},
                                x_dbl.template view<2>({batch, XP}, "x_dbl")});
  Buffer<T> delta = backend.template alloc<T>(batch * ED);
  linear(backend, LinearArgs<T>{ConstView<T, 2>(x_dbl.data(), {batch, R}, {XP, 1}, "dt_low"),
                                a.dt_proj,
                                {},
                                delta.template view<2>({batch, ED}, "delta")});
  SelectiveScanStepArgs<T> s;
  s.state = a.ssm_state;
  s.u = ConstView<T, 2>(v.data(), {batch, ED}, "conv_out");
  s.delta = ConstView<T, 2>(delta.data(), {batch, ED}, "delta");
  s.A = a.A;
  s.B = ConstView<T, 3>(x_dbl.data() + R, {batch, 1, N}, {XP, 0, 1}, "B");
  s.C = ConstView<T, 3>(x_dbl.data() + R + N, {batch, 1, N}, {XP, 0, 1}, "C");
  s.D = a.D;
  s.z = ConstView<T, 2>(a.xz.data + ED, {batch, ED}, {2 * ED, 1}, "z");
  s.delta_bias = a.dt_bias;
  s.delta_softplus = true;
  s.out = a.out;
  selective_scan_step(backend, s);
}

/// One decode step of the mixer's core on the CPU: the ops in turn.
template <class T>
void mamba_step(const Host& host, const MambaStepArgs<T>& a) {
  mamba_step_composed(host, a);
}

}  // namespace moss

#if defined(__CUDACC__)
#include "moss/ops/mamba_step/cuda.cuh"
#endif
