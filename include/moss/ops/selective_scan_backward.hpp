// moss/ops/selective_scan_backward.hpp: the backward pass of the Mamba-1 selective scan
// (docs/math.md §4.1; the forward is moss/ops/selective_scan.hpp, its conventions docs/training.md).
//
// Given the forward's inputs, the gradient `dout` of its output and, optionally, the gradient
// `dfinal_state` of its final state, it writes the gradient of every input it is asked for:
//
//   du, ddelta, dz          (batch, dim, L)            in T
//   dB, dC                  (batch, groups, N, L)      in T (the groups of B and of C)
//   dA                      (dim, N)                   in compute_t<T>
//   dD, ddelta_bias         (dim)                      in compute_t<T>
//   dinitial_state          (batch, dim, N)            in compute_t<T>
//
// `ddelta` is the gradient of the raw `delta` input (before delta_bias and softplus). An absent
// output (null `data`) is skipped: nothing is written for it. dD, ddelta_bias and dinitial_state
// may be asked for when D, delta_bias or initial_state are absent: an absent one is zero, and its
// gradient is taken there; dz needs z. dA, dD and ddelta_bias are written, or added into when
// `accumulate` is set (gradient accumulation over micro-batches); the other outputs are written.
// A dB or dC view may have zero strides along batch and L, like the view `constant_bc` makes of
// a constant (dim, N) B or C: the gradient is then summed over those axes. Outputs must not
// alias the inputs or each other.
//
//   moss::selective_scan_backward(moss::Host{}, args);   // T = float, f16, bf16 or double
//
// Arithmetic: compute_t<T> (float32 for the storage types, double for T = double, which is what
// the finite-difference checks run). Determinism: every reduction runs in one fixed order, with
// no atomics, so the same inputs give bitwise the same gradients (see backward_host.hpp for the
// order and for how the forward states are recomputed).
//
//   moss::selective_scan_backward(moss::Cuda{stream}, args);   // T = float, f16 or bf16
//
// The CUDA overload (selective_scan/backward_cuda.cuh, included under nvcc) takes the same Args,
// queues its kernels on the stream without synchronising, takes its scratch from the backend's
// pool, and is bitwise repeatable too; its sums run in other fixed orders than the host's, so the
// two agree to float rounding (see backward_cuda.cuh for its recomputation and workspace).
#pragma once

#include <cstddef>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/selective_scan.hpp"

namespace moss {

/// Arguments of `selective_scan_backward`. Optional inputs and outputs are views with a null
/// `data`.
/// @tparam T storage type of the activations and of their gradients (float, f16, bf16; double on
/// the host). Parameters, states and their gradients are `compute_t<T>`.
template <class T>
struct SelectiveScanBackwardArgs {
  // The forward's inputs, exactly as given to `selective_scan`.
  ConstView<T, 3> u;                      // (batch, dim, L)
  ConstView<T, 3> delta;                  // (batch, dim, L)
  ConstView<compute_t<T>, 2> A;           // (dim, N)
  ConstView<T, 4> B;                      // (batch, groups, N, L)
  ConstView<T, 4> C;                      // (batch, groups, N, L)
  ConstView<compute_t<T>, 1> D;           // (dim), optional
  ConstView<T, 3> z;                      // (batch, dim, L), optional
  ConstView<compute_t<T>, 1> delta_bias;  // (dim), optional
  bool delta_softplus = false;
  ConstView<compute_t<T>, 3> initial_state;  // (batch, dim, N), optional

  // Gradients of the forward's outputs.
  ConstView<T, 3> dout;                     // (batch, dim, L)
  ConstView<compute_t<T>, 3> dfinal_state;  // (batch, dim, N), optional (absent: zero)

  // Gradients of the inputs, each optional.
  TensorView<T, 3> du;                         // (batch, dim, L)
  TensorView<T, 3> ddelta;                     // (batch, dim, L), of the raw delta
  TensorView<compute_t<T>, 2> dA;              // (dim, N)
  TensorView<T, 4> dB;                         // (batch, groups of B, N, L); zero strides along batch / L sum
  TensorView<T, 4> dC;                         // (batch, groups of C, N, L); zero strides along batch / L sum
  TensorView<compute_t<T>, 1> dD;              // (dim)
  TensorView<T, 3> dz;                         // (batch, dim, L); needs z
  TensorView<compute_t<T>, 1> ddelta_bias;     // (dim)
  TensorView<compute_t<T>, 3> dinitial_state;  // (batch, dim, N)
  bool accumulate = false;                     // dA, dD, ddelta_bias: add into the outputs instead of overwriting them
};

namespace detail::scan {

/// Checks a gradient of B or C: its shape is that of the input, and it writes distinct elements
/// except along batch and L, where a zero stride means "summed over this axis".
template <class T>
void expect_bc_gradient(const char* where, const TensorView<T, 4>& g, const Extents<4>& expected) {
  if (!present(g)) return;
  expect_valid(where, g);
  expect_shape(where, g, expected, "(batch, groups, N, L)");
  if (g.empty()) return;
  for (std::size_t i : {std::size_t(1), std::size_t(2)})
    MOSS_EXPECTS(g.shape[i] <= 1 || g.stride[i] != 0, shape_error, where, ": output ", g.name, " ",
                 shape_string(g.shape), " has strides ", shape_string(g.stride),
                 "; a gradient of B or C may have zero strides only along batch and L (it is then summed over "
                 "them), and needs non-zero strides along groups and N");
}

/// Checks an optional gradient output: its shape and distinct elements.
template <class T, std::size_t Rank>
void expect_gradient(const char* where, const TensorView<T, Rank>& g, const Extents<Rank>& expected, const char* axes) {
  if (!present(g)) return;
  expect_optional(where, g, expected, axes);
  expect_distinct_elements(where, g);
}

}  // namespace detail::scan

/// Checks every shape, stride and size of a `selective_scan_backward` call: the forward's inputs
/// as `selective_scan` does, `dout` (required), `dfinal_state` and every gradient output that is
/// present (each the shape of its input). Throws `shape_error` naming `where`, the tensor, its
/// shape and the expected shape; `config_error` for bad groups, N < 1 or dz without z;
/// `unsupported_error` for N > kMaxStateSize.
template <class T>
void validate(const SelectiveScanBackwardArgs<T>& a, const char* where) {
  const auto u = a.u.named("u");
  const auto A = a.A.named("A");
  const auto B = a.B.named("B");
  const auto C = a.C.named("C");
  expect_valid(where, u);
  const index_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2];
  const auto delta = a.delta.named("delta");
  expect_valid(where, delta);
  expect_shape(where, delta, {batch, dim, L}, "(batch, dim, L)");
  expect_valid(where, A);
  expect_shape(where, A, {dim, any}, "(dim, N)");
  const index_t N = A.shape[1];
  detail::scan::expect_state_size(where, N);
  for (const auto& bc : {B, C}) {
    expect_valid(where, bc);
    expect_shape(where, bc, {batch, any, N, L}, "(batch, groups, N, L)");
    detail::scan::expect_groups(where, bc, dim);
  }
  detail::scan::expect_optional(where, a.D.named("D"), {dim}, "(dim)");
  detail::scan::expect_optional(where, a.z.named("z"), {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_optional(where, a.delta_bias.named("delta_bias"), {dim}, "(dim)");
  detail::scan::expect_optional(where, a.initial_state.named("initial_state"), {batch, dim, N}, "(batch, dim, N)");

  const auto dout = a.dout.named("dout");
  expect_valid(where, dout);
  expect_shape(where, dout, {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_optional(where, a.dfinal_state.named("dfinal_state"), {batch, dim, N}, "(batch, dim, N)");

  detail::scan::expect_gradient(where, a.du.named("du"), {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_gradient(where, a.ddelta.named("ddelta"), {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_gradient(where, a.dA.named("dA"), {dim, N}, "(dim, N)");
  detail::scan::expect_bc_gradient(where, a.dB.named("dB"), B.shape);
  detail::scan::expect_bc_gradient(where, a.dC.named("dC"), C.shape);
  detail::scan::expect_gradient(where, a.dD.named("dD"), {dim}, "(dim)");
  MOSS_EXPECTS(!present(a.dz) || present(a.z), config_error, where, ": dz ", shape_string(a.dz.shape),
               " is asked for but z is absent (without z the output is not gated)");
  detail::scan::expect_gradient(where, a.dz.named("dz"), {batch, dim, L}, "(batch, dim, L)");
  detail::scan::expect_gradient(where, a.ddelta_bias.named("ddelta_bias"), {dim}, "(dim)");
  detail::scan::expect_gradient(where, a.dinitial_state.named("dinitial_state"), {batch, dim, N}, "(batch, dim, N)");
}

}  // namespace moss

#include "moss/ops/selective_scan/backward_host.hpp"
#if defined(__CUDACC__)
#include "moss/ops/selective_scan/backward_cuda.cuh"
#endif
