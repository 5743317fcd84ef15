// moss/ops/sinkhorn/cuda.cuh: `sinkhorn` on CUDA (needs nvcc). Queued on the stream; never
// synchronises with the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/ops/sinkhorn.hpp"
#include "moss/ops/sinkhorn/kernel.cuh"
#include "moss/ops/sinkhorn/tuning.cuh"

namespace moss {

namespace detail::sinkhorn {

/// Takes the device scratch for `tokens` tokens from `layout`: the row scales d0, one float per
/// token (measures only, when the layout has no memory).
inline float* take_scratch(WorkspaceLayout& layout, index_t tokens) { return layout.take<float>(tokens); }

}  // namespace detail::sinkhorn

/// Bytes of scratch `sinkhorn` needs on the GPU: the row scales d0, one float per token.
inline std::size_t workspace_bytes(const Cuda&, const SinkhornArgs& a) {
  validate(a, "workspace_bytes (sinkhorn)");
  WorkspaceLayout measure;
  detail::sinkhorn::take_scratch(measure, a.logits.shape[0]);
  return measure.bytes();
}

/// The Sinkhorn-Knopp balanced matrix on the GPU (contract: moss/ops/sinkhorn.hpp): one block
/// iterates every round on the device. Scratch from `a.workspace` (the contract of
/// moss/core/workspace.hpp: at least `workspace_bytes(gpu, a)` bytes, aligned; `config_error`
/// otherwise), or from the pool.
inline void sinkhorn(const Cuda& gpu, const SinkhornArgs& a) {
  using namespace detail::sinkhorn;
  validate(a, "sinkhorn");
  const index_t T = a.logits.shape[0];
  const int X = static_cast<int>(a.logits.shape[1]);
  if (T == 0) return;
  WorkspaceLayout measure;
  take_scratch(measure, T);
  const OpWorkspace<Cuda> ws(gpu, a.workspace, measure.bytes(), "sinkhorn (cuda)");
  WorkspaceLayout layout = ws.layout();
  float* d0 = take_scratch(layout, T);
  constexpr SinkhornTuning cfg = kSinkhornTuning;
  sinkhorn_kernel<cfg.threads, cfg.expert_tile><<<1, cfg.threads, 2 * sizeof(float) * padded_experts(X), gpu.stream>>>(
      a.logits.data, T, X, a.tolerance, a.max_rounds, a.scores.data, d0);
  MOSS_CHECK_LAUNCH("sinkhorn_kernel", gpu.stream);
}

}  // namespace moss
