// moss/ops/permute/kernel.cuh: the permutation kernels (needs nvcc).
//
// Plan: keys_kernel lays the (token, slot) pairs out slot-major (key = expert, value = pair
// index s·T + t); CUB's radix sort (stable) sorts them by expert; bounds_kernel marks where each
// expert's run starts and ends; offsets_kernel turns the run lengths into kept counts and, by a
// block-wide CUB scan over tiles of experts, row offsets; scatter_kernel gives every kept pair
// its row. No host synchronisation, no atomics: integer-exact, so equal to the host plan. Up to
// kSmallPlanPairs pairs and kSmallPlanExperts experts (a decode step, a small batch) one block
// does all of it instead (small_plan_kernel below).
// Gather: one warp per permuted row, 16-byte copies when aligned. Combine: one block per token,
// each thread a 16-byte (or single-element) column chunk, slots added in order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"

namespace moss::detail::permute {

// keys_kernel, bounds_kernel and scatter_kernel are templates, as every kernel of a header must
// be: a plain __global__ function is defined again by every translation unit that includes the
// header, and the program does not link (tests/CMakeLists.txt: the link check).

/// key[s·T + t] = expert[t·K + s] (X for an expert outside [0, X): sorted last and dropped),
/// value = s·T + t.
template <class = void>
__global__ void keys_kernel(const std::int32_t* expert, index_t tokens, index_t k, int num_experts, std::int32_t* keys,
                            std::int32_t* values) {
  const index_t pairs = tokens * k;
  for (index_t sm = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; sm < pairs;
       sm += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t t = sm % tokens, s = sm / tokens;
    const std::int32_t e = expert[t * k + s];
    keys[sm] = (e >= 0 && e < num_experts) ? e : num_experts;
    values[sm] = static_cast<std::int32_t>(sm);
  }
}

/// start[e] / end[e] = the sorted positions where expert e's run begins / ends (both 0 when
/// the expert has no pair: the caller zeroes them).
template <class = void>
__global__ void bounds_kernel(const std::int32_t* keys, index_t pairs, int num_experts, std::int32_t* start,
                              std::int32_t* end) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const std::int32_t e = keys[i];
    if (e >= num_experts) continue;
    if (i == 0 || keys[i - 1] != e) start[e] = static_cast<std::int32_t>(i);
    if (i + 1 == pairs || keys[i + 1] != e) end[e] = static_cast<std::int32_t>(i + 1);
  }
}

/// counts[e] = end[e] − start[e]; offsets = the exclusive scan of min(count, capacity) (all
/// counts when capacity is 0). One block: thread j scans experts [j·kItems, j·kItems + kItems)
/// of each tile of kThreads·kItems experts, tiles in order with the running total carried.
template <int kThreads, int kItems>
__global__ void __launch_bounds__(kThreads)
    offsets_kernel(const std::int32_t* start, const std::int32_t* end, int num_experts, index_t capacity,
                   std::int32_t* counts, std::int32_t* offsets) {
  using Scan = cub::BlockScan<std::int32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_temp;
  if (threadIdx.x == 0) offsets[0] = 0;
  std::int32_t carry = 0;  // kept rows of every expert before this tile (the same in every thread)
  for (index_t tile = 0; tile < num_experts; tile += kThreads * kItems) {
    const index_t first = tile + static_cast<index_t>(threadIdx.x) * kItems;
    std::int32_t kept[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const index_t e = first + j;
      const std::int32_t c = e < num_experts ? end[e] - start[e] : 0;
      if (e < num_experts) counts[e] = c;
      kept[j] = capacity > 0 && c > capacity ? static_cast<std::int32_t>(capacity) : c;
    }
    std::int32_t tile_total = 0;
    Scan(scan_temp).InclusiveSum(kept, kept, tile_total);
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      if (first + j < num_experts) offsets[first + j + 1] = carry + kept[j];
    carry += tile_total;
    __syncthreads();  // scan_temp is reused by the next tile
  }
}

// ---- The small plan: one block does everything (decode steps, small batches) ----
// The same plan without CUB and the seven other launches: one block loads every pair's expert
// (slot-major) into shared memory, counts them per expert (integer shared-memory atomics: the
// counts are exact whatever their order), thread 0 scans the kept counts into offsets, and each
// pair's rank is the number of earlier pairs (slot-major) with its expert: the stable sort's
// position, found by comparison, O(P²) work for P pairs spread over the block, which is what
// bounds the path to kSmallPlanPairs pairs. The routines below run on the host in the tests.

/// The small plan's expert of slot-major pair sm = s·T + t: expert[t·K + s], or −1 outside
/// [0, X) (dropped, not counted).
MOSS_HD std::int32_t small_plan_expert(const std::int32_t* expert, index_t tokens, index_t k, int num_experts,
                                       index_t sm) {
  const std::int32_t e = expert[(sm % tokens) * k + sm / tokens];
  return e >= 0 && e < num_experts ? e : -1;
}

/// Thread 0's part: counts (already summed in `count`) out, and the offsets of the kept pairs
/// (min(count, capacity); every pair when capacity is 0) into `offsets` (X + 1) and `shared_off`.
MOSS_HD void small_plan_offsets(const std::int32_t* count, int num_experts, index_t capacity, std::int32_t* counts,
                                std::int32_t* offsets, std::int32_t* shared_off) {
  std::int32_t total = 0;
  for (int e = 0; e < num_experts; ++e) {
    shared_off[e] = total;
    offsets[e] = total;
    counts[e] = count[e];
    total += capacity > 0 && count[e] > capacity ? static_cast<std::int32_t>(capacity) : count[e];
  }
  shared_off[num_experts] = total;
  offsets[num_experts] = total;
}

/// Slot-major pair sm's row (its expert's offset plus its rank among the earlier pairs of that
/// expert), or −1 when dropped (no expert, or past the capacity); writes pair_row and, when kept,
/// row_pair.
MOSS_HD void small_plan_pair(const std::int32_t* pair_expert, index_t tokens, index_t k, index_t capacity,
                             const std::int32_t* offsets, index_t sm, std::int32_t* pair_row, std::int32_t* row_pair) {
  const std::int32_t e = pair_expert[sm];
  const std::int32_t pair = static_cast<std::int32_t>((sm % tokens) * k + sm / tokens);
  if (e < 0) {
    pair_row[pair] = -1;
    return;
  }
  index_t rank = 0;
  for (index_t q = 0; q < sm; ++q) rank += pair_expert[q] == e;
  if (capacity > 0 && rank >= capacity) {
    pair_row[pair] = -1;
    return;
  }
  const std::int32_t row = offsets[e] + static_cast<std::int32_t>(rank);
  pair_row[pair] = row;
  row_pair[row] = pair;
}

/// The small plan in one block of kThreads threads. Dynamic shared memory: P + 2X + 1 int32
/// (each pair's expert, the counts, the offsets).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    small_plan_kernel(const std::int32_t* expert, index_t tokens, index_t k, int num_experts, index_t capacity,
                      std::int32_t* pair_row, std::int32_t* row_pair, std::int32_t* offsets, std::int32_t* counts) {
  extern __shared__ std::int32_t plan_smem[];
  const index_t pairs = tokens * k;
  std::int32_t* pair_expert = plan_smem;           // (P)
  std::int32_t* count = pair_expert + pairs;       // (X)
  std::int32_t* shared_off = count + num_experts;  // (X + 1)
  for (index_t sm = threadIdx.x; sm < pairs; sm += kThreads) {
    pair_expert[sm] = small_plan_expert(expert, tokens, k, num_experts, sm);
    row_pair[sm] = -1;  // rows past the kept ones stay −1
  }
  for (int e = threadIdx.x; e < num_experts; e += kThreads) count[e] = 0;
  __syncthreads();
  for (index_t sm = threadIdx.x; sm < pairs; sm += kThreads)
    if (pair_expert[sm] >= 0) atomicAdd(&count[pair_expert[sm]], 1);
  __syncthreads();
  if (threadIdx.x == 0) small_plan_offsets(count, num_experts, capacity, counts, offsets, shared_off);
  __syncthreads();  // the offsets are known; every −1 of row_pair is written before any row
  for (index_t sm = threadIdx.x; sm < pairs; sm += kThreads)
    small_plan_pair(pair_expert, tokens, k, capacity, shared_off, sm, pair_row, row_pair);
}

/// Rows of the kept pairs: pair_row[t·K + s] and row_pair[row]; dropped pairs get −1.
template <class = void>
__global__ void scatter_kernel(const std::int32_t* keys, const std::int32_t* values, index_t tokens, index_t k,
                               int num_experts, index_t capacity, const std::int32_t* start,
                               const std::int32_t* offsets, std::int32_t* pair_row, std::int32_t* row_pair) {
  const index_t pairs = tokens * k;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const std::int32_t e = keys[i];
    const index_t sm = values[i];
    const std::int32_t pair = static_cast<std::int32_t>((sm % tokens) * k + sm / tokens);
    if (e >= num_experts) {
      pair_row[pair] = -1;
      continue;
    }
    const index_t rank = i - start[e];
    if (capacity > 0 && rank >= capacity) {
      pair_row[pair] = -1;
    } else {
      const std::int32_t row = offsets[e] + static_cast<std::int32_t>(rank);
      pair_row[pair] = row;
      row_pair[row] = pair;
    }
  }
}

/// out[r] = x[row_pair[r] / K] for r < offsets[X]: one warp per row.
template <class T>
__global__ void gather_kernel(const T* x, index_t x_row_stride, index_t D, const std::int32_t* row_pair,
                              const std::int32_t* kept_end, index_t k, index_t rows, T* out, bool vector) {
  constexpr int V = cuda::kVec16<T>;
  const index_t kept = *kept_end;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const index_t warps = static_cast<index_t>(gridDim.x) * (blockDim.x / 32);
  for (index_t r = (blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x) / 32; r < kept && r < rows;
       r += warps) {
    const T* src = x + (row_pair[r] / k) * x_row_stride;
    T* dst = out + r * D;
    if (vector) {
      for (index_t c = lane; c < D / V; c += 32) cuda::store_raw<T, V>(dst + c * V, cuda::load_raw<T, V>(src + c * V));
    } else {
      for (index_t c = lane; c < D; c += 32) dst[c] = src[c];
    }
  }
}

/// out[t, c] = Σ_s (g[t,s] if c ∈ [w0, w1) else 1) · y[pair_row[t,s], c]: one block per token.
template <class T>
__global__ void combine_kernel(const T* y, index_t y_row_stride, const std::int32_t* pair_row, const float* gate,
                               index_t tokens, index_t k, index_t D, index_t w0, index_t w1, T* out,
                               index_t out_row_stride, bool vector) {
  constexpr int V = cuda::kVec16<T>;
  const int width = vector ? V : 1;
  const index_t chunks = (D + width - 1) / width;
  for (index_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (index_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      float acc[V];
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = 0.0f;
      for (index_t s = 0; s < k; ++s) {
        const std::int32_t row = pair_row[t * k + s];
        if (row < 0) continue;
        const float g = gate ? gate[t * k + s] : 1.0f;
        const T* yr = y + row * y_row_stride + c * width;
        if (vector) {
          float v[V];
          cuda::load_vec<V>(yr, v);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const index_t col = c * V + j;
            acc[j] += (col >= w0 && col < w1) ? g * v[j] : v[j];
          }
        } else {
          const index_t col = c;
          const float v = to_float(yr[0]);
          acc[0] += (col >= w0 && col < w1) ? g * v : v;
        }
      }
      T* o = out + t * out_row_stride + c * width;
      if (vector) {
        cuda::store_vec<V>(o, acc);
      } else {
        o[0] = from_float<T>(acc[0]);
      }
    }
  }
}

}  // namespace moss::detail::permute
