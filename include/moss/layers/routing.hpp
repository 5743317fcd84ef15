// moss/layers/routing.hpp: what every routed layer shares: the routing decision of one call
// (router → permutation plan) and the report through which layers return their statistics.
//
//   moss::RoutingReport report;
//   model.forward(backend, params, ids, logits, nullptr, &report);
//   for (const moss::RouterStats& s : report.read()) std::cout << s.layer << " aux " << s.aux_loss;
// A report queues each layer's statistics to page-locked host memory as the layer runs (no
// synchronisation) and `read()` waits for their events.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/layers/params.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router/math.hpp"
#include "moss/ops/router_backward.hpp"
#include "moss/policy/experts.hpp"
#include "moss/policy/router.hpp"

namespace moss {

/// The statistics of one router on one call, in host memory (docs/math.md §2).
struct RouterStats {
  std::string layer;  ///< e.g. "layers.3.mixer" or "layers.3.mixer.router_out"
  std::int64_t tokens = 0, k = 1;
  std::vector<std::int64_t> counts;  ///< (X) pairs assigned to each expert before capacity
  std::vector<std::int64_t> kept;    ///< (X) pairs each expert processed
  std::int64_t dropped = 0;          ///< pairs over capacity (Σ counts − Σ kept)
  float aux_loss = 0.0f;             ///< α · X · Σ f_i P_i (0 for routers without one)
  float z_loss = 0.0f;               ///< β · mean logsumexp²
  std::vector<float> prob_mean;      ///< (X) P_i: mean router probability of each expert
};

/// Collects the statistics of every routed layer a forward pass runs. Layers add entries in
/// the order they run; each entry's numbers are copied to page-locked host memory as soon as
/// they are computed (on CUDA: queued on the stream, no synchronisation) and an event marks
/// their arrival; `read()` waits for those events and builds the statistics on the host. A
/// report holds no stream or backend object, so it may outlive them once read.
class RoutingReport {
 public:
  RoutingReport() = default;
  RoutingReport(const RoutingReport&) = delete;
  RoutingReport& operator=(const RoutingReport&) = delete;
  RoutingReport(RoutingReport&&) = default;
  RoutingReport& operator=(RoutingReport&&) = default;
  /// Waits for copies still in flight: their host memory must outlive them.
  ~RoutingReport() { drain(); }

  /// The prefix of the names that layers added next will carry (the model sets "layers.{i}").
  void set_scope(std::string scope) { scope_ = std::move(scope); }
  const std::string& scope() const { return scope_; }

  /// Adds one router's statistics: `values` (2 + X floats from `router_stats`), the plan's
  /// `counts` (X) and `offsets` (X + 1), all in `backend` memory. Queues their copies to the
  /// host and returns; the device memory may be freed right after (stream-ordered).
  template <class Backend>
  void add(const Backend& backend, const std::string& name, index_t tokens, index_t k, index_t num_experts,
           const float* values, const std::int32_t* counts, const std::int32_t* offsets) {
    const index_t X = num_experts, nv = router_stats_size(X);
    Entry e;
    e.layer = scope_.empty() ? name : scope_ + "." + name;
    e.tokens = tokens;
    e.k = k;
    e.num_experts = X;
    e.values = backend.template alloc_pinned<float>(nv);
    e.counts = backend.template alloc_pinned<std::int32_t>(2 * X + 1);  // counts (X), then offsets (X + 1)
    download_async(backend, e.values.data(), values, nv);
    download_async(backend, e.counts.data(), counts, X);
    download_async(backend, e.counts.data() + X, offsets, X + 1);
    using Event = decltype(backend.record());
    e.event = std::make_shared<Event>(backend.record());
    e.wait = [](const void* ev) { static_cast<const Event*>(ev)->wait(); };
    entries_.push_back(std::move(e));
  }

  /// Every entry's statistics, in the order the layers ran (waits for each entry's copies).
  std::vector<RouterStats> read() const {
    std::vector<RouterStats> out;
    for (const Entry& e : entries_) {
      e.wait(e.event.get());
      RouterStats s;
      s.layer = e.layer;
      s.tokens = e.tokens;
      s.k = e.k;
      const index_t X = e.num_experts;
      const float* v = e.values.data();
      const std::int32_t* c = e.counts.data();
      const std::int32_t* o = c + X;
      s.aux_loss = v[0];
      s.z_loss = v[1];
      s.prob_mean.assign(v + 2, v + 2 + X);
      std::int64_t assigned = 0;
      for (index_t i = 0; i < X; ++i) {
        s.counts.push_back(c[i]);
        s.kept.push_back(o[i + 1] - o[i]);
        assigned += c[i];
      }
      s.dropped = assigned - o[X];
      out.push_back(std::move(s));
    }
    return out;
  }
  /// Number of entries.
  std::size_t size() const { return entries_.size(); }
  /// Forgets every entry (and frees its host buffers once their copies have landed).
  void clear() {
    drain();
    entries_.clear();
  }

 private:
  void drain() noexcept {
    for (const Entry& e : entries_) {
      try {
        if (e.wait) e.wait(e.event.get());
      } catch (...) {  // an asynchronous error of earlier work: reported by whoever synchronises next
      }
    }
  }
  struct Entry {
    std::string layer;
    index_t tokens = 0, k = 1, num_experts = 0;
    Buffer<float> values;               // (2 + X) page-locked: aux, z, P_0 .. P_{X-1}
    Buffer<std::int32_t> counts;        // (2X + 1) page-locked: counts, then offsets
    std::shared_ptr<const void> event;  // the backend's event marking the copies' arrival
    void (*wait)(const void*) = nullptr;
  };
  std::string scope_;
  std::vector<Entry> entries_;
};

/// One routing decision: logits, selection and the permutation plan of the call's tokens.
struct RoutingDecision {
  Buffer<float> logits;         // (tokens, X)
  Buffer<std::int32_t> expert;  // (tokens, K)
  Buffer<float> gate;           // (tokens, K)
  PermutePlan plan;
  /// The experts' GEMMs read the plan's offsets on the device only
  /// (`GroupedLinearArgs::resident_offsets`), so nothing waits for the host: a decode step's
  /// decision (dropless), and every decision of a block whose strategy is sync-free.
  bool resident = false;
  /// A user's own grouped-GEMM strategy, bound to the backend and T of the call that decided (a
  /// type-erased `Strategy::run`, called through `run_grouped_gemm`); null for moss's own
  /// (SegmentGemms, SyncFreeGemm).
  void (*grouped_gemm)(const void* backend, const void* args) = nullptr;
  /// The (backend, GroupedLinearArgs<T>) types `grouped_gemm` was bound to.
  const std::type_info* grouped_gemm_types = nullptr;

  /// Runs the bound strategy on `a` (config_error when the backend or T differ from the ones
  /// that decided: a decision belongs to one call).
  template <class Backend, class T>
  void run_grouped_gemm(const Backend& backend, const GroupedLinearArgs<T>& a) const {
    MOSS_EXPECTS(grouped_gemm_types && *grouped_gemm_types == typeid(std::pair<Backend, GroupedLinearArgs<T>>),
                 config_error, "RoutingDecision: its grouped-GEMM strategy was bound to another backend or dtype than ",
                 a.x.name, "'s");
    grouped_gemm(&backend, &a);
  }

  ConstView<float, 2> gate_view() const { return {gate.data(), {plan.tokens, plan.k}, "gate"}; }
};

/// The routing settings of one routed block: its expert count, its router (with the router's
/// own runtime settings) and the settings every router shares (capacity, loss coefficients).
/// Part of the MoE and RoM blocks' `Config`; in config.json these keys sit in the block's section:
///   "num_experts": 8, "top_k": 1, "router": "top1_switch", "capacity_factor": 0.0,
///   "aux_loss_coef": 0.01, "z_loss_coef": 0.001, plus the router's own keys ("normalize", ...).
/// @tparam R the router policy.
/// @tparam E the expert-count policy (a count fixed in the type wins over the config's).
template <Router R, ExpertCount E>
struct RouterConfig {
  // Every routed block (MoeFeedForward, RoutedMamba, one's own) holds a RouterConfig, so this
  // is the one place where the router's K and a fixed expert count meet.
  static_assert(E::fixed == 0 || R::k <= E::fixed,
                "moss::RouterConfig<R, E>: the router picks more experts per token (R::k) than the fixed "
                "expert count Experts<N> has (K must be <= N)");
  /// The grouped-GEMM strategy of the block's expert stacks (moss::Experts' `Gemm` slot).
  using Gemm = expert_gemm_t<E>;
  index_t num_experts = E::fixed;  ///< X; with Experts<> it must be set (config "num_experts")
  R router{};                      ///< the router and its runtime settings
  RouterSettings settings{};       ///< capacity factor and loss coefficients

  /// The expert count, checked against the type (`config_error` naming `where`).
  index_t experts(const char* where) const { return E::resolve(num_experts, where); }

  /// Reads the keys above from a block's section (`config_error` naming the key on a kind error
  /// or a contradiction with the types: another router name or K, a count other than the fixed one).
  void read(const io::JsonRef& section) {
    std::string name = router_name<R>();
    section.read("router", name);
    MOSS_EXPECTS(name == router_name<R>(), config_error, section.where(), ".router is \"", name,
                 "\" but the layer type's router is \"", router_name<R>(), "\"");
    index_t k = R::k;
    section.read("top_k", k);
    MOSS_EXPECTS(k == R::k, config_error, section.where(), ".top_k is ", k, " but the layer type's router picks ", R::k,
                 " experts per token");
    section.read("num_experts", num_experts);
    num_experts = E::resolve(num_experts, (section.where() + ".num_experts").c_str());
    if (section.read("capacity_factor", settings.capacity_factor)) {
      // as_double refused NaN and infinities; a negative factor has no meaning (0 is dropless).
      MOSS_EXPECTS(settings.capacity_factor >= 0, config_error, section.where(), ".capacity_factor is ",
                   settings.capacity_factor, ", expected a finite number >= 0 (0 = dropless)");
    }
    section.read("aux_loss_coef", settings.aux_loss_coef);
    section.read("z_loss_coef", settings.z_loss_coef);
    settings.validate(section.where().c_str());
    if constexpr (ConfigurableRouter<R>) router.read_settings(section);
  }
  /// Routes `x` with the block's router (`decide_routing`) and marks the decision with the
  /// block's grouped-GEMM strategy: a sync-free one makes every decision resident, a user's own
  /// is bound for the experts' GEMMs to call.
  template <class Backend, class T>
  RoutingDecision decide(const Backend& backend, ConstView<T, 2> x, ConstView<float, 2> weight, bool full_sequence,
                         RoutingReport* report, const std::string& name) const {
    RoutingDecision d = decide_routing(backend, router, settings, x, weight, full_sequence, report, name);
    if constexpr (Gemm::sync_free) d.resident = true;
    if constexpr (!std::is_same_v<Gemm, SegmentGemms> && !std::is_same_v<Gemm, SyncFreeGemm>) {
      d.grouped_gemm = [](const void* b, const void* a) {
        Gemm::run(*static_cast<const Backend*>(b), *static_cast<const GroupedLinearArgs<T>*>(a));
      };
      d.grouped_gemm_types = &typeid(std::pair<Backend, GroupedLinearArgs<T>>);
    }
    return d;
  }
  /// Writes the keys above into a block's section.
  void write(io::Json& section) const {
    section["num_experts"] = num_experts;
    section["top_k"] = R::k;
    section["router"] = router_name<R>();
    if constexpr (ConfigurableRouter<R>) router.write_settings(section);
    section["capacity_factor"] = settings.capacity_factor;
    section["aux_loss_coef"] = io::json_number(settings.aux_loss_coef);
    section["z_loss_coef"] = io::json_number(settings.z_loss_coef);
  }
};

/// Routes `x` (tokens, D) with `router` and the float32 classifier `weight` (X, D), builds the
/// plan (with capacity when `full_sequence` and a capacity factor is set: the decode path is
/// dropless, and its decision `resident`) and, when `report` is given, adds the statistics
/// under `name`.
template <class Backend, class T, Router R>
RoutingDecision decide_routing(const Backend& backend, const R& router, const RouterSettings& settings,
                               ConstView<T, 2> x, ConstView<float, 2> weight, bool full_sequence, RoutingReport* report,
                               const std::string& name) {
  const index_t tokens = x.shape[0], num_experts = weight.shape[0], K = R::k;
  RoutingDecision d;
  d.logits = backend.template alloc<float>(tokens * num_experts);
  d.expert = backend.template alloc<std::int32_t>(tokens * K);
  d.gate = backend.template alloc<float>(tokens * K);
  const TensorView<float, 2> logits = d.logits.template view<2>({tokens, num_experts}, "router_logits");
  const TensorView<std::int32_t, 2> expert = d.expert.template view<2>({tokens, K}, "expert");
  const TensorView<float, 2> gate = d.gate.template view<2>({tokens, K}, "gate");
  if constexpr (ScoringRouter<R>) {
    // Batch scoring: the logits of every token first, then the router's scores, then selection.
    route_logits(backend, RouteLogitsArgs<T>{x, weight, logits});
    Buffer<float> scores = backend.template alloc<float>(tokens * num_experts);
    const TensorView<float, 2> sv = scores.template view<2>({tokens, num_experts}, "router_scores");
    const bool scored = router.score(backend, ConstView<float, 2>(logits), sv);
    route_select(backend, RouteSelectArgs<R>{router, logits, scored ? ConstView<float, 2>(sv) : logits, expert, gate});
  } else {
    route(backend, RouteArgs<T, R>{router, x, weight, logits, expert, gate});
  }
  const index_t capacity =
      full_sequence
          ? static_cast<index_t>(detail::route::expert_capacity(settings.capacity_factor, tokens, K, num_experts))
          : 0;
  d.plan = make_permute_plan(backend, ConstView<std::int32_t, 2>(d.expert.data(), {tokens, K}, "expert"), num_experts,
                             capacity);
  d.resident = !full_sequence;
  if (report) {
    Buffer<float> values = backend.template alloc<float>(router_stats_size(num_experts));
    RouterStatsArgs s;
    s.logits = ConstView<float, 2>(d.logits.data(), {tokens, num_experts}, "router_logits");
    s.counts = d.plan.counts_view();
    s.k = K;
    s.aux_loss = R::aux_loss;
    s.aux_loss_coef = settings.aux_loss_coef;
    s.z_loss_coef = settings.z_loss_coef;
    s.out = values.flat("router_stats");
    router_stats(backend, s);
    report->add(backend, name, tokens, K, num_experts, values.data(), d.plan.counts.data(), d.plan.offsets.data());
  }
  return d;
}

/// Backward of `decide_routing` and of the gates' use: from `dgate` (tokens, K), the gradient of
/// the decision's gates (absent when nothing multiplied by them), plus the router's auxiliary
/// losses with the coefficients of `settings` (the aux loss only for a router that has one),
/// adds the gradient of the router's input to `dx` (tokens, D) and writes (or, with
/// `accumulate`, adds) the classifier's gradient `dweight` (X, D). `x` and `weight` are the
/// forward's; the balanced assignment of a scoring router is a constant (its gradient flows
/// through the gates only). `loss_scale` is the objective's weight on the auxiliary losses (the
/// language model's dloss: 1 / micro-batches).
template <class Backend, class T, Router R>
void routing_backward(const Backend& backend, const R& router, const RouterSettings& settings, const RoutingDecision& d,
                      ConstView<T, 2> x, ConstView<float, 2> weight, ConstView<float, 2> dgate, TensorView<T, 2> dx,
                      TensorView<float, 2> dweight, bool accumulate, float loss_scale = 1.0f) {
  const index_t tokens = x.shape[0], D = x.shape[1], X = weight.shape[0];
  if (tokens == 0) return;
  MOSS_EXPECTS(d.plan.tokens == tokens, shape_error, "routing_backward: the routing decision is of ", d.plan.tokens,
               " tokens but ", x.name, " is ", shape_string(x.shape), " (route this input first)");
  Buffer<T> dx_router = backend.template alloc<T>(tokens * D);
  RouteBackwardArgs<T, R> rb;
  rb.router = router;
  rb.x = x;
  rb.weight = weight;
  rb.logits = ConstView<float, 2>(d.logits.data(), {tokens, X}, "router_logits");
  rb.expert = ConstView<std::int32_t, 2>(d.expert.data(), {tokens, R::k}, "expert");
  rb.dgate = dgate;
  rb.counts = d.plan.counts_view();
  rb.aux_loss_coef = R::aux_loss ? loss_scale * settings.aux_loss_coef : 0.0f;
  rb.z_loss_coef = loss_scale * settings.z_loss_coef;
  rb.dx = dx_router.template view<2>({tokens, D}, "dx (router)");
  rb.dweight = dweight;
  rb.accumulate = accumulate;
  route_backward(backend, rb);
  MOSS_EXPECTS(dx.stride[0] == D && dx.stride[1] == 1, shape_error, "routing_backward: ", dx.name,
               " must be contiguous");
  add_into(backend, ConstView<T, 1>(dx_router.flat()), TensorView<T, 1>(dx.data, {tokens * D}, dx.name));
}

}  // namespace moss
