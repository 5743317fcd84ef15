// moss/ops/permute/cuda.cuh: `permute_plan`, `gather_rows` and `combine_rows` on CUDA (needs
// nvcc). Queued on the stream; none of them synchronises with the host.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute/kernel.cuh"
#include "moss/ops/permute/tuning.cuh"

namespace moss {

namespace detail::permute {

/// Blocks for a grid-stride loop over n items.
inline unsigned blocks_for(index_t n, int threads) {
  return static_cast<unsigned>(std::clamp<index_t>(ceil_div<index_t>(n, threads), 1, kPermuteTuning.max_blocks));
}

/// Bits that hold the sort keys 0..X (X marks an out-of-range expert).
inline int key_bits(index_t num_experts) {
  int b = 1;
  while ((index_t(1) << b) <= num_experts) ++b;
  return b;
}

}  // namespace detail::permute

/// Builds the plan on the GPU: CUB's stable radix sort of the slot-major pairs by expert, then
/// run bounds, offsets and rows (contract: moss/ops/permute.hpp). An expert outside [0, X) is
/// dropped (the router never writes one; the host oracle raises instead).
inline void permute_plan(const Cuda& gpu, const PermutePlanArgs& a) {
  using namespace detail::permute;
  validate(a, "permute_plan");
  const index_t T = a.expert.shape[0], K = a.expert.shape[1], P = T * K;
  const int X = static_cast<int>(a.num_experts);
  constexpr int threads = kPermuteTuning.threads;
  Buffer<std::int32_t> bounds = gpu.alloc<std::int32_t>(2 * a.num_experts);  // start, end
  MOSS_CUDA_CHECK(cudaMemsetAsync(bounds.data(), 0, sizeof(std::int32_t) * 2 * a.num_experts, gpu.stream));
  if (P > 0) MOSS_CUDA_CHECK(cudaMemsetAsync(a.row_pair.data, 0xff, sizeof(std::int32_t) * P, gpu.stream));
  if (P > 0) {
    Buffer<std::int32_t> keys = gpu.alloc<std::int32_t>(2 * P), values = gpu.alloc<std::int32_t>(2 * P);
    keys_kernel<<<blocks_for(P, threads), threads, 0, gpu.stream>>>(a.expert.data, T, K, X, keys.data(), values.data());
    MOSS_CHECK_LAUNCH("permute keys_kernel", gpu.stream);
    std::size_t temp_bytes = 0;
    const int bits = key_bits(a.num_experts);
    MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys.data() + P, values.data(),
                                                    values.data() + P, static_cast<int>(P), 0, bits, gpu.stream));
    Buffer<unsigned char> temp = gpu.alloc<unsigned char>(static_cast<index_t>(temp_bytes));
    MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys.data(), keys.data() + P,
                                                    values.data(), values.data() + P, static_cast<int>(P), 0, bits,
                                                    gpu.stream));
    const std::int32_t* sorted_keys = keys.data() + P;
    const std::int32_t* sorted_values = values.data() + P;
    bounds_kernel<<<blocks_for(P, threads), threads, 0, gpu.stream>>>(sorted_keys, P, X, bounds.data(),
                                                                      bounds.data() + X);
    MOSS_CHECK_LAUNCH("permute bounds_kernel", gpu.stream);
    offsets_kernel<<<1, 32, 0, gpu.stream>>>(bounds.data(), bounds.data() + X, X, a.capacity, a.counts.data,
                                             a.offsets.data);
    MOSS_CHECK_LAUNCH("permute offsets_kernel", gpu.stream);
    scatter_kernel<<<blocks_for(P, threads), threads, 0, gpu.stream>>>(sorted_keys, sorted_values, T, K, X, a.capacity,
                                                                       bounds.data(), a.offsets.data, a.pair_row.data,
                                                                       a.row_pair.data);
    MOSS_CHECK_LAUNCH("permute scatter_kernel", gpu.stream);
  } else {
    offsets_kernel<<<1, 32, 0, gpu.stream>>>(bounds.data(), bounds.data() + X, X, a.capacity, a.counts.data,
                                             a.offsets.data);
    MOSS_CHECK_LAUNCH("permute offsets_kernel", gpu.stream);
  }
}

/// Gathers the kept rows on the GPU (the kept count is read on the device).
template <class T>
void gather_rows(const Cuda& gpu, const GatherRowsArgs<T>& a) {
  using namespace detail::permute;
  validate(a, "gather_rows");
  const index_t rows = a.row_pair.shape[0], D = a.x.shape[1];
  if (rows == 0) return;
  constexpr index_t V = 16 / sizeof(T);
  const bool vector = D % V == 0 && reinterpret_cast<std::uintptr_t>(a.x.data) % 16 == 0 &&
                      reinterpret_cast<std::uintptr_t>(a.out.data) % 16 == 0 &&
                      (a.x.shape[0] <= 1 || a.x.stride[0] % V == 0);
  constexpr int threads = kPermuteTuning.threads;
  gather_kernel<T><<<blocks_for(rows * 32, threads), threads, 0, gpu.stream>>>(
      a.x.data, a.x.stride[0], D, a.row_pair.data, a.offsets.data + (a.offsets.shape[0] - 1), a.k, rows, a.out.data,
      vector);
  MOSS_CHECK_LAUNCH("gather_kernel", gpu.stream);
}

/// Combines the expert outputs on the GPU: float32 sums in slot order, rounded once.
template <class T>
void combine_rows(const Cuda& gpu, const CombineRowsArgs<T>& a) {
  using namespace detail::permute;
  validate(a, "combine_rows");
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.y.shape[1];
  if (tokens == 0) return;
  constexpr index_t V = 16 / sizeof(T);
  const bool vector = D % V == 0 && reinterpret_cast<std::uintptr_t>(a.y.data) % 16 == 0 &&
                      reinterpret_cast<std::uintptr_t>(a.out.data) % 16 == 0 &&
                      (a.y.shape[0] <= 1 || a.y.stride[0] % V == 0) && (tokens <= 1 || a.out.stride[0] % V == 0);
  constexpr int threads = kPermuteTuning.combine_threads;
  const unsigned blocks = static_cast<unsigned>(std::min<index_t>(tokens, 65535));
  combine_kernel<T><<<blocks, threads, 0, gpu.stream>>>(
      a.y.data, a.y.shape[0] > 1 ? a.y.stride[0] : D, a.pair_row.data, present(a.gate) ? a.gate.data : nullptr, tokens,
      K, D, a.weight_begin, a.weight_end, a.out.data, tokens > 1 ? a.out.stride[0] : D, vector);
  MOSS_CHECK_LAUNCH("combine_kernel", gpu.stream);
}

}  // namespace moss
