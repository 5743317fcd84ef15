// moss/ops/sinkhorn.hpp: Sinkhorn-Knopp balancing of exp(logits) over a batch of tokens, the
// scores of SinkhornTop1 in training mode (docs/math.md §2.2; BlackMamba, Megatron).
//
//   c[t, i]  = exp(logits[t, i] − max_j logits[t, j])                      (tokens T, experts X)
//   from d1 = 1, each round:
//     d0[t]  = 1 / (T · (Σ_i d1[i] · c[t, i] + ε))                          rows
//     d1[i]  = 1 / (X · (Σ_t d0[t] · c[t, i] + ε))                          columns
//   until no d1[i] moves by `tolerance` or more, at most `max_rounds` rounds;
//   scores[t, i] = d1[i] · c[t, i] · d0[t]
//
// The columns of scores sum to 1/X (up to ε), the rows to 1/T once converged. The row shift
// cancels in d0 and keeps exp finite. A NaN logit makes every score NaN (it enters every column
// sum) and the iteration stops at the first round whose d1 holds a NaN: nothing crashes, the
// caller sees NaN; so does +inf (inf − inf). A −inf logit is an impossible expert: score 0.
// Sums are float32: the host adds in index order, CUDA in a fixed block order, so the backends
// agree to rounding (the device's expf differs from the host's by a few ulp too) and the argmax
// of a row may differ between them only for near ties.
//
// Workspace (scratch the op needs; see moss/core/workspace.hpp): `workspace_bytes(backend,
// args)` bytes. A caller that plans its memory passes them in `args.workspace`; with none given
// the op allocates them from the backend's pool for the call. The host needs none.
//
//   moss::sinkhorn(moss::Host{}, args);        // the CPU oracle, this header
//   moss::sinkhorn(moss::Cuda{stream}, args);  // moss/ops/sinkhorn/cuda.cuh
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"
#include "moss/core/workspace.hpp"

namespace moss {

/// The largest expert count `sinkhorn` supports (its column scales live in shared memory).
inline constexpr index_t kSinkhornMaxExperts = 4096;

/// Arguments of `sinkhorn`.
struct SinkhornArgs {
  ConstView<float, 2> logits;   // (tokens, X), contiguous
  TensorView<float, 2> scores;  // (tokens, X), contiguous, written; must not overlap logits
  float tolerance = 1e-4f;      // stop once no column scale moves by this much (0: run max_rounds)
  int max_rounds = 100;         // at most this many rounds (≥ 1)
  Workspace workspace;          // optional: workspace_bytes(backend, *this) bytes of scratch
};

/// Checks `a` once at op entry (both backends): 1 ≤ X ≤ kSinkhornMaxExperts, a finite tolerance
/// ≥ 0 and max_rounds ≥ 1 (`config_error` / `unsupported_error`), the shapes, contiguity and
/// that scores and logits do not overlap (`shape_error`).
inline void validate(const SinkhornArgs& a, const char* where) {
  expect_valid(where, a.logits);
  const index_t tokens = a.logits.shape[0], X = a.logits.shape[1];
  MOSS_EXPECTS(X >= 1, config_error, where, ": ", a.logits.name, " is ", shape_string(a.logits.shape),
               " (tokens, experts) but there must be at least one expert");
  MOSS_EXPECTS(X <= kSinkhornMaxExperts, unsupported_error, where, ": ", X, " experts; supported: 1 to ",
               kSinkhornMaxExperts);
  expect_contiguous(where, a.logits);
  expect_valid(where, a.scores);
  expect_shape(where, a.scores, {tokens, X}, "(tokens, experts)");
  expect_contiguous(where, a.scores);
  const auto lo = reinterpret_cast<std::uintptr_t>(a.logits.data), so = reinterpret_cast<std::uintptr_t>(a.scores.data);
  const auto bytes = static_cast<std::uintptr_t>(tokens * X) * sizeof(float);
  MOSS_EXPECTS(bytes == 0 || so + bytes <= lo || lo + bytes <= so, shape_error, where, ": ", a.scores.name, " ",
               shape_string(a.scores.shape), " overlaps ", a.logits.name, " (the op reads logits while it writes)");
  MOSS_EXPECTS(std::isfinite(a.tolerance) && a.tolerance >= 0, config_error, where, ": tolerance is ", a.tolerance,
               ", expected a finite value ≥ 0");
  MOSS_EXPECTS(a.max_rounds >= 1, config_error, where, ": max_rounds is ", a.max_rounds, ", expected ≥ 1");
}

/// Bytes of scratch `sinkhorn` needs on the host: none (it keeps its scales in vectors).
inline std::size_t workspace_bytes(const Host&, const SinkhornArgs& a) {
  validate(a, "workspace_bytes (sinkhorn)");
  return 0;
}

}  // namespace moss

#include "moss/ops/sinkhorn/host.hpp"

// Under nvcc the CUDA implementation comes with the op, so a .cu that includes only this header
// (or a layer built on it) runs on moss::Cuda too.
#if defined(__CUDACC__)
#include "moss/ops/sinkhorn/cuda.cuh"
#endif
