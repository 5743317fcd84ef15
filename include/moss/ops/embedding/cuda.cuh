// moss/ops/embedding/cuda.cuh: `embedding` on CUDA.
#pragma once

#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/embedding.hpp"
#include "moss/ops/embedding/kernel.cuh"
#include "moss/ops/embedding/tuning.cuh"

namespace moss {

namespace detail {

/// True when every table row and out row is whole, aligned 4-element vectors.
template <class T>
bool embedding_vectorizable(const EmbeddingArgs<T>& a) {
  return cuda::vector_rows(a.table, 4) && cuda::vector_rows(a.out, 4);
}

/// The workspace of one CUDA `embedding` call: the first bad row's flag, unless the caller
/// checked the ids (or there are no rows). Returns the flag (null when measuring or absent).
template <class T>
unsigned long long* embedding_workspace(const EmbeddingArgs<T>& a, WorkspaceLayout& layout) {
  return a.ids_checked || a.bad_row || a.ids.shape[0] == 0 ? nullptr : layout.take<unsigned long long>(1);
}

}  // namespace detail

/// Scratch bytes `embedding` needs on CUDA for `a` (moss/core/workspace.hpp): 256 for the
/// bad-id flag unless `a.ids_checked`, else none. T is a storage type: double is host-only.
template <class T>
std::size_t workspace_bytes(const Cuda&, const EmbeddingArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::embedding: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  WorkspaceLayout layout;
  detail::embedding_workspace(a, layout);
  return layout.bytes();
}

/// Gathers table rows into out as float32 on the GPU, queued on `gpu.stream`. Unless
/// `a.ids_checked` or `a.bad_row`, it then synchronises the stream and throws shape_error naming
/// the first row with an id outside [0, vocab) (that row of out holds NaN). With `ids_checked` it
/// does not synchronise; a bad id still reads nothing outside the table and yields a NaN row.
/// With `bad_row` it does not synchronise either and lowers *bad_row to every bad row.
/// Writing NaN rather than clamping the id keeps a bad id visible in everything downstream.
/// T is a storage type: double is host-only.
template <class T>
void embedding(const Cuda& gpu, const EmbeddingArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::embedding: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "embedding");
  const index_t rows = a.ids.shape[0];
  if (rows == 0) return;
  const OpWorkspace<Cuda> workspace(gpu, a.workspace, workspace_bytes(gpu, a), "embedding");
  WorkspaceLayout layout = workspace.layout();
  unsigned long long* first_bad = detail::embedding_workspace(a, layout);  // (1), null when ids_checked
  if (first_bad) MOSS_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), gpu.stream));
  const detail::EmbeddingParams<T> p{.ids = a.ids.data,
                                     .ids_stride = a.ids.stride[0],
                                     .table = a.table.data,
                                     .ld_table = a.table.stride[0],
                                     .vocab = a.table.shape[0],
                                     .out = a.out.data,
                                     .ld_out = a.out.stride[0],
                                     .rows = rows,
                                     .dim = a.table.shape[1],
                                     .first_bad_row = a.bad_row ? a.bad_row : first_bad};
  const cuda::RowConfig cfg = detail::embedding_config(a.table.shape[1], detail::embedding_vectorizable(a));
  const unsigned blocks = cuda::row_blocks(rows);
  const auto kernel = cfg.vec == 4 ? detail::embedding_kernel<T, 4> : detail::embedding_kernel<T, 1>;
  cuda::launch("embedding_kernel", kernel, blocks, cfg.threads, 0, gpu.stream, p);
  if (!first_bad) return;

  unsigned long long row = 0;
  MOSS_CUDA_CHECK(cudaMemcpyAsync(&row, first_bad, sizeof(row), cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
  if (row == ~0ull) return;
  std::int64_t id = 0;
  MOSS_CUDA_CHECK(cudaMemcpyAsync(&id, a.ids.data + static_cast<index_t>(row) * a.ids.stride[0], sizeof(id),
                                  cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
  detail::raise_bad_embedding_id("embedding", static_cast<index_t>(row), id, a.table.shape[0]);
}

}  // namespace moss
