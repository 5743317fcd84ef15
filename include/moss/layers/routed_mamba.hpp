// moss/layers/routed_mamba.hpp: the Routing Mamba (RoM) mixer (REFERENCE.md §3, Zhan et al.
// 2025): a Mamba-1 mixer whose Conv, Gate and Out projections are X linear experts sharing one
// routing decision; conv1d, x_proj, dt_proj, A and D stay one shared copy (`MambaCore`).
//
// Dataflow of `forward` with shared routing (tokens = batch · L):
//   x ─router→ expert, gate ─permute_plan→ plan (once) ─gather→ xp (rows, D)
//   xp ─grouped GEMM, Conv and Gate experts fused: expert i's (2·ED, D) matrix is a dense
//       in_proj→ (rows, 2·ED) ─combine (Σ over the K slots, before the conv)→ xz (tokens, 2·ED)
//   xz ─MambaCore (conv1d, x_proj, dt_proj, scan gated by z)→ y (tokens, ED)
//   y ─gather (the same plan)→ grouped GEMM (Out experts) ─weighted combine→ out (tokens, D)
// The combine weight g multiplies what the placement says (`RomVariant`). The decode state is
// dense Mamba's (the conv and scan run once per token on one ED-wide stream), and the one-token
// step routes the batch's tokens the same way (dropless). One host synchronisation per routing
// decision reads the plan's offsets for the grouped GEMMs (see grouped_linear.hpp).
//
// Checkpoint names under the mixer's prefix:
//   router.weight (X, D) float32                   shared routing
//   router_conv.weight, router_gate.weight (X, D), router_out.weight (X, ED)   per-projection routing
//   in_proj.weight (X, 2·ED, D)                    Conv and Gate routed with one shared decision
//   in_proj_conv.weight, in_proj_gate.weight       otherwise: (X, ED, D) routed, (ED, D) dense
//   out_proj.weight (X, D, ED) routed, (D, ED) dense
//   conv1d.*, x_proj.weight, dt_proj.*, A_log, D   as in dense Mamba
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/param_io.hpp"
#include "moss/core/tensor.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/routing.hpp"
#include "moss/models/mamba_config.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/permute.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/rom.hpp"
#include "moss/policy/router.hpp"

namespace moss {

/// The RoM mixer. Block name "rom"; settings in the config's "rom" section.
/// @tparam R the router policy (TopK<1> in the paper's main setting).
/// @tparam S the routing scope: SharedRouting (RoM) or PerProjectionRouting (the naive baseline;
///           every routed projection is then weighted by its own router, so the placement slot
///           must stay at its default).
/// @tparam E the expert count (Experts<8>, or Experts<> from the config).
/// @tparam T storage type of activations and weights (routers, A, D, dt bias stay float32).
/// @tparam V the variant: RomVariant<Routed<...>, Weight...>.
template <Router R, RoutingScope S, ExpertCount E, StorageType T, class V = RomVariant<>>
class RoutedMamba {
  static_assert(S::shared || std::is_same_v<typename V::weight, WeightOut>,
                "moss::RoutedMamba: with PerProjectionRouting every projection is weighted by its own router; "
                "leave the weight placement at its default (WeightOut)");
  static_assert(!S::shared || V::placement != Placement::out || V::out,
                "moss::RoutedMamba: WeightOut puts g on Out Proj, which this variant does not route; route Out, or "
                "choose WeightGate, WeightAll or WeightNone");
  static_assert(!S::shared || V::placement != Placement::gate || V::gate,
                "moss::RoutedMamba: WeightGate puts g on Gate Proj, which this variant does not route; route Gate, or "
                "choose WeightOut, WeightAll or WeightNone");

 public:
  using value_type = T;
  using router_type = R;
  using Cache = MambaCache<T>;
  /// Conv and Gate experts form one (2·ED, D) matrix per expert when they share the decision.
  static constexpr bool kFusedIn = S::shared && V::conv && V::gate;
  static constexpr std::string_view block_name = "rom";

  /// Owned weights: the shared core plus routers and projections (see the file comment).
  struct Params : MambaCoreParams<T> {
    Buffer<float> router;                                // shared: (X, D)
    Buffer<float> router_conv, router_gate, router_out;  // per projection
    Buffer<T> in_proj;                                   // fused: (X, 2·ED, D)
    Buffer<T> conv_proj, gate_proj;                      // unfused: (X, ED, D) or (ED, D)
    Buffer<T> out_proj;                                  // (X, D, ED) or (D, ED)
  };

  RoutedMamba(const MambaDims& dims, index_t num_experts, R router = {}, RouterSettings settings = {})
      : dims_(dims),
        core_(dims),
        router_(router),
        settings_(settings),
        num_experts_(E::resolve(num_experts, "RoutedMamba")) {
    MOSS_EXPECTS(!dims.use_bias, unsupported_error,
                 "RoutedMamba: use_bias = true is not supported (projection experts have no biases); supported: "
                 "use_bias = false");
    MOSS_EXPECTS(R::k <= num_experts_, config_error, "RoutedMamba: the router picks K = ", R::k,
                 " experts per token but there are ", num_experts_);
    settings_.validate("RoutedMamba");
  }

  /// Fills / checks the config's "rom" section against this type.
  static void settle(MambaConfig& c) {
    MoeConfig& m = c.rom;
    settle_router<R>(m, "rom");
    m.num_experts = E::resolve(m.num_experts, "config rom.num_experts");
    if (m.scope.empty()) m.scope = std::string(S::name);
    MOSS_EXPECTS(m.scope == S::name, config_error, "config rom.scope is \"", m.scope, "\" but the layer type's is \"",
                 S::name, "\"");
    std::vector<std::string> routed;
    if (V::conv) routed.emplace_back("conv");
    if (V::gate) routed.emplace_back("gate");
    if (V::out) routed.emplace_back("out");
    if (m.projections.empty()) m.projections = routed;
    std::vector<std::string> given = m.projections;
    std::sort(given.begin(), given.end());
    std::vector<std::string> want = routed;
    std::sort(want.begin(), want.end());
    MOSS_EXPECTS(given == want, config_error,
                 "config rom.projections does not match the layer type's routed projections ",
                 detail::quoted_list(routed));
    const std::string weight(V::weight::name);
    if (m.weight_placement.empty()) m.weight_placement = weight;
    MOSS_EXPECTS(m.weight_placement == weight, config_error, "config rom.weight_placement is \"", m.weight_placement,
                 "\" but the layer type's is \"", weight, "\"");
  }
  static RoutedMamba from(const MambaConfig& c) {
    return RoutedMamba(MambaDims::from(c), c.rom.num_experts, router_from<R>(c.rom), c.rom.settings);
  }

  const MambaDims& dims() const { return dims_; }
  index_t num_experts() const { return num_experts_; }
  const R& router() const { return router_; }
  R& router() { return router_; }
  const RouterSettings& settings() const { return settings_; }
  RouterSettings& settings() { return settings_; }

  /// Random weights: routers and projections N(0, 0.02²) (Out scaled by 1/sqrt(n_layers)), the
  /// core as dense Mamba's.
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner, X = num_experts_;
    Params p;
    if constexpr (S::shared) {
      p.router = upload_values<float>(backend, normal_values(rng, X * D, 0.02));
    } else {
      if (V::conv) p.router_conv = upload_values<float>(backend, normal_values(rng, X * D, 0.02));
      if (V::gate) p.router_gate = upload_values<float>(backend, normal_values(rng, X * D, 0.02));
      if (V::out) p.router_out = upload_values<float>(backend, normal_values(rng, X * ED, 0.02));
    }
    if constexpr (kFusedIn) {
      p.in_proj = upload_values<T>(backend, normal_values(rng, X * 2 * ED * D, 0.02));
    } else {
      p.conv_proj = upload_values<T>(backend, normal_values(rng, (V::conv ? X : 1) * ED * D, 0.02));
      p.gate_proj = upload_values<T>(backend, normal_values(rng, (V::gate ? X : 1) * ED * D, 0.02));
    }
    core_.init(backend, rng, p);
    p.out_proj = upload_values<T>(
        backend, normal_values(rng, (V::out ? X : 1) * D * ED, 0.02 / std::sqrt(static_cast<double>(n_layers))));
    return p;
  }

  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner, X = num_experts_;
    Params p;
    if constexpr (S::shared) {
      p.router = load_param<float>(backend, ckpt, prefix + "router.weight", {X, D});
    } else {
      if (V::conv) p.router_conv = load_param<float>(backend, ckpt, prefix + "router_conv.weight", {X, D});
      if (V::gate) p.router_gate = load_param<float>(backend, ckpt, prefix + "router_gate.weight", {X, D});
      if (V::out) p.router_out = load_param<float>(backend, ckpt, prefix + "router_out.weight", {X, ED});
    }
    if constexpr (kFusedIn) {
      p.in_proj = load_param<T>(backend, ckpt, prefix + "in_proj.weight", {X, 2 * ED, D});
    } else {
      p.conv_proj = load_param<T>(backend, ckpt, prefix + "in_proj_conv.weight", shape(V::conv, ED, D));
      p.gate_proj = load_param<T>(backend, ckpt, prefix + "in_proj_gate.weight", shape(V::gate, ED, D));
    }
    core_.load(backend, ckpt, prefix, p);
    p.out_proj = load_param<T>(backend, ckpt, prefix + "out_proj.weight", shape(V::out, D, ED));
    return p;
  }

  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner, X = num_experts_;
    if constexpr (S::shared) {
      save_param(backend, w, prefix + "router.weight", p.router, {X, D});
    } else {
      if (V::conv) save_param(backend, w, prefix + "router_conv.weight", p.router_conv, {X, D});
      if (V::gate) save_param(backend, w, prefix + "router_gate.weight", p.router_gate, {X, D});
      if (V::out) save_param(backend, w, prefix + "router_out.weight", p.router_out, {X, ED});
    }
    if constexpr (kFusedIn) {
      save_param(backend, w, prefix + "in_proj.weight", p.in_proj, {X, 2 * ED, D});
    } else {
      save_param(backend, w, prefix + "in_proj_conv.weight", p.conv_proj, shape(V::conv, ED, D));
      save_param(backend, w, prefix + "in_proj_gate.weight", p.gate_proj, shape(V::gate, ED, D));
    }
    core_.save(backend, p, w, prefix);
    save_param(backend, w, prefix + "out_proj.weight", p.out_proj, shape(V::out, D, ED));
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
    expect_shape(where, x, {-1, -1, D}, "(batch, seqlen, d_model)");
    expect_shape(where, out, {batch, L, D}, "(batch, seqlen, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, cache, batch);
    const index_t tokens = batch * L, ED = dims_.d_inner;
    if (tokens == 0) return;  // nothing to route; a cache keeps its state
    const ConstView<T, 2> x2(x.data, {tokens, D}, "x");
    Routings d = route_in(backend, p, x2, true, report);
    Buffer<T> xz = backend.template alloc<T>(tokens * 2 * ED);
    project_in(backend, p, x2, d, xz.data());
    Buffer<T> y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p, xz.data(), batch, L, y.data(), cache);
    project_out(backend, p, ConstView<T, 2>(y.data(), {tokens, ED}, "y"), d, true, report,
                TensorView<T, 2>(out.data, {tokens, D}, "out"));
  }

  /// One token per sequence (dropless), updating the cache in place.
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache& cache,
            RoutingReport* report = nullptr) const {
    const char* where = "RoutedMamba::step";
    const index_t batch = x.shape[0], D = dims_.d_model, ED = dims_.d_inner;
    expect_shape(where, x, {-1, D}, "(batch, d_model)");
    expect_shape(where, out, {batch, D}, "(batch, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, &cache, batch);
    if (batch == 0) return;
    Routings d = route_in(backend, p, x, false, report);
    Buffer<T> xz = backend.template alloc<T>(batch * 2 * ED);
    project_in(backend, p, x, d, xz.data());
    Buffer<T> y = backend.template alloc<T>(batch * ED);
    core_.step(backend, p, xz.data(), batch, y.data(), cache);
    project_out(backend, p, ConstView<T, 2>(y.data(), {batch, ED}, "y"), d, false, report, out);
  }

 private:
  /// The decisions of one call: `shared` for shared routing; `conv` / `gate` per projection
  /// (the Out router runs later, on y).
  struct Routings {
    RoutingDecision shared, conv, gate;
  };

  /// The shape of a projection's weight: (X, rows, cols) routed, (rows, cols) dense.
  std::vector<index_t> shape(bool routed, index_t rows, index_t cols) const {
    return routed ? std::vector<index_t>{num_experts_, rows, cols} : std::vector<index_t>{rows, cols};
  }

  template <class Backend>
  RoutingDecision decide(const Backend& backend, ConstView<T, 2> x, const Buffer<float>& weight, bool full,
                         RoutingReport* report, const char* name) const {
    return decide_routing(backend, router_, settings_, x, weight, num_experts_, full, report, name);
  }

  template <class Backend>
  Routings route_in(const Backend& backend, const Params& p, ConstView<T, 2> x, bool full,
                    RoutingReport* report) const {
    Routings d;
    if constexpr (S::shared) {
      d.shared = decide(backend, x, p.router, full, report, "mixer");
    } else {
      if (V::conv) d.conv = decide(backend, x, p.router_conv, full, report, "mixer.router_conv");
      if (V::gate) d.gate = decide(backend, x, p.router_gate, full, report, "mixer.router_gate");
    }
    return d;
  }

  /// out (tokens, width) = Σ_s (g ·) W_{e_s} x_t through `decision`. The gather is queued before
  /// the plan's offsets are read (the decision's one host synchronisation, cached in the plan).
  template <class Backend>
  void routed_linear(const Backend& backend, RoutingDecision& decision, ConstView<T, 2> x, const Buffer<T>& weight,
                     index_t width, bool weighted, index_t weight_begin, index_t weight_end,
                     TensorView<T, 2> out) const {
    const index_t in = x.shape[1], rows = decision.plan.rows();
    Buffer<T> xp = backend.template alloc<T>(rows * in);
    gather_rows(backend, GatherRowsArgs<T>{x, decision.plan.row_pair_view(), decision.plan.offsets_view(), R::k,
                                           xp.template view<2>({rows, in}, "permuted_x")});
    const std::vector<std::int32_t>& offsets = read_offsets(backend, decision.plan);
    Buffer<T> yp = backend.template alloc<T>(rows * width);
    GroupedLinearArgs<T> g;
    g.x = ConstView<T, 2>(xp.data(), {rows, in}, "permuted_x");
    g.weight = ConstView<T, 3>(weight.data(), {num_experts_, width, in}, "projection experts");
    g.offsets = decision.plan.offsets_view();
    g.host_offsets = offsets.data();
    g.y = yp.template view<2>({rows, width}, "expert_out");
    grouped_linear(backend, g);
    CombineRowsArgs<T> c;
    c.y = ConstView<T, 2>(yp.data(), {rows, width}, "expert_out");
    c.pair_row = decision.plan.pair_row_view();
    if (weighted) {
      c.gate = decision.gate_view();
      c.weight_begin = weight_begin;
      c.weight_end = weight_end;
    }
    c.out = out;
    combine_rows(backend, c);
  }

  /// xz (tokens, 2·ED) = [u | z] from the routed or dense Conv and Gate projections.
  template <class Backend>
  void project_in(const Backend& backend, const Params& p, ConstView<T, 2> x, Routings& d, T* xz) const {
    const index_t tokens = x.shape[0], D = dims_.d_model, ED = dims_.d_inner;
    if constexpr (kFusedIn) {
      const index_t w0 = V::weights_conv ? 0 : ED, w1 = V::weights_gate ? 2 * ED : ED;
      routed_linear(backend, d.shared, x, p.in_proj, 2 * ED, V::weights_conv || V::weights_gate, w0, w1,
                    TensorView<T, 2>(xz, {tokens, 2 * ED}, "xz"));
    } else {
      const TensorView<T, 2> u(xz, {tokens, ED}, {2 * ED, 1}, "u");
      const TensorView<T, 2> z(xz + ED, {tokens, ED}, {2 * ED, 1}, "z");
      half(backend, p.conv_proj, V::conv, S::shared ? d.shared : d.conv, x, !S::shared || V::weights_conv, u, D, ED);
      half(backend, p.gate_proj, V::gate, S::shared ? d.shared : d.gate, x, !S::shared || V::weights_gate, z, D, ED);
    }
  }

  template <class Backend>
  void half(const Backend& backend, const Buffer<T>& weight, bool routed, RoutingDecision& decision, ConstView<T, 2> x,
            bool weighted, TensorView<T, 2> out, index_t D, index_t ED) const {
    if (routed) {
      routed_linear(backend, decision, x, weight, ED, weighted, 0, ED, out);
    } else {
      linear(backend, LinearArgs<T>{x, ConstView<T, 2>(weight.data(), {ED, D}, "in_proj"), {}, out});
    }
  }

  /// out (tokens, D) from y (tokens, ED) through the routed or dense Out projection.
  template <class Backend>
  void project_out(const Backend& backend, const Params& p, ConstView<T, 2> y, Routings& d, bool full,
                   RoutingReport* report, TensorView<T, 2> out) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    if constexpr (!V::out) {
      linear(backend, LinearArgs<T>{y, ConstView<T, 2>(p.out_proj.data(), {D, ED}, "out_proj.weight"), {}, out});
    } else if constexpr (S::shared) {
      routed_linear(backend, d.shared, y, p.out_proj, D, V::weights_out, 0, D, out);
    } else {
      RoutingDecision o = decide(backend, y, p.router_out, full, report, "mixer.router_out");
      routed_linear(backend, o, y, p.out_proj, D, true, 0, D, out);
    }
  }

  MambaDims dims_;
  MambaCore<T> core_;
  R router_;
  RouterSettings settings_;
  index_t num_experts_;
};

}  // namespace moss
