// moss/ops/permute/cuda.cuh: `permute_plan`, `gather_rows` and `combine_rows` on CUDA (needs
// nvcc). Queued on the stream; none of them synchronises with the host.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <cstddef>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute/kernel.cuh"
#include "moss/ops/permute/tuning.cuh"

namespace moss {

namespace detail::permute {

/// Blocks for a grid-stride loop over n items.
inline unsigned blocks_for(index_t n, int threads) { return cuda::grid_blocks(n, threads, kPermuteTuning.max_blocks); }

/// Bits that hold the sort keys 0..X (X marks an out-of-range expert).
inline int key_bits(index_t num_experts) {
  int b = 1;
  while ((index_t(1) << b) <= num_experts) ++b;
  return b;
}

/// Bytes of CUB's sort storage for `pairs` pairs and X experts (a size query: no memory, no work).
inline std::size_t sort_temp_bytes(index_t pairs, index_t num_experts) {
  std::size_t bytes = 0;
  const std::int32_t* no_keys = nullptr;
  std::int32_t* no_out = nullptr;
  MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, no_keys, no_out, no_keys, no_out,
                                                  static_cast<int>(pairs), 0, key_bits(num_experts)));
  return bytes;
}

/// The plan's scratch arrays, taken from a workspace layout in this order (pointers are null
/// when the layout only measures): the run bounds, the sort keys and values, CUB's storage.
struct PlanScratch {
  std::int32_t* bounds = nullptr;  // (2, X): start, end of each expert's run
  std::int32_t* keys = nullptr;    // (2, P): input, sorted
  std::int32_t* values = nullptr;  // (2, P): input, sorted
  std::byte* sort_temp = nullptr;  // sort_temp_bytes
};

inline PlanScratch take_scratch(WorkspaceLayout& layout, index_t pairs, index_t num_experts,
                                std::size_t sort_temp_bytes) {
  PlanScratch s;
  s.bounds = layout.take<std::int32_t>(2 * num_experts);
  if (pairs == 0) return s;
  s.keys = layout.take<std::int32_t>(2 * pairs);
  s.values = layout.take<std::int32_t>(2 * pairs);
  s.sort_temp = layout.take<std::byte>(static_cast<index_t>(sort_temp_bytes));
  return s;
}

/// Whether one block makes the plan of `a` (small_plan_kernel): up to kSmallPlanPairs pairs and
/// kSmallPlanExperts experts.
inline bool small_plan(const PermutePlanArgs& a) {
  return a.expert.shape[0] * a.expert.shape[1] <= kSmallPlanPairs && a.num_experts <= kSmallPlanExperts;
}

}  // namespace detail::permute

/// Bytes of scratch `permute_plan` needs on the GPU for `a` (see `detail::permute::PlanScratch`;
/// none for a small plan, which one block makes in shared memory).
inline std::size_t workspace_bytes(const Cuda&, const PermutePlanArgs& a) {
  using namespace detail::permute;
  validate(a, "workspace_bytes (permute_plan)");
  if (small_plan(a)) return 0;
  const index_t P = a.expert.shape[0] * a.expert.shape[1];
  WorkspaceLayout measure;
  take_scratch(measure, P, a.num_experts, P > 0 ? sort_temp_bytes(P, a.num_experts) : 0);
  return measure.bytes();
}

/// Builds the plan on the GPU: CUB's stable radix sort of the slot-major pairs by expert, then
/// run bounds, offsets (a block-wide scan) and rows (contract: moss/ops/permute.hpp); up to
/// kSmallPlanPairs pairs and kSmallPlanExperts experts, one launch of one block instead
/// (`small_plan_kernel`, no scratch). An expert outside [0, X) is dropped (the router never
/// writes one; the host oracle raises instead).
/// Scratch from `a.workspace` (the contract of moss/core/workspace.hpp: at least
/// `workspace_bytes(gpu, a)` bytes, aligned; `config_error` otherwise), or from the pool.
inline void permute_plan(const Cuda& gpu, const PermutePlanArgs& a) {
  using namespace detail::permute;
  validate(a, "permute_plan");
  const index_t T = a.expert.shape[0], K = a.expert.shape[1], P = T * K;
  const int X = static_cast<int>(a.num_experts);
  if (small_plan(a)) {
    (void)OpWorkspace<Cuda>(gpu, a.workspace, 0, "permute_plan (cuda)");  // a given one is still checked
    const std::size_t smem = sizeof(std::int32_t) * static_cast<std::size_t>(P + 2 * X + 1);
    small_plan_kernel<kSmallPlanThreads><<<1, kSmallPlanThreads, smem, gpu.stream>>>(
        a.expert.data, T, K, X, a.capacity, a.pair_row.data, a.row_pair.data, a.offsets.data, a.counts.data);
    MOSS_CHECK_LAUNCH("permute small_plan_kernel", gpu.stream);
    return;
  }
  const std::size_t temp_bytes = P > 0 ? sort_temp_bytes(P, a.num_experts) : 0;
  WorkspaceLayout measure;
  take_scratch(measure, P, a.num_experts, temp_bytes);
  const OpWorkspace<Cuda> ws(gpu, a.workspace, measure.bytes(), "permute_plan (cuda)");
  WorkspaceLayout layout = ws.layout();
  const PlanScratch s = take_scratch(layout, P, a.num_experts, temp_bytes);
  constexpr PermuteTuning cfg = kPermuteTuning;
  constexpr int threads = cfg.threads;
  MOSS_CUDA_CHECK(cudaMemsetAsync(s.bounds, 0, sizeof(std::int32_t) * 2 * a.num_experts, gpu.stream));
  if (P > 0) {
    MOSS_CUDA_CHECK(cudaMemsetAsync(a.row_pair.data, 0xff, sizeof(std::int32_t) * P, gpu.stream));
    keys_kernel<><<<blocks_for(P, threads), threads, 0, gpu.stream>>>(a.expert.data, T, K, X, s.keys, s.values);
    MOSS_CHECK_LAUNCH("permute keys_kernel", gpu.stream);
    std::size_t sort_bytes = temp_bytes;
    MOSS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.sort_temp, sort_bytes, s.keys, s.keys + P, s.values, s.values + P,
                                                    static_cast<int>(P), 0, key_bits(a.num_experts), gpu.stream));
    bounds_kernel<><<<blocks_for(P, threads), threads, 0, gpu.stream>>>(s.keys + P, P, X, s.bounds, s.bounds + X);
    MOSS_CHECK_LAUNCH("permute bounds_kernel", gpu.stream);
  }
  offsets_kernel<cfg.scan_threads, cfg.scan_items>
      <<<1, cfg.scan_threads, 0, gpu.stream>>>(s.bounds, s.bounds + X, X, a.capacity, a.counts.data, a.offsets.data);
  MOSS_CHECK_LAUNCH("permute offsets_kernel", gpu.stream);
  if (P > 0) {
    scatter_kernel<><<<blocks_for(P, threads), threads, 0, gpu.stream>>>(
        s.keys + P, s.values + P, T, K, X, a.capacity, s.bounds, a.offsets.data, a.pair_row.data, a.row_pair.data);
    MOSS_CHECK_LAUNCH("permute scatter_kernel", gpu.stream);
  }
}

/// Gathers the kept rows on the GPU (the kept count is read on the device).
template <class T>
void gather_rows(const Cuda& gpu, const GatherRowsArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::gather_rows: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  using namespace detail::permute;
  validate(a, "gather_rows");
  const index_t rows = a.row_pair.shape[0], D = a.x.shape[1];
  if (rows == 0) return;
  const bool vector = cuda::vector_rows(a.x, cuda::kVec16<T>) && cuda::vector_rows(a.out, cuda::kVec16<T>);
  constexpr int threads = kPermuteTuning.threads;
  gather_kernel<T><<<blocks_for(rows * 32, threads), threads, 0, gpu.stream>>>(
      a.x.data, a.x.stride[0], D, a.row_pair.data, a.offsets.data + (a.offsets.shape[0] - 1), a.k, rows, a.out.data,
      vector);
  MOSS_CHECK_LAUNCH("gather_kernel", gpu.stream);
}

/// Combines the expert outputs on the GPU: float32 sums in slot order, rounded once.
template <class T>
void combine_rows(const Cuda& gpu, const CombineRowsArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::combine_rows: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  using namespace detail::permute;
  validate(a, "combine_rows");
  const index_t tokens = a.pair_row.shape[0], K = a.pair_row.shape[1], D = a.y.shape[1];
  if (tokens == 0) return;
  const bool vector = cuda::vector_rows(a.y, cuda::kVec16<T>) && cuda::vector_rows(a.out, cuda::kVec16<T>);
  constexpr int threads = kPermuteTuning.combine_threads;
  const unsigned blocks = cuda::grid_blocks(tokens, 1);
  combine_kernel<T><<<blocks, threads, 0, gpu.stream>>>(
      a.y.data, a.y.shape[0] > 1 ? a.y.stride[0] : D, a.pair_row.data, present(a.gate) ? a.gate.data : nullptr, tokens,
      K, D, a.weight_begin, a.weight_end, a.out.data, tokens > 1 ? a.out.stride[0] : D, vector);
  MOSS_CHECK_LAUNCH("combine_kernel", gpu.stream);
}

}  // namespace moss
