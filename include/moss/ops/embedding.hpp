// moss/ops/embedding.hpp: out[r,:] = table[ids[r],:] (as float32, the residual stream).
//
// On the host T may also be double (moss::HostReal); out is then double (compute_t<T>), which
// the finite-difference checks of the backward passes run on (docs/training.md).
//
// An id outside [0, vocab) is an error (shape_error naming the row and the id), never a read
// outside the table. The CUDA kernel never reads out of bounds; it flags bad ids in device
// memory and the op checks the flag (one stream synchronisation) unless `ids_checked` says
// the caller already validated the ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/core/workspace.hpp"

namespace moss {

namespace detail {

/// The element type of `embedding`'s out: `compute_t<T>` (float, or double for T = double),
/// spelled without compute_t's constraint so that an unsupported T reaches `validate`'s
/// static_assert and its message rather than a constraint failure inside the struct.
template <class T>
using embedding_out_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace detail

/// Arguments of `embedding`.
/// @tparam T storage type of the table (float, f16 or bf16; on the host also double).
template <class T>
struct EmbeddingArgs {
  ConstView<std::int64_t, 1> ids;                 // (rows), in the memory of the backend that runs the op
  ConstView<T, 2> table;                          // (vocab, dim), unit inner stride
  TensorView<detail::embedding_out_t<T>, 2> out;  // (rows, dim), unit inner stride: compute_t<T>
  bool ids_checked = false;                       // the caller guarantees 0 ≤ id < vocab (skips the CUDA check)
  unsigned long long* bad_row = nullptr;          // CUDA, optional (device memory): instead of checking with a
                                                  // synchronisation, lowered (atomic min) to each row whose id is
                                                  // bad (its out row is NaN); the caller sets it to ~0 first and
                                                  // reads it later. The host op always checks at once.
  Workspace workspace{};                          // optional scratch (see workspace_bytes); none: the op allocates it
};

/// Checks the shapes of `a` once at op entry (both backends): vocab ≥ 1 and dim ≥ 1
/// (`config_error`); table (vocab, dim) and out (rows, dim) with unit inner stride and a row
/// stride ≥ dim (`shape_error`). ids may have any stride; their values are checked by the op.
template <class T>
void validate(const EmbeddingArgs<T>& a, const char* where) {
  static_assert(HostReal<T>, "moss::embedding: T must be float, moss::f16, moss::bf16 or (host only) double");
  expect_valid(where, a.ids);
  expect_valid(where, a.table);
  expect_valid(where, a.out);
  const index_t rows = a.ids.shape[0];
  const index_t vocab = a.table.shape[0];
  const index_t dim = a.table.shape[1];
  MOSS_EXPECTS(vocab >= 1 && dim >= 1, config_error, where, ": ", a.table.name, " is ", shape_string(a.table.shape),
               " (vocab, dim) but both must be at least 1");
  expect_shape(where, a.out, {rows, dim}, "(rows, dim)");
  expect_unit_inner_stride(where, a.table);
  expect_unit_inner_stride(where, a.out);
  MOSS_EXPECTS(vocab <= 1 || a.table.stride[0] >= dim, shape_error, where, ": ", a.table.name, " has row stride ",
               a.table.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
  MOSS_EXPECTS(rows <= 1 || a.out.stride[0] >= dim, shape_error, where, ": ", a.out.name, " has row stride ",
               a.out.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
}

/// Scratch bytes `embedding` needs on the host for `a`: none (moss/core/workspace.hpp).
template <class T>
std::size_t workspace_bytes(const Host&, const EmbeddingArgs<T>&) {
  return 0;
}

namespace detail {

/// Throws the error of an id outside the table (the same message on every backend).
[[noreturn]] inline void raise_bad_embedding_id(const char* where, index_t row, std::int64_t id, index_t vocab) {
  raise<shape_error>(where, ": ids[", row, "] = ", id, " is outside the table's rows [0, ", vocab, ")");
}

}  // namespace detail

}  // namespace moss

#include "moss/ops/embedding/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/embedding/cuda.cuh"
#endif
