// moss/layers/feed_forward.hpp: the feed-forward blocks of MoE-Mamba and BlackMamba
// (REFERENCE.md §2): a dense `FeedForward<Expert, T>` (one expert, no router) and the sparse
// `MoeFeedForward<Router, Experts, Expert, T>`, y = Σ_slots g · Expert_e(x).
//
// Dataflow of MoeFeedForward::forward (tokens = batch · L):
//   x ─router→ expert, gate (tokens, K) ─permute_plan→ plan ─gather→ xp (rows, D)
//   xp ─experts (grouped GEMMs; the one host synchronisation reads the plan's offsets)→ yp (rows, D)
//   yp ─combine (Σ_s g · yp[row(t, s)], slot order)→ out (tokens, D)
// A pair over capacity contributes 0 (the residual stream carries the token).
//
// Checkpoint names under the block's prefix (e.g. "backbone.layers.1.mixer."): router.weight
// (X, D) float32 (Hugging Face's router.classifier.weight is accepted too) and the experts'
// names of moss/layers/experts.hpp; a dense FeedForward stores wi.weight (F, D) and wo.weight
// (D, F) (GatedMlp: gate, up, down).
#pragma once

#include <cmath>
#include <string>
#include <string_view>

#include "moss/core/buffer.hpp"
#include "moss/core/param_io.hpp"
#include "moss/core/tensor.hpp"
#include "moss/layers/experts.hpp"
#include "moss/layers/routing.hpp"
#include "moss/models/mamba_config.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/permute.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/router.hpp"

namespace moss {

namespace detail {

/// Fills the expert keys of section `m` from the expert type, or throws on a contradiction.
template <FeedForwardExpert Expert>
void settle_expert(MoeConfig& m, const char* section) {
  const std::string kind(Expert::name), act(Expert::activation::name);
  if (m.expert.empty()) m.expert = kind;
  if (m.activation.empty()) m.activation = act;
  MOSS_EXPECTS(m.expert == kind, config_error, "config ", section, ".expert is \"", m.expert,
               "\" but the layer type's experts are \"", kind, "\"");
  MOSS_EXPECTS(m.activation == act, config_error, "config ", section, ".activation is \"", m.activation,
               "\" but the layer type's activation is \"", act, "\"");
}

/// Checks the (batch, L, D) input and output of a feed-forward block.
template <class T>
void expect_block_io(const char* where, const ConstView<T, 3>& x, const TensorView<T, 3>& out, index_t D) {
  expect_shape(where, x, {-1, -1, D}, "(batch, seqlen, d_model)");
  expect_shape(where, out, {x.shape[0], x.shape[1], D}, "(batch, seqlen, d_model)");
  expect_contiguous(where, x);
  expect_contiguous(where, out);
}

}  // namespace detail

/// A dense feed-forward block: one expert of kind `Expert` applied to every token (the dense
/// baseline of MoE-Mamba). Block name "ffn"; width `moe.d_ff` of the config.
template <FeedForwardExpert Expert, StorageType T>
class FeedForward {
 public:
  using value_type = T;
  static constexpr bool gated = Expert::kind == ExpertKind::gated_mlp;
  using Act = typename Expert::activation;
  struct Params {
    Buffer<T> wi, up, wo;  // (F, D), (F, D) when gated, (D, F)
  };
  struct Cache {};
  static constexpr std::string_view block_name = "ffn";

  FeedForward(index_t d_model, index_t d_ff) : d_model_(d_model), d_ff_(d_ff) {
    MOSS_EXPECTS(d_model >= 1 && d_ff >= 1, config_error, "FeedForward: d_model ", d_model, " and d_ff ", d_ff,
                 " must be at least 1");
  }
  /// Fills / checks the config keys this block reads.
  static void settle(MambaConfig& c) { detail::settle_expert<Expert>(c.moe, "moe"); }
  static FeedForward from(const MambaConfig& c) { return FeedForward(c.d_model, c.moe.resolved_d_ff(c.d_model)); }
  index_t d_ff() const { return d_ff_; }

  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    Params p;
    p.wi = upload_values<T>(backend, normal_values(rng, d_ff_ * d_model_, 0.02));
    if constexpr (gated) p.up = upload_values<T>(backend, normal_values(rng, d_ff_ * d_model_, 0.02));
    p.wo = upload_values<T>(backend,
                            normal_values(rng, d_model_ * d_ff_, 0.02 / std::sqrt(static_cast<double>(n_layers))));
    return p;
  }
  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix) const {
    Params p;
    p.wi = load_param<T>(backend, ckpt, prefix + (gated ? "gate.weight" : "wi.weight"), {d_ff_, d_model_});
    if constexpr (gated) p.up = load_param<T>(backend, ckpt, prefix + "up.weight", {d_ff_, d_model_});
    p.wo = load_param<T>(backend, ckpt, prefix + (gated ? "down.weight" : "wo.weight"), {d_model_, d_ff_});
    return p;
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_param(backend, w, prefix + (gated ? "gate.weight" : "wi.weight"), p.wi, {d_ff_, d_model_});
    if constexpr (gated) save_param(backend, w, prefix + "up.weight", p.up, {d_ff_, d_model_});
    save_param(backend, w, prefix + (gated ? "down.weight" : "wo.weight"), p.wo, {d_model_, d_ff_});
  }
  template <class Backend>
  Cache make_cache(const Backend&, index_t) const {
    return {};
  }

  /// out = wo · act(wi · x) (gated: down · (act(gate · x) ⊙ up · x)) for every token.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out,
               Cache* = nullptr) const {
    detail::expect_block_io("FeedForward::forward", x, out, d_model_);
    apply(backend, p, ConstView<T, 2>(x.data, {x.shape[0] * x.shape[1], d_model_}, "x"),
          TensorView<T, 2>(out.data, {x.shape[0] * x.shape[1], d_model_}, "out"));
  }
  /// One token per sequence (the block has no state).
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache&) const {
    expect_shape("FeedForward::step", x, {-1, d_model_}, "(batch, d_model)");
    expect_shape("FeedForward::step", out, {x.shape[0], d_model_}, "(batch, d_model)");
    apply(backend, p, x, out);
  }

 private:
  template <class Backend>
  void apply(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out) const {
    const index_t rows = x.shape[0], D = d_model_, F = d_ff_;
    Buffer<T> h = backend.template alloc<T>(rows * F);
    linear(backend,
           LinearArgs<T>{
               x, ConstView<T, 2>(p.wi.data(), {F, D}, "wi.weight"), {}, h.template view<2>({rows, F}, "hidden")});
    ActivationArgs<T> act{ConstView<T, 2>(h.data(), {rows, F}, "hidden"), {}, h.template view<2>({rows, F}, "hidden")};
    Buffer<T> u;
    if constexpr (gated) {
      u = backend.template alloc<T>(rows * F);
      linear(
          backend,
          LinearArgs<T>{x, ConstView<T, 2>(p.up.data(), {F, D}, "up.weight"), {}, u.template view<2>({rows, F}, "up")});
      act.up = ConstView<T, 2>(u.data(), {rows, F}, "up");
    }
    activation<Act>(backend, act);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(h.data(), {rows, F}, "hidden"),
                                  ConstView<T, 2>(p.wo.data(), {D, F}, "wo.weight"),
                                  {},
                                  out});
  }
  index_t d_model_, d_ff_;
};

/// A sparse (MoE) feed-forward block: y = Σ_slots g · Expert_e(x) (REFERENCE.md §2). Block name
/// "moe"; settings in the config's "moe" section.
/// @tparam R the router policy (Top1Switch, TopK<K>, SinkhornTop1 or one's own).
/// @tparam E the expert count (Experts<8>, or Experts<> to read it from the config).
/// @tparam Expert the expert kind (Mlp<Act> or GatedMlp<Act>).
/// @tparam T storage type of activations and expert weights (the router stays float32).
template <Router R, ExpertCount E, FeedForwardExpert Expert, StorageType T>
class MoeFeedForward {
 public:
  using value_type = T;
  using router_type = R;
  using Experts = FeedForwardExperts<Expert, T>;
  struct Params {
    Buffer<float> router;  // (X, D)
    typename Experts::Params experts;
  };
  struct Cache {};
  static constexpr std::string_view block_name = "moe";

  MoeFeedForward(index_t d_model, index_t d_ff, index_t num_experts, R router = {}, RouterSettings settings = {})
      : router_(router), settings_(settings), experts_{E::resolve(num_experts, "MoeFeedForward"), d_model, d_ff} {
    MOSS_EXPECTS(d_model >= 1 && d_ff >= 1, config_error, "MoeFeedForward: d_model ", d_model, " and d_ff ", d_ff,
                 " must be at least 1");
    MOSS_EXPECTS(R::k <= experts_.num_experts, config_error, "MoeFeedForward: the router picks K = ", R::k,
                 " experts per token but there are ", experts_.num_experts);
    settings_.validate("MoeFeedForward");
  }
  /// Fills / checks the config's "moe" section against this type.
  static void settle(MambaConfig& c) {
    settle_router<R>(c.moe, "moe");
    detail::settle_expert<Expert>(c.moe, "moe");
    c.moe.num_experts = E::resolve(c.moe.num_experts, "config moe.num_experts");
  }
  static MoeFeedForward from(const MambaConfig& c) {
    return MoeFeedForward(c.d_model, c.moe.resolved_d_ff(c.d_model), c.moe.num_experts, router_from<R>(c.moe),
                          c.moe.settings);
  }

  index_t num_experts() const { return experts_.num_experts; }
  const R& router() const { return router_; }
  /// The router (e.g. to switch SinkhornTop1's training mode).
  R& router() { return router_; }
  const RouterSettings& settings() const { return settings_; }
  RouterSettings& settings() { return settings_; }

  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    Params p;
    p.router = upload_values<float>(backend, normal_values(rng, experts_.num_experts * experts_.d_model, 0.02));
    p.experts = experts_.init(backend, rng, n_layers);
    return p;
  }
  /// Loads `{prefix}router.weight` (or `{prefix}router.classifier.weight`) and the experts.
  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix) const {
    Params p;
    const std::string hf = prefix + "router.classifier.weight";
    const std::string name =
        ckpt.contains(hf) && !ckpt.contains(prefix + "router.weight") ? hf : prefix + "router.weight";
    p.router = load_param<float>(backend, ckpt, name, {experts_.num_experts, experts_.d_model});
    p.experts = experts_.load(backend, ckpt, prefix);
    return p;
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_param(backend, w, prefix + "router.weight", p.router, {experts_.num_experts, experts_.d_model});
    experts_.save(backend, p.experts, w, prefix);
  }
  template <class Backend>
  Cache make_cache(const Backend&, index_t) const {
    return {};
  }

  /// Full sequence (capacity applies when set). Statistics go to `report` when given.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Cache* = nullptr,
               RoutingReport* report = nullptr) const {
    detail::expect_block_io("MoeFeedForward::forward", x, out, experts_.d_model);
    const index_t tokens = x.shape[0] * x.shape[1];
    apply(backend, p, ConstView<T, 2>(x.data, {tokens, experts_.d_model}, "x"),
          TensorView<T, 2>(out.data, {tokens, experts_.d_model}, "out"), true, report);
  }
  /// One token per sequence (always dropless).
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache&,
            RoutingReport* report = nullptr) const {
    expect_shape("MoeFeedForward::step", x, {-1, experts_.d_model}, "(batch, d_model)");
    expect_shape("MoeFeedForward::step", out, {x.shape[0], experts_.d_model}, "(batch, d_model)");
    expect_contiguous("MoeFeedForward::step", x);
    apply(backend, p, x, out, false, report);
  }

 private:
  template <class Backend>
  void apply(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, bool full_sequence,
             RoutingReport* report) const {
    const index_t tokens = x.shape[0], D = experts_.d_model;
    if (tokens == 0) return;
    RoutingDecision d =
        decide_routing(backend, router_, settings_, x, p.router, experts_.num_experts, full_sequence, report, "mixer");
    const index_t rows = d.plan.rows();
    Buffer<T> xp = backend.template alloc<T>(rows * D);
    gather_rows(backend, GatherRowsArgs<T>{x, d.plan.row_pair_view(), d.plan.offsets_view(), R::k,
                                           xp.template view<2>({rows, D}, "permuted_x")});
    const std::vector<std::int32_t>& offsets = read_offsets(backend, d.plan);
    Buffer<T> yp = backend.template alloc<T>(rows * D);
    experts_.apply(backend, p.experts, d.plan, offsets, ConstView<T, 2>(xp.data(), {rows, D}, "permuted_x"),
                   yp.template view<2>({rows, D}, "expert_out"));
    CombineRowsArgs<T> c;
    c.y = ConstView<T, 2>(yp.data(), {rows, D}, "expert_out");
    c.pair_row = d.plan.pair_row_view();
    c.gate = d.gate_view();
    c.weight_begin = 0;
    c.weight_end = D;
    c.out = out;
    combine_rows(backend, c);
  }

  R router_;
  RouterSettings settings_;
  Experts experts_;
};

}  // namespace moss
