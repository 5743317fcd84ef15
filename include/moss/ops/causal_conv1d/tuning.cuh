// moss/ops/causal_conv1d/tuning.cuh: launch shapes of the causal_conv1d kernels.
//
// Kernel instantiations: 3 dtypes × 3 widths (2, 3, 4) × 4 kernels (channel-last vector and
// scalar, channel-first, step) = 36. The numbers below come from the bandwidth arithmetic in
// each comment; `causal_conv1d_bench` sweeps `steps_per_thread` at the canonical shape so that
// the choice can be re-checked on each device.
#pragma once

#include <cstdint>
#include <ostream>

#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"
#include "moss/ops/causal_conv1d/args.hpp"

namespace moss::detail {

/// Channel-first kernel: timesteps of T in one lane's 16-byte piece (8 for f16/bf16, 4 for float).
template <class T>
inline constexpr int kConv1dVec = cuda::kVec16<T>;

/// Channel-last kernel: consecutive channels one thread owns (one 8-byte access of f16/bf16,
/// 16 bytes of float). Eight 2-byte channels would halve the access count but need 150-190
/// registers at W = 4 (weights, window and first rows are all C wide; measured with ptxas),
/// which halves the resident threads and the bytes in flight with them.
inline constexpr int kConv1dChannels = 4;

/// Threads per block of the sequence kernels; no barriers, so this only sets the granule.
inline constexpr int kConv1dBlockThreads = 128;

/// Channel-last kernel: blocks per SM that `__launch_bounds__` reserves registers for. Five
/// caps the kernel at 102 registers; W = 4 with the software pipeline needs 96 without spilling
/// (ptxas 13.0, sm_90), while six blocks (80 registers) spill up to 68 bytes per thread.
inline constexpr int kConv1dMinBlocksPerSm = 5;

/// Channel-last kernel: rows per load batch. The next batch is loaded while the current one is
/// computed, so each thread always has 4 loads outstanding: at 5 × 128 resident threads per SM
/// and 8-byte rows that is 20 KB per SM, above the ~12 KB of reads that Little's law asks for
/// at 1.5 TB/s of reads (half of 3 TB/s) and ~1 µs of loaded DRAM latency on 132 SMs.
inline constexpr int kConv1dUnroll = 4;

/// Channel-last kernel: the shortest run of timesteps per thread. A run re-reads the W−1 rows
/// before it (from L2), so 16 steps cost at most 3/16 extra L2 reads.
inline constexpr index_t kConv1dMinSteps = 16;

/// Channel-first kernel: 16-byte slabs per lane; a warp covers 32 · 4 · 16 B = 2 KB of one row
/// (64 bytes in flight per lane). Its warps are short-lived (one row segment each), so many
/// waves run and the last one leaves little tail.
inline constexpr int kConv1dSlabs = 4;

/// Threads per block of the decode step (one thread per (batch, channel); no reuse to exploit).
inline constexpr int kConv1dStepBlockThreads = 256;

/// Timesteps one thread of the channel-last kernel owns. The runs of every (sequence, channel
/// group) are sized so that the grid is one wave of `resident_threads` in which every thread
/// has the same work: a thread streams its run for tens of microseconds, so a partial second
/// wave would leave most of the GPU idle for a whole run. Long runs also read the W−1 rows
/// before each run (L2 hits) less often. Never shorter than kConv1dMinSteps.
/// @param lanes batch × ceil(dim / kConv1dChannels): threads needed per run of timesteps.
/// @param resident_threads threads of this kernel the device holds at once.
constexpr index_t conv1d_steps_per_thread(index_t lanes, index_t seqlen, index_t resident_threads) {
  const index_t runs = lanes > 0 && resident_threads / lanes > 1 ? resident_threads / lanes : 1;
  const index_t steps = ceil_div(seqlen, runs);
  return steps > kConv1dMinSteps ? steps : kConv1dMinSteps;
}
// H100 (132 SMs × 5 × 128 threads): the canonical batch 8 × dim 4096 × L 2048 gets 10 runs of
// 205 steps per channel group (81920 threads); one sequence gets 82 runs of 25 steps.
static_assert(conv1d_steps_per_thread(8 * 4096 / kConv1dChannels, 2048, 132 * 5 * 128) == 205);
static_assert(conv1d_steps_per_thread(1 * 4096 / kConv1dChannels, 2048, 132 * 5 * 128) == 25);
static_assert(conv1d_steps_per_thread(64 * 4096 / kConv1dChannels, 2048, 132 * 5 * 128) == 2048);

/// Which sequence kernel runs: threads along channels (unit stride along dim, or any strides) or
/// threads along time (unit stride along L).
enum class Conv1dKernel : std::uint8_t { channel_last, channel_first };

/// A complete launch description of `causal_conv1d` on CUDA.
struct Conv1dPlan {
  Conv1dKernel kernel = Conv1dKernel::channel_last;
  bool vec_x = false;            // vector loads of x (unit stride along the thread's axis, aligned)
  bool vec_out = false;          // vector stores of out
  int block_x = 0;               // channel-last: threads along channel groups; channel-first: threads
  int block_y = 1;               // channel-last: threads along runs of timesteps
  index_t steps_per_thread = 0;  // channel-last: timesteps one thread owns
  index_t channel_blocks = 0;    // channel-last: blocks along dim (grid = channel · run · batch blocks)
  index_t run_blocks = 0;        // channel-last: blocks along L
  index_t segments = 0;          // channel-first: warp segments per (batch, channel) row
  index_t blocks = 0;            // 1-D grid size
};

inline std::ostream& operator<<(std::ostream& os, const Conv1dPlan& p) {
  if (p.kernel == Conv1dKernel::channel_last)
    os << "channel_last steps=" << p.steps_per_thread << " block=" << p.block_x << "x" << p.block_y;
  else
    os << "channel_first segments=" << p.segments << " block=" << p.block_x;
  return os << " vec_x=" << p.vec_x << " vec_out=" << p.vec_out << " blocks=" << p.blocks;
}

/// The launch of `causal_conv1d` for `args`: the kernel from x's layout, vector access where
/// layout and alignment allow, and the block and grid shape. Plain host code, no CUDA calls.
/// @param resident_threads `(bool vec) → index_t`: threads of the channel-last kernel (vector
///        or scalar) the device holds at once.
/// @param steps_per_thread > 0 overrides the channel-last kernel's run length.
template <class T, class ResidentThreads>
Conv1dPlan make_conv1d_plan(const CausalConv1dArgs<T>& args, const ResidentThreads& resident_threads,
                            index_t steps_per_thread) {
  const index_t batch = args.x.shape[0], dim = args.x.shape[1], seqlen = args.x.shape[2];
  Conv1dPlan p;
  const bool channel_last = args.x.stride[1] == 1 && dim > 1;
  p.kernel = !channel_last && args.x.stride[2] == 1 ? Conv1dKernel::channel_first : Conv1dKernel::channel_last;
  if (p.kernel == Conv1dKernel::channel_last) {
    // The vector kernel has no partial channel groups: it needs kConv1dChannels to divide dim.
    const bool whole_groups = dim % kConv1dChannels == 0;
    p.vec_x = whole_groups && cuda::vector_aligned(args.x, kConv1dChannels, 1);
    p.vec_out = whole_groups && cuda::vector_aligned(args.out, kConv1dChannels, 1);
    const index_t groups = ceil_div<index_t>(dim, kConv1dChannels);
    p.block_x = 1;
    while (p.block_x < kConv1dBlockThreads && p.block_x < groups) p.block_x *= 2;
    p.block_y = kConv1dBlockThreads / p.block_x;
    p.steps_per_thread = steps_per_thread > 0
                             ? steps_per_thread
                             : conv1d_steps_per_thread(batch * groups, seqlen, resident_threads(p.vec_x && p.vec_out));
    const index_t runs = seqlen > 0 ? ceil_div(seqlen, p.steps_per_thread) : 1;  // run 0 writes the final state
    p.channel_blocks = ceil_div<index_t>(groups, p.block_x);
    p.run_blocks = ceil_div<index_t>(runs, p.block_y);
    p.blocks = p.channel_blocks * p.run_blocks * batch;
  } else {
    constexpr int V = kConv1dVec<T>;
    p.vec_x = cuda::vector_aligned(args.x, V, 2);
    p.vec_out = cuda::vector_aligned(args.out, V, 2);
    p.block_x = kConv1dBlockThreads;
    p.segments = seqlen > 0 ? ceil_div<index_t>(seqlen, 32 * V * kConv1dSlabs) : 1;
    p.blocks = ceil_div<index_t>(batch * dim * p.segments * 32, kConv1dBlockThreads);
  }
  return p;
}

}  // namespace moss::detail
