// moss/policy/router.hpp: the routers a sparse layer can use (docs/math.md §2), and how to
// write one's own.
//
// A router is one struct. Its per-token selection is `MOSS_HD`, so the host backend (a plain
// loop over tokens) and the CUDA router kernel (one warp per token) call the same code:
//
//   struct MyRouter {
//     static constexpr int k = 1;                    // experts per token
//     static constexpr bool aux_loss = true;         // the Switch load-balancing loss applies
//     static constexpr std::string_view name = "my_router";   // its config.json name
//     MOSS_HD void select(const float* logits,       // (X) float32 logits of one token
//                         const float* scores,       // (X) what to rank by: the logits, or the
//                                                    //     batch scores of `score` below
//                         int num_experts,
//                         int* experts,              // (k) out: chosen experts, slot 0 first
//                         float* weights) const;     // (k) out: their combine weights
//   };
//
// Two optional hooks, each found by a concept:
//   - batch scoring (`ScoringRouter`): `template <class Backend> bool score(const Backend&,
//     ConstView<float, 2> logits, TensorView<float, 2> scores) const` sees the logits of every
//     token of the call (tokens, X) and may write scores for `select` to rank by (returning true),
//     e.g. SinkhornTop1's balanced matrix; returning false means "rank by the logits".
//   - settings (`ConfigurableRouter`): `void read_settings(const io::JsonRef& section)` and
//     `void write_settings(io::Json& section) const` read and write the router's own runtime
//     settings in its block's section of config.json, so they round-trip with a saved model.
//
// `moss::Router<R>` checks the shape of such a struct; examples/04_custom_router.cpp writes one,
// tests/layers/custom_components.hpp an auxiliary-loss-free bias-balancing router with a saved
// setting. Capacity and the loss coefficients are the layer's (`RouterSettings`), the same for
// every router.
#pragma once

#include <cmath>
#include <concepts>
#include <string>
#include <string_view>

#include "moss/backend/host.hpp"
#include "moss/core/config.hpp"
#include "moss/core/error.hpp"
#include "moss/core/math.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/ops/sinkhorn.hpp"

namespace moss {

namespace detail::route {

/// True when logit `a` ranks above logit `b` of a higher expert index: larger, and a NaN never
/// ranks above a number (equal values keep the lower index: ties go to the lowest expert).
MOSS_HD bool ranks_above(float a, float b) { return !(a != a) && ((b != b) || a > b); }

}  // namespace detail::route

/// The K best experts by `scores`, slot 0 the best; distinct experts; ties → lowest index; NaN
/// only when nothing else is left (all NaN → the lowest unused indices). The selection every
/// built-in router uses, for routers of one's own.
template <int K>
MOSS_HD void select_top_k(const float* scores, int num_experts, int* experts) {
  for (int s = 0; s < K; ++s) {
    int best = -1;
    for (int i = 0; i < num_experts; ++i) {
      bool used = false;
      for (int j = 0; j < s; ++j) used = used || experts[j] == i;
      if (used) continue;
      if (best < 0 || detail::route::ranks_above(scores[i], scores[best])) best = i;
    }
    experts[s] = best;
  }
}

namespace detail::route {

using moss::exp_f32;

/// The largest logit, ignoring NaN (−inf when all are NaN).
MOSS_HD float max_logit(const float* logits, int num_experts) {
  float m = -INFINITY;
  for (int i = 0; i < num_experts; ++i) m = logits[i] > m ? logits[i] : m;
  return m;
}

/// Σ_i exp(logits[i] − max) in index order; NaN if any logit is NaN.
MOSS_HD float sum_exp(const float* logits, int num_experts, float max) {
  float s = 0.0f;
  for (int i = 0; i < num_experts; ++i) s += exp_f32(logits[i] - max);
  return s;
}

/// softmax(logits)[e] in float32 (NaN when any logit is NaN).
MOSS_HD float softmax_at(const float* logits, int num_experts, int e) {
  const float m = max_logit(logits, num_experts);
  return exp_f32(logits[e] - m) / sum_exp(logits, num_experts, m);
}

/// logistic sigmoid 1 / (1 + e^-x).
MOSS_HD float sigmoid(float x) { return sigmoid_f32(x); }

}  // namespace detail::route

/// softmax(logits)[e] in float32 over `num_experts` logits, as the built-in routers compute
/// their weights (NaN when any logit is NaN); for routers of one's own.
MOSS_HD float softmax_at(const float* logits, int num_experts, int e) {
  return detail::route::softmax_at(logits, num_experts, e);
}

/// The Switch Transformer router (Fedus et al. 2021; MoE-Mamba): expert = the largest logit,
/// combine weight = its softmax probability (not renormalised).
struct Top1Switch {
  static constexpr int k = 1;
  static constexpr bool aux_loss = true;
  static constexpr std::string_view name = "top1_switch";

  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    select_top_k<1>(scores, num_experts, experts);
    weights[0] = detail::route::softmax_at(logits, num_experts, experts[0]);
  }
};

/// Top-K routing: the K largest logits, weights = their softmax probabilities, divided by
/// their sum when `renormalize` (so top-1 with renormalisation gives weight 1).
/// @tparam K experts per token, 1 ≤ K.
template <int K>
struct TopK {
  static_assert(K >= 1, "moss::TopK<K>: K must be at least 1");
  static constexpr int k = K;
  static constexpr bool aux_loss = true;
  static constexpr std::string_view name = "top_k";
  bool renormalize = false;  ///< config key "normalize"

  void read_settings(const io::JsonRef& section) { section.read("normalize", renormalize); }
  void write_settings(io::Json& section) const { section["normalize"] = renormalize; }

  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    select_top_k<K>(scores, num_experts, experts);
    const float m = detail::route::max_logit(logits, num_experts);
    const float denom = detail::route::sum_exp(logits, num_experts, m);
    float total = 0.0f;
    for (int s = 0; s < K; ++s) {
      weights[s] = detail::route::exp_f32(logits[experts[s]] - m) / denom;
      total += weights[s];
    }
    if (renormalize)
      for (int s = 0; s < K; ++s) weights[s] /= total;
  }
};

/// BlackMamba's top-1 Sinkhorn router (Megatron style). Training mode: the expert is the argmax
/// of the Sinkhorn-Knopp balanced matrix of exp(logits) over all tokens of the call (its batch
/// `score` hook runs the `sinkhorn` op); inference mode: the argmax of sigmoid(logits), i.e. of
/// the logits. Gate sigmoid(logit_e) in both; no auxiliary loss.
struct SinkhornTop1 {
  static constexpr int k = 1;
  static constexpr bool aux_loss = false;
  static constexpr std::string_view name = "sinkhorn_top1";
  static constexpr bool capturable_score = true;  ///< the sinkhorn op only queues kernels
  bool training = false;                          ///< runtime mode flag; config key "sinkhorn_training"

  /// The balanced scores in training mode; nothing (rank by the logits) in inference mode.
  template <class Backend>
  bool score(const Backend& backend, ConstView<float, 2> logits, TensorView<float, 2> scores) const {
    if (!training) return false;
    SinkhornArgs a;
    a.logits = logits;
    a.scores = scores;
    sinkhorn(backend, a);
    return true;
  }
  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    // sigmoid is monotone, so ranking sigmoid(logits) is ranking the logits.
    select_top_k<1>(scores, num_experts, experts);
    weights[0] = detail::route::sigmoid(logits[experts[0]]);
  }
  void read_settings(const io::JsonRef& section) { section.read("sinkhorn_training", training); }
  void write_settings(io::Json& section) const { section["sinkhorn_training"] = training; }
};

/// What every router struct provides (see the top of this file).
template <class R>
concept Router = requires(const R& r, const float* logits, int n, int* experts, float* weights) {
  { R::k } -> std::convertible_to<int>;
  { R::aux_loss } -> std::convertible_to<bool>;
  r.select(logits, logits, n, experts, weights);
}
&&(R::k >= 1);

/// A router with a batch scoring hook (see the top of this file), checked on the host backend.
template <class R>
concept ScoringRouter = Router<R> && requires(const R& r, ConstView<float, 2> logits, TensorView<float, 2> scores) {
  { r.score(Host{}, logits, scores) } -> std::convertible_to<bool>;
};

/// A router whose work in a decode step only queues on the stream: every router without a
/// scoring hook (its selection runs in the route kernel), and a scoring router that says its
/// `score` waits for nothing (`static constexpr bool capturable_score = true;`). Routed blocks
/// over it can be captured in a CUDA graph (moss::CapturableStep).
template <class R>
concept CapturableRouter = Router<R> &&(!ScoringRouter<R> || requires { requires R::capturable_score; });

/// A router with runtime settings that round-trip through config.json.
template <class R>
concept ConfigurableRouter = Router<R> && requires(R& r, const R& cr, const io::JsonRef& in, io::Json& out) {
  r.read_settings(in);
  cr.write_settings(out);
};

/// The config name of router type R (`R::name`, or "custom" for a router without one).
template <Router R>
std::string router_name() {
  if constexpr (requires { R::name; }) {
    return std::string(R::name);
  } else {
    return "custom";
  }
}

/// The settings of a routed layer that do not depend on the router kind (docs/math.md §2).
struct RouterSettings {
  double capacity_factor = 0.0;  ///< > 0: each expert takes at most max(1, ceil(cf·T·K/X)) pairs; 0: dropless
  float aux_loss_coef = 0.01f;   ///< α of the load-balancing loss
  float z_loss_coef = 0.001f;    ///< β of the router z-loss

  /// Throws `config_error` naming `where` for a negative or non-finite value.
  void validate(const char* where) const {
    MOSS_EXPECTS(std::isfinite(capacity_factor) && capacity_factor >= 0, config_error, where, ": capacity_factor is ",
                 capacity_factor, ", expected ≥ 0 (0 = dropless)");
    MOSS_EXPECTS(std::isfinite(aux_loss_coef) && aux_loss_coef >= 0, config_error, where, ": aux_loss_coef is ",
                 aux_loss_coef, ", expected ≥ 0");
    MOSS_EXPECTS(std::isfinite(z_loss_coef) && z_loss_coef >= 0, config_error, where, ": z_loss_coef is ", z_loss_coef,
                 ", expected ≥ 0");
  }
};

}  // namespace moss
