// moss/ops/activation.hpp: the activation between an MLP expert's two GEMMs.
//
//   out[r, c] = act(x[r, c])              (Mlp)
//   out[r, c] = act(x[r, c]) · up[r, c]   (GatedMlp, when `up` is given)
// float32 arithmetic, rounded once to T. `act` is an activation policy (Relu, Gelu, Silu).
// On the host T may also be double (float64 arithmetic through ActivationGrad<Act>::value, for
// gradient checks; docs/training.md); CUDA takes the storage types only. The backward pass is
// moss/ops/activation_backward.hpp.
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/activation/math.hpp"
#include "moss/policy/experts.hpp"

namespace moss {

/// Arguments of `activation`.
/// @tparam T storage type of x, up and out (float, f16 or bf16; double on the host only).
template <class T>
struct ActivationArgs {
  ConstView<T, 2> x;     // (rows, cols), unit inner stride
  ConstView<T, 2> up;    // (rows, cols), unit inner stride, optional (gated)
  TensorView<T, 2> out;  // (rows, cols), unit inner stride; may be x itself
};

/// Checks `a` once at op entry (both backends): T (a static_assert; double on the host only, see
/// the CUDA overload), out and up (rows, cols) like x, unit inner strides, rows that do not
/// overlap (`shape_error` naming the tensor).
template <class T>
void validate(const ActivationArgs<T>& a, const char* where) {
  static_assert(HostReal<T>, "moss::activation: T must be float, moss::f16 or moss::bf16 (or double, on the host)");
  expect_valid(where, a.x);
  expect_valid(where, a.out);
  if (present(a.up)) expect_valid(where, a.up);
  const index_t rows = a.x.shape[0], cols = a.x.shape[1];
  expect_shape(where, a.out, {rows, cols}, "(rows, cols)");
  if (present(a.up)) expect_shape(where, a.up, {rows, cols}, "(rows, cols)");
  auto rows_ok = [&](const auto& v) {
    if (!present(v)) return;
    expect_unit_inner_stride(where, v);
    MOSS_EXPECTS(rows <= 1 || v.stride[0] >= cols, shape_error, where, ": ", v.name, " has row stride ", v.stride[0],
                 " but its rows are ", cols, " wide (rows must not overlap)");
  };
  rows_ok(a.x);
  rows_ok(a.up);
  rows_ok(a.out);
}

}  // namespace moss

#include "moss/ops/activation/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/activation/cuda.cuh"
#endif
