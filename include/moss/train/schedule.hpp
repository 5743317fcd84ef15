// moss/train/schedule.hpp: the learning-rate schedule, linear warmup then cosine decay.
//
// For optimiser step s = 0, 1, 2, ... (s counts the updates made before this one; the first
// update uses lr_at(0)), with W = warmup_steps and N = total_steps:
//   s < W:        lr_at(s) = lr · (s + 1) / W                       (reaches lr at s = W − 1)
//   W ≤ s < N:    p = (s − W) / (N − W)
//                 lr_at(s) = min_lr + ½ · (lr − min_lr) · (1 + cos(π · p))   (lr at s = W)
//   s ≥ N:        lr_at(s) = min_lr
// computed in double. W = 0 starts at lr with no warmup; W = N is warmup only (then min_lr).
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "moss/core/config.hpp"
#include "moss/core/error.hpp"

namespace moss {

/// Linear warmup then cosine decay to `min_lr` over `total_steps` (formula: this header's comment).
struct CosineSchedule {
  double lr = 1e-3;               ///< peak learning rate, finite, ≥ 0
  double min_lr = 0.0;            ///< final learning rate, finite, in [0, lr]
  std::int64_t warmup_steps = 0;  ///< in [0, total_steps]
  std::int64_t total_steps = 1;   ///< ≥ 1: the step from which the rate stays at min_lr

  /// `config_error` naming the setting, its value and what is expected: total_steps < 1,
  /// warmup_steps outside [0, total_steps], lr or min_lr negative or not finite, min_lr > lr.
  void validate() const {
    MOSS_EXPECTS(total_steps >= 1, config_error, "CosineSchedule: total_steps is ", total_steps, ", expected >= 1");
    MOSS_EXPECTS(warmup_steps >= 0 && warmup_steps <= total_steps, config_error, "CosineSchedule: warmup_steps is ",
                 warmup_steps, ", expected in [0, total_steps = ", total_steps, "]");
    MOSS_EXPECTS(std::isfinite(lr) && lr >= 0, config_error, "CosineSchedule: lr is ", lr,
                 ", expected finite and >= 0");
    MOSS_EXPECTS(std::isfinite(min_lr) && min_lr >= 0, config_error, "CosineSchedule: min_lr is ", min_lr,
                 ", expected finite and >= 0");
    MOSS_EXPECTS(min_lr <= lr, config_error, "CosineSchedule: min_lr is ", min_lr, ", expected <= lr (", lr, ")");
  }

  /// The learning rate of optimiser step `step` (0 for the first update). Validates the settings;
  /// `config_error` for a negative step.
  double lr_at(std::int64_t step) const {
    validate();
    MOSS_EXPECTS(step >= 0, config_error, "CosineSchedule::lr_at: step is ", step, ", expected >= 0");
    return rate(step);
  }

  /// `lr_at` without the checks, on the host or the device (a resident training step forms the
  /// rate on the GPU; moss/train/resident.hpp): for validated settings and step ≥ 0.
  MOSS_HD double rate(std::int64_t step) const {
    if (step < warmup_steps) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return min_lr;
    const double p = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + ::cos(std::numbers::pi * p));
  }
};

}  // namespace moss
