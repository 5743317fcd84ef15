// moss/ops/embedding/host.hpp: `embedding` on the CPU (the oracle of the CUDA kernel).
#pragma once

#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/ops/embedding.hpp"
#include "moss/ops/embedding/math.hpp"

namespace moss {

/// Gathers table rows into out as float32 (double for T = double). Every id is checked before
/// anything is written, so a bad id (shape_error naming the first bad row and its id) leaves out
/// untouched.
template <class T>
void embedding(const Host&, const EmbeddingArgs<T>& a) {
  validate(a, "embedding");
  const index_t rows = a.ids.shape[0];
  const index_t vocab = a.table.shape[0];
  const index_t dim = a.table.shape[1];
  for (index_t r = 0; r < rows; ++r) {
    const std::int64_t id = a.ids(r);
    if (!embedding_id_valid(id, vocab)) detail::raise_bad_embedding_id("embedding", r, id, vocab);
  }
  for (index_t r = 0; r < rows; ++r) {
    const T* src = a.table.data + a.ids(r) * a.table.stride[0];  // (dim)
    compute_t<T>* dst = a.out.data + r * a.out.stride[0];        // (dim)
    if constexpr (std::is_same_v<T, double>) {
      for (index_t i = 0; i < dim; ++i) dst[i] = src[i];
    } else {
      for (index_t i = 0; i < dim; ++i) dst[i] = to_float(src[i]);
    }
  }
}

}  // namespace moss
