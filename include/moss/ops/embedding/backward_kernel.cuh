// moss/ops/embedding/backward_kernel.cuh: the kernels of `embedding_backward` on CUDA (needs
// nvcc), around a CUB radix sort of the (id, row) pairs:
//  - keys: key[r] = ids[r] (0 for a bad id, whose lowest row is recorded by an integer
//    atomicMin), value[r] = r. The sort is stable, so equal ids keep their rows ascending: the
//    host's (id, row) order.
//  - fill: dtable = 0 (unless accumulating); all NaN when an id was bad.
//  - segments: one block per sorted position; the first position of each run of equal ids sums
//    the run's dout rows in ascending row order into a zeroed sum (one thread per column group,
//    each column its own sequential sum: the host's order, bit for bit) and writes or adds it to
//    the id's table row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"
#include "moss/ops/embedding/math.hpp"

namespace moss::detail {

/// No bad id seen (the initial value of the first-bad-row flag).
inline constexpr unsigned long long kEmbeddingNoBadRow = ~0ull;

/// True when the flag (null: not tracked) holds a bad row.
MOSS_DEVICE bool embedding_saw_bad_id(const unsigned long long* first_bad_row) {
  return first_bad_row && *first_bad_row != kEmbeddingNoBadRow;
}

/// key[r] = ids[r] and value[r] = r (grid-stride over rows); a bad id gets key 0 and its row is
/// recorded in `first_bad_row` (lowest wins).
template <class Key>
__global__ void embedding_backward_keys_kernel(const std::int64_t* ids, index_t ids_stride, index_t rows, index_t vocab,
                                               Key* keys, std::int32_t* values, unsigned long long* first_bad_row) {
  for (index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += index_t(gridDim.x) * blockDim.x) {
    const std::int64_t id = ids[r * ids_stride];
    if (embedding_id_valid(id, vocab)) {
      keys[r] = static_cast<Key>(id);
    } else {
      keys[r] = Key(0);
      atomicMin(first_bad_row, static_cast<unsigned long long>(r));
    }
    values[r] = static_cast<std::int32_t>(r);
  }
}

/// Sets every element of dtable (vocab, dim) to NaN when an id was bad, else to zero when
/// `zero` (else leaves it). Grid-stride over the elements.
template <class R>
__global__ void embedding_backward_fill_kernel(R* dtable, index_t ld_table, index_t vocab, index_t dim, bool zero,
                                               const unsigned long long* first_bad_row) {
  const bool bad = embedding_saw_bad_id(first_bad_row);
  if (!bad && !zero) return;
  const R value = bad ? R(__uint_as_float(0x7fc00000u)) : R(0);
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < vocab * dim;
       e += index_t(gridDim.x) * blockDim.x) {
    const index_t v = e / dim;
    dtable[v * ld_table + (e - v * dim)] = value;
  }
}

/// One block per sorted position s (grid-stride). The first position of a run of equal ids sums
/// that run's dout rows, rows ascending, `kVec` columns per access, and writes the sum to (or,
/// with `accumulate`, adds it into) the id's table row. Nothing when an id was bad.
template <class Key, int kVec>
__global__ void embedding_backward_segments_kernel(const Key* keys, const std::int32_t* rows_sorted, index_t rows,
                                                   const float* dout, index_t ld_dout, float* dtable, index_t ld_table,
                                                   index_t dim, bool accumulate,
                                                   const unsigned long long* first_bad_row) {
  if (embedding_saw_bad_id(first_bad_row)) return;
  const index_t step = index_t(blockDim.x) * kVec;
  for (index_t s = blockIdx.x; s < rows; s += gridDim.x) {
    const Key id = keys[s];
    if (s > 0 && keys[s - 1] == id) continue;  // not the first row of its id
    float* dst = dtable + static_cast<index_t>(id) * ld_table;
    for (index_t i = index_t(threadIdx.x) * kVec; i < dim; i += step) {
      float sum[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum[j] = 0.0f;
      for (index_t q = s; q < rows && keys[q] == id; ++q) {
        float g[kVec];
        cuda::load_vec<kVec, cuda::Load::read_only>(dout + index_t(rows_sorted[q]) * ld_dout + i, g);
#pragma unroll
        for (int j = 0; j < kVec; ++j) sum[j] += g[j];
      }
      if (accumulate) {
        float old[kVec];
        cuda::load_vec<kVec>(dst + i, old);
#pragma unroll
        for (int j = 0; j < kVec; ++j) sum[j] = old[j] + sum[j];
      }
      cuda::store_vec<kVec>(dst + i, sum);
    }
  }
}

}  // namespace moss::detail
