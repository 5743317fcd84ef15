// moss/ops/linear_backward.hpp: the backward pass of `linear` (y = x · Wᵀ + b).
//
// For the gradient dY (rows, out) of y:
//   dX = dY · W          (rows, in)    the gradient of the input, stored in T like x
//   dW = dYᵀ · X         (out, in)     the gradient of the weight, in compute_t<T>
//   db = Σ_rows dY       (out)         the gradient of the bias, in compute_t<T>
// Every output is optional (an absent view is not computed). dW and db are overwritten, or added
// to when `accumulate` is set (gradient accumulation over micro-batches: the new sum is formed
// first and then added, so accumulating equals adding the gradient computed without it). Every
// sum runs in a fixed order, so the same inputs give bitwise the same gradients:
// dX[r, k] over o ascending, dW[o, k] and db[o] over rows ascending (docs/math.md §4,
// docs/training.md). On the host T may be double (moss::HostReal); on CUDA (under nvcc, from
// moss/ops/linear/backward_cuda.cuh) T is a storage type and the GEMMs are cuBLAS's, summed in
// cuBLAS's own fixed order (bitwise repeatable, equal to the host's to rounding).
#pragma once

#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `linear_backward`: the forward's inputs, the gradient of its output, and the
/// gradients wanted.
/// @tparam T storage type of x, weight and dx (float, f16, bf16; double on the host).
/// @tparam Tout storage type of the forward's y and so of dy (T or float).
template <HostReal T, class Tout = T>
requires(std::is_same_v<Tout, T> || std::is_same_v<Tout, float>) struct LinearBackwardArgs {
  ConstView<Tout, 2> dy;                // (rows, out): gradient of y, unit inner stride
  ConstView<T, 2> x;                    // (rows, in): the forward's input, unit inner stride (read for dweight)
  ConstView<T, 2> weight;               // (out, in): the forward's weight, contiguous (read for dx)
  TensorView<T, 2> dx;                  // (rows, in), optional: gradient of x, unit inner stride
  TensorView<compute_t<T>, 2> dweight;  // (out, in), optional: gradient of weight, contiguous
  TensorView<compute_t<T>, 1> dbias;    // (out), optional: gradient of bias, contiguous
  bool accumulate = false;              // add into dweight and dbias instead of overwriting them
};

/// Checks `a` once at op entry: in ≥ 1 and out ≥ 1 (`config_error`, as the forward); x (rows,
/// in) and weight (out, in) as in the forward; dy (rows, out); dx (rows, in); dweight (out, in)
/// contiguous; dbias (out) contiguous. dy, x and dx need unit inner stride and non-overlapping
/// rows. Throws `shape_error` naming the tensor, its shape and the expected shape.
template <class T, class Tout>
void validate(const LinearBackwardArgs<T, Tout>& a, const char* where) {
  expect_valid(where, a.dy);
  expect_valid(where, a.x);
  expect_valid(where, a.weight);
  const index_t rows = a.x.shape[0];
  const index_t in = a.x.shape[1];
  const index_t out = a.weight.shape[0];
  MOSS_EXPECTS(in >= 1, config_error, where, ": ", a.x.name, " is ", shape_string(a.x.shape),
               " (rows, in) but in must be at least 1");
  MOSS_EXPECTS(out >= 1, config_error, where, ": ", a.weight.name, " is ", shape_string(a.weight.shape),
               " (out, in) but out must be at least 1");
  expect_shape(where, a.weight, {out, in}, "(out, in)");
  expect_shape(where, a.dy, {rows, out}, "(rows, out)");
  expect_contiguous(where, a.weight);
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
    expect_shape(where, a.dweight, {out, in}, "(out, in)");
    expect_contiguous(where, a.dweight);
  }
  if (present(a.dbias)) {
    expect_valid(where, a.dbias);
    expect_shape(where, a.dbias, {out}, "(out)");
    expect_contiguous(where, a.dbias);
  }
}

}  // namespace moss

#include "moss/ops/linear/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, as the forward's does.
#if defined(__CUDACC__)
#include "moss/ops/linear/backward_cuda.cuh"
#endif
