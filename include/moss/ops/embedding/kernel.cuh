// moss/ops/embedding/kernel.cuh: the `embedding` kernel (one block per row).
#pragma once

#include <cstdint>

#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"
#include "moss/ops/embedding/math.hpp"

namespace moss::detail {

/// Pointers and sizes of one `embedding` launch (strides in elements).
template <class T>
struct EmbeddingParams {
  const std::int64_t* ids;  // (rows)
  index_t ids_stride;
  const T* table;  // (vocab, dim)
  index_t ld_table;
  index_t vocab;
  float* out;  // (rows, dim)
  index_t ld_out;
  index_t rows;
  index_t dim;
  unsigned long long* first_bad_row;  // lowest row with a bad id (atomicMin); null: not tracked
};

/// One block per row (grid-stride over rows): widens table[ids[row]] into out[row]. A bad id
/// reads nothing from the table, fills the row with NaN and records the row.
template <class T, int kVec>
__global__ void embedding_kernel(const EmbeddingParams<T> p) {
  const index_t step = index_t(blockDim.x) * kVec;
  for (index_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const std::int64_t id = p.ids[row * p.ids_stride];
    float* dst = p.out + row * p.ld_out;
    if (!embedding_id_valid(id, p.vocab)) {
      if (threadIdx.x == 0 && p.first_bad_row) atomicMin(p.first_bad_row, static_cast<unsigned long long>(row));
      const float nan = __uint_as_float(0x7fc00000u);
      for (index_t i = threadIdx.x; i < p.dim; i += blockDim.x) dst[i] = nan;
      continue;
    }
    const T* src = p.table + id * p.ld_table;
    for (index_t i = index_t(threadIdx.x) * kVec; i < p.dim; i += step) {
      float v[kVec];
      cuda::load_vec<kVec>(src + i, v);
      cuda::store_vec<kVec>(dst + i, v);
    }
  }
}

}  // namespace moss::detail
