// moss/ops/linear/tuning.cuh: the knobs of `linear` on CUDA.
//
// The GEMM itself is cuBLASLt's: its heuristic picks the kernel from the shape, the layouts and
// the pointer alignments we report. What moss chooses is how much it asks of the heuristic and
// how much of its answer it keeps. Instantiations: linear<T, Tout> for T ∈ {float, f16, bf16},
// Tout ∈ {T, float}: 5 host functions, 2 small conversion kernels each.
#pragma once

#include <cstddef>
#include <cstdint>

#include "moss/cuda/launch.cuh"

namespace moss::detail {

/// How `linear` drives cuBLASLt.
struct LinearTuning {
  /// Algorithms requested from the heuristic; the first (its best guess) is used. Taking the
  /// top answer is what PyTorch's cuBLASLt path does; timing several candidates per shape would
  /// need a synchronising benchmark inside the op.
  int heuristic_candidates;
  /// Cached plans (descriptors + chosen algorithm) per thread before the cache is cleared. A
  /// model uses a handful of shapes (a Mamba layer: 4 GEMMs; prefill and decode differ in rows),
  /// so 64 is never reached in steady state and bounds memory if shapes vary freely.
  std::size_t plan_cache_entries;
  /// Byte alignment that cuBLASLt's bias epilogue needs for its vector loads; a bias with less
  /// is copied to an aligned scratch vector first (marian-nmt met misaligned-bias faults on A100
  /// below 16 bytes).
  std::uintptr_t bias_alignment;
  /// Threads per block of the small element-wise kernels (bias copy, bias fill).
  int elementwise_threads;
  /// The most work area the heuristic may pick an algorithm for (the workspace then holds what
  /// the chosen one needs, often nothing): 32 MiB, cuBLAS's own recommendation for Hopper.
  std::size_t max_workspace_bytes;
};

inline constexpr LinearTuning kLinearTuning{.heuristic_candidates = 1,
                                            .plan_cache_entries = 64,
                                            .bias_alignment = 16,
                                            .elementwise_threads = cuda::kElementwiseThreads,
                                            .max_workspace_bytes = std::size_t(32) << 20};

}  // namespace moss::detail
