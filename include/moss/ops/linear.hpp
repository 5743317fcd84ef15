// moss/ops/linear.hpp: y = x · Wᵀ (+ bias), the projection of every Mamba layer.
//
// Inputs in T, float32 accumulation, one rounding when y is written in Tout (T or float). On the
// host T may also be double (moss::HostReal), which then accumulates in double (compute_t<T>):
// the finite-difference checks of the backward passes run on it (docs/training.md).
// x and y may have any row stride (unit stride inside a row), so a column slice of a wider
// activation is a valid input or output without a copy. On CUDA this is cuBLAS(Lt).
#pragma once

#include <cstddef>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/core/workspace.hpp"

namespace moss {

/// Arguments of `linear`.
/// @tparam T storage type of x and weight (float, f16 or bf16; on the host also double).
/// @tparam Tout storage type of y (T or float).
template <class T, class Tout = T>
struct LinearArgs {
  ConstView<T, 2> x;       // (rows, in), unit inner stride
  ConstView<T, 2> weight;  // (out, in), contiguous
  ConstView<T, 1> bias;    // (out), optional
  TensorView<Tout, 2> y;   // (rows, out), unit inner stride
  Workspace workspace{};   // optional scratch (see workspace_bytes); none: the op allocates it
};

/// Checks `a` once at op entry (both backends): rows ≥ 0, in ≥ 1, out ≥ 1; x (rows, in) and
/// y (rows, out) with unit inner stride and a row stride ≥ their width; weight (out, in)
/// contiguous; bias, when present, (out) contiguous. Throws `config_error` for an empty
/// feature axis and `shape_error` for every shape or stride mismatch.
template <class T, class Tout>
void validate(const LinearArgs<T, Tout>& a, const char* where) {
  static_assert(HostReal<T>, "moss::linear: T must be float, moss::f16, moss::bf16 or (host only) double");
  static_assert(std::is_same_v<Tout, T> || std::is_same_v<Tout, float>, "moss::linear: Tout must be T or float");
  expect_valid(where, a.x);
  expect_valid(where, a.weight);
  expect_valid(where, a.y);
  const index_t rows = a.x.shape[0];
  const index_t in = a.x.shape[1];
  const index_t out = a.weight.shape[0];
  MOSS_EXPECTS(in >= 1, config_error, where, ": ", a.x.name, " is ", shape_string(a.x.shape),
               " (rows, in) but in must be at least 1");
  MOSS_EXPECTS(out >= 1, config_error, where, ": ", a.weight.name, " is ", shape_string(a.weight.shape),
               " (out, in) but out must be at least 1");
  expect_shape(where, a.weight, {out, in}, "(out, in)");
  expect_shape(where, a.y, {rows, out}, "(rows, out)");
  expect_unit_inner_stride(where, a.x);
  expect_unit_inner_stride(where, a.y);
  MOSS_EXPECTS(rows <= 1 || a.x.stride[0] >= in, shape_error, where, ": ", a.x.name, " has row stride ", a.x.stride[0],
               " but its rows are ", in, " wide (rows must not overlap)");
  MOSS_EXPECTS(rows <= 1 || a.y.stride[0] >= out, shape_error, where, ": ", a.y.name, " has row stride ", a.y.stride[0],
               " but its rows are ", out, " wide (rows must not overlap)");
  expect_contiguous(where, a.weight);
  if (present(a.bias)) {
    expect_valid(where, a.bias);
    expect_shape(where, a.bias, {out}, "(out)");
    expect_contiguous(where, a.bias);
  }
}

/// Scratch bytes `linear` needs on the host for `a`: none (moss/core/workspace.hpp).
template <class T, class Tout>
std::size_t workspace_bytes(const Host&, const LinearArgs<T, Tout>&) {
  return 0;
}

}  // namespace moss

#include "moss/ops/linear/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/linear/cuda.cuh"
#endif
