// Host tests of the extension points (docs/math.md §1–3): a part of one's own is one struct in
// the user's file, with no edit to include/moss. Each runs in the layer that takes it and is
// checked against the float64 references:
//   - a router with a setting saved in config.json (BiasBalancedTopK, custom_components.hpp),
//     in a MoeFeedForward and inside a LanguageModel that saves and loads it;
//   - a weight placement (WeightConv) and a routing scope (InOutRouting) of one's own in RoutedMamba;
//   - a scan strategy of one's own (CountingScan, below) in Mamba, RoutedMamba and a model;
//   - a router with a batch scoring hook (CenteredTop1, below).
#include <unistd.h>

#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "layers/custom_components.hpp"
#include "layers/moe_reference.hpp"
#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

/// A scan strategy of one's own: counts its calls and forwards to the host oracle.
struct CountingScan {
  static constexpr std::string_view name = "counting";
  static inline int calls = 0;
  template <class T>
  static void run(const Host& host, const SelectiveScanArgs<T>& a) {
    ++calls;
    SequentialScan::run(host, a);
  }
};
static_assert(ScanStrategy<CountingScan, float> && ScanStrategy<CountingScan, bf16>);

/// A router with a batch scoring hook: each expert's logits are centred over the call's tokens
/// (score[t, i] = logit[t, i] − mean_t logit[t, i], the mean summed in token order in float32),
/// so an expert every token prefers by a constant margin loses that margin; top-1 by the score,
/// combine weight softmax(logits)[e]. `centered = false` ranks by the logits.
struct CenteredTop1 {
  static constexpr int k = 1;
  static constexpr bool aux_loss = true;
  static constexpr std::string_view name = "centered_top1";
  bool centered = true;

  bool score(const Host&, ConstView<float, 2> logits, TensorView<float, 2> scores) const {
    if (!centered) return false;
    const index_t T = logits.shape[0], X = logits.shape[1];
    for (index_t i = 0; i < X; ++i) {
      float sum = 0.0f;
      for (index_t t = 0; t < T; ++t) sum += logits(t, i);
      const float mean = sum / static_cast<float>(T);
      for (index_t t = 0; t < T; ++t) scores(t, i) = logits(t, i) - mean;
    }
    return true;
  }
  MOSS_HD void select(const float* logits, const float* scores, int num_experts, int* experts, float* weights) const {
    select_top_k<1>(scores, num_experts, experts);
    weights[0] = softmax_at(logits, num_experts, experts[0]);
  }
};
static_assert(ScoringRouter<CenteredTop1> && !ConfigurableRouter<CenteredTop1>);

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moss_components_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

/// `layer.forward` on x (batch, L, D) on the host.
template <class Layer, class T>
std::vector<T> run_forward(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x, index_t batch,
                           index_t L, index_t D, typename Layer::Cache* cache = nullptr,
                           RoutingReport* report = nullptr) {
  std::vector<T> out(static_cast<std::size_t>(batch * L * D), from_float<T>(NAN));
  if constexpr (requires { layer.forward(Host{}, p, ConstView<T, 3>{}, TensorView<T, 3>{}, cache, report); })
    layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<T, 3>(out.data(), {batch, L, D}, "out"), cache, report);
  else
    layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<T, 3>(out.data(), {batch, L, D}, "out"), cache);
  return out;
}

/// MLP experts of a feed-forward block in double (wi (X, F, D), wo (X, D, F)), ReLU.
template <class P>
test::FfnRefWeights relu_mlp_ref(const P& e, index_t X, index_t D, index_t F) {
  REQUIRE(e.wi.shape() == Extents<3>{X, F, D});
  REQUIRE(e.wo.shape() == Extents<3>{X, D, F});
  test::FfnRefWeights w;
  w.X = X;
  w.D = D;
  w.F = F;
  w.act = test::RefAct::relu;
  w.wi = test::widen(e.wi);
  w.wo = test::widen(e.wo);
  return w;
}

/// Random MoE weights with enough spread that routing is decisive.
template <class Layer>
typename Layer::Params moe_params(const Layer& layer, index_t D, index_t F, std::uint64_t seed) {
  Rng rng(seed);
  auto p = layer.init(Host{}, rng, 2);
  test::fill_normal(p.router, seed + 1, 0.6);
  test::fill_normal(p.experts.wi, seed + 2, 1.0 / std::sqrt(static_cast<double>(D)));
  test::fill_normal(p.experts.wo, seed + 3, 1.0 / std::sqrt(static_cast<double>(F)));
  return p;
}

using BiasTop2 = test::BiasBalancedTopK<2>;

/// A bias that moves the choice: expert 0 pushed out, experts 3 and 5 pulled in.
BiasTop2 steering_router() {
  BiasTop2 r;
  const float b[6] = {-2.5f, 0.0f, 0.25f, 1.5f, 0.0f, 0.75f};
  std::copy(std::begin(b), std::end(b), r.bias);
  return r;
}

/// logits + bias per token, in double (what BiasBalancedTopK ranks).
std::vector<double> biased_scores(const std::vector<float>& logits, index_t tokens, index_t X, const BiasTop2& r) {
  std::vector<double> s(logits.size());
  for (index_t t = 0; t < tokens; ++t)
    for (index_t i = 0; i < X; ++i) s[t * X + i] = static_cast<double>(logits[t * X + i]) + r.bias[i];
  return s;
}

MambaConfig model_config() {
  MambaConfig c;
  c.d_model = 16;
  c.n_layers = 4;
  c.vocab_size = 40;
  c.d_state = 4;
  c.expand = 2;
  c.d_conv = 4;
  c.dt_rank = 2;
  return c;
}

/// Logits (batch, L, V) and the report of a model's forward on the host.
template <class Model>
std::vector<float> model_logits(const Model& m, const typename Model::Params& p, const std::vector<std::int64_t>& ids,
                                index_t batch, index_t L, RoutingReport* report = nullptr) {
  const index_t V = m.config().vocab_size;
  std::vector<float> logits(static_cast<std::size_t>(batch * L * V), NAN);
  m.forward(Host{}, p, ConstView<std::int64_t, 2>(ids.data(), {batch, L}, "input_ids"),
            TensorView<float, 3>(logits.data(), {batch, L, V}, "logits"), nullptr, report);
  return logits;
}

std::vector<std::int64_t> token_ids(index_t n, index_t V, std::uint64_t seed) {
  const auto u = test::uniform(static_cast<std::size_t>(n), seed, 0.0f, static_cast<float>(V));
  std::vector<std::int64_t> ids(u.size());
  for (std::size_t i = 0; i < u.size(); ++i) ids[i] = std::min<std::int64_t>(V - 1, static_cast<std::int64_t>(u[i]));
  return ids;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. A router with a saved setting: auxiliary-loss-free bias balancing

TEMPLATE_TEST_CASE("A bias-balancing router of one's own routes as the float64 reference in MoeFeedForward",
                   "[host][layers][components][moe]", float, bf16) {
  using T = TestType;
  const index_t X = 6, D = 16, F = 24, batch = 3, L = 8, tokens = batch * L;
  RouterSettings s;
  s.z_loss_coef = 0.002f;
  const BiasTop2 router = steering_router();
  const MoeFeedForward<BiasTop2, Experts<>, Mlp<Relu>, T> layer(D, F, X, router, s);
  const auto p = moe_params(layer, D, F, 301);
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(tokens * D), 302));
  RoutingReport report;
  const auto out = run_forward(layer, p, x, batch, L, D, nullptr, &report);

  const auto logits = test::layer_logits(x.data(), tokens, D, test::host_copy(p.router), X);
  const auto scores = biased_scores(logits, tokens, X, router);
  const test::RefRouting r = test::ref_route(logits, tokens, X, 2, test::RefRouter::top_k, &scores);
  INFO("smallest gap between the 2nd and 3rd biased score: " << r.margin);
  REQUIRE(r.margin > 1e-4);  // the layer ranks float32 sums; no near-tie may decide
  const auto ref = test::ref_moe_ffn(relu_mlp_ref(p.experts, X, D, F), test::to_double(x), r);
  CHECK(test::rel_l2(out, ref) <= test::op_tolerance<T>());

  const auto st = report.read();
  REQUIRE(st.size() == 1);
  CHECK(st[0].layer == "mixer");
  CHECK(st[0].counts == r.counts);
  CHECK(st[0].dropped == 0);
  CHECK(st[0].aux_loss == 0.0f);  // aux_loss = false: the bias replaces the loss
  const auto rs = test::ref_stats(logits, r, s.aux_loss_coef, s.z_loss_coef, false);
  CHECK(std::abs(st[0].z_loss - rs.z) <= 1e-5 * rs.z);

  // The bias decides: the same logits ranked without it choose otherwise.
  const test::RefRouting plain = test::ref_route(logits, tokens, X, 2, test::RefRouter::top_k);
  CHECK(plain.counts != r.counts);
  CHECK(r.counts[0] < plain.counts[0]);
  CHECK(r.counts[3] > plain.counts[3]);
}

TEST_CASE("A bias-balancing router saves its bias in config.json and a LanguageModel loads it back",
          "[host][layers][components][moe][model]") {
  using Moe = MoeFeedForward<BiasTop2, Experts<>, Mlp<Relu>, float>;
  using Model = LanguageModel<Pattern<Residual<RmsNorm, Mamba<float>>, Residual<RmsNorm, Moe>>>;
  const MambaConfig cfg = model_config();
  auto blocks = Model::default_block_configs();
  std::get<1>(blocks).routing.num_experts = 6;
  std::get<1>(blocks).routing.router = steering_router();
  std::get<1>(blocks).d_ff = 24;
  const Model model(cfg, blocks);
  // The section as written: the router's name and its setting, all 16 numbers.
  const io::Json& section = model.config().blocks.at(1);
  CHECK(section.at("router") == "bias_balanced_top_k");
  REQUIRE(section.at("expert_bias").size() == 16);
  CHECK(section.at("expert_bias")[0] == -2.5);
  CHECK(section.at("expert_bias")[3] == 1.5);
  CHECK(section.at("expert_bias")[15] == 0.0);

  auto p = model.init(Host{}, 311);
  for (std::size_t j = 0; j < std::get<1>(p.layers).size(); ++j)
    test::fill_normal(std::get<1>(p.layers)[j].mixer.router, 312 + j, 1.5);
  const index_t batch = 2, L = 6;
  const auto ids = token_ids(batch * L, cfg.vocab_size, 313);
  RoutingReport report;
  const auto logits = model_logits(model, p, ids, batch, L, &report);

  const auto dir = temp_dir("bias_model");
  model.save(Host{}, p, dir);
  const MambaConfig loaded = load_mamba_config(dir);
  REQUIRE(loaded.blocks.size() == 2);
  CHECK(loaded.blocks[1] == section);
  const Model again(loaded);
  const BiasTop2& want = model.block<1>().mixer().router();
  const BiasTop2& got = again.block<1>().mixer().router();
  CHECK(std::memcmp(got.bias, want.bias, sizeof want.bias) == 0);
  CHECK(again.block<1>().mixer().num_experts() == 6);
  const auto q = again.load(Host{}, Checkpoint(dir));
  RoutingReport report2;
  const auto logits2 = model_logits(again, q, ids, batch, L, &report2);
  CHECK(std::memcmp(logits.data(), logits2.data(), logits.size() * sizeof(float)) == 0);
  const auto a = report.read(), b = report2.read();
  REQUIRE(a.size() == 2);  // layers 1 and 3
  REQUIRE(b.size() == 2);
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].layer == b[i].layer);
    CHECK(a[i].counts == b[i].counts);
  }
  CHECK(a[0].layer == "layers.1.mixer");

  // The setting matters: the same weights without the bias route (and predict) otherwise.
  auto plain_blocks = blocks;
  std::get<1>(plain_blocks).routing.router = BiasTop2{};
  const Model plain(cfg, plain_blocks);
  RoutingReport report3;
  const auto logits3 = model_logits(plain, p, ids, batch, L, &report3);
  CHECK(test::rel_l2(logits3, logits) > 1e-4);
  CHECK(report3.read()[0].counts != a[0].counts);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A bias-balancing router refuses a bad expert_bias with the section path",
          "[host][layers][components][errors]") {
  using Moe = MoeFeedForward<BiasTop2, Experts<>, Mlp<Relu>, float>;
  auto read = [](const std::string& bias) {
    const io::Json doc = io::parse_json(R"({"model_type": "moss", "block_pattern": ["mamba", "moe"],
                                            "blocks": [{}, {"num_experts": 4, "expert_bias": )" +
                                            bias + "}]}",
                                        "config.json");
    const MambaConfig c = MambaConfig::from_json(doc, "config.json");
    return Moe::Config::from_json(c.block_section(1));
  };
  CHECK(read("[0.5, -1]").routing.router.bias[1] == -1.0f);
  CHECK(read("[0.5, -1]").routing.router.bias[2] == 0.0f);
  REQUIRE_THROWS_AS(read("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]"), config_error);
  CHECK_THROWS_WITH(
      read("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]"),
      ContainsSubstring("config.json: blocks[1].expert_bias has 17 numbers") && ContainsSubstring("at most 16"));
  // The JSON accessor's own messages (a kind error inside the section) name the path too.
  REQUIRE_THROWS_AS(read("[0, 1, \"2\"]"), config_error);
  REQUIRE_THROWS_AS(read("0.5"), config_error);
  CHECK_THROWS_WITH(read("[0, 1, \"2\"]"), ContainsSubstring("config.json: blocks[1].expert_bias[2] is a string"));
  CHECK_THROWS_WITH(read("0.5"), ContainsSubstring("config.json: blocks[1].expert_bias is a number"));
}

// ---------------------------------------------------------------------------------------------
// 2. A weight placement and a routing scope of one's own in RoutedMamba

namespace {

using test::InOutRouting;
using test::WeightConv;
using CGO = Routed<Conv, Gate, Out>;
template <class S, class V>
using Rom2 = RoutedMamba<TopK<2>, S, Experts<>, float, V>;

MambaConfig rom_config() {
  MambaConfig c = model_config();
  c.n_layers = 1;
  return c;
}

/// The report names a layer of scope S adds, in order (docs/math.md §3).
template <class S, class V>
std::vector<std::string> expected_report_names() {
  if constexpr (std::is_same_v<S, SharedRouting>) {
    return {"mixer"};
  } else {
    static_assert(std::is_same_v<S, InOutRouting>);
    std::vector<std::string> n;
    if (V::template routes<Conv> || V::template routes<Gate>) n.emplace_back("mixer.router_in");
    if (V::template routes<Out>) n.emplace_back("mixer.router_out");
    return n;
  }
}

}  // namespace

TEMPLATE_TEST_CASE("A placement and a scope of one's own match the float64 RoM mixer",
                   "[host][layers][components][rom]", (Rom2<SharedRouting, RomVariant<CGO, WeightConv>>),
                   (Rom2<SharedRouting, RomVariant<Routed<Conv, Out>, WeightConv>>),
                   (Rom2<InOutRouting, RomVariant<CGO, WeightOut>>), (Rom2<InOutRouting, RomVariant<CGO, WeightAll>>),
                   (Rom2<InOutRouting, RomVariant<CGO, WeightConv>>),
                   (Rom2<InOutRouting, RomVariant<Routed<Gate, Out>, WeightNone>>)) {
  using Layer = TestType;
  using S = typename test::RomTypes<Layer>::scope;
  using V = typename test::RomTypes<Layer>::variant;
  const MambaConfig cfg = rom_config();
  const index_t D = cfg.d_model;
  const bool renormalize = GENERATE(false, true);
  const index_t batch = 2, L = GENERATE(1, 9);
  RouterSettings settings;
  settings.capacity_factor = GENERATE(0.0, 0.75);
  const Layer layer(cfg.dims(), 4, TopK<2>{renormalize}, settings);
  const auto p = test::rom_params(layer, 321);
  const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 322);
  RoutingReport report;
  const auto out = run_forward(layer, p, x, batch, L, D, nullptr, &report);
  const auto ref = test::rom_reference(layer, p, x, batch, L);
  const double err = test::rel_l2(out, ref.out);
  INFO("renormalize " << renormalize << ", L = " << L << ", capacity factor " << settings.capacity_factor
                      << ": relative L2 error " << err);
  CHECK(err <= 1e-5);

  const auto stats = report.read();
  const auto names = expected_report_names<S, V>();
  REQUIRE(stats.size() == names.size());
  REQUIRE(ref.routings.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(stats[i].layer == names[i]);
    CHECK(test::rom_report_name(ref.router_names[i]) == names[i]);
    CHECK(stats[i].tokens == batch * L);
    CHECK(stats[i].counts == ref.routings[i].counts);
    CHECK(stats[i].kept == ref.routings[i].kept);
    CHECK(stats[i].dropped == ref.routings[i].dropped);
    const auto rs =
        test::ref_stats(ref.logits[i], ref.routings[i], layer.settings().aux_loss_coef, layer.settings().z_loss_coef);
    CHECK(std::abs(stats[i].aux_loss - rs.aux) <= 1e-5 * rs.aux);
    CHECK(std::abs(stats[i].z_loss - rs.z) <= 1e-5 * rs.z);
  }

  // The placement is told apart from every other one on the same routing (K = 2 without
  // renormalisation: g ≠ 1; on one token every placement may coincide up to rounding).
  if (!renormalize && L > 1) {
    const std::vector<std::pair<std::string, test::RefPlacement>> others = {
        {"WeightOut", test::RefPlacement::of<S, WeightOut>()},
        {"WeightGate", test::RefPlacement::of<S, WeightGate>()},
        {"WeightAll", test::RefPlacement::of<S, WeightAll>()},
        {"WeightNone", test::RefPlacement::of<S, WeightNone>()},
        {"WeightConv", test::RefPlacement::of<S, WeightConv>()}};
    for (const auto& [other, pl] : others) {
      const auto& mine = ref.placement;
      const bool differs = (V::template routes<Conv> && pl.conv != mine.conv) ||
                           (V::template routes<Gate> && pl.gate != mine.gate) ||
                           (V::template routes<Out> && pl.out != mine.out);
      if (!differs) continue;
      const auto wrong = test::rom_reference(layer, p, x, batch, L, nullptr, nullptr, pl);
      INFO("placement " << other << " instead of " << typename test::RomTypes<Layer>::weight{}.name);
      CHECK(test::rel_l2(out, wrong.out) > 1e-3);
    }
  }
}

TEST_CASE("A scope of one's own: checkpoint names, config section, decode and save/load",
          "[host][layers][components][rom]") {
  using Layer = Rom2<InOutRouting, RomVariant<CGO, WeightConv>>;
  static_assert(Layer::router_count() == 2 && Layer::kFusedIn);
  const MambaConfig cfg = rom_config();
  const index_t D = cfg.d_model, ED = cfg.d_inner(), X = 4;
  const Layer layer(cfg.dims(), X);
  CHECK(Layer::router_name_at(0) == "router_in");
  CHECK(Layer::router_name_at(1) == "router_out");
  const auto p = test::rom_params(layer, 331);

  SECTION("checkpoint names and shapes; loads back bit for bit") {
    const auto dir = temp_dir("scope_names");
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "backbone.layers.0.mixer.");
    w.write(dir / "rom.safetensors");
    const Checkpoint c(dir / "rom.safetensors");
    const std::string m = "backbone.layers.0.mixer.";
    CHECK(c.info(m + "router_in.weight").shape == std::vector<index_t>{X, D});
    CHECK(c.info(m + "router_in.weight").dtype == DType::f32);
    CHECK(c.info(m + "router_out.weight").shape == std::vector<index_t>{X, ED});
    CHECK(c.info(m + "in_proj.weight").shape == std::vector<index_t>{X, 2 * ED, D});
    CHECK(c.info(m + "out_proj.weight").shape == std::vector<index_t>{X, D, ED});
    CHECK_FALSE(c.contains(m + "router.weight"));
    CHECK_FALSE(c.contains(m + "in_proj_conv.weight"));
    const auto q = layer.load(Host{}, c, m);
    for (int i = 0; i < Layer::router_count(); ++i) CHECK(test::same_bits(p.routers[i], q.routers[i]));
    CHECK(test::same_bits(p.in.weight, q.in.weight));
    CHECK(test::same_bits(p.out.weight, q.out.weight));
    const auto x = test::randn(static_cast<std::size_t>(2 * 5 * D), 332);
    const auto a = run_forward(layer, p, x, 2, 5, D), b = run_forward(layer, q, x, 2, 5, D);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    std::filesystem::remove_all(dir);
  }
  SECTION("the config section names the scope and the placement, and refuses others") {
    io::Json s = io::Json::object();
    layer.config().to_json(s);
    CHECK(s.at("scope") == "in_out");
    CHECK(s.at("weight_placement") == "conv");
    CHECK(s.at("projections") == io::Json::array({"conv", "gate", "out"}));
    const auto r = Layer::Config::from_json(io::JsonRef::at_path(s, "config.json: blocks[0]"));
    CHECK(r.routing.num_experts == X);
    s["scope"] = "shared";
    REQUIRE_THROWS_WITH(Layer::Config::from_json(io::JsonRef::at_path(s, "config.json: blocks[0]")),
                        ContainsSubstring("config.json: blocks[0].scope is \"shared\" but the layer type's is "
                                          "\"in_out\""));
    s["scope"] = "in_out";
    s["weight_placement"] = "out";
    REQUIRE_THROWS_WITH(Layer::Config::from_json(io::JsonRef::at_path(s, "config.json: blocks[0]")),
                        ContainsSubstring("config.json: blocks[0].weight_placement is \"out\""));
  }
  SECTION("prefill followed by decode steps equals one full forward") {
    const index_t batch = 3, L = 10, prefill = 4;
    const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 333);
    const auto full = run_forward(layer, p, x, batch, L, D);
    auto cache = layer.make_cache(Host{}, batch);
    std::vector<float> head(static_cast<std::size_t>(batch * prefill * D));
    for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + b * L * D, prefill * D, head.begin() + b * prefill * D);
    const auto h = run_forward(layer, p, head, batch, prefill, D, &cache);
    std::vector<float> got(full.size(), NAN);
    for (index_t b = 0; b < batch; ++b) std::copy_n(h.begin() + b * prefill * D, prefill * D, got.begin() + b * L * D);
    for (index_t t = prefill; t < L; ++t) {
      std::vector<float> xt(static_cast<std::size_t>(batch * D)), yt(xt.size(), NAN);
      for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + (b * L + t) * D, D, xt.begin() + b * D);
      RoutingReport r;
      layer.step(Host{}, p, ConstView<float, 2>(xt.data(), {batch, D}, "x"),
                 TensorView<float, 2>(yt.data(), {batch, D}, "out"), cache, &r);
      const auto st = r.read();
      REQUIRE(st.size() == 2);
      CHECK(st[0].layer == "mixer.router_in");
      CHECK(st[1].layer == "mixer.router_out");
      CHECK(st[1].tokens == batch);
      for (index_t b = 0; b < batch; ++b) std::copy_n(yt.begin() + b * D, D, got.begin() + (b * L + t) * D);
    }
    CHECK(test::rel_l2(got, full) <= 1e-5);
    test::RefStates fin;
    test::rom_reference(layer, p, x, batch, L, nullptr, &fin);
    CHECK(test::rel_l2(test::widen(cache.ssm_state), fin.ssm) <= 1e-5);
    CHECK(test::rel_l2(test::widen(cache.conv_state), fin.conv) <= 1e-5);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. A scan strategy of one's own

TEST_CASE("A scan strategy of one's own runs in Mamba, RoutedMamba and a model", "[host][layers][components][scan]") {
  const MambaConfig cfg = rom_config();
  const index_t D = cfg.d_model, batch = 2, L = 11;
  const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 341);

  SECTION("Mamba<float, CountingScan> equals Mamba<float> bit for bit and the float64 mixer") {
    const Mamba<float> plain(cfg.dims());
    const Mamba<float, CountingScan> mine(cfg.dims());
    Rng r1(342), r2(342);
    const auto p = plain.init(Host{}, r1, 2);
    const auto q = mine.init(Host{}, r2, 2);
    const int before = CountingScan::calls;
    const auto a = run_forward(plain, p, x, batch, L, D);
    CHECK(CountingScan::calls == before);
    const auto b = run_forward(mine, q, x, batch, L, D);
    CHECK(CountingScan::calls == before + 1);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    const auto ref = test::ref_mamba(test::ref_weights(mine.dims(), q), test::to_double(x), batch, L);
    CHECK(test::rel_l2(b, ref) <= 1e-5);
    // With a cache, the prefill runs the strategy once more and leaves the final states.
    auto cache = mine.make_cache(Host{}, batch);
    const auto c = run_forward(mine, q, x, batch, L, D, &cache);
    CHECK(CountingScan::calls == before + 2);
    CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0);
    std::vector<double> conv1, h1;
    test::ref_mamba(test::ref_weights(mine.dims(), q), test::to_double(x), batch, L, nullptr, nullptr, &conv1, &h1);
    CHECK(test::rel_l2(test::widen(cache.ssm_state), h1) <= 1e-5);
  }
  SECTION("RoutedMamba<..., CountingScan> equals the default-scan layer bit for bit") {
    using Plain = RoutedMamba<TopK<2>, SharedRouting, Experts<>, float, RomVariant<>>;
    using Mine = RoutedMamba<TopK<2>, SharedRouting, Experts<>, float, RomVariant<>, CountingScan>;
    const Plain plain(cfg.dims(), 4);
    const Mine mine(cfg.dims(), 4);
    const auto p = test::rom_params(plain, 343);
    const auto q = test::rom_params(mine, 343);
    const int before = CountingScan::calls;
    const auto a = run_forward(plain, p, x, batch, L, D);
    const auto b = run_forward(mine, q, x, batch, L, D);
    CHECK(CountingScan::calls == before + 1);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    CHECK(test::rel_l2(b, test::rom_reference(mine, q, x, batch, L).out) <= 1e-5);
  }
  SECTION("a LanguageModel of Mamba<float, CountingScan> blocks runs it once per layer") {
    MambaConfig mc = model_config();
    mc.n_layers = 3;
    const MambaLM<float> plain(mc);
    const LanguageModel<Residual<RmsNorm, Mamba<float, CountingScan>>> mine(mc);
    const auto p = plain.init(Host{}, 344);
    const auto q = mine.init(Host{}, 344);
    const auto ids = token_ids(batch * L, mc.vocab_size, 345);
    const int before = CountingScan::calls;
    const auto a = model_logits(plain, p, ids, batch, L);
    const auto b = model_logits(mine, q, ids, batch, L);
    CHECK(CountingScan::calls == before + 3);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// 4. A router with a batch scoring hook

TEST_CASE("A batch-scoring router of one's own routes as the float64 reference", "[host][layers][components][moe]") {
  // Every token prefers expert 0 by a constant margin in its logits; centring removes it.
  const index_t X = 4, D = 8, F = 8, tokens = 32;
  const bool centered = GENERATE(true, false);
  const MoeFeedForward<CenteredTop1, Experts<>, Mlp<Relu>, float> layer(D, F, X, CenteredTop1{centered});
  auto p = moe_params(layer, D, F, 351);
  test::fill_normal(p.router, 352, 0.3);
  for (index_t d = 0; d < D; ++d) p.router.data()[d] = 0.3f;  // expert 0's row: logit ≈ 2.4, the others ≈ N(0, 0.85)
  const auto x = test::randn(static_cast<std::size_t>(tokens * D), 353, 0.3f, 1.0f);
  RoutingReport report;
  const auto out = run_forward(layer, p, x, 1, tokens, D, nullptr, &report);

  const auto logits = test::layer_logits(x.data(), tokens, D, test::host_copy(p.router), X);
  std::vector<double> scores(logits.size());
  for (index_t i = 0; i < X; ++i) {
    double mean = 0;
    for (index_t t = 0; t < tokens; ++t) mean += logits[t * X + i] / static_cast<double>(tokens);
    for (index_t t = 0; t < tokens; ++t) scores[t * X + i] = logits[t * X + i] - mean;
  }
  const test::RefRouting r =
      test::ref_route(logits, tokens, X, 1, test::RefRouter::top1_switch, centered ? &scores : nullptr);
  INFO("centered " << centered << "; smallest gap between the best and second score: " << r.margin);
  REQUIRE(r.margin > 1e-4);
  const auto ref = test::ref_moe_ffn(relu_mlp_ref(p.experts, X, D, F), test::to_double(x), r);
  CHECK(test::rel_l2(out, ref) <= 1e-5);
  const auto st = report.read().at(0);
  CHECK(st.counts == r.counts);
  const auto rs = test::ref_stats(logits, r, layer.settings().aux_loss_coef, layer.settings().z_loss_coef);
  CHECK(std::abs(st.aux_loss - rs.aux) <= 1e-5 * rs.aux);
  std::int64_t most = 0;
  for (auto n : st.counts) most = std::max(most, n);
  if (centered)
    CHECK(most <= tokens / 2);  // spread over the experts
  else
    CHECK(st.counts[0] >= 3 * tokens / 4);  // the logits alone send nearly every token to expert 0
}
