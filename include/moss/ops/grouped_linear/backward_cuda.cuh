// moss/ops/grouped_linear/backward_cuda.cuh: `grouped_linear_backward` on CUDA (needs nvcc): the
// CUDA `linear_backward` over each expert's segment, experts in order, as on the host. So dX of a
// segment is one cublasGemmEx (the forward's per-segment strategy, moss/ops/grouped_linear.hpp),
// dW_e one cublasGemmEx with K = the segment's length, db_e the fixed-order column sums of
// moss/ops/linear/backward_cuda.cuh. An empty segment launches no GEMM: its dW_e and db_e are
// zeroed (left as they are when accumulating).
//
// Like the forward, the op needs the segment offsets on the host: pass `host_offsets` when the
// caller has them (a layer reads them once per plan, `read_offsets`); otherwise `offsets` is
// copied to the host and the stream synchronised once.
#pragma once

#include <cstdint>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/linear/backward_cuda.cuh"

namespace moss {

/// The gradients of `grouped_linear` on the GPU, queued on `gpu.stream` (see
/// moss/ops/grouped_linear_backward.hpp): each present output is computed; an empty segment gives
/// dW_e = 0 and db_e = 0 (unchanged when accumulating), rows at or past offsets[X] get dX = 0.
/// Reads `offsets` to the host (one synchronisation) unless `host_offsets` is given; `offsets`
/// is device memory here. Deterministic (no atomics). T is a storage type: double is host-only.
template <class T>
void grouped_linear_backward(const Cuda& gpu, const GroupedLinearBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::grouped_linear_backward: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "grouped_linear_backward");
  const index_t rows = a.x.shape[0], in = a.x.shape[1], X = a.weight.shape[0];
  std::vector<std::int32_t> read;
  const std::int32_t* off = a.host_offsets;
  if (!off) {
    read.resize(static_cast<std::size_t>(X + 1));
    download(gpu, read.data(), a.offsets.data, X + 1);
    off = read.data();
  }
  detail::check_offsets("grouped_linear_backward", off, X, rows);
  if (present(a.dx) && off[X] < rows) {
    // Rows past the last segment: zero bits, which are 0 in float, f16 and bf16.
    const index_t tail = rows - off[X];
    const index_t ld = rows > 1 ? a.dx.stride[0] : in;
    MOSS_CUDA_CHECK(cudaMemset2DAsync(a.dx.data + off[X] * ld, static_cast<std::size_t>(ld) * sizeof(T), 0,
                                      static_cast<std::size_t>(in) * sizeof(T), static_cast<std::size_t>(tail),
                                      gpu.stream));
  }
  detail::grouped_linear_backward_segments(gpu, a, off);
}

}  // namespace moss
