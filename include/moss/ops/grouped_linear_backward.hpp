// moss/ops/grouped_linear_backward.hpp: the backward pass of `grouped_linear` (docs/math.md §2.6
// step 3 and §4).
//
// For the gradient dY (rows, out) of y and every expert e with segment [offsets[e], offsets[e+1]):
//   dX[r]   = dY[r] · W_e                 (rows of the segment; rows past offsets[X] get 0)
//   dW_e    = dY[seg]ᵀ · X[seg]           (out, in), rows ascending; 0 for an empty segment
//   db_e    = Σ_{r in seg} dY[r]          (out), rows ascending; 0 for an empty segment
// each expert by `linear_backward` over its segment, experts in order, so every sum runs in a
// fixed order and the same inputs give bitwise the same gradients. Every output is optional;
// dweight and dbias are overwritten, or added to when `accumulate` is set. On the host T may be
// double (moss::HostReal); on CUDA (under nvcc, moss/ops/grouped_linear/backward_cuda.cuh) T is a
// storage type, each segment's GEMMs are cuBLAS's (its own fixed order: bitwise repeatable, equal
// to the host's to rounding), and the offsets are read to the host as in the forward; with
// `resident_offsets` they are read on the device only, by moss's sync-free kernels (dX the
// forward's grouped GEMM against W_eᵀ, dW_e one block per output tile reducing its segment's rows
// in order, no split-K atomics: bitwise repeatable too).
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/linear_backward.hpp"

namespace moss {

/// Arguments of `grouped_linear_backward`: the forward's inputs, the gradient of its output, and
/// the gradients wanted.
/// @tparam T storage type of x, weight, dy and dx (float, f16, bf16; double on the host).
template <HostReal T>
struct GroupedLinearBackwardArgs {
  ConstView<T, 2> dy;                          // (rows, out): gradient of y, unit inner stride
  ConstView<T, 2> x;                           // (rows, in): the forward's input, unit inner stride
  ConstView<T, 3> weight;                      // (X, out, in): the forward's weight, contiguous
  ConstView<std::int32_t, 1> offsets;          // (X + 1): the forward's segment offsets (backend memory)
  const std::int32_t* host_offsets = nullptr;  // (X + 1) the same offsets, if the caller has them separately
  TensorView<T, 2> dx;                         // (rows, in), optional: gradient of x, unit inner stride
  TensorView<compute_t<T>, 3> dweight;         // (X, out, in), optional, contiguous: gradient of weight
  TensorView<compute_t<T>, 2> dbias;           // (X, out), optional, contiguous: gradient of bias
  bool accumulate = false;                     // add into dweight and dbias instead of overwriting them
  /// Read the offsets on the device only (no host synchronisation: capturable in a CUDA graph).
  /// On CUDA: moss's sync-free kernels (moss/ops/grouped_linear/device_gemm.cuh), with offsets
  /// outside [0, rows] clamped; the host reads `offsets` either way.
  bool resident_offsets = false;
};

/// Checks `a` once at op entry: X, in, out ≥ 1 (`config_error`, as the forward); x (rows, in),
/// dy (rows, out), weight (X, out, in) contiguous, offsets (X + 1) contiguous, dx (rows, in),
/// dweight (X, out, in) and dbias (X, out) contiguous. Throws `shape_error` naming the tensor,
/// its shape and the expected shape; the offsets' values are checked where they are read.
template <class T>
void validate(const GroupedLinearBackwardArgs<T>& a, const char* where) {
  expect_valid(where, a.dy);
  expect_valid(where, a.x);
  expect_valid(where, a.weight);
  expect_valid(where, a.offsets);
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0], out = a.weight.shape[1];
  MOSS_EXPECTS(X >= 1 && in >= 1 && out >= 1, config_error, where, ": ", a.weight.name, " is ",
               shape_string(a.weight.shape), " (experts, out, in) but every extent must be at least 1");
  expect_shape(where, a.weight, {X, out, in}, "(experts, out, in)");
  expect_contiguous(where, a.weight);
  expect_shape(where, a.offsets, {X + 1}, "(experts + 1)");
  expect_contiguous(where, a.offsets);
  expect_shape(where, a.dy, {rows, out}, "(rows, out)");
  expect_unit_inner_stride(where, a.x);
  expect_unit_inner_stride(where, a.dy);
  MOSS_EXPECTS(rows <= 1 || a.x.stride[0] >= in, shape_error, where, ": ", a.x.name, " has row stride ", a.x.stride[0],
               " but its rows are ", in, " wide (rows must not overlap)");
  MOSS_EXPECTS(rows <= 1 || a.dy.stride[0] >= out, shape_error, where, ": ", a.dy.name, " has row stride ",
               a.dy.stride[0], " but its rows are ", out, " wide (rows must not overlap)");
  if (present(a.dx)) {
    expect_valid(where, a.dx);
    expect_shape(where, a.dx, {rows, in}, "(rows, in)");
    expect_unit_inner_stride(where, a.dx);
    MOSS_EXPECTS(rows <= 1 || a.dx.stride[0] >= in, shape_error, where, ": ", a.dx.name, " has row stride ",
                 a.dx.stride[0], " but its rows are ", in, " wide (rows must not overlap)");
  }
  if (present(a.dweight)) {
    expect_valid(where, a.dweight);
    expect_shape(where, a.dweight, {X, out, in}, "(experts, out, in)");
    expect_contiguous(where, a.dweight);
  }
  if (present(a.dbias)) {
    expect_valid(where, a.dbias);
    expect_shape(where, a.dbias, {X, out}, "(experts, out)");
    expect_contiguous(where, a.dbias);
  }
}

namespace detail {

/// The per-expert work of `grouped_linear_backward`, on either backend, once its offsets `off`
/// (X + 1, host memory, checked) are known: `linear_backward` over each expert's segment of rows
/// (an empty segment still writes zero weight and bias gradients, or leaves them when accumulating).
template <class Backend, class T>
void grouped_linear_backward_segments(const Backend& backend, const GroupedLinearBackwardArgs<T>& a,
                                      const std::int32_t* off) {
  using C = compute_t<T>;
  const index_t in = a.x.shape[1], X = a.weight.shape[0], out = a.weight.shape[1];
  for (index_t e = 0; e < X; ++e) {
    const index_t r0 = off[e], n = off[e + 1] - off[e];
    LinearBackwardArgs<T> l;
    l.dy = ConstView<T, 2>(a.dy.data + r0 * a.dy.stride[0], {n, out}, {a.dy.stride[0], 1}, a.dy.name);
    l.x = ConstView<T, 2>(a.x.data + r0 * a.x.stride[0], {n, in}, {a.x.stride[0], 1}, a.x.name);
    l.weight = ConstView<T, 2>(a.weight.data + e * out * in, {out, in}, a.weight.name);
    if (present(a.dx) && n > 0)
      l.dx = TensorView<T, 2>(a.dx.data + r0 * a.dx.stride[0], {n, in}, {a.dx.stride[0], 1}, a.dx.name);
    if (present(a.dweight)) l.dweight = TensorView<C, 2>(a.dweight.data + e * out * in, {out, in}, a.dweight.name);
    if (present(a.dbias)) l.dbias = TensorView<C, 1>(a.dbias.data + e * out, {out}, a.dbias.name);
    l.accumulate = a.accumulate;
    if (!present(l.dx) && !present(l.dweight) && !present(l.dbias)) continue;
    linear_backward(backend, l);
  }
}

}  // namespace detail

}  // namespace moss

#include "moss/ops/grouped_linear/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, as the forward's does.
#if defined(__CUDACC__)
#include "moss/ops/grouped_linear/backward_cuda.cuh"
#endif
