// moss/ops/embedding/cuda.cuh: `embedding` on CUDA.
#pragma once

#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/ops/embedding.hpp"
#include "moss/ops/embedding/kernel.cuh"
#include "moss/ops/embedding/tuning.cuh"

namespace moss {

namespace detail {

/// True when every table row and out row starts on a 4-element boundary.
template <class T>
bool embedding_vectorizable(const EmbeddingArgs<T>& a) {
  const index_t rows = a.ids.shape[0];
  const index_t vocab = a.table.shape[0];
  return a.table.shape[1] % 4 == 0 && row_aligned<4>(a.table.data) && (vocab <= 1 || a.table.stride[0] % 4 == 0) &&
         row_aligned<4>(a.out.data) && (rows <= 1 || a.out.stride[0] % 4 == 0);
}

}  // namespace detail

/// Gathers table rows into out as float32 on the GPU, queued on `gpu.stream`. Unless
/// `a.ids_checked`, it then synchronises the stream and throws shape_error naming the first row
/// with an id outside [0, vocab) (that row of out holds NaN). With `ids_checked` it does not
/// synchronise; a bad id still reads nothing outside the table and yields a NaN row.
/// Writing NaN rather than clamping the id keeps a bad id visible in everything downstream.
template <class T>
void embedding(const Cuda& gpu, const EmbeddingArgs<T>& a) {
  validate(a, "embedding");
  const index_t rows = a.ids.shape[0];
  if (rows == 0) return;
  Buffer<unsigned long long> first_bad;  // (1)
  if (!a.ids_checked) {
    first_bad = gpu.alloc<unsigned long long>(1);
    MOSS_CUDA_CHECK(cudaMemsetAsync(first_bad.data(), 0xff, sizeof(unsigned long long), gpu.stream));
  }
  const detail::EmbeddingParams<T> p{.ids = a.ids.data,
                                     .ids_stride = a.ids.stride[0],
                                     .table = a.table.data,
                                     .ld_table = a.table.stride[0],
                                     .vocab = a.table.shape[0],
                                     .out = a.out.data,
                                     .ld_out = a.out.stride[0],
                                     .rows = rows,
                                     .dim = a.table.shape[1],
                                     .first_bad_row = first_bad.data()};
  const detail::EmbeddingConfig cfg = detail::embedding_config(a.table.shape[1], detail::embedding_vectorizable(a));
  const unsigned blocks = detail::row_blocks(rows);
  if (cfg.vec == 4) {
    detail::embedding_kernel<T, 4><<<blocks, cfg.threads, 0, gpu.stream>>>(p);
  } else {
    detail::embedding_kernel<T, 1><<<blocks, cfg.threads, 0, gpu.stream>>>(p);
  }
  MOSS_CHECK_LAUNCH("embedding_kernel", gpu.stream);
  if (a.ids_checked) return;

  unsigned long long row = 0;
  MOSS_CUDA_CHECK(cudaMemcpyAsync(&row, first_bad.data(), sizeof(row), cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
  if (row == ~0ull) return;
  std::int64_t id = 0;
  MOSS_CUDA_CHECK(cudaMemcpyAsync(&id, a.ids.data + static_cast<index_t>(row) * a.ids.stride[0], sizeof(id),
                                  cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
  detail::raise_bad_embedding_id("embedding", static_cast<index_t>(row), id, a.table.shape[0]);
}

}  // namespace moss
