// moss/train/optimizer.hpp: the AdamW optimiser (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization"), as an op over one flat parameter tensor, and the default rule that says which
// parameters get weight decay.
//
// One step, in the order of PyTorch's `torch.optim.AdamW` (single-tensor path), t = args.step ≥ 1:
//   p  ← p · (1 − lr · wd)                        (only when args.decay; wd = weight_decay)
//   m  ← β1 · m + (1 − β1) · g
//   v  ← β2 · v + (1 − β2) · g²
//   m̂  = m / (1 − β1^t),   v̂ = v / (1 − β2^t)
//   p  ← p − lr · m̂ / (√v̂ + eps)
// written as PyTorch evaluates it: step_size = lr / (1 − β1^t), bc2 = √(1 − β2^t),
// p ← p − step_size · m / (√v / bc2 + eps). The per-step scalars (1 − lr·wd, step_size, bc2,
// 1 − β1, 1 − β2) are computed in double, then rounded once to the arithmetic type; the
// element-wise arithmetic is compute_t<T> (float32 master weights for the storage types, double
// for the host's double instantiation), one element at a time in index order, so the result is
// bitwise the same on every run. PyTorch writes the first-moment update as a lerp
// (m + (1 − β1)(g − m)), which rounds differently in the last bit; moss uses the textbook form.
// A non-finite gradient propagates into m, v and p (no check per element): the caller checks the
// global gradient norm first (moss/train/clip.hpp) and skips the step when it is not finite.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "moss/backend/host.hpp"
#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `adamw_step` over one flat parameter tensor of `n` elements.
/// @tparam T the model's storage type (float, f16, bf16) or double (host only); the optimiser
/// state and the master weights are `compute_t<T>` (float32; double for double).
template <HostReal T>
struct AdamWArgs {
  /// float32, or double for the host's double instantiation.
  using Real = compute_t<T>;
  TensorView<Real, 1> param;  // (n) master weights, contiguous; updated in place
  ConstView<Real, 1> grad;    // (n) gradient of the loss, contiguous
  TensorView<Real, 1> m;      // (n) first moment, contiguous; zero before the first step
  TensorView<Real, 1> v;      // (n) second moment, contiguous; zero before the first step
  double lr = 1e-3;           // learning rate, finite, ≥ 0 (the schedule's value for this step)
  double beta1 = 0.9;         // in [0, 1)
  double beta2 = 0.999;       // in [0, 1)
  double eps = 1e-8;          // finite, ≥ 0
  double weight_decay = 0.0;  // finite, ≥ 0; decoupled (p ← p·(1 − lr·wd)), applied only when `decay`
  bool decay = true;          // the parameter group's decay flag (see `decays`)
  std::int64_t step = 1;      // 1 for the first update of this tensor, then 2, 3, ... (bias correction)
};

/// Checks `a` once at op entry: lr, eps, weight_decay finite and ≥ 0, beta1 and beta2 in [0, 1),
/// step ≥ 1 (`config_error` naming the setting, its value and the expected range); param, grad,
/// m and v one shape (n) and contiguous (`shape_error`).
template <HostReal T>
void validate(const AdamWArgs<T>& a, const char* where) {
  MOSS_EXPECTS(std::isfinite(a.lr) && a.lr >= 0, config_error, where, ": lr is ", a.lr, ", expected finite and >= 0");
  MOSS_EXPECTS(a.beta1 >= 0 && a.beta1 < 1, config_error, where, ": beta1 is ", a.beta1, ", expected in [0, 1)");
  MOSS_EXPECTS(a.beta2 >= 0 && a.beta2 < 1, config_error, where, ": beta2 is ", a.beta2, ", expected in [0, 1)");
  MOSS_EXPECTS(std::isfinite(a.eps) && a.eps >= 0, config_error, where, ": eps is ", a.eps,
               ", expected finite and >= 0");
  MOSS_EXPECTS(std::isfinite(a.weight_decay) && a.weight_decay >= 0, config_error, where, ": weight_decay is ",
               a.weight_decay, ", expected finite and >= 0");
  MOSS_EXPECTS(a.step >= 1, config_error, where, ": step is ", a.step,
               ", expected >= 1 (1 for the first update; it sets the bias correction)");
  expect_valid(where, a.param);
  expect_valid(where, a.grad);
  expect_valid(where, a.m);
  expect_valid(where, a.v);
  const index_t n = a.param.shape[0];
  expect_shape(where, a.grad, {n}, "(n)");
  expect_shape(where, a.m, {n}, "(n)");
  expect_shape(where, a.v, {n}, "(n)");
  expect_contiguous(where, a.param);
  expect_contiguous(where, a.grad);
  expect_contiguous(where, a.m);
  expect_contiguous(where, a.v);
}

/// AdamW's scalars of one update in float32, as every `adamw_step` forms them from its settings
/// and the tensor's update count `step` (host and device: a resident step forms them on the GPU).
struct AdamWScalars {
  float keep, b1, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps;
  bool decay;
};

/// The scalars of an update with learning rate `lr` at update count `step` ≥ 1 (this header's
/// formula: keep = 1 − lr·wd with decay, step_size = lr / (1 − β1^t), bc2_sqrt = √(1 − β2^t)).
MOSS_HD AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, bool decay,
                                   std::int64_t step) {
  const double t = static_cast<double>(step);
  AdamWScalars s{};
  s.keep = static_cast<float>(decay ? 1.0 - lr * weight_decay : 1.0);
  s.b1 = static_cast<float>(beta1);
  s.one_minus_b1 = static_cast<float>(1.0 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.one_minus_b2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / (1.0 - ::pow(beta1, t)));
  s.bc2_sqrt = static_cast<float>(::sqrt(1.0 - ::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  s.decay = decay;
  return s;
}

/// One AdamW update of `a.param` and its moments on the CPU (formula and order: this header's
/// comment). Deterministic: one pass in index order, no reductions.
template <HostReal T>
void adamw_step(const Host&, const AdamWArgs<T>& a) {
  using R = compute_t<T>;
  validate(a, "adamw_step");
  const double t = static_cast<double>(a.step);
  const R keep = static_cast<R>(a.decay ? 1.0 - a.lr * a.weight_decay : 1.0);
  const R b1 = static_cast<R>(a.beta1), one_minus_b1 = static_cast<R>(1.0 - a.beta1);
  const R b2 = static_cast<R>(a.beta2), one_minus_b2 = static_cast<R>(1.0 - a.beta2);
  const R step_size = static_cast<R>(a.lr / (1.0 - std::pow(a.beta1, t)));
  const R bc2_sqrt = static_cast<R>(std::sqrt(1.0 - std::pow(a.beta2, t)));
  const R eps = static_cast<R>(a.eps);
  const index_t n = a.param.shape[0];
  R* p = a.param.data;
  const R* g = a.grad.data;
  R* m = a.m.data;
  R* v = a.v.data;
  for (index_t i = 0; i < n; ++i) {
    const R gi = g[i];
    const R pi = a.decay ? p[i] * keep : p[i];
    const R mi = b1 * m[i] + one_minus_b1 * gi;
    const R vi = b2 * v[i] + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
  }
}

/// A parameter group: the tensors that share optimiser settings. moss uses two, "decay" and
/// "no_decay" (`default_param_group`); `weight_decay` is copied into `AdamWArgs::decay`.
struct ParamGroup {
  std::string name = "decay";  ///< the group's name, for logs
  bool weight_decay = true;    ///< whether AdamW's decoupled weight decay applies to its tensors
};

/// Whether the tensor with checkpoint name `checkpoint_name` gets weight decay under moss's
/// default rule (the training issue: "none on norms, biases, A_log, D, router weights"):
/// - no decay: biases (last component `bias`: `conv1d.bias`, `dt_proj.bias`, `in_proj.bias`,
///   `experts.bias`, ...), `A_log`, `D` (last component exactly `D`), norms (a component that
///   contains `norm`, as `norm.weight`, `norm_f.weight`), router weights (a component that starts
///   with `router`: `router.weight`, `router_conv.weight`, `router_gate.weight`,
///   `router_out.weight`, `router.classifier.weight`);
/// - decay: everything else: projections (`in_proj`, `x_proj`, `dt_proj`, `out_proj`), the
///   convolution weight, expert weights, and the embeddings (`backbone.embeddings.weight`) and an
///   untied `lm_head.weight`. moss's choice on embeddings: they decay like any matrix (as GPT-2
///   style training does); with tied embeddings the one shared matrix decays once. A trainer
///   that wants them undecayed puts them in a "no_decay" group itself.
inline bool decays(const std::string& checkpoint_name) {
  const std::size_t last_dot = checkpoint_name.rfind('.');
  const std::string_view last = last_dot == std::string::npos ? std::string_view(checkpoint_name)
                                                              : std::string_view(checkpoint_name).substr(last_dot + 1);
  if (last == "bias" || last == "A_log" || last == "D") return false;
  std::string_view rest = checkpoint_name;
  for (;;) {
    const std::size_t dot = rest.find('.');
    const std::string_view part = rest.substr(0, dot);
    if (part.find("norm") != std::string_view::npos) return false;
    if (part.starts_with("router")) return false;
    if (dot == std::string_view::npos) break;
    rest = rest.substr(dot + 1);
  }
  return true;
}

/// The group of `checkpoint_name` under the default rule: {"decay", true} when `decays` says so,
/// {"no_decay", false} otherwise.
inline ParamGroup default_param_group(const std::string& checkpoint_name) {
  return decays(checkpoint_name) ? ParamGroup{"decay", true} : ParamGroup{"no_decay", false};
}

}  // namespace moss

// Under nvcc the CUDA overloads (AdamW, the global norm, scale) come with the header.
#if defined(__CUDACC__)
#include "moss/train/optimizer_cuda.cuh"
#endif
