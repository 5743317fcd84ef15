// moss/ops/grouped_linear/cuda.cuh: `grouped_linear` on CUDA (needs nvcc): one cublasGemmEx per
// non-empty expert segment (see moss/ops/grouped_linear.hpp for why, and the host
// synchronisation it needs when no host offsets are given).
#pragma once

#include <cstdint>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/linear/cuda.cuh"

namespace moss {

/// Runs every expert's linear map over its segment on the GPU, queued on the stream. Reads
/// `offsets` to the host (one synchronisation) unless `host_offsets` is given.
template <class T>
void grouped_linear(const Cuda& gpu, const GroupedLinearArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::grouped_linear: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "grouped_linear");
  const index_t X = a.weight.shape[0];
  std::vector<std::int32_t> read;
  const std::int32_t* off = a.host_offsets;
  if (!off) {
    read.resize(static_cast<std::size_t>(X + 1));
    download(gpu, read.data(), a.offsets.data, X + 1);
    off = read.data();
  }
  detail::check_offsets("grouped_linear", off, X, a.x.shape[0]);
  // cublasGemmEx needs no per-shape plan: the segment lengths change with every batch, which
  // would defeat cuBLASLt's plan cache.
  detail::for_each_segment(a, off, [&](const LinearArgs<T>& l) { detail::linear_gemm_ex(gpu, l); });
}

}  // namespace moss
