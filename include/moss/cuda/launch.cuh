// moss/cuda/launch.cuh: block-size constants, grid-size helpers and the checked launch (needs nvcc).
//
// Grids come in three kinds in moss:
//  - one item per thread, grid-stride beyond a cap: `grid_blocks(items, threads)`;
//  - persistent (one wave, blocks striding over the work): `sm_capped_blocks(wanted, per_sm)`,
//    or `resident_threads(kernel, threads)` when the wave is sized by the kernel's occupancy;
//  - one block per row (or tile) of a large problem: `checked_grid(blocks, where)` refuses a grid
//    the hardware cannot launch, with a message that names the op.
// `launch` queues a kernel and checks it (MOSS_CHECK_LAUNCH).
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/check.cuh"
#include "moss/cuda/device.cuh"

namespace moss::cuda {

/// Threads of a warp on every NVIDIA GPU moss supports.
inline constexpr int kWarpThreads = 32;
/// Most threads one block may have.
inline constexpr int kMaxBlockThreads = 1024;
/// Most blocks along x of a grid (2³¹ − 1).
inline constexpr index_t kMaxGridBlocks = INT_MAX;
/// Block cap of moss's grid-stride loops: enough blocks to fill any current GPU many times over,
/// and the y / z grid limit, so a grid computed for x also fits there.
inline constexpr index_t kGridStrideBlocks = 65535;
/// Threads per block of moss's simple grid-stride element-wise kernels (activation, the bias
/// copies of `linear`): 8 warps, enough to hide latency with several blocks per SM.
inline constexpr int kElementwiseThreads = 256;

/// Blocks of `threads` threads for a grid-stride loop over `items` items, one item per thread:
/// ceil(items / threads), at least 1 (a launch needs a block), at most `max_blocks` (the loop
/// covers the rest).
constexpr unsigned grid_blocks(index_t items, int threads, index_t max_blocks = kGridStrideBlocks) {
  const index_t blocks = ceil_div<index_t>(items, threads);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

/// Blocks of a one-block-per-row kernel over `rows` rows (≥ 1): one per row, at most 2³⁰ (the
/// blocks stride over the rest).
constexpr unsigned row_blocks(index_t rows) { return grid_blocks(rows, 1, index_t(1) << 30); }

/// The smallest power of two in [min_threads, max_threads] that gives each thread at most
/// `items_per_thread` of `items` (a one-block-per-row kernel over rows of `items` elements;
/// wider rows loop inside the block).
constexpr int row_threads(index_t items, int items_per_thread, int min_threads, int max_threads) {
  int t = min_threads;
  while (t < max_threads && index_t(t) * items_per_thread < items) t *= 2;
  return t;
}

/// Launch shape of one call of a one-block-per-row kernel.
struct RowConfig {
  int threads;  // per block (a power of two): one block per row
  int vec;      // elements per access: the vector width, or 1 (the scalar path)
};

/// The block-size rule of a one-block-per-row kernel (an op's tuning table holds one).
struct RowTuning {
  int items_per_thread;  // elements each thread should take (fewer when the row is short)
  int min_threads;       // a power of two ≥ 32
  int max_threads;       // a power of two ≤ 1024; wider rows loop inside the block

  /// The launch for rows of `items` elements: `vec`-wide accesses when `aligned`, else scalar.
  constexpr RowConfig config(index_t items, bool aligned, int vec) const {
    return {row_threads(items, items_per_thread, min_threads, max_threads), aligned ? vec : 1};
  }
};

/// A 1-D grid of `blocks` blocks as the launch wants it; throws `unsupported_error` naming
/// `where` when it exceeds the hardware's 2³¹ − 1 (the caller must split the work).
inline unsigned checked_grid(index_t blocks, const char* where) {
  MOSS_EXPECTS(blocks <= kMaxGridBlocks, unsupported_error, where, ": ", blocks,
               " thread blocks exceed the grid limit of ", kMaxGridBlocks, "; split the batch");
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

/// The grid of a persistent kernel on the current device: `wanted` blocks, capped at
/// `blocks_per_sm` per SM (the blocks stride over the rest of the work).
inline unsigned sm_capped_blocks(index_t wanted, int blocks_per_sm) {
  const index_t cap = index_t(sm_count()) * blocks_per_sm;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

/// Threads of `kernel`, launched in blocks of `block_threads` with `shared_bytes` of dynamic
/// shared memory, that the current device holds at once (SMs × resident blocks per SM × block
/// threads; at least one block per SM). Asked of the occupancy calculator once per (kernel,
/// device, block size, shared bytes) and kept (thread-safe).
template <class Kernel>
index_t resident_threads(Kernel kernel, int block_threads, std::size_t shared_bytes = 0) {
  using Key = std::tuple<const void*, int, int, std::size_t>;
  static std::mutex mutex;
  static std::map<Key, index_t> cache;
  const DeviceProperties& props = device_properties();
  const Key key(reinterpret_cast<const void*>(kernel), props.device, block_threads, shared_bytes);
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  int blocks_per_sm = 0;
  MOSS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, block_threads, shared_bytes));
  const index_t threads = index_t(props.sm_count) * (blocks_per_sm > 0 ? blocks_per_sm : 1) * block_threads;
  cache.emplace(key, threads);
  return threads;
}

/// Lets `kernel` take `shared_bytes` of dynamic shared memory on the current device
/// (cudaFuncAttributeMaxDynamicSharedMemorySize), setting the attribute only when it grows: the
/// largest size set so far is kept per (kernel, device) (thread-safe), so a launch in a decode
/// loop does not pay the driver call each time.
template <class Kernel>
void allow_dynamic_shared(Kernel kernel, std::size_t shared_bytes) {
  using Key = std::pair<const void*, int>;
  static std::mutex mutex;
  static std::map<Key, std::size_t> allowed;
  const Key key(reinterpret_cast<const void*>(kernel), device_properties().device);
  const std::lock_guard<std::mutex> lock(mutex);
  std::size_t& have = allowed[key];
  if (shared_bytes <= have) return;
  MOSS_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  have = shared_bytes;
}

/// Queues `kernel<<<grid, block, shared_bytes, stream>>>(args...)` and checks the launch
/// (MOSS_CHECK_LAUNCH: with MOSS_SYNC_LAUNCHES also its completion), naming `kernel_name` in
/// the error.
template <class... Params, class... Args>
void launch(const char* kernel_name, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  MOSS_CHECK_LAUNCH(kernel_name, stream);
}

/// Ends a stream capture that an exception left open (the stream is usable again) and drops
/// what was captured; `end()` ends it normally and hands over the graph.
class CaptureGuard {
 public:
  explicit CaptureGuard(cudaStream_t s) : stream_(s) {}
  CaptureGuard(const CaptureGuard&) = delete;
  CaptureGuard& operator=(const CaptureGuard&) = delete;
  ~CaptureGuard() {
    if (!open_) return;
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(stream_, &g);
    if (g) (void)cudaGraphDestroy(g);
    (void)cudaGetLastError();
  }
  /// Ends the capture and returns its graph (the caller owns it).
  cudaGraph_t end() {
    cudaGraph_t g = nullptr;
    open_ = false;
    MOSS_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    return g;
  }

 private:
  cudaStream_t stream_;
  bool open_ = true;
};

}  // namespace moss::cuda
