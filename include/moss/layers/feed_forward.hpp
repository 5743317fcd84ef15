// moss/layers/feed_forward.hpp: the feed-forward blocks of MoE-Mamba and BlackMamba
// (docs/math.md §2): the sparse `MoeFeedForward<Router, Experts, Expert, T>`,
// y = Σ_slots g · Expert_e(x), and the dense `FeedForward<Expert, T>`, which is the same expert
// kind as one expert over one segment (a dense dispatch). Both run the expert kind's one
// `apply` (moss/layers/experts.hpp) through the one dispatch path (moss/layers/dispatch.hpp).
//
// Dataflow of MoeFeedForward::forward (tokens = batch · L):
//   x ─router→ expert, gate (tokens, K) ─permute_plan→ plan ─Expert::apply (gather, grouped
//   GEMMs, combine Σ_s g · y)→ out (tokens, D)
// A pair over capacity contributes 0 (the residual stream carries the token).
//
// Checkpoint names under the block's prefix (e.g. "backbone.layers.1.mixer."): router.weight
// (X, D) float32 (Hugging Face's router.classifier.weight is accepted too) and the expert kind's
// names under "experts."; a dense FeedForward stores the expert kind's names without the
// expert axis ("wi.weight" (F, D), "wo.weight" (D, F); GatedMlp: gate, up, down).
//
// Config sections (config.json, `blocks[i]`): MoeFeedForward {"num_experts", "top_k", "router",
// router settings, "capacity_factor", "aux_loss_coef", "z_loss_coef", "expert", "activation",
// "d_ff"}; FeedForward {"expert", "activation", "d_ff"}. d_ff 0 or absent = 3 · d_model.
//
// Training (docs/training.md): both blocks keep nothing of their experts between forward_train
// and backward (the expert kind's `backward` recomputes its rows and hidden activations); the
// MoE block keeps its routing decision (logits, choices, gates, plan). MoeFeedForward's backward
// adds the router's gradient: through the gates (the choice is a constant), plus the
// load-balancing and z-losses with the block's aux_loss_coef and z_loss_coef (their values are
// in the routing report, not in the returned loss).
#pragma once

#include <cmath>
#include <string>
#include <string_view>

#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/layers/block.hpp"
#include "moss/layers/dispatch.hpp"
#include "moss/layers/experts.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/params.hpp"
#include "moss/layers/routing.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/ops/router_backward.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/router.hpp"

namespace moss {

namespace detail {

/// Reads / writes the expert kind's keys of a feed-forward block's section ("expert",
/// "activation", "d_ff"), refusing a kind or activation other than the type's.
template <class Expert>
struct ExpertKeys {
  static std::string kind() { return std::string(Expert::name); }
  static std::string activation() {
    if constexpr (requires { Expert::activation::name; }) {
      return std::string(Expert::activation::name);
    } else {
      return "";
    }
  }
  static void read(const io::JsonRef& section, index_t& d_ff) {
    std::string k = kind(), a = activation();
    section.read("expert", k);
    MOSS_EXPECTS(k == kind(), config_error, section.where(), ".expert is \"", k,
                 "\" but the layer type's experts are \"", kind(), "\"");
    section.read("activation", a);
    MOSS_EXPECTS(a == activation(), config_error, section.where(), ".activation is \"", a,
                 "\" but the layer type's activation is \"", activation(), "\"");
    section.read("d_ff", d_ff);
    MOSS_EXPECTS(d_ff >= 0, config_error, section.where(), ".d_ff is ", d_ff, ", expected ≥ 0 (0: 3 · d_model)");
  }
  static void write(io::Json& section, index_t d_ff) {
    section["expert"] = kind();
    if (!activation().empty()) section["activation"] = activation();
    section["d_ff"] = d_ff;
  }
};

}  // namespace detail

/// A dense feed-forward block: one expert of kind `Expert` applied to every token (the dense
/// baseline of MoE-Mamba). Block name "ffn".
/// @tparam Expert the expert kind (Mlp<Act>, GatedMlp<Act> or one's own).
/// @tparam T storage type of activations and weights.
template <class Expert, StorageType T>
requires FeedForwardExpert<Expert, T>
class FeedForward {
 public:
  using value_type = T;
  using Params = typename Expert::template Params<T>;
  struct Cache {};
  static constexpr std::string_view block_name = "ffn";

  /// The block's config section.
  struct Config {
    index_t d_ff = 0;  ///< hidden width F; 0: 3 · d_model (MoE-Mamba's)
    static Config from_json(const io::JsonRef& section) {
      Config c;
      detail::ExpertKeys<Expert>::read(section, c.d_ff);
      return c;
    }
    void to_json(io::Json& section) const { detail::ExpertKeys<Expert>::write(section, d_ff); }
  };

  FeedForward(const MambaDims& dims, Config config) : FeedForward(dims.d_model, config.d_ff) {}
  /// A block of width d_model and hidden width d_ff (0: 3 · d_model).
  FeedForward(index_t d_model, index_t d_ff) : config_{d_ff > 0 ? d_ff : 3 * d_model} {
    shape_ = ExpertShape{1, d_model, config_.d_ff, d_model, /*stacked=*/false};
    shape_.validate("FeedForward");
  }
  const Config& config() const { return config_; }
  index_t d_ff() const { return config_.d_ff; }

  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    return Expert::template init<T>(backend, rng, scaled(n_layers), "");
  }
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix) const {
    return Expert::template load<T>(backend, src, prefix, "", shape_);
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    Expert::save(backend, p, shape_, w, prefix);
  }
  template <class Backend>
  Cache make_cache(const Backend&, index_t) const {
    return {};
  }

  /// out = Expert(x) for every token.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out,
               Cache* = nullptr) const {
    detail::expect_block_io("FeedForward::forward", x, out, shape_.in);
    const index_t tokens = x.shape[0] * x.shape[1];
    apply(backend, p, ConstView<T, 2>(x.data, {tokens, shape_.in}, "x"),
          TensorView<T, 2>(out.data, {tokens, shape_.in}, "out"));
  }
  /// One token per sequence (the block has no state).
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache&) const {
    detail::expect_step_io("FeedForward::step", x, out, shape_.in);
    apply(backend, p, x, out);
  }

  // ---- training (docs/training.md) ----

  /// Parameter gradients: the expert kind's Params in float32.
  using Grads = typename Expert::template Params<float>;
  /// Nothing is kept (the expert kind's backward recomputes its activations).
  struct Saved {};
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    return Expert::zero_grads(backend, p);
  }
  template <class P, class F>
  static void visit_params(P& p, F&& f) {
    Expert::visit(p, f);
  }
  /// `forward` (the policy is irrelevant: the experts always recompute).
  template <class Backend>
  void forward_train(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Saved&,
                     ActivationPolicy = ActivationPolicy::keep) const {
    forward(backend, p, x, out);
  }
  /// Backward of `forward_train`: dx and the experts' gradients (written, or added).
  template <class Backend>
  void backward(const Backend& backend, const Params& p, ConstView<T, 3> x, const Saved&, ConstView<T, 3> dout,
                TensorView<T, 3> dx, Grads& g, bool accumulate = false) const {
    detail::expect_block_io("FeedForward::backward", x, dx, shape_.in);
    expect_shape("FeedForward::backward", dout, x.shape, "(batch, seqlen, d_model), like x");
    const index_t tokens = x.shape[0] * x.shape[1];
    Expert::backward(backend, p, Dispatch<T>::dense(tokens), ConstView<T, 2>(x.data, {tokens, shape_.in}, "x"),
                     ConstView<T, 2>(dout.data, {tokens, shape_.in}, "dout"),
                     TensorView<T, 2>(dx.data, {tokens, shape_.in}, "dx"), g, {}, ColumnWeighting::none(), accumulate);
  }

 private:
  ExpertShape scaled(index_t n_layers) const {
    ExpertShape s = shape_;
    s.out_scale = 1.0 / std::sqrt(static_cast<double>(n_layers));
    return s;
  }
  template <class Backend>
  void apply(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out) const {
    if (x.shape[0] == 0) return;
    Expert::apply(backend, p, Dispatch<T>::dense(x.shape[0]), x, out, ColumnWeighting::none());
  }

  Config config_;
  ExpertShape shape_;
};

/// A sparse (MoE) feed-forward block: y = Σ_slots g · Expert_e(x) (docs/math.md §2). Block name "moe".
/// @tparam R the router policy (Top1Switch, TopK<K>, SinkhornTop1 or one's own).
/// @tparam E the expert count (Experts<8>, or Experts<> to read it from the config).
/// @tparam Expert the expert kind (Mlp<Act>, GatedMlp<Act> or one's own).
/// @tparam T storage type of activations and expert weights (the router stays float32).
template <Router R, ExpertCount E, class Expert, StorageType T>
requires FeedForwardExpert<Expert, T>
class MoeFeedForward {
  static_assert(E::fixed == 0 || R::k <= E::fixed,
                "moss::MoeFeedForward: the router picks more experts per token (R::k) than Experts<N> has");

 public:
  using value_type = T;
  using router_type = R;
  using expert_type = Expert;
  struct Params {
    Tensor<float, 2> router;  // (X, D) "router.weight"
    typename Expert::template Params<T> experts;
  };
  struct Cache {};
  static constexpr std::string_view block_name = "moe";
  /// A decode step's routing decision is resident (its GEMMs read the offsets on the device), so
  /// the step waits for nothing when the router and the expert kind queue work only.
  static constexpr bool capturable_step = CapturableRouter<R> && CapturableExpert<Expert>;

  /// The block's config section: routing, and the expert kind's width.
  struct Config {
    RouterConfig<R, E> routing;
    index_t d_ff = 0;  ///< hidden width F; 0: 3 · d_model (MoE-Mamba's)
    static Config from_json(const io::JsonRef& section) {
      Config c;
      c.routing.read(section);
      detail::ExpertKeys<Expert>::read(section, c.d_ff);
      return c;
    }
    void to_json(io::Json& section) const {
      routing.write(section);
      detail::ExpertKeys<Expert>::write(section, d_ff);
    }
  };

  MoeFeedForward(const MambaDims& dims, Config config) : config_(std::move(config)) {
    const index_t D = dims.d_model;
    const index_t X = config_.routing.experts("MoeFeedForward");
    config_.routing.num_experts = X;
    if (config_.d_ff == 0) config_.d_ff = 3 * D;
    shape_ = ExpertShape{X, D, config_.d_ff, D, /*stacked=*/true};
    shape_.validate("MoeFeedForward");
    MOSS_EXPECTS(R::k <= X, config_error, "MoeFeedForward: the router picks K = ", R::k,
                 " experts per token but there are ", X);
    config_.routing.settings.validate("MoeFeedForward");
  }
  /// A block of width d_model, hidden width d_ff (0: 3 · d_model) and `num_experts` experts.
  MoeFeedForward(index_t d_model, index_t d_ff, index_t num_experts, R router = {}, RouterSettings settings = {})
      : MoeFeedForward(dims_of(d_model), Config{{num_experts, router, settings}, d_ff}) {}

  const Config& config() const { return config_; }
  index_t num_experts() const { return shape_.experts; }
  index_t d_ff() const { return shape_.hidden; }
  const R& router() const { return config_.routing.router; }
  /// The router (e.g. to switch SinkhornTop1's training mode).
  R& router() { return config_.routing.router; }
  const RouterSettings& settings() const { return config_.routing.settings; }
  RouterSettings& settings() { return config_.routing.settings; }

  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    Params p;
    p.router = normal_tensor<float>(backend, rng, Extents<2>{shape_.experts, shape_.in}, 0.02, "router.weight");
    ExpertShape s = shape_;
    s.out_scale = 1.0 / std::sqrt(static_cast<double>(n_layers));
    p.experts = Expert::template init<T>(backend, rng, s, "experts.");
    return p;
  }
  /// Loads `{prefix}router.weight` (or `{prefix}router.classifier.weight`) and the experts.
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix) const {
    Params p;
    p.router = load_tensor_any<float>(backend, src, prefix, {"router.weight", "router.classifier.weight"},
                                      Extents<2>{shape_.experts, shape_.in});
    p.experts = Expert::template load<T>(backend, src, prefix, "experts.", shape_);
    return p;
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_tensor(backend, w, prefix, p.router);
    Expert::save(backend, p.experts, shape_, w, prefix);
  }
  template <class Backend>
  Cache make_cache(const Backend&, index_t) const {
    return {};
  }

  /// Full sequence (capacity applies when set). Statistics go to `report` when given.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Cache* = nullptr,
               RoutingReport* report = nullptr) const {
    detail::expect_block_io("MoeFeedForward::forward", x, out, shape_.in);
    const index_t tokens = x.shape[0] * x.shape[1];
    apply(backend, p, ConstView<T, 2>(x.data, {tokens, shape_.in}, "x"),
          TensorView<T, 2>(out.data, {tokens, shape_.in}, "out"), true, report);
  }
  /// One token per sequence (always dropless).
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache&,
            RoutingReport* report = nullptr) const {
    detail::expect_step_io("MoeFeedForward::step", x, out, shape_.in);
    apply(backend, p, x, out, false, report);
  }

  // ---- training (docs/training.md) ----

  /// Parameter gradients in float32: the router's and the experts'.
  struct Grads {
    Tensor<float, 2> router;
    typename Expert::template Params<float> experts;
  };
  /// The routing decision of the training forward (its plan caches the host offsets the
  /// backward's GEMMs read again, hence mutable).
  struct Saved {
    mutable RoutingDecision decision;
  };
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    return {zeros_like<float>(backend, p.router), Expert::zero_grads(backend, p.experts)};
  }
  template <class P, class F>
  static void visit_params(P& p, F&& f) {
    f(p.router.name(), p.router);
    Expert::visit(p.experts, f);
  }
  /// `forward` (full sequence, capacity as set) that keeps the routing decision.
  template <class Backend>
  void forward_train(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Saved& saved,
                     ActivationPolicy = ActivationPolicy::keep, RoutingReport* report = nullptr) const {
    detail::expect_block_io("MoeFeedForward::forward_train", x, out, shape_.in);
    const index_t tokens = x.shape[0] * x.shape[1];
    const ConstView<T, 2> x2(x.data, {tokens, shape_.in}, "x");
    saved = Saved{};
    if (tokens == 0) return;
    saved.decision = config_.routing.decide(backend, x2, p.router, true, report, "mixer");
    Expert::apply(backend, p.experts, Dispatch<T>::routed(saved.decision), x2,
                  TensorView<T, 2>(out.data, {tokens, shape_.in}, "out"), ColumnWeighting::all(shape_.out));
  }
  /// Backward of `forward_train`: the experts' backward (dx through them, the gates' gradient),
  /// then the router's (through the gates, plus the aux and z-losses weighted by `loss_scale`),
  /// its dx added.
  template <class Backend>
  void backward(const Backend& backend, const Params& p, ConstView<T, 3> x, const Saved& saved, ConstView<T, 3> dout,
                TensorView<T, 3> dx, Grads& g, bool accumulate = false, float loss_scale = 1.0f) const {
    const char* where = "MoeFeedForward::backward";
    detail::expect_block_io(where, x, dx, shape_.in);
    expect_shape(where, dout, x.shape, "(batch, seqlen, d_model), like x");
    const index_t tokens = x.shape[0] * x.shape[1], D = shape_.in, K = R::k;
    if (tokens == 0)
      return no_token_gradients(
          backend, g, [](auto& set, auto&& f) { visit_params(set, f); }, accumulate);
    MOSS_EXPECTS(saved.decision.plan.tokens == tokens, shape_error, where, ": the saved routing decision is of ",
                 saved.decision.plan.tokens, " tokens but x has ", tokens, " (run forward_train on this input first)");
    const ConstView<T, 2> x2(x.data, {tokens, D}, "x");
    const TensorView<T, 2> dx2(dx.data, {tokens, D}, "dx");
    Buffer<float> dgate = backend.template alloc<float>(tokens * K);
    Expert::backward(backend, p.experts, Dispatch<T>::routed(saved.decision), x2,
                     ConstView<T, 2>(dout.data, {tokens, D}, "dout"), dx2, g.experts,
                     dgate.template view<2>({tokens, K}, "dgate"), ColumnWeighting::all(shape_.out), accumulate);
    routing_backward(backend, config_.routing.router, config_.routing.settings, saved.decision, x2, p.router,
                     ConstView<float, 2>(dgate.data(), {tokens, K}, "dgate"), dx2, g.router.view(), accumulate,
                     loss_scale);
  }

 private:
  static MambaDims dims_of(index_t d_model) {
    MambaDims d;
    d.d_model = d_model;
    return d;
  }
  template <class Backend>
  void apply(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, bool full_sequence,
             RoutingReport* report) const {
    if (x.shape[0] == 0) return;
    RoutingDecision d = config_.routing.decide(backend, x, p.router, full_sequence, report, "mixer");
    Expert::apply(backend, p.experts, Dispatch<T>::routed(d), x, out, ColumnWeighting::all(shape_.out));
  }

  Config config_;
  ExpertShape shape_;
};

}  // namespace moss
