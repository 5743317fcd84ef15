// moss/ops/embedding_backward.hpp: the backward pass of `embedding` (out[r, :] = table[ids[r], :]).
//
//   dtable[v, :] = Σ_{r : ids[r] = v} dout[r, :]          (vocab, dim), in compute_t<T>
//
// Deterministic without atomics: the (id, row) pairs are sorted, and each id's segment is summed
// in ascending row order into a fresh sum, which is then written to its table row (or added to it
// when `accumulate` is set). Rows of ids that occur nowhere get zero (are left as they are when
// accumulating). Every id is checked before anything is written: one outside [0, vocab) is a
// `shape_error` naming the first bad position and its id, and dtable is left untouched
// (docs/math.md §4, docs/training.md). On the host T may be double (moss::HostReal); the CUDA
// overload (moss/ops/embedding/backward_cuda.cuh, under nvcc) takes the ids in device memory and
// cannot raise without a synchronisation: an id outside the table makes dtable NaN there.
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/embedding.hpp"

namespace moss {

/// Arguments of `embedding_backward`. The table itself is not read: its gradient depends only on
/// the ids and on dout.
/// @tparam T storage type of the forward's table (float, f16, bf16; double on the host); the
/// gradients are in compute_t<T>, the type of the forward's out.
template <HostReal T>
struct EmbeddingBackwardArgs {
  ConstView<std::int64_t, 1> ids;      // (rows): the forward's ids, any stride, in host memory
  ConstView<compute_t<T>, 2> dout;     // (rows, dim): gradient of out, unit inner stride
  TensorView<compute_t<T>, 2> dtable;  // (vocab, dim): gradient of the table, unit inner stride
  bool accumulate = false;             // add into dtable instead of overwriting it
};

/// Checks the shapes of `a` once at op entry: vocab ≥ 1 and dim ≥ 1 (`config_error`, as the
/// forward); dout (rows, dim) where rows is the length of ids; dout and dtable with unit inner
/// stride and non-overlapping rows (`shape_error` naming the tensor). The id values are checked
/// by the op.
template <class T>
void validate(const EmbeddingBackwardArgs<T>& a, const char* where) {
  expect_valid(where, a.ids);
  expect_valid(where, a.dout);
  expect_valid(where, a.dtable);
  const index_t rows = a.ids.shape[0];
  const index_t vocab = a.dtable.shape[0];
  const index_t dim = a.dtable.shape[1];
  MOSS_EXPECTS(vocab >= 1 && dim >= 1, config_error, where, ": ", a.dtable.name, " is ", shape_string(a.dtable.shape),
               " (vocab, dim) but both must be at least 1");
  expect_shape(where, a.dout, {rows, dim}, "(rows, dim)");
  expect_unit_inner_stride(where, a.dout);
  expect_unit_inner_stride(where, a.dtable);
  MOSS_EXPECTS(rows <= 1 || a.dout.stride[0] >= dim, shape_error, where, ": ", a.dout.name, " has row stride ",
               a.dout.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
  MOSS_EXPECTS(vocab <= 1 || a.dtable.stride[0] >= dim, shape_error, where, ": ", a.dtable.name, " has row stride ",
               a.dtable.stride[0], " but its rows are ", dim, " wide (rows must not overlap)");
}

}  // namespace moss

#include "moss/ops/embedding/backward_host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// runs the backward on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/embedding/backward_cuda.cuh"
#endif
