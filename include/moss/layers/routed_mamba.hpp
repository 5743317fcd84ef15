// moss/layers/routed_mamba.hpp: the Routing Mamba (RoM) mixer (docs/math.md §3, Zhan et al.
// 2025): `MambaCore` (conv1d, x_proj, dt_proj, A and D: one shared copy) plus its three
// projections, Conv, Gate and Out, each a `LinearExpert` stack: routed (X experts) or dense.
//
// Dataflow of `forward` (tokens = batch · L):
//   x ─routers on the layer input→ decisions (one per distinct router of the scope)
//   x ─Conv, Gate (LinearExpert::apply through the dispatch path; Conv and Gate fused into one
//      (X, 2·ED, D) stack when one decision routes both: expert i's matrix is a dense in_proj)
//      → xz (tokens, 2·ED), K slots summed before the conv
//   xz ─MambaCore (conv1d, x_proj, dt_proj, scan gated by z)→ y (tokens, ED)
//   y ─Out (the same decision, or its own router on y for PerProjectionRouting)→ out (tokens, D)
// Which projections are routed, which router routes each and where the combine weight g
// multiplies are the policies of moss/policy/rom.hpp; this file reads them only through
// `kRouted<P>`, `kWeighted<P>` and the router table below, so a new scope or placement is one
// struct there. The decode state is dense Mamba's (the conv and scan run once per token on one
// ED-wide stream); the one-token step routes the batch's tokens the same way (dropless). A
// full-sequence call synchronises once per routing decision (the grouped GEMMs read the plan's
// offsets on the host); a step's decisions are resident (the grouped matrix-vector kernel reads
// them on the device), so the step waits for nothing and can be captured (`capturable_step`).
//
// Checkpoint names under the mixer's prefix:
//   {router}.weight (X, D) float32, or (X, ED) for a router on Out's input; {router} is the
//                      scope's name: "router" (shared), "router_conv" / "router_gate" / "router_out"
//   in_proj.weight (X, 2·ED, D)       Conv and Gate routed by one decision
//   in_proj_conv.weight, in_proj_gate.weight   otherwise: (X, ED, D) routed, (ED, D) dense
//   out_proj.weight (X, D, ED) routed, (D, ED) dense
//   conv1d.*, x_proj.weight, dt_proj.*, A_log, D   as in dense Mamba
// Config section (`blocks[i]` of config.json): the routing keys of `RouterConfig` and "scope",
// "projections", "weight_placement" (names of the type's policies; a contradiction is refused).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/layers/block.hpp"
#include "moss/layers/dispatch.hpp"
#include "moss/layers/experts.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/params.hpp"
#include "moss/layers/routing.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/rom.hpp"
#include "moss/policy/router.hpp"

namespace moss {

/// The RoM mixer. Block name "rom".
/// @tparam R the router policy (TopK<1> in the paper's main setting).
/// @tparam S the routing scope: SharedRouting (RoM), PerProjectionRouting (the naive baseline),
///           or one's own.
/// @tparam E the expert count (Experts<8>, or Experts<> from the config).
/// @tparam T storage type of activations and weights (routers, A, D, dt bias stay float32).
/// @tparam V the variant: RomVariant<Routed<...>, Weight>.
/// @tparam Scan the selective-scan strategy of the shared core.
template <Router R, RoutingScope S, ExpertCount E, StorageType T, class V = RomVariant<>, class Scan = AutoScan>
class RoutedMamba {
  using W = typename V::weight;
  template <class P>
  static constexpr bool kRouted = V::template routes<P>;
  /// Whether g multiplies projection P's output (routed projections only).
  template <class P>
  static constexpr bool kWeighted = kRouted<P>&& S::template weighs<W, P>;

  static constexpr bool kScopeUsesPlacement = S::template weighs<WeightNone, Out> != S::template weighs<WeightAll, Out>;
  static_assert(kScopeUsesPlacement || std::is_same_v<W, WeightOut>,
                "moss::RoutedMamba: this routing scope weights every routed projection by its own router; leave the "
                "weight placement at its default (WeightOut)");
  static constexpr bool kWeighsAll = W::template weighs<Conv> && W::template weighs<Gate> && W::template weighs<Out>;
  static_assert(!kScopeUsesPlacement || kWeighsAll ||
                    ((!W::template weighs<Conv> || kRouted<Conv>)&&(!W::template weighs<Gate> || kRouted<Gate>)&&(
                        !W::template weighs<Out> || kRouted<Out>)),
                "moss::RoutedMamba: the weight placement puts g on a projection this variant does not route; route it, "
                "or choose another placement");

  /// The distinct routers of the scope, in dataflow order (Conv, Gate, Out), for routed projections.
  struct RouterTable {
    std::array<std::string_view, 3> names{};
    std::array<bool, 3> on_layer_input{};
    int count = 0;
  };
  static constexpr RouterTable make_router_table() {
    RouterTable t;
    auto add = [&t](bool routed, std::string_view name, bool on_input) {
      if (!routed) return;
      for (int i = 0; i < t.count; ++i)
        if (t.names[i] == name) return;
      t.names[t.count] = name;
      t.on_layer_input[t.count] = on_input;
      ++t.count;
    };
    add(kRouted<Conv>, S::template router<Conv>, S::template on_layer_input<Conv>);
    add(kRouted<Gate>, S::template router<Gate>, S::template on_layer_input<Gate>);
    add(kRouted<Out>, S::template router<Out>, S::template on_layer_input<Out>);
    return t;
  }
  static constexpr RouterTable kRouters = make_router_table();
  /// The index in `kRouters` of the router of projection P.
  template <class P>
  static constexpr int router_index() {
    for (int i = 0; i < kRouters.count; ++i)
      if (kRouters.names[i] == S::template router<P>) return i;
    return -1;
  }
  static_assert(!kRouted<Conv> || S::template on_layer_input<Conv>,
                "moss::RoutedMamba: Conv Proj's router must read the layer input (its own input)");
  static_assert(!kRouted<Gate> || S::template on_layer_input<Gate>,
                "moss::RoutedMamba: Gate Proj's router must read the layer input (its own input)");
  static_assert(!kRouted<Out> || S::template on_layer_input<Out> ||
                    (router_index<Out>() != router_index<Conv>() && router_index<Out>() != router_index<Gate>()),
                "moss::RoutedMamba: a router shared with Conv or Gate Proj reads the layer input, so it cannot also be "
                "Out Proj's router on Out's own input");

 public:
  using value_type = T;
  using router_type = R;
  using Cache = MambaCache<T>;
  /// Conv and Gate experts form one (2·ED, D) matrix per expert when one decision routes both.
  static constexpr bool kFusedIn =
      kRouted<Conv> && kRouted<Gate> && S::template router<Conv> == S::template router<Gate>;
  static constexpr std::string_view block_name = "rom";
  /// A decode step's decisions are resident (the expert GEMMs read the offsets on the device), so
  /// the step waits for nothing when the router queues work only (CapturableStep).
  static constexpr bool capturable_step = CapturableRouter<R>;

  /// Owned weights: the shared core, the routers and the projections (see the file comment).
  struct Params {
    MambaCoreParams<T> core;
    std::array<Tensor<float, 2>, 3> routers;  // the first kRouters.count are used: (X, D) or (X, ED)
    LinearExpert::Params<T> in;               // fused Conv + Gate: (X, 2·ED, D)
    LinearExpert::Params<T> conv, gate;       // unfused: (X, ED, D) routed, (1, ED, D) dense
    LinearExpert::Params<T> out;              // (X, D, ED) routed, (1, D, ED) dense
  };

  /// The block's config section.
  struct Config {
    RouterConfig<R, E> routing;
    static Config from_json(const io::JsonRef& section) {
      Config c;
      c.routing.read(section);
      auto expect_name = [&](const char* key, const std::string& want) {
        std::string got = want;
        section.read(key, got);
        MOSS_EXPECTS(got == want, config_error, section.where(), ".", key, " is \"", got,
                     "\" but the layer type's is \"", want, "\"");
      };
      expect_name("scope", std::string(S::name));
      expect_name("weight_placement", std::string(W::name));
      std::vector<std::string> given = routed_names();
      section.read("projections", given);
      std::vector<std::string> want = routed_names();
      std::sort(given.begin(), given.end());
      std::sort(want.begin(), want.end());
      MOSS_EXPECTS(given == want, config_error, section.where(),
                   ".projections does not match the layer type's routed projections ", quoted(routed_names()));
      return c;
    }
    void to_json(io::Json& section) const {
      routing.write(section);
      section["scope"] = std::string(S::name);
      section["projections"] = routed_names();
      section["weight_placement"] = std::string(W::name);
    }
  };

  RoutedMamba(const MambaDims& dims, Config config) : dims_(dims), core_(dims), config_(std::move(config)) {
    const index_t X = config_.routing.experts("RoutedMamba");
    config_.routing.num_experts = X;
    MOSS_EXPECTS(!dims.use_bias, unsupported_error,
                 "RoutedMamba: use_bias = true is not supported (projection experts have no biases); supported: "
                 "use_bias = false");
    MOSS_EXPECTS(R::k <= X, config_error, "RoutedMamba: the router picks K = ", R::k,
                 " experts per token but there are ", X);
    config_.routing.settings.validate("RoutedMamba");
  }
  /// A mixer of `dims` with `num_experts` experts.
  RoutedMamba(const MambaDims& dims, index_t num_experts, R router = {}, RouterSettings settings = {})
      : RoutedMamba(dims, Config{{num_experts, router, settings}}) {}

  const MambaDims& dims() const { return dims_; }
  const Config& config() const { return config_; }
  index_t num_experts() const { return config_.routing.num_experts; }
  const R& router() const { return config_.routing.router; }
  R& router() { return config_.routing.router; }
  const RouterSettings& settings() const { return config_.routing.settings; }
  RouterSettings& settings() { return config_.routing.settings; }
  /// Number of routers the scope gives this variant, and their checkpoint names (without ".weight").
  static constexpr int router_count() { return kRouters.count; }
  static std::string router_name_at(int i) { return std::string(kRouters.names[i]); }

  /// Random weights: routers and projections N(0, 0.02²) (Out scaled by 1/sqrt(n_layers)), the
  /// core as dense Mamba's.
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    Params p;
    for (int i = 0; i < kRouters.count; ++i)
      p.routers[i] = normal_tensor<float>(backend, rng, router_shape(i), 0.02, router_name_at(i) + ".weight");
    if constexpr (kFusedIn) {
      p.in = LinearExpert::init<T>(backend, rng, in_shape(true, 2), "in_proj.");
    } else {
      p.conv = LinearExpert::init<T>(backend, rng, in_shape(kRouted<Conv>, 1), "in_proj_conv.");
      p.gate = LinearExpert::init<T>(backend, rng, in_shape(kRouted<Gate>, 1), "in_proj_gate.");
    }
    core_.init(backend, rng, p.core);
    ExpertShape o = out_shape();
    o.out_scale = 1.0 / std::sqrt(static_cast<double>(n_layers));
    p.out = LinearExpert::init<T>(backend, rng, o, "out_proj.");
    return p;
  }

  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix) const {
    Params p;
    for (int i = 0; i < kRouters.count; ++i)
      p.routers[i] = load_tensor<float>(backend, src, prefix, router_name_at(i) + ".weight", router_shape(i));
    if constexpr (kFusedIn) {
      p.in = LinearExpert::load<T>(backend, src, prefix, "in_proj.", in_shape(true, 2));
    } else {
      p.conv = LinearExpert::load<T>(backend, src, prefix, "in_proj_conv.", in_shape(kRouted<Conv>, 1));
      p.gate = LinearExpert::load<T>(backend, src, prefix, "in_proj_gate.", in_shape(kRouted<Gate>, 1));
    }
    core_.load(backend, src, prefix, p.core);
    p.out = LinearExpert::load<T>(backend, src, prefix, "out_proj.", out_shape());
    return p;
  }

  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    for (int i = 0; i < kRouters.count; ++i) save_tensor(backend, w, prefix, p.routers[i]);
    if constexpr (kFusedIn) {
      LinearExpert::save(backend, p.in, in_shape(true, 2), w, prefix);
    } else {
      LinearExpert::save(backend, p.conv, in_shape(kRouted<Conv>, 1), w, prefix);
      LinearExpert::save(backend, p.gate, in_shape(kRouted<Gate>, 1), w, prefix);
    }
    core_.save(backend, p.core, w, prefix);
    LinearExpert::save(backend, p.out, out_shape(), w, prefix);
  }

  /// A zeroed decode cache: dense Mamba's (batch, ED, W − 1) conv state and (batch, ED, N) SSM state.
  template <class Backend>
  Cache make_cache(const Backend& backend, index_t batch) const {
    return core_.make_cache(backend, batch);
  }

  /// Full sequence (capacity applies when set); with a cache, continues from its state.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Cache* cache = nullptr,
               RoutingReport* report = nullptr) const {
    const char* where = "RoutedMamba::forward";
    const index_t batch = x.shape[0], L = x.shape[1], D = dims_.d_model;
    detail::expect_block_io(where, x, out, D);
    core_.check_cache(where, cache, batch);
    const index_t tokens = batch * L, ED = dims_.d_inner;
    if (tokens == 0) return;  // nothing to route; a cache keeps its state
    const ConstView<T, 2> x2(x.data, {tokens, D}, "x");
    Decisions d;
    Buffer<T> xz = backend.template alloc<T>(tokens * 2 * ED);
    project_in(backend, p, x2, d, true, report, xz.data());
    Buffer<T> y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p.core, xz.data(), batch, L, y.data(), cache);
    project_out(backend, p, ConstView<T, 2>(y.data(), {tokens, ED}, "y"), d, true, report,
                TensorView<T, 2>(out.data, {tokens, D}, "out"));
  }

  /// One token per sequence (dropless), updating the cache in place.
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache& cache,
            RoutingReport* report = nullptr) const {
    const char* where = "RoutedMamba::step";
    const index_t batch = x.shape[0], ED = dims_.d_inner;
    detail::expect_step_io(where, x, out, dims_.d_model);
    core_.check_cache(where, &cache, batch);
    if (batch == 0) return;
    Decisions d;
    Buffer<T> xz = backend.template alloc<T>(batch * 2 * ED);
    project_in(backend, p, x, d, false, report, xz.data());
    Buffer<T> y = backend.template alloc<T>(batch * ED);
    core_.step(backend, p.core, xz.data(), batch, y.data(), cache);
    project_out(backend, p, ConstView<T, 2>(y.data(), {batch, ED}, "y"), d, false, report, out);
  }

  // ---- training (docs/training.md) ----

 private:
  /// The decisions of one call, one per router of the scope, made when first needed.
  using Decisions = std::array<std::optional<RoutingDecision>, 3>;

 public:
  /// Parameter gradients in float32, named like the Params: the core's, the routers', the projections'.
  struct Grads {
    MambaCoreParams<float> core;
    std::array<Tensor<float, 2>, 3> routers;
    LinearExpert::Params<float> in, conv, gate, out;
  };
  /// What `forward_train` keeps: the routing decisions (their plans cache the host offsets the
  /// backward's GEMMs read again, hence mutable), xz, y and the core's activations under `keep`.
  struct Saved {
    mutable Decisions decisions;
    Buffer<T> xz;                  // (tokens, 2·ED): [u | z], the combined Conv and Gate outputs
    Buffer<T> y;                   // (tokens, ED): the gated scan output, Out's input
    MambaCoreActivations<T> core;  // v, x_dbl, delta under `keep`; empty under `recompute`
    index_t batch = 0, L = 0;
  };

  /// Zeroed gradients for `p`.
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    Grads g;
    zero_core_grads(backend, p.core, g.core);
    for (int i = 0; i < kRouters.count; ++i) g.routers[i] = zeros_like<float>(backend, p.routers[i]);
    g.in = LinearExpert::zero_grads(backend, p.in);
    g.conv = LinearExpert::zero_grads(backend, p.conv);
    g.gate = LinearExpert::zero_grads(backend, p.gate);
    g.out = LinearExpert::zero_grads(backend, p.out);
    return g;
  }

  /// Calls f(name, tensor) for every trainable tensor of `p` (Params or Grads) in checkpoint
  /// order: the routers, the Conv and Gate stacks, the core (without the derived A), Out.
  template <class P, class F>
  static void visit_params(P& p, F&& f) {
    for (int i = 0; i < kRouters.count; ++i) f(p.routers[i].name(), p.routers[i]);
    if constexpr (kFusedIn) {
      LinearExpert::visit(p.in, f);
    } else {
      LinearExpert::visit(p.conv, f);
      LinearExpert::visit(p.gate, f);
    }
    visit_mamba_core(p.core, f);
    LinearExpert::visit(p.out, f);
  }

  /// Recomputes A = −exp(A_log) after an optimiser step.
  template <class Backend>
  void refresh_derived(const Backend& backend, Params& p) const {
    core_.refresh_derived(backend, p.core);
  }

  /// `forward` without a cache (capacity applies when set) that keeps what `backward` needs.
  template <class Backend>
  void forward_train(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Saved& saved,
                     ActivationPolicy policy = ActivationPolicy::keep, RoutingReport* report = nullptr) const {
    const char* where = "RoutedMamba::forward_train";
    const index_t batch = x.shape[0], L = x.shape[1], D = dims_.d_model, ED = dims_.d_inner;
    detail::expect_block_io(where, x, out, D);
    saved = Saved{};
    saved.batch = batch;
    saved.L = L;
    const index_t tokens = batch * L;
    if (tokens == 0) return;
    saved.xz = backend.template alloc<T>(tokens * 2 * ED);
    project_in(backend, p, ConstView<T, 2>(x.data, {tokens, D}, "x"), saved.decisions, true, report, saved.xz.data());
    saved.y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p.core, saved.xz.data(), batch, L, saved.y.data(), nullptr,
                  policy == ActivationPolicy::keep ? &saved.core : nullptr);
    project_out(backend, p, ConstView<T, 2>(saved.y.data(), {tokens, ED}, "y"), saved.decisions, true, report,
                TensorView<T, 2>(out.data, {tokens, D}, "out"));
  }

  /// Backward of `forward_train`: Out (and its own router on y), the core, Conv and Gate, then
  /// every router on the layer input (through the gates its projections weight, plus its aux
  /// and z-losses, weighted by `loss_scale`). Writes dx (batch, L, D) and the gradients into `g`
  /// (written, or added when `accumulate`).
  template <class Backend>
  void backward(const Backend& backend, const Params& p, ConstView<T, 3> x, const Saved& saved, ConstView<T, 3> dout,
                TensorView<T, 3> dx, Grads& g, bool accumulate = false, float loss_scale = 1.0f) const {
    const char* where = "RoutedMamba::backward";
    const index_t batch = x.shape[0], L = x.shape[1], D = dims_.d_model, ED = dims_.d_inner;
    detail::expect_block_io(where, x, dx, D);
    expect_shape(where, dout, {batch, L, D}, "(batch, seqlen, d_model), like x");
    expect_contiguous(where, dout);
    const index_t tokens = batch * L;
    MOSS_EXPECTS(saved.batch == batch && saved.L == L && saved.xz.size() == tokens * 2 * ED, shape_error, where,
                 ": the saved activations are of batch ", saved.batch, " and seqlen ", saved.L, " but x is ",
                 shape_string(x.shape), " (run forward_train on this input first)");
    if (tokens == 0)
      return no_token_gradients(
          backend, g, [](auto& set, auto&& f) { visit_params(set, f); }, accumulate);
    const ConstView<T, 2> x2(x.data, {tokens, D}, "x");
    const TensorView<T, 2> dx2(dx.data, {tokens, D}, "dx");
    const ConstView<T, 2> y(saved.y.data(), {tokens, ED}, "y");

    // The gradient of each router's gates, summed over the projections it weights.
    std::array<Buffer<float>, 3> dgate;
    // Out, from dout to dy; a router on y itself adds its input gradient to dy.
    Buffer<T> dy_b = backend.template alloc<T>(tokens * ED);
    const TensorView<T, 2> dy = dy_b.template view<2>({tokens, ED}, "dy");
    with_gate_grad(backend, dgate, kWeighted<Out>, gate_router<Out>(), tokens, [&](TensorView<float, 2> dg) {
      LinearExpert::backward(backend, p.out, saved_dispatch<Out>(saved, tokens), y,
                             ConstView<T, 2>(dout.data, {tokens, D}, "dout"), dy, g.out, dg,
                             kWeighted<Out> ? ColumnWeighting::all(D) : ColumnWeighting::none(), accumulate);
    });
    if constexpr (kRouted<Out>) {
      constexpr int i = router_index<Out>();
      if (!kRouters.on_layer_input[i])
        router_backward(backend, p, saved, g, i, y, dgate[i], dy, accumulate, loss_scale);
    }

    // The core, from dy to dxz.
    Buffer<T> dxz = backend.template alloc<T>(tokens * 2 * ED);
    if (saved.core.v.data()) {
      core_.backward(backend, p.core, saved.xz.data(), batch, L, saved.core, dy_b.data(), dxz.data(), g.core,
                     accumulate);
    } else {
      MambaCoreActivations<T> a;
      core_.recompute(backend, p.core, saved.xz.data(), batch, L, a);
      core_.backward(backend, p.core, saved.xz.data(), batch, L, a, dy_b.data(), dxz.data(), g.core, accumulate);
    }

    // Conv and Gate, from dxz to dx.
    if constexpr (kFusedIn) {
      const index_t w0 = kWeighted<Conv> ? 0 : ED, w1 = kWeighted<Gate> ? 2 * ED : ED;
      constexpr bool weighted = kWeighted<Conv> || kWeighted<Gate>;
      const auto run = [&](TensorView<float, 2> dg) {
        LinearExpert::backward(backend, p.in, saved_dispatch<Conv>(saved, tokens), x2,
                               ConstView<T, 2>(dxz.data(), {tokens, 2 * ED}, "dxz"), dx2, g.in, dg,
                               ColumnWeighting{w0, std::max(w0, w1)}, accumulate);
      };
      with_gate_grad(backend, dgate, weighted, gate_router<Conv>(), tokens, run);  // Conv's router is Gate's
    } else {
      with_gate_grad(backend, dgate, kWeighted<Conv>, gate_router<Conv>(), tokens, [&](TensorView<float, 2> dg) {
        LinearExpert::backward(backend, p.conv, saved_dispatch<Conv>(saved, tokens), x2,
                               ConstView<T, 2>(dxz.data(), {tokens, ED}, {2 * ED, 1}, "du"), dx2, g.conv, dg,
                               kWeighted<Conv> ? ColumnWeighting::all(ED) : ColumnWeighting::none(), accumulate);
      });
      Buffer<T> dx_gate = backend.template alloc<T>(tokens * D);
      with_gate_grad(backend, dgate, kWeighted<Gate>, gate_router<Gate>(), tokens, [&](TensorView<float, 2> dg) {
        LinearExpert::backward(backend, p.gate, saved_dispatch<Gate>(saved, tokens), x2,
                               ConstView<T, 2>(dxz.data() + ED, {tokens, ED}, {2 * ED, 1}, "dz"),
                               dx_gate.template view<2>({tokens, D}, "dx (gate)"), g.gate, dg,
                               kWeighted<Gate> ? ColumnWeighting::all(ED) : ColumnWeighting::none(), accumulate);
      });
      add_into(backend, ConstView<T, 1>(dx_gate.flat()), TensorView<T, 1>(dx.data, {tokens * D}, "dx"));
    }

    // Every router on the layer input: its gradient into dx and its classifier's.
    for (int i = 0; i < kRouters.count; ++i)
      if (kRouters.on_layer_input[i])
        router_backward(backend, p, saved, g, i, x2, dgate[i], dx2, accumulate, loss_scale);
  }

 private:
  /// The index of projection P's router (0 for an unrouted projection, which has no gate).
  template <class P>
  static constexpr int gate_router() {
    return kRouted<P> ? router_index<P>() : 0;
  }
  /// Runs `run(dg)` with dg the place for a projection's gate gradient (tokens, K): router i's
  /// sum `dgate[i]` when it is the first projection weighted by it, else a buffer of its own
  /// that is then added to the sum; an unweighted projection gets no dg.
  template <class Backend, class Run>
  void with_gate_grad(const Backend& backend, std::array<Buffer<float>, 3>& dgate, bool weighted, int i, index_t tokens,
                      Run&& run) const {
    if (!weighted) {
      run(TensorView<float, 2>{});
      return;
    }
    const index_t K = R::k;
    if (!dgate[i].data()) {
      dgate[i] = backend.template alloc<float>(tokens * K);
      run(dgate[i].template view<2>({tokens, K}, "dgate"));
      return;
    }
    Buffer<float> mine = backend.template alloc<float>(tokens * K);
    run(mine.template view<2>({tokens, K}, "dgate"));
    add_into(backend, ConstView<float, 1>(mine.flat()), dgate[i].flat("dgate"));
  }
  /// The dispatch of projection P in the backward pass: its saved decision, or dense.
  template <class P>
  Dispatch<T> saved_dispatch(const Saved& saved, index_t tokens) const {
    if constexpr (kRouted<P>) {
      return Dispatch<T>::routed(*saved.decisions[router_index<P>()]);
    } else {
      return Dispatch<T>::dense(tokens);
    }
  }
  /// Router i's backward on its input `in` (the layer input, or y): through `dgate` (its gates'
  /// summed gradient; none when no projection weights by it) and its losses, added to `din`.
  template <class Backend>
  void router_backward(const Backend& backend, const Params& p, const Saved& saved, Grads& g, int i, ConstView<T, 2> in,
                       const Buffer<float>& dgate, TensorView<T, 2> din, bool accumulate, float loss_scale) const {
    const index_t tokens = in.shape[0];
    routing_backward(backend, config_.routing.router, config_.routing.settings, *saved.decisions[i], in,
                     ConstView<float, 2>(p.routers[i]),
                     dgate.data() ? ConstView<float, 2>(dgate.data(), {tokens, R::k}, "dgate") : ConstView<float, 2>{},
                     din, g.routers[i].view(), accumulate, loss_scale);
  }

  static std::vector<std::string> routed_names() {
    std::vector<std::string> v;
    if (kRouted<Conv>) v.emplace_back(Conv::name);
    if (kRouted<Gate>) v.emplace_back(Gate::name);
    if (kRouted<Out>) v.emplace_back(Out::name);
    return v;
  }
  static std::string quoted(const std::vector<std::string>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
    return s + "]";
  }

  /// The name router i's statistics carry in a report: "mixer" for the one shared router,
  /// "mixer.{router}" otherwise.
  static std::string report_name(int i) {
    return kRouters.names[i] == "router" ? std::string("mixer") : "mixer." + std::string(kRouters.names[i]);
  }
  Extents<2> router_shape(int i) const {
    return {num_experts(), kRouters.on_layer_input[i] ? dims_.d_model : dims_.d_inner};
  }
  /// Conv / Gate stacks: `halves` × ED rows (2 when fused), routed or dense.
  ExpertShape in_shape(bool routed, index_t halves) const {
    return ExpertShape{routed ? num_experts() : 1, dims_.d_model, 0, halves * dims_.d_inner, routed};
  }
  ExpertShape out_shape() const {
    return ExpertShape{kRouted<Out> ? num_experts() : 1, dims_.d_inner, 0, dims_.d_model, kRouted<Out>};
  }

  /// The decision of projection P's router; a router on the projection's own input decides here.
  template <class P, class Backend>
  RoutingDecision& decision(const Backend& backend, const Params& p, Decisions& d, ConstView<T, 2> input, bool full,
                            RoutingReport* report) const {
    constexpr int i = router_index<P>();
    static_assert(i >= 0);
    if (!d[i])
      d[i] = config_.routing.decide(backend, input, ConstView<float, 2>(p.routers[i]), full, report, report_name(i));
    return *d[i];
  }

  /// The dispatch of projection P: its router's decision, or dense.
  template <class P, class Backend>
  Dispatch<T> dispatch(const Backend& backend, const Params& p, Decisions& d, ConstView<T, 2> input, bool full,
                       RoutingReport* report) const {
    if constexpr (kRouted<P>) {
      return Dispatch<T>::routed(decision<P>(backend, p, d, input, full, report));
    } else {
      return Dispatch<T>::dense(input.shape[0]);
    }
  }

  /// xz (tokens, 2·ED) = [u | z] from the routed or dense Conv and Gate projections. Every router
  /// on the layer input decides first (so a shared decision's report entry comes first).
  template <class Backend>
  void project_in(const Backend& backend, const Params& p, ConstView<T, 2> x, Decisions& d, bool full,
                  RoutingReport* report, T* xz) const {
    const index_t tokens = x.shape[0], ED = dims_.d_inner;
    for (int i = 0; i < kRouters.count; ++i)
      if (kRouters.on_layer_input[i])
        d[i] = config_.routing.decide(backend, x, ConstView<float, 2>(p.routers[i]), full, report, report_name(i));
    if constexpr (kFusedIn) {
      const index_t w0 = kWeighted<Conv> ? 0 : ED, w1 = kWeighted<Gate> ? 2 * ED : ED;
      LinearExpert::apply(backend, p.in, dispatch<Conv>(backend, p, d, x, full, report), x,
                          TensorView<T, 2>(xz, {tokens, 2 * ED}, "xz"), ColumnWeighting{w0, std::max(w0, w1)});
    } else {
      const TensorView<T, 2> u(xz, {tokens, ED}, {2 * ED, 1}, "u");
      const TensorView<T, 2> z(xz + ED, {tokens, ED}, {2 * ED, 1}, "z");
      LinearExpert::apply(backend, p.conv, dispatch<Conv>(backend, p, d, x, full, report), x, u,
                          kWeighted<Conv> ? ColumnWeighting::all(ED) : ColumnWeighting::none());
      LinearExpert::apply(backend, p.gate, dispatch<Gate>(backend, p, d, x, full, report), x, z,
                          kWeighted<Gate> ? ColumnWeighting::all(ED) : ColumnWeighting::none());
    }
  }

  /// out (tokens, D) from y (tokens, ED) through the routed or dense Out projection.
  template <class Backend>
  void project_out(const Backend& backend, const Params& p, ConstView<T, 2> y, Decisions& d, bool full,
                   RoutingReport* report, TensorView<T, 2> out) const {
    LinearExpert::apply(backend, p.out, dispatch<Out>(backend, p, d, y, full, report), y, out,
                        kWeighted<Out> ? ColumnWeighting::all(dims_.d_model) : ColumnWeighting::none());
  }

  MambaDims dims_;
  MambaCore<T, Scan> core_;
  Config config_;
};

}  // namespace moss
