// moss/ops/embedding.hpp: out[r,:] = table[ids[r],:] (as float32, the residual stream).
//
// An id outside [0, vocab) is an error (shape_error naming the row and the id), never a read
// outside the table. The CUDA kernel never reads out of bounds; it flags bad ids in device
// memory and the op checks the flag (one stream synchronisation) unless `ids_checked` says
// the caller already validated the ids.
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `embedding`.
/// @tparam T storage type of the table.
template <class T>
struct EmbeddingArgs {
  ConstView<std::int64_t, 1> ids;   // (rows), in the memory of the backend that runs the op
  ConstView<T, 2> table;            // (vocab, dim), unit inner stride
  TensorView<float, 2> out;         // (rows, dim), unit inner stride
  bool ids_checked = false;         // the caller guarantees 0 ≤ id < vocab (skips the CUDA check)
};

}  // namespace moss
