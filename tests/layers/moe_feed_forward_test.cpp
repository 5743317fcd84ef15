// Host tests of the feed-forward blocks (docs/math.md §2): MoeFeedForward against an
// independent float64 loop for every router and expert kind and three dtypes, capacity and the
// routing report against hand computation, the one-expert case against the dense FeedForward,
// Hugging Face's SwitchTransformersSparseMLP fixture, decode steps, checkpoints, the blocks'
// config sections and errors.
#include <unistd.h>

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "layers/moe_reference.hpp"
#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moss_moe_ffn_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

/// Whether an expert kind is a gated MLP (gate, up, down) rather than an MLP (wi, wo).
template <class Expert>
constexpr bool kGated = false;
template <Activation A>
constexpr bool kGated<GatedMlp<A>> = true;

/// The experts of a feed-forward block in double, from the expert kind's params `e` (X stacked).
template <class Expert, class P>
test::FfnRefWeights ffn_ref(index_t X, index_t D, index_t F, const P& e) {
  test::FfnRefWeights w;
  w.X = X;
  w.D = D;
  w.F = F;
  w.gated = kGated<Expert>;
  using A = typename Expert::activation;
  w.act = std::is_same_v<A, Relu>   ? test::RefAct::relu
          : std::is_same_v<A, Gelu> ? test::RefAct::gelu
                                    : test::RefAct::silu;
  if constexpr (kGated<Expert>) {
    REQUIRE(e.gate.shape() == Extents<3>{X, F, D});
    REQUIRE(e.up.shape() == Extents<3>{X, F, D});
    REQUIRE(e.down.shape() == Extents<3>{X, D, F});
    w.wi = test::widen(e.gate);
    w.up = test::widen(e.up);
    w.wo = test::widen(e.down);
  } else {
    REQUIRE(e.wi.shape() == Extents<3>{X, F, D});
    REQUIRE(e.wo.shape() == Extents<3>{X, D, F});
    w.wi = test::widen(e.wi);
    w.wo = test::widen(e.wo);
  }
  return w;
}

/// Overwrites an MLP or gated-MLP expert stack with N(0, 1/D) (first GEMMs) and N(0, 1/F)
/// (second GEMM) values.
template <class P>
void fill_experts(P& e, index_t D, index_t F, std::uint64_t seed) {
  const double in = 1.0 / std::sqrt(static_cast<double>(D)), hidden = 1.0 / std::sqrt(static_cast<double>(F));
  if constexpr (requires { e.gate; }) {
    test::fill_normal(e.gate, seed + 2, in);
    test::fill_normal(e.up, seed + 3, in);
    test::fill_normal(e.down, seed + 4, hidden);
  } else {
    test::fill_normal(e.wi, seed + 2, in);
    test::fill_normal(e.wo, seed + 4, hidden);
  }
}

/// A one-expert MoE block's expert stack as a dense FeedForward's params (same bits, the dense
/// block's names).
template <class P>
P as_dense(const P& e) {
  auto rename = [](const auto& t) {
    return test::reshaped(t, t.shape(), t.name().substr(std::string("experts.").size()));
  };
  if constexpr (requires { e.gate; }) {
    return P{rename(e.gate), rename(e.up), rename(e.down)};
  } else {
    return P{rename(e.wi), rename(e.wo)};
  }
}

/// Whether two host expert stacks hold the same tensors, bit for bit.
template <class P>
bool same_experts(const P& a, const P& b) {
  if constexpr (requires { a.gate; }) {
    return test::same_bits(a.gate, b.gate) && test::same_bits(a.up, b.up) && test::same_bits(a.down, b.down);
  } else {
    return test::same_bits(a.wi, b.wi) && test::same_bits(a.wo, b.wo);
  }
}

struct MoeCase {
  index_t X = 4, D = 16, F = 24, batch = 2, L = 7;
  double capacity_factor = 0.0;
  std::uint64_t seed = 1;
};

/// Random weights with enough spread that routing is decisive and every expert is used.
template <class Layer>
typename Layer::Params random_params(const Layer& layer, index_t D, index_t F, std::uint64_t seed) {
  Rng rng(seed);
  auto p = layer.init(Host{}, rng, 2);
  test::fill_normal(p.router, seed + 1, 0.6);
  fill_experts(p.experts, D, F, seed);
  return p;
}

/// Runs `layer.forward` on x (batch, L, D) and returns the output and the report.
template <class Layer, class T>
std::vector<T> run_forward(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x, index_t batch,
                           index_t L, index_t D, RoutingReport* report = nullptr) {
  std::vector<T> out(static_cast<std::size_t>(batch * L * D), from_float<T>(NAN));
  layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                TensorView<T, 3>(out.data(), {batch, L, D}, "out"), nullptr, report);
  return out;
}

void check_close(double got, double want, double rel, const char* what) {
  INFO(what << ": got " << got << ", want " << want);
  CHECK(std::abs(got - want) <= rel * std::abs(want) + 1e-9);
}

/// Checks a report entry against the reference routing and statistics.
void check_stats(const RouterStats& s, const test::RefRouting& r, const test::RefStats& ref, const std::string& name) {
  CHECK(s.layer == name);
  CHECK(s.tokens == r.tokens);
  CHECK(s.k == r.k);
  CHECK(s.counts == r.counts);
  CHECK(s.kept == r.kept);
  CHECK(s.dropped == r.dropped);
  check_close(s.aux_loss, ref.aux, 1e-5, "aux_loss");
  check_close(s.z_loss, ref.z, 1e-5, "z_loss");
  REQUIRE(s.prob_mean.size() == ref.prob_mean.size());
  for (std::size_t i = 0; i < ref.prob_mean.size(); ++i)
    check_close(s.prob_mean[i], ref.prob_mean[i], 1e-5, "prob_mean");
}

/// MoeFeedForward<R, Experts<>, Expert, T> on random data against the float64 loop: output,
/// counts, kept, dropped, aux and z losses, mean probabilities. Returns the reference routing.
template <class R, class Expert, class T>
test::RefRouting check_moe_forward(R router, const MoeCase& c, double tol) {
  RouterSettings settings;
  settings.capacity_factor = c.capacity_factor;
  settings.aux_loss_coef = 0.03f;
  settings.z_loss_coef = 0.002f;
  const MoeFeedForward<R, Experts<>, Expert, T> layer(c.D, c.F, c.X, router, settings);
  REQUIRE(layer.num_experts() == c.X);
  const auto p = random_params(layer, c.D, c.F, c.seed);
  const index_t tokens = c.batch * c.L;
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(tokens * c.D), c.seed + 10));
  RoutingReport report;
  const auto out = run_forward(layer, p, x, c.batch, c.L, c.D, &report);

  const std::vector<float> router_w = test::host_copy(p.router);
  const auto logits = test::layer_logits(x.data(), tokens, c.D, router_w, c.X);
  std::vector<double> balanced;
  if constexpr (std::is_same_v<R, SinkhornTop1>)
    if (router.training) balanced = test::ref_sinkhorn(logits, tokens, c.X);
  test::RefRouting r =
      test::ref_route(logits, tokens, c.X, R::k, test::ref_router_kind(router), balanced.empty() ? nullptr : &balanced);
  if (!balanced.empty()) {
    // The float32 Sinkhorn of the layer and this float64 one agree on every clear argmax.
    INFO("smallest gap between the best and second balanced score: " << r.margin);
    REQUIRE(r.margin > 1e-4 / static_cast<double>(tokens));
  }
  test::ref_apply_capacity(r, c.capacity_factor);
  const auto w = ffn_ref<Expert>(c.X, c.D, c.F, p.experts);
  const auto ref = test::ref_moe_ffn(w, test::to_double(x), r);
  const double err = test::rel_l2(out, ref);
  INFO("relative L2 error " << err << " (tolerance " << tol << ")");
  CHECK(err <= tol);

  const auto stats = report.read();
  REQUIRE(stats.size() == 1);
  const auto ref_stats = test::ref_stats(logits, r, settings.aux_loss_coef, settings.z_loss_coef, R::aux_loss);
  check_stats(stats[0], r, ref_stats, "mixer");
  if constexpr (!R::aux_loss) CHECK(stats[0].aux_loss == 0.0f);
  // The data is not degenerate: more than one expert is used.
  int used = 0;
  for (auto n : r.counts) used += n > 0;
  CHECK(used >= 2);
  return r;
}

template <class T>
void check_all_routers(double tol) {
  SECTION("Top1Switch, Mlp<Relu>") { check_moe_forward<Top1Switch, Mlp<Relu>, T>({}, {}, tol); }
  SECTION("Top1Switch, Mlp<Gelu>") { check_moe_forward<Top1Switch, Mlp<Gelu>, T>({}, {.seed = 2}, tol); }
  SECTION("TopK<2> without renormalisation, GatedMlp<Silu>") {
    check_moe_forward<TopK<2>, GatedMlp<Silu>, T>(TopK<2>{false}, {.seed = 3}, tol);
  }
  SECTION("TopK<2> with renormalisation, GatedMlp<Silu>") {
    check_moe_forward<TopK<2>, GatedMlp<Silu>, T>(TopK<2>{true}, {.seed = 4}, tol);
  }
  SECTION("TopK<3> of 5, Mlp<Gelu>") { check_moe_forward<TopK<3>, Mlp<Gelu>, T>({}, {.X = 5, .seed = 5}, tol); }
  SECTION("TopK<1> with renormalisation (g = 1), GatedMlp<Gelu>") {
    check_moe_forward<TopK<1>, GatedMlp<Gelu>, T>(TopK<1>{true}, {.seed = 6}, tol);
  }
  SECTION("SinkhornTop1 inference mode, GatedMlp<Silu>") {
    check_moe_forward<SinkhornTop1, GatedMlp<Silu>, T>(SinkhornTop1{false}, {.seed = 7}, tol);
  }
  SECTION("SinkhornTop1 inference mode, Mlp<Gelu>") {
    check_moe_forward<SinkhornTop1, Mlp<Gelu>, T>(SinkhornTop1{false}, {.seed = 8}, tol);
  }
  SECTION("SinkhornTop1 training mode, Mlp<Relu>") {
    check_moe_forward<SinkhornTop1, Mlp<Relu>, T>(SinkhornTop1{true}, {.batch = 3, .L = 8, .seed = 9}, tol);
  }
  SECTION("one token") { check_moe_forward<TopK<2>, Mlp<Relu>, T>({}, {.batch = 1, .L = 1, .seed = 10}, tol); }
  SECTION("with capacity") {
    const auto r = check_moe_forward<TopK<2>, GatedMlp<Silu>, T>(
        {}, {.batch = 3, .L = 8, .capacity_factor = 0.75, .seed = 11}, tol);
    CHECK(r.dropped > 0);
  }
}

}  // namespace

TEST_CASE("MoeFeedForward matches a float64 loop in f32", "[host][layers][moe]") { check_all_routers<float>(1e-5); }

TEMPLATE_TEST_CASE("MoeFeedForward matches a float64 loop in bf16 and f16", "[host][layers][moe]", bf16, f16) {
  check_all_routers<TestType>(test::op_tolerance<TestType>());
}

TEST_CASE("SinkhornTop1's training mode balances where inference mode does not", "[host][layers][moe]") {
  // Nearly every token prefers expert 0 by its logits; the balanced matrix spreads them.
  const index_t X = 4, D = 8, F = 8, tokens = 32;
  MoeFeedForward<SinkhornTop1, Experts<>, Mlp<Relu>, float> layer(D, F, X);
  auto p = random_params(layer, D, F, 3);
  test::fill_normal(p.router, 5, 0.3);
  for (index_t d = 0; d < D; ++d) p.router.data()[d] = 0.3f;  // expert 0's row: logit ≈ 2.4, the others ≈ N(0, 0.85)
  auto x = test::randn(static_cast<std::size_t>(tokens * D), 6, 0.3f, 1.0f);
  RoutingReport inference, training;
  run_forward(layer, p, x, 1, tokens, D, &inference);
  layer.router().training = true;
  run_forward(layer, p, x, 1, tokens, D, &training);
  const auto a = inference.read().at(0), b = training.read().at(0);
  CHECK(a.counts[0] >= 3 * tokens / 4);
  std::int64_t most = 0;
  for (auto n : b.counts) most = std::max(most, n);
  CHECK(most <= tokens / 2);
  CHECK(b.aux_loss == 0.0f);
  CHECK(a.aux_loss == 0.0f);
}

TEST_CASE("Capacity drops pairs over C = max(1, ceil(cf·T·K/X)) and reports them", "[host][layers][moe]") {
  SECTION("top-1: the first C tokens of an expert are kept, the rest give exactly zero") {
    const index_t D = 2, F = 5, X = 2;
    RouterSettings s;
    s.capacity_factor = 1.0;  // C = ceil(1 · 4 · 1 / 2) = 2
    const MoeFeedForward<Top1Switch, Experts<2>, Mlp<Relu>, float> layer(D, F, X, {}, s);
    auto p = random_params(layer, D, F, 21);
    const std::vector<float> eye = {1, 0, 0, 1};
    std::copy(eye.begin(), eye.end(), p.router.data());
    const std::vector<float> x = {1.0f, 0.0f, 2.0f, 0.5f, 0.5f, 0.1f, 3.0f, -1.0f};  // all prefer expert 0
    RoutingReport report;
    const auto out = run_forward(layer, p, x, 1, 4, D, &report);
    const auto w = ffn_ref<Mlp<Relu>>(X, D, F, p.experts);
    for (index_t t = 0; t < 4; ++t) {
      double y[2];
      const double xt[2] = {x[t * 2], x[t * 2 + 1]};
      test::ref_expert(w, 0, xt, y);
      const double g = 1.0 / (1.0 + std::exp(xt[1] - xt[0]));
      for (int o = 0; o < 2; ++o) {
        INFO("token " << t << " column " << o);
        if (t < 2)
          CHECK(std::abs(out[t * 2 + o] - g * y[o]) <= 1e-6 * (1 + std::abs(g * y[o])));
        else
          CHECK(out[t * 2 + o] == 0.0f);
      }
    }
    const auto st = report.read().at(0);
    CHECK(st.counts == std::vector<std::int64_t>{4, 0});
    CHECK(st.kept == std::vector<std::int64_t>{2, 0});
    CHECK(st.dropped == 2);
  }
  SECTION("top-2: priority is slot-major (GShard), not token-major") {
    // C = ceil(0.5 · 3 · 2 / 3) = 1. Tokens choose (0, 1), (0, 2), (1, 0). Slot 0 first:
    // t0→0 kept, t1→0 dropped, t2→1 kept; then slot 1: t0→1 dropped, t1→2 kept, t2→0 dropped.
    // (Token-major priority would keep t0's second pair and drop both of t2's.)
    const index_t D = 3, F = 4, X = 3;
    RouterSettings s;
    s.capacity_factor = 0.5;
    const MoeFeedForward<TopK<2>, Experts<>, Mlp<Gelu>, float> layer(D, F, X, {}, s);
    auto p = random_params(layer, D, F, 22);
    const std::vector<float> eye = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    std::copy(eye.begin(), eye.end(), p.router.data());
    const std::vector<float> x = {2, 1, 0, 2, 0, 1, 1, 2, 0};
    RoutingReport report;
    const auto out = run_forward(layer, p, x, 1, 3, D, &report);
    const auto w = ffn_ref<Mlp<Gelu>>(X, D, F, p.experts);
    const int keep_expert[3] = {0, 2, 1};
    const int keep_logit[3] = {2, 1, 2};  // the kept expert's logit, of logits {2, 1, 0} permuted
    const double z = std::exp(2.0) + std::exp(1.0) + 1.0;
    std::vector<double> want(9);
    for (index_t t = 0; t < 3; ++t) {
      const double xt[3] = {x[t * 3], x[t * 3 + 1], x[t * 3 + 2]};
      double y[3];
      test::ref_expert(w, keep_expert[t], xt, y);
      for (int o = 0; o < 3; ++o) want[t * 3 + o] = std::exp(keep_logit[t]) / z * y[o];
    }
    CHECK(test::rel_l2(out, want) <= 1e-6);
    const auto st = report.read().at(0);
    CHECK(st.counts == std::vector<std::int64_t>{3, 2, 1});
    CHECK(st.kept == std::vector<std::int64_t>{1, 1, 1});
    CHECK(st.dropped == 3);
  }
  SECTION("a small factor still keeps one pair per expert") {
    RouterSettings s;
    s.capacity_factor = 1e-6;  // ceil(tiny) = 1
    const MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float> layer(8, 8, 3, {}, s);
    const auto p = random_params(layer, 8, 8, 23);
    const auto x = test::randn(8 * 12, 24);
    RoutingReport report;
    run_forward(layer, p, x, 2, 6, 8, &report);
    const auto st = report.read().at(0);
    std::int64_t kept = 0, used = 0;
    for (std::size_t e = 0; e < 3; ++e) {
      CHECK(st.kept[e] == std::min<std::int64_t>(1, st.counts[e]));
      kept += st.kept[e];
      used += st.counts[e] > 0;
    }
    CHECK(kept == used);
    CHECK(st.dropped == 12 - kept);
  }
}

/// A user's grouped-GEMM strategy for the Experts<N, Gemm> slot: counts its calls, then runs
/// moss's segment GEMMs.
struct CountingGemm {
  static constexpr bool sync_free = false;
  static inline int calls = 0, with_host_offsets = 0;
  template <class Backend, class Args>
  static void run(const Backend& backend, Args a) {
    ++calls;
    with_host_offsets += a.host_offsets != nullptr && !a.resident_offsets;
    SegmentGemms::run(backend, a);
  }
};

TEST_CASE("The grouped-GEMM strategy slot: SyncFreeGemm and a user's own give the segment GEMMs' output",
          "[host][layers][moe]") {
  // With capacity drops (rows past the kept ones, which the sync-free GEMM writes as zeros) and
  // top-2, the three strategies give the same bits on the host.
  const index_t D = 16, F = 24, X = 4;
  RouterSettings s;
  s.capacity_factor = 0.6;
  using Segments = MoeFeedForward<TopK<2>, Experts<4>, GatedMlp<Silu>, float>;
  using SyncFree = MoeFeedForward<TopK<2>, Experts<4, SyncFreeGemm>, GatedMlp<Silu>, float>;
  using Own = MoeFeedForward<TopK<2>, Experts<4, CountingGemm>, GatedMlp<Silu>, float>;
  STATIC_REQUIRE(std::is_same_v<decltype(Segments::Config::routing)::Gemm, SegmentGemms>);
  STATIC_REQUIRE(std::is_same_v<decltype(SyncFree::Config::routing)::Gemm, SyncFreeGemm>);
  const Segments a(D, F, X, {}, s);
  const SyncFree b(D, F, X, {}, s);
  const Own c(D, F, X, {}, s);
  const auto x = test::randn(D * 2 * 9, 32);
  RoutingReport ra, rb;
  const auto want = run_forward(a, random_params(a, D, F, 31), x, 2, 9, D, &ra);  // same seed: same weights
  const auto got_b = run_forward(b, random_params(b, D, F, 31), x, 2, 9, D, &rb);
  CountingGemm::calls = CountingGemm::with_host_offsets = 0;
  const auto got_c = run_forward(c, random_params(c, D, F, 31), x, 2, 9, D, nullptr);
  CHECK(ra.read().at(0).dropped > 0);
  CHECK(want == got_b);  // exact: no NaN in these outputs
  CHECK(want == got_c);
  CHECK(CountingGemm::calls == 3);              // gate, up, down
  CHECK(CountingGemm::with_host_offsets == 3);  // not sync-free: given the offsets read once

  // The bound strategy refuses a backend or dtype other than the deciding call's.
  RouterConfig<Top1Switch, Experts<2, CountingGemm>> rc;
  const std::vector<float> xs(4 * 3, 0.5f), w(2 * 3, 0.1f);
  const RoutingDecision d = rc.decide(Host{}, ConstView<float, 2>(xs.data(), {4, 3}, "x"),
                                      ConstView<float, 2>(w.data(), {2, 3}, "router"), true, nullptr, "mixer");
  REQUIRE(d.grouped_gemm != nullptr);
  GroupedLinearArgs<double> other;
  other.x = ConstView<double, 2>(nullptr, {0, 3}, "rows");
  CHECK_THROWS_WITH(d.run_grouped_gemm(Host{}, other), ContainsSubstring("another backend or dtype"));
}

TEST_CASE("The routing report's losses match docs/math.md's worked example", "[host][layers][moe]") {
  // X = 2, K = 1, p = (0.9, 0.1) and (0.4, 0.6): f = (0.5, 0.5), P = (0.65, 0.35),
  // aux = α · 2 · (0.325 + 0.175) = α. Logits shifted by +1 and −2 (softmax unchanged), so
  // logsumexp = 1 and −2 and z = β · (1 + 4) / 2.
  const index_t D = 2;
  RouterSettings s;
  s.aux_loss_coef = 0.01f;
  s.z_loss_coef = 0.001f;
  const MoeFeedForward<Top1Switch, Experts<2>, Mlp<Relu>, float> layer(D, 3, 2, {}, s);
  auto p = random_params(layer, D, 3, 31);
  const std::vector<float> eye = {1, 0, 0, 1};
  std::copy(eye.begin(), eye.end(), p.router.data());
  const std::vector<float> x = {static_cast<float>(std::log(0.9) + 1), static_cast<float>(std::log(0.1) + 1),
                                static_cast<float>(std::log(0.4) - 2), static_cast<float>(std::log(0.6) - 2)};
  RoutingReport report;
  run_forward(layer, p, x, 2, 1, D, &report);
  const auto st = report.read().at(0);
  CHECK(st.counts == std::vector<std::int64_t>{1, 1});
  CHECK(st.dropped == 0);
  check_close(st.aux_loss, 0.01, 1e-5, "aux_loss");
  check_close(st.z_loss, 0.0025, 1e-5, "z_loss");
  check_close(st.prob_mean[0], 0.65, 1e-5, "P_0");
  check_close(st.prob_mean[1], 0.35, 1e-5, "P_1");

  SECTION("the coefficients scale the losses") {
    RouterSettings s2 = s;
    s2.aux_loss_coef = 0.5f;
    s2.z_loss_coef = 0.0f;
    const MoeFeedForward<Top1Switch, Experts<2>, Mlp<Relu>, float> l2(D, 3, 2, {}, s2);
    RoutingReport r2;
    run_forward(l2, p, x, 2, 1, D, &r2);
    check_close(r2.read().at(0).aux_loss, 0.5, 1e-5, "aux_loss");
    CHECK(r2.read().at(0).z_loss == 0.0f);
  }
}

TEST_CASE("One expert, top-1, no capacity: MoeFeedForward equals the dense FeedForward", "[host][layers][moe]") {
  const index_t D = 16, F = 40, batch = 3, L = 5;
  auto check = [&]<class Expert>() {
    const MoeFeedForward<Top1Switch, Experts<1>, Expert, float> moe(D, F, 0);
    const FeedForward<Expert, float> dense(D, F);
    REQUIRE(moe.num_experts() == 1);
    const auto p = random_params(moe, D, F, 41);
    const typename FeedForward<Expert, float>::Params q = as_dense(p.experts);
    const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 42);
    const auto a = run_forward(moe, p, x, batch, L, D);
    std::vector<float> b(a.size(), NAN);
    dense.forward(Host{}, q, ConstView<float, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<float, 3>(b.data(), {batch, L, D}, "out"));
    CHECK(test::rel_l2(a, b) <= 1e-6);
    // and the dense block against the float64 loop (one expert, g = 1)
    test::RefRouting r;
    r.tokens = batch * L;
    r.experts = 1;
    r.slots.assign(static_cast<std::size_t>(batch * L), test::RefSlot{0, 1.0, false});
    const auto w = ffn_ref<Expert>(1, D, F, q);
    CHECK(test::rel_l2(b, test::ref_moe_ffn(w, test::to_double(x), r)) <= 1e-5);
  };
  SECTION("Mlp<Relu>") { check.template operator()<Mlp<Relu>>(); }
  SECTION("Mlp<Gelu>") { check.template operator()<Mlp<Gelu>>(); }
  SECTION("GatedMlp<Silu>") { check.template operator()<GatedMlp<Silu>>(); }
}

TEST_CASE("Hugging Face SwitchTransformersSparseMLP fixture", "[host][layers][moe][hf]") {
  const std::string file = test::data_dir() + "/hf_switch_tiny/switch.safetensors";
  REQUIRE(std::filesystem::exists(file));  // a missing fixture is a failure, not a skip
  const Checkpoint ckpt(file);
  const MoeFeedForward<Top1Switch, Experts<8>, Mlp<Relu>, float> layer(32, 64, 8);
  const auto p = layer.load(Host{}, ckpt, "w.");
  // Hugging Face's per-expert tensors land at their index of the stacked layout.
  for (int e : {0, 3, 7}) {
    const auto wi = ckpt.read_as<float>("w.experts.expert_" + std::to_string(e) + ".wi.weight", {64, 32});
    const auto wo = ckpt.read_as<float>("w.experts.expert_" + std::to_string(e) + ".wo.weight", {32, 64});
    CHECK(std::equal(wi.begin(), wi.end(), p.experts.wi.data() + e * 64 * 32));
    CHECK(std::equal(wo.begin(), wo.end(), p.experts.wo.data() + e * 32 * 64));
  }
  const auto router = ckpt.read_as<float>("w.router.classifier.weight", {8, 32});
  CHECK(std::equal(router.begin(), router.end(), p.router.data()));

  const auto x = ckpt.read_as<float>("x", {2, 20, 32});
  const auto want = ckpt.read_as<float>("out0", {2, 20, 32});
  RoutingReport report;
  const auto out = run_forward(layer, p, x, 2, 20, 32, &report);
  const double err = test::rel_l2(out, want);
  INFO("relative L2 error against out0: " << err);
  CHECK(err <= 1e-5);
  const auto st = report.read().at(0);
  CHECK(st.tokens == 40);
  CHECK(st.counts[3] == 13);
  std::int64_t total = 0;
  for (auto n : st.counts) total += n;
  CHECK(total == 40);
  CHECK(st.dropped == 0);

  SECTION("saved, the fixture's weights use moss's stacked names and load back") {
    const auto dir = temp_dir("switch");
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "w.");
    w.write(dir / "moe.safetensors");
    const Checkpoint saved(dir / "moe.safetensors");
    CHECK(saved.contains("w.router.weight"));
    CHECK(saved.info("w.experts.wi.weight").shape == std::vector<index_t>{8, 64, 32});
    CHECK(saved.info("w.experts.wo.weight").shape == std::vector<index_t>{8, 32, 64});
    CHECK_FALSE(saved.contains("w.experts.expert_0.wi.weight"));
    const auto q = layer.load(Host{}, saved, "w.");
    CHECK(test::same_bits(p.router, q.router));
    CHECK(test::same_bits(p.experts.wi, q.experts.wi));
    CHECK(test::same_bits(p.experts.wo, q.experts.wo));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("MoeFeedForward step (one token per sequence) equals forward on L = 1", "[host][layers][moe]") {
  const index_t D = 16, F = 24, X = 4, batch = 5;
  RouterSettings s;
  const bool with_capacity = GENERATE(false, true);
  if (with_capacity) s.capacity_factor = 0.25;  // C = 1: the full-sequence call drops, the step must not
  const MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, float> layer(D, F, X, TopK<2>{true}, s);
  const auto p = random_params(layer, D, F, 51);
  const auto x = test::randn(static_cast<std::size_t>(batch * D), 52);
  auto cache = layer.make_cache(Host{}, batch);
  std::vector<float> stepped(static_cast<std::size_t>(batch * D), NAN);
  RoutingReport step_report, fwd_report;
  layer.step(Host{}, p, ConstView<float, 2>(x.data(), {batch, D}, "x"),
             TensorView<float, 2>(stepped.data(), {batch, D}, "out"), cache, &step_report);
  const auto full = run_forward(layer, p, x, batch, 1, D, &fwd_report);
  CHECK(step_report.read().at(0).dropped == 0);
  if (!with_capacity) {
    CHECK(test::rel_l2(stepped, full) <= 1e-6);
  } else {
    CHECK(fwd_report.read().at(0).dropped > 0);
    // the step equals the dropless float64 loop
    const auto logits = test::layer_logits(x.data(), batch, D, test::host_copy(p.router), X);
    const auto r = test::ref_route(logits, batch, X, 2, test::RefRouter::top_k_renorm);
    const auto w = ffn_ref<GatedMlp<Silu>>(X, D, F, p.experts);
    CHECK(test::rel_l2(stepped, test::ref_moe_ffn(w, test::to_double(x), r)) <= 1e-5);
  }
}

TEST_CASE("MoeFeedForward and FeedForward save and load bit for bit", "[host][layers][moe]") {
  const auto dir = temp_dir("roundtrip");
  const index_t D = 16, F = 20, X = 3;
  SECTION("Mlp<Relu> experts, bf16") {
    const MoeFeedForward<Top1Switch, Experts<3>, Mlp<Relu>, bf16> layer(D, F, X);
    const auto p = random_params(layer, D, F, 61);
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "backbone.layers.1.mixer.");
    w.write(dir / "a.safetensors");
    const Checkpoint c(dir / "a.safetensors");
    CHECK(c.names() == std::vector<std::string>{"backbone.layers.1.mixer.experts.wi.weight",
                                                "backbone.layers.1.mixer.experts.wo.weight",
                                                "backbone.layers.1.mixer.router.weight"});
    CHECK(c.info("backbone.layers.1.mixer.router.weight").dtype == DType::f32);  // the router stays float32
    CHECK(c.info("backbone.layers.1.mixer.experts.wi.weight").dtype == DType::bf16);
    const auto q = layer.load(Host{}, c, "backbone.layers.1.mixer.");
    CHECK(test::same_bits(p.router, q.router));
    CHECK(test::same_bits(p.experts.wi, q.experts.wi));
    CHECK(test::same_bits(p.experts.wo, q.experts.wo));
    const auto x = test::to_storage<bf16>(test::randn(D * 6, 62));
    const auto a = run_forward(layer, p, x, 2, 3, D), b = run_forward(layer, q, x, 2, 3, D);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0);
  }
  SECTION("GatedMlp<Silu> experts, f32") {
    const MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, float> layer(D, F, X);
    const auto p = random_params(layer, D, F, 63);
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "m.");
    w.write(dir / "b.safetensors");
    const Checkpoint c(dir / "b.safetensors");
    CHECK(c.info("m.experts.gate.weight").shape == std::vector<index_t>{X, F, D});
    CHECK(c.info("m.experts.up.weight").shape == std::vector<index_t>{X, F, D});
    CHECK(c.info("m.experts.down.weight").shape == std::vector<index_t>{X, D, F});
    CHECK(c.info("m.router.weight").shape == std::vector<index_t>{X, D});
    const auto q = layer.load(Host{}, c, "m.");
    CHECK(test::same_bits(p.router, q.router));
    CHECK(same_experts(p.experts, q.experts));
  }
  SECTION("dense FeedForward, GatedMlp<Gelu>, f16") {
    const FeedForward<GatedMlp<Gelu>, f16> layer(D, F);
    Rng rng(64);
    auto p = layer.init(Host{}, rng, 2);
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "f.");
    w.write(dir / "c.safetensors");
    const Checkpoint c(dir / "c.safetensors");
    CHECK(c.names() == std::vector<std::string>{"f.down.weight", "f.gate.weight", "f.up.weight"});
    const auto q = layer.load(Host{}, c, "f.");
    CHECK(same_experts(p, q));
    CHECK(p.gate.shape() == Extents<3>{1, F, D});
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("MoeFeedForward refuses wrong shapes and contradicting sizes", "[host][layers][moe][errors]") {
  const index_t D = 16, F = 24;
  const MoeFeedForward<Top1Switch, Experts<4>, Mlp<Relu>, float> layer(D, F, 4);
  const auto p = random_params(layer, D, F, 71);
  std::vector<float> x(2 * 3 * 20), out(2 * 3 * 16);
  SECTION("input of the wrong width") {
    REQUIRE_THROWS_WITH(
        layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 20}, "x"),
                      TensorView<float, 3>(out.data(), {2, 3, 16}, "out")),
        ContainsSubstring("MoeFeedForward::forward: x is [2, 3, 20] (batch, seqlen, d_model) but expected [*, *, 16]"));
  }
  SECTION("output of the wrong shape") {
    REQUIRE_THROWS_AS(layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 16}, "x"),
                                    TensorView<float, 3>(out.data(), {2, 2, 16}, "out")),
                      shape_error);
    REQUIRE_THROWS_WITH(layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 16}, "x"),
                                      TensorView<float, 3>(out.data(), {2, 2, 16}, "out")),
                        ContainsSubstring("out is [2, 2, 16]"));
  }
  SECTION("step with the wrong width") {
    auto cache = layer.make_cache(Host{}, 2);
    REQUIRE_THROWS_WITH(layer.step(Host{}, p, ConstView<float, 2>(x.data(), {2, 15}, "x"),
                                   TensorView<float, 2>(out.data(), {2, 16}, "out"), cache),
                        ContainsSubstring("MoeFeedForward::step: x is [2, 15]"));
  }
  SECTION("a type fixing 8 experts with a config saying 4") {
    using Eight = MoeFeedForward<Top1Switch, Experts<8>, Mlp<Relu>, float>;
    REQUIRE_THROWS_AS(Eight(D, F, 4), config_error);
    REQUIRE_THROWS_WITH(Eight(D, F, 4), ContainsSubstring("moss::Experts<8>") && ContainsSubstring("num_experts = 4"));
    CHECK(Eight(D, F, 0).num_experts() == 8);  // 0: "as the type says"
    // The same contradiction in a config.json section names its path.
    const io::Json doc = io::parse_json(R"({"model_type": "moss", "moss_variant": "moe-mamba",
                                            "block_pattern": ["mamba", "moe"], "blocks": [{}, {"num_experts": 4}]})",
                                        "config.json");
    const MambaConfig c = MambaConfig::from_json(doc, "config.json");
    REQUIRE_THROWS_AS(Eight::Config::from_json(c.block_section(1)), config_error);
    REQUIRE_THROWS_WITH(Eight::Config::from_json(c.block_section(1)),
                        ContainsSubstring("config.json: blocks[1].num_experts") &&
                            ContainsSubstring("moss::Experts<8>") && ContainsSubstring("num_experts = 4"));
  }
  SECTION("a runtime count of 0") {
    REQUIRE_THROWS_WITH((MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float>(D, F, 0)),
                        ContainsSubstring("num_experts is 0"));
  }
  SECTION("K larger than the expert count") {
    REQUIRE_THROWS_AS((MoeFeedForward<TopK<3>, Experts<>, Mlp<Relu>, float>(D, F, 2)), config_error);
    REQUIRE_THROWS_WITH((MoeFeedForward<TopK<3>, Experts<>, Mlp<Relu>, float>(D, F, 2)),
                        ContainsSubstring("K = 3") && ContainsSubstring("there are 2"));
  }
  SECTION("bad router settings") {
    RouterSettings s;
    s.capacity_factor = -1;
    REQUIRE_THROWS_WITH((MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float>(D, F, 4, {}, s)),
                        ContainsSubstring("capacity_factor is -1"));
    s.capacity_factor = 0;
    s.aux_loss_coef = NAN;
    REQUIRE_THROWS_AS((MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float>(D, F, 4, {}, s)), config_error);
  }
  SECTION("a checkpoint of another expert count is an io_error naming the tensor") {
    const auto dir = temp_dir("errors");
    const MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float> three(D, F, 3);
    const auto q = random_params(three, D, F, 72);
    SafetensorsWriter w;
    three.save(Host{}, q, w, "m.");
    w.write(dir / "three.safetensors");
    const Checkpoint c(dir / "three.safetensors");
    REQUIRE_THROWS_AS(layer.load(Host{}, c, "m."), io_error);
    REQUIRE_THROWS_WITH(layer.load(Host{}, c, "m."), ContainsSubstring("router.weight"));
    REQUIRE_THROWS_WITH(layer.load(Host{}, c, "x."), ContainsSubstring("x.router.weight"));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("A NaN token routes to the lowest experts and propagates into its own output only", "[host][layers][moe]") {
  // docs/math.md §2.2: a NaN logit is never selected unless all are NaN (then expert 0, and for
  // K > 1 the next lowest), and NaN propagates into the weight (§ "Precision contract": never a crash).
  const index_t D = 16, F = 24, X = 4, batch = 1, L = 6, bad = 2;
  auto check = [&]<class R>(R router) {
    const MoeFeedForward<R, Experts<>, Mlp<Relu>, float> layer(D, F, X, router);
    const auto p = random_params(layer, D, F, 81);
    auto x = test::randn(static_cast<std::size_t>(batch * L * D), 82);
    for (index_t d = 0; d < D; ++d) x[bad * D + d] = NAN;
    RoutingReport report;
    const auto out = run_forward(layer, p, x, batch, L, D, &report);
    for (index_t d = 0; d < D; ++d) CHECK(std::isnan(out[bad * D + d]));
    const auto logits = test::layer_logits(x.data(), L, D, test::host_copy(p.router), X);
    const auto r = test::ref_route(logits, L, X, R::k, test::ref_router_kind(router));
    for (index_t s = 0; s < R::k; ++s) CHECK(r.at(bad, s).expert == s);  // what the report's counts rest on
    CHECK(report.read().at(0).counts == r.counts);
    const auto w = ffn_ref<Mlp<Relu>>(X, D, F, p.experts);
    const auto ref = test::ref_moe_ffn(w, test::to_double(x), r);
    std::vector<float> got_rest;
    std::vector<double> ref_rest;
    for (index_t t = 0; t < L; ++t)
      if (t != bad)
        for (index_t d = 0; d < D; ++d) {
          got_rest.push_back(out[t * D + d]);
          ref_rest.push_back(ref[t * D + d]);
        }
    CHECK(test::rel_l2(got_rest, ref_rest) <= 1e-5);
  };
  SECTION("Top1Switch") { check(Top1Switch{}); }
  SECTION("TopK<2>") { check(TopK<2>{true}); }
  SECTION("SinkhornTop1, inference") { check(SinkhornTop1{false}); }
}

TEST_CASE("MoeFeedForward and FeedForward config sections round-trip and refuse contradictions",
          "[host][layers][moe][config]") {
  using Moe = MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, float>;
  Moe::Config c;
  c.routing.num_experts = 6;
  c.routing.router.renormalize = true;
  c.routing.settings.capacity_factor = 1.25;
  c.routing.settings.aux_loss_coef = 0.02f;
  c.routing.settings.z_loss_coef = 0.003f;
  c.d_ff = 40;
  io::Json j = io::Json::object();
  c.to_json(j);
  CHECK(j.at("router") == "top_k");
  CHECK(j.at("top_k") == 2);
  CHECK(j.at("num_experts") == 6);
  CHECK(j.at("normalize") == true);
  CHECK(j.at("expert") == "gated_mlp");
  CHECK(j.at("activation") == "silu");
  CHECK(j.at("d_ff") == 40);
  // Through text, as config.json stores it.
  const io::Json back = io::parse_json(io::dump_json(j), "config.json");
  const Moe::Config r = Moe::Config::from_json(io::JsonRef::at_path(back, "config.json: blocks[1]"));
  CHECK(r.routing.num_experts == 6);
  CHECK(r.routing.router.renormalize);
  CHECK(r.routing.settings.capacity_factor == 1.25);
  CHECK(r.routing.settings.aux_loss_coef == 0.02f);
  CHECK(r.routing.settings.z_loss_coef == 0.003f);
  CHECK(r.d_ff == 40);
  // The layer built from it has what the config says.
  MambaDims dims;
  dims.d_model = 16;
  const Moe layer(dims, r);
  CHECK(layer.num_experts() == 6);
  CHECK(layer.d_ff() == 40);
  CHECK(layer.router().renormalize);

  auto refused = [](const char* text) {
    const io::Json doc = io::parse_json(text, "config.json");
    return Moe::Config::from_json(io::JsonRef::at_path(doc, "config.json: blocks[1]"));
  };
  REQUIRE_THROWS_AS(refused(R"({"router": "top1_switch"})"), config_error);
  REQUIRE_THROWS_WITH(refused(R"({"router": "top1_switch"})"),
                      ContainsSubstring("config.json: blocks[1].router is \"top1_switch\" but the layer type's router "
                                        "is \"top_k\""));
  REQUIRE_THROWS_WITH(refused(R"({"top_k": 1})"),
                      ContainsSubstring("config.json: blocks[1].top_k is 1 but the layer type's router picks 2"));
  REQUIRE_THROWS_WITH(refused(R"({"num_experts": 4, "expert": "mlp"})"),
                      ContainsSubstring("config.json: blocks[1].expert is \"mlp\" but the layer type's experts are "
                                        "\"gated_mlp\""));
  REQUIRE_THROWS_WITH(refused(R"({"num_experts": 4, "activation": "relu"})"),
                      ContainsSubstring("config.json: blocks[1].activation is \"relu\""));
  REQUIRE_THROWS_WITH(refused(R"({"num_experts": 0})"), ContainsSubstring("num_experts is 0"));
  REQUIRE_THROWS_WITH(refused(R"({"num_experts": 4, "capacity_factor": -1})"),
                      ContainsSubstring("config.json: blocks[1]") && ContainsSubstring("capacity_factor is -1"));
  // The JSON accessor's own messages (a kind error inside the section) name the path too.
  REQUIRE_THROWS_AS(refused(R"({"num_experts": "four"})"), config_error);
  REQUIRE_THROWS_AS(refused(R"({"num_experts": 4, "normalize": 1})"), config_error);
  CHECK_THROWS_WITH(refused(R"({"num_experts": "four"})"),
                    ContainsSubstring("config.json: blocks[1].num_experts is a string"));
  CHECK_THROWS_WITH(refused(R"({"num_experts": 4, "normalize": 1})"),
                    ContainsSubstring("config.json: blocks[1].normalize is a number"));

  SECTION("the dense FeedForward") {
    using Ffn = FeedForward<Mlp<Gelu>, bf16>;
    Ffn::Config f;
    f.d_ff = 24;
    io::Json s = io::Json::object();
    f.to_json(s);
    CHECK(s.at("expert") == "mlp");
    CHECK(s.at("activation") == "gelu");
    CHECK(s.at("d_ff") == 24);
    CHECK(Ffn::Config::from_json(io::JsonRef::at_path(s, "config.json: blocks[1]")).d_ff == 24);
    const io::Json gated = io::parse_json(R"({"expert": "gated_mlp"})", "config.json");
    REQUIRE_THROWS_WITH(Ffn::Config::from_json(io::JsonRef::at_path(gated, "config.json: blocks[1]")),
                        ContainsSubstring("config.json: blocks[1].expert is \"gated_mlp\""));
    const io::Json none = io::Json::object();
    CHECK(Ffn::Config::from_json(io::JsonRef::at_path(none, "config.json: blocks[1]")).d_ff == 0);  // 0: 3 · d_model
    CHECK(Ffn(dims, Ffn::Config{}).d_ff() == 48);
  }
}
