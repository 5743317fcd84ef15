// moss/ops/linear/tuning.cuh: the knobs of `linear` on CUDA.
//
// The GEMM itself is cuBLASLt's: its heuristic picks the kernel from the shape, the layouts and
// the pointer alignments we report. What moss chooses is how much it asks of the heuristic and
// how much of its answer it keeps. Instantiations: linear<T, Tout> for T ∈ {float, f16, bf16},
// Tout ∈ {T, float}: 5 host functions, 2 small conversion kernels each.
#pragma once

#include <cstddef>
#include <cstdint>

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
};

inline constexpr LinearTuning kLinearTuning{1, 64, 16, 256};

}  // namespace moss::detail
