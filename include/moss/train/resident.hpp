// moss/train/resident.hpp: the optimiser half of a training step that waits for nothing
// (`Trainer::step_resident`), so that the whole step can be captured in a CUDA graph
// (`CapturedTrainStep`, moss/train/captured_step_cuda.cuh).
//
// The eager `Trainer::step` reads the global norm back and passes the learning rate and the
// update counts as host values. The resident form keeps all of them in the backend's memory:
//   1. `global_norm_sq_into` (moss/train/clip.hpp): Σ g² in float64 into a backend scalar, the
//      eager norm's sum before its root;
//   2. `step_control`: from it and the micro-batches' losses, the step's scalars
//      (`ResidentStepScalars`: loss, count, norm, lr from the schedule at the step counter,
//      skipped when the norm is not finite), the clip factor (max_norm / norm when clipping, else
//      1), and, unless skipped, each tensor's update count + 1 and its AdamW scalars; the step
//      counter moves on either way (as the eager step's);
//   3. `scale_by`: g ← g · factor (× 1 is exact, so an unclipped step is unchanged);
//   4. `adamw_step_resident`: AdamW with the scalars of step 2, nothing when skipped.
// On the host these run at once on host memory and give the eager step's bits (the same
// functions, the same order). On CUDA (moss/train/resident_cuda.cuh) each is one small kernel.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/config.hpp"
#include "moss/core/tensor.hpp"
#include "moss/train/clip.hpp"
#include "moss/train/optimizer.hpp"
#include "moss/train/schedule.hpp"

namespace moss {

/// What `step_control` writes for one step (backend memory; `Trainer::read_step` reads it).
struct ResidentStepScalars {
  double loss = 0;           ///< mean of the micro-batches' mean losses, nats per token
  std::int64_t count = 0;    ///< targets counted over all micro-batches
  double grad_norm = 0;      ///< global gradient norm before clipping
  double lr = 0;             ///< the learning rate used
  std::int64_t step = 0;     ///< the optimiser step just taken (0 for the first)
  std::int32_t skipped = 0;  ///< 1 when the norm was not finite: no update
};

/// Everything `step_control` reads and writes. Settings are host values fixed when the step is
/// queued (or captured); the pointers are backend memory.
struct StepControlParams {
  CosineSchedule schedule;
  double clip_norm = 0;  ///< ≤ 0: no clipping
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  const float* mb_loss = nullptr;          ///< (micro_batches) each micro-batch's mean loss
  const std::int64_t* mb_count = nullptr;  ///< (micro_batches) each micro-batch's count
  index_t micro_batches = 0;
  const double* norm_sq = nullptr;      ///< (1) Σ g² over every gradient
  std::int64_t* step = nullptr;         ///< (1) the step counter: read, then incremented
  std::int64_t* updates = nullptr;      ///< (tensors) AdamW updates applied per tensor: + 1 unless skipped
  const std::uint8_t* decay = nullptr;  ///< (tensors) weight decay on or off
  AdamWScalars* scalars = nullptr;      ///< (tensors) written unless skipped
  index_t tensors = 0;
  float* clip_factor = nullptr;        ///< (1) written
  ResidentStepScalars* out = nullptr;  ///< (1) written
};

namespace detail::resident {

/// Step 2's per-step part (one thread): writes out and clip_factor, moves the step counter on;
/// returns whether the step is skipped and its learning rate.
MOSS_HD bool control_step(const StepControlParams& p, double& lr) {
  double loss = 0.0;
  std::int64_t count = 0;
  for (index_t k = 0; k < p.micro_batches; ++k) {
    loss += static_cast<double>(p.mb_loss[k]) / static_cast<double>(p.micro_batches);
    count += p.mb_count[k];
  }
  const double norm = ::sqrt(*p.norm_sq);
  const bool skipped = !(norm <= std::numeric_limits<double>::max());  // NaN or infinite
  const std::int64_t step = *p.step;
  lr = p.schedule.rate(step);
  float factor = 1.0f;
  if (!skipped && p.clip_norm > 0 && norm > p.clip_norm) factor = static_cast<float>(p.clip_norm / norm);
  *p.clip_factor = factor;
  *p.out = ResidentStepScalars{loss, count, norm, lr, step, skipped ? 1 : 0};
  *p.step = step + 1;
  return skipped;
}

/// Step 2's per-tensor part for tensor i (after control_step, unless skipped).
MOSS_HD void control_tensor(const StepControlParams& p, index_t i, double lr) {
  const std::int64_t t = p.updates[i] + 1;
  p.updates[i] = t;
  p.scalars[i] = adamw_scalars(lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.decay[i] != 0, t);
}

}  // namespace detail::resident

/// Step 2 on the host.
inline void step_control(const Host&, const StepControlParams& p) {
  double lr = 0.0;
  if (detail::resident::control_step(p, lr)) return;
  for (index_t i = 0; i < p.tensors; ++i) detail::resident::control_tensor(p, i, lr);
}

/// Step 3 on the host: g ← g · *factor.
inline void scale_by(const Host& host, TensorView<float, 1> g, const float* factor) { scale(host, g, *factor); }

/// Where `adamw_step_resident` finds its step's values (backend memory).
struct ResidentAdamW {
  const ResidentStepScalars* state = nullptr;  ///< the step's scalars (skipped, lr)
  const std::int64_t* updates = nullptr;       ///< this tensor's update count after step 2
  const AdamWScalars* scalars = nullptr;       ///< this tensor's scalars from step 2
};

/// Step 4 on the host: `adamw_step` with the step's learning rate and the tensor's update count
/// (a.lr and a.step are replaced), nothing when the step is skipped.
inline void adamw_step_resident(const Host& host, AdamWArgs<float> a, const ResidentAdamW& r) {
  if (r.state->skipped) return;
  a.lr = r.state->lr;
  a.step = *r.updates;
  adamw_step(host, a);
}

}  // namespace moss

#if defined(__CUDACC__)
#include "moss/train/resident_cuda.cuh"
#endif
