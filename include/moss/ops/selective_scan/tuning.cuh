// moss/ops/selective_scan/tuning.cuh: launch shapes of the selective-scan kernels.
//
// One row per range of d_state. A thread keeps `states_per_thread` states of one channel in
// registers; ceil(N / states_per_thread), rounded up to a power of two, threads share a channel
// and add their partial y with warp shuffles. A block covers threads / threads_per_channel
// channels of one batch row and walks L in chunks of `chunk` steps, double-buffered in shared
// memory.
//
// Instantiations: 3 dtypes × 3 scan rows × 2 (SequentialScan's kernel, ChunkedScan's segment
// kernel) + 1 carry kernel + 3 dtypes × 1 step kernel = 22 kernels (the benchmark adds its
// tuning probes).
#pragma once

#include "moss/core/tensor.hpp"

namespace moss::detail {

/// Launch shape of the full-sequence scan kernel for one range of d_state.
struct ScanTuning {
  index_t max_state;      // serves N ≤ max_state (and N above the previous row's)
  int states_per_thread;  // kStatesPerThread: register array length, a compile-time bound
  int threads;            // per block
  int min_blocks;         // per SM, for __launch_bounds__ (caps registers at 64K / (threads · min_blocks))
  int chunk_2byte;        // time steps per staged chunk for f16 / bf16 (a multiple of 8)
  int chunk_4byte;        // the same for f32 (shared memory per chunk doubles)
  int steps_per_group;    // steps whose loads, Δ and gates are issued together (one thread per channel)

  /// Time steps per chunk for storage type T.
  template <class T>
  constexpr int chunk() const {
    return sizeof(T) == 2 ? chunk_2byte : chunk_4byte;
  }
};

inline constexpr ScanTuning kScanTunings[] = {
    // N ≤ 8: one thread per channel with 8 registers of state; no exp2 spent on padding states.
    {8, 8, 128, 2, 32, 16, 4},
    // N ≤ 64, and the canonical N = 16: one thread per channel (two to four above 16), 128
    // channels per block: 256 blocks at batch 8 × dim 4096, all resident at once on 132 SMs.
    // 16 independent exp2 per thread and step give the instruction-level parallelism that the
    // few warps of 32768 channels lack; groups of 4 steps let the in-order scheduler overlap one
    // step's loads, Δ and gate with another's state updates. Measured at the canonical shape
    // (H200, 2026-12-01, bench/results/2026-12-01-h200.md): steps per group 1 / 2 / 4 / 8 =
    // 0.945 / 0.836 / 0.759 / 0.748 ms; two threads per channel (8 states, 4 blocks per SM)
    // 1.21 ms. ptxas: 192 registers, no spills (2 blocks per SM; 221 with groups of 8);
    // shared memory ≈ 60 KB per block (bf16, chunk 32: 4 barriers per 32 steps); f32 halves the
    // chunk to stay near that.
    {64, 16, 128, 2, 32, 16, 4},
    // N ≤ 256: 8 or 16 threads per channel. The staged B and C chunk (N × chunk, raw and as
    // float) dominates shared memory, hence the short chunk and the wider block that shares it.
    {256, 16, 256, 1, 8, 8, 1},
};

/// Number of rows in kScanTunings.
inline constexpr int kScanBuckets = static_cast<int>(sizeof(kScanTunings) / sizeof(kScanTunings[0]));

/// The kScanTunings row serving d_state N (1 ≤ N ≤ kMaxStateSize).
constexpr int scan_bucket(index_t N) {
  int i = 0;
  while (i + 1 < kScanBuckets && N > kScanTunings[i].max_state) ++i;
  return i;
}

/// Launch shape of the one-token step kernel: one thread per (batch, channel, slice of
/// states_per_thread states); N = 256 needs 32 threads per channel, one warp.
struct StepTuning {
  int states_per_thread;
  int threads;
};

inline constexpr StepTuning kStepTuning{8, 128};

}  // namespace moss::detail
