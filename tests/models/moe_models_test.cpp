// Host tests of the sparse language models (docs/math.md §2–3): block patterns, the named
// variants' config.json ("blocks" sections) and checkpoint round trips, a pattern with two MoE
// blocks that use different routers, configs in moss 0.1's layout ("moe" / "rom" sections),
// decode against the full forward, the residual wiring against a hand composition of the
// layers, and sections that contradict the block types.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moss_moe_models_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

io::Json read_json(const std::filesystem::path& p) { return io::parse_json(read_text(p), p.string()); }

constexpr index_t kVocab = 40, kMoeExperts = 4, kRomExperts = 3, kFf = 24;

MambaConfig tiny_config(index_t n_layers = 4) {
  MambaConfig c;
  c.d_model = 16;
  c.n_layers = n_layers;
  c.vocab_size = kVocab;
  c.d_state = 4;
  c.dt_rank = 2;
  return c;
}

/// The block configs of `Model` with the test's sizes: MoE blocks kMoeExperts experts of width
/// kFf, RoM blocks kRomExperts experts, dense feed-forward blocks width kFf.
template <class Model>
typename Model::BlockConfigs tiny_blocks() {
  auto blocks = Model::default_block_configs();
  std::apply(
      [](auto&... c) {
        (
            [&] {
              constexpr bool routed = requires { c.routing.num_experts; };
              constexpr bool ff = requires { c.d_ff; };
              if constexpr (routed && ff) c.routing.num_experts = kMoeExperts;   // MoeFeedForward
              if constexpr (routed && !ff) c.routing.num_experts = kRomExperts;  // RoutedMamba
              if constexpr (ff) c.d_ff = kFf;
            }(),
            ...);
      },
      blocks);
  return blocks;
}

/// A `Model` of `cfg` with the test's block sizes.
template <class Model>
Model tiny_model(const MambaConfig& cfg = tiny_config()) {
  return Model(cfg, tiny_blocks<Model>());
}

/// Makes a block's weights large enough that the mixers matter next to the embeddings and the
/// routers decide clearly (init's N(0, 0.02²) leaves every layer nearly silent).
template <class P>
void boost(P& p, std::uint64_t seed) {
  if constexpr (requires { p.experts; }) {  // MoeFeedForward
    test::fill_normal(p.router, seed, 0.5);
    if constexpr (requires { p.experts.wi; }) {
      test::fill_normal(p.experts.wi, seed + 1, 0.25);
      test::fill_normal(p.experts.wo, seed + 3, 0.2);
    } else {
      test::fill_normal(p.experts.gate, seed + 1, 0.25);
      test::fill_normal(p.experts.up, seed + 2, 0.25);
      test::fill_normal(p.experts.down, seed + 3, 0.2);
    }
  } else if constexpr (requires { p.routers; }) {  // RoutedMamba
    for (auto* w : {&p.in.weight, &p.conv.weight, &p.gate.weight})
      if (w->present()) test::fill_normal(*w, seed, 0.25);
    test::fill_normal(p.out.weight, seed + 1, 0.18);
    for (std::size_t i = 0; i < p.routers.size(); ++i)
      if (p.routers[i].present()) test::fill_normal(p.routers[i], seed + 2 + i, 0.5);
  } else if constexpr (requires { p.in_proj; }) {  // Mamba
    test::fill_normal(p.in_proj, seed, 0.25);
    test::fill_normal(p.out_proj, seed + 1, 0.18);
  } else if constexpr (requires { p.wi; }) {  // FeedForward<Mlp<...>>
    test::fill_normal(p.wi, seed, 0.25);
    test::fill_normal(p.wo, seed + 1, 0.2);
  }
}

template <class Model>
typename Model::Params boosted_params(const Model& model, std::uint64_t seed) {
  auto p = model.init(Host{}, seed);
  std::uint64_t s = seed * 100;
  std::apply(
      [&](auto&... per_position) {
        ((std::for_each(per_position.begin(), per_position.end(), [&](auto& block) { boost(block.mixer, s += 10); })),
         ...);
      },
      p.layers);
  return p;
}

template <class Model>
std::vector<float> logits_of(const Model& model, const typename Model::Params& p, const std::vector<std::int64_t>& ids,
                             index_t batch, index_t L, RoutingReport* report = nullptr) {
  std::vector<float> out(static_cast<std::size_t>(batch * L * kVocab), NAN);
  model.forward(Host{}, p, ConstView<std::int64_t, 2>(ids.data(), {batch, L}, "ids"),
                TensorView<float, 3>(out.data(), {batch, L, kVocab}, "logits"), nullptr, report);
  return out;
}

std::vector<std::int64_t> token_ids(index_t n, std::uint64_t seed) {
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  std::uint64_t s = seed;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<std::int64_t>((s >> 33) % static_cast<std::uint64_t>(kVocab));
  }
  return ids;
}

std::vector<std::string> layer_names(const RoutingReport& r) {
  std::vector<std::string> n;
  for (const auto& s : r.read()) n.push_back(s.layer);
  return n;
}

/// What a named variant's config.json says about its layers (models/variants.hpp).
struct VariantKeys {
  std::vector<std::string> pattern;
  std::string moe_router, moe_expert, moe_activation;
};

VariantKeys keys_of(std::string_view variant) {
  if (variant == "moe-mamba") return {{"mamba", "moe"}, "top1_switch", "mlp", "relu"};
  if (variant == "blackmamba") return {{"mamba", "moe"}, "sinkhorn_top1", "gated_mlp", "silu"};
  if (variant == "rom") return {{"rom"}, "", "", ""};
  if (variant == "rom-moe") return {{"rom", "moe"}, "top1_switch", "mlp", "relu"};
  FAIL("unknown variant " << variant);
  return {};
}

std::vector<std::string> strings_of(const io::Json& v) { return v.get<std::vector<std::string>>(); }

/// Checks that the saved folders `a` and `b` hold the same weights and config, bit for bit.
void check_same_files(const std::filesystem::path& a, const std::filesystem::path& b) {
  CHECK(read_text(a / "model.safetensors") == read_text(b / "model.safetensors"));
  CHECK(read_text(a / "config.json") == read_text(b / "config.json"));
}

}  // namespace

TEST_CASE("A Pattern whose length does not divide the depth is a config_error", "[host][models][moe][errors]") {
  using Model = LanguageModel<Pattern<MambaBlock<float>, SwitchMoeBlock<float>>>;
  REQUIRE_THROWS_AS(tiny_model<Model>(tiny_config(3)), config_error);
  REQUIRE_THROWS_WITH(tiny_model<Model>(tiny_config(3)),
                      ContainsSubstring("num_hidden_layers is 3") &&
                          ContainsSubstring("multiple of the block pattern's length 2") &&
                          ContainsSubstring("[\"mamba\", \"moe\"]"));
  using Three = LanguageModel<Pattern<MambaBlock<float>, RomBlock<float>, SwitchMoeBlock<float>>>;
  REQUIRE_THROWS_WITH(tiny_model<Three>(tiny_config(4)),
                      ContainsSubstring("num_hidden_layers is 4") && ContainsSubstring("length 3"));
  REQUIRE_THROWS_AS(tiny_model<MoeMambaLM<float>>(tiny_config(5)), config_error);
}

TEST_CASE("Layer i of a Pattern uses block type i mod n", "[host][models][moe]") {
  SECTION("Mamba and MoE alternating") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, SwitchMoeBlock<float>>>;
    const Model model = tiny_model<Model>(tiny_config(4));
    CHECK(Model::pattern_names() == std::vector<std::string>{"mamba", "moe"});
    CHECK(model.config().block_pattern == std::vector<std::string>{"mamba", "moe"});
    CHECK(model.config().moss_variant == "custom");
    const auto p = boosted_params(model, 1);
    CHECK(p.size() == 4);
    CHECK(std::get<0>(p.layers).size() == 2);
    CHECK(std::get<1>(p.layers).size() == 2);
    const auto ids = token_ids(2 * 6, 2);
    RoutingReport report;
    logits_of(model, p, ids, 2, 6, &report);
    CHECK(layer_names(report) == std::vector<std::string>{"layers.1.mixer", "layers.3.mixer"});
    for (const auto& s : report.read()) {
      CHECK(s.tokens == 12);
      CHECK(s.counts.size() == static_cast<std::size_t>(kMoeExperts));
    }
    // the decode path runs the same layers
    auto cache = model.make_cache(Host{}, 2);
    std::vector<float> logits(2 * kVocab);
    const std::vector<std::int64_t> next = {3, 7};
    RoutingReport step_report;
    model.step(Host{}, p, ConstView<std::int64_t, 1>(next.data(), {2}, "ids"),
               TensorView<float, 2>(logits.data(), {2, kVocab}, "logits"), cache, &step_report);
    CHECK(layer_names(step_report) == std::vector<std::string>{"layers.1.mixer", "layers.3.mixer"});
  }
  SECTION("three block types over six layers, in the checkpoint too") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, RomBlock<float>, SwitchMoeBlock<float>>>;
    const Model model = tiny_model<Model>(tiny_config(6));
    const auto p = boosted_params(model, 3);
    RoutingReport report;
    const auto ids = token_ids(2 * 5, 4);
    const auto a = logits_of(model, p, ids, 2, 5, &report);
    CHECK(layer_names(report) ==
          std::vector<std::string>{"layers.1.mixer", "layers.2.mixer", "layers.4.mixer", "layers.5.mixer"});
    const auto stats = report.read();
    CHECK(stats[0].counts.size() == static_cast<std::size_t>(kRomExperts));
    CHECK(stats[1].counts.size() == static_cast<std::size_t>(kMoeExperts));
    const auto dir = temp_dir("pattern3");
    model.save(Host{}, p, dir);
    const Checkpoint c(dir);
    const index_t D = 16, ED = 32;
    for (index_t i : {0, 3})
      CHECK(c.info("backbone.layers." + std::to_string(i) + ".mixer.in_proj.weight").shape ==
            std::vector<index_t>{2 * ED, D});
    for (index_t i : {1, 4}) {
      CHECK(c.info("backbone.layers." + std::to_string(i) + ".mixer.in_proj.weight").shape ==
            std::vector<index_t>{kRomExperts, 2 * ED, D});
      CHECK(c.info("backbone.layers." + std::to_string(i) + ".mixer.router.weight").shape ==
            std::vector<index_t>{kRomExperts, D});
    }
    for (index_t i : {2, 5}) {
      CHECK(c.info("backbone.layers." + std::to_string(i) + ".mixer.experts.wi.weight").shape ==
            std::vector<index_t>{kMoeExperts, kFf, D});
      CHECK_FALSE(c.contains("backbone.layers." + std::to_string(i) + ".mixer.in_proj.weight"));
    }
    for (index_t i = 0; i < 6; ++i) CHECK(c.contains("backbone.layers." + std::to_string(i) + ".norm.weight"));
    // the custom model reloads from its own config (its "blocks" sections carry the sizes)
    const MambaConfig cfg2 = load_mamba_config(dir);
    CHECK(cfg2.moss_variant == "custom");
    CHECK(cfg2.block_pattern == std::vector<std::string>{"mamba", "rom", "moe"});
    REQUIRE(cfg2.blocks.size() == 3);
    const Model model2(cfg2);
    CHECK(model2.block<1>().mixer().num_experts() == kRomExperts);
    CHECK(model2.block<2>().mixer().num_experts() == kMoeExperts);
    const auto p2 = model2.load(Host{}, c);
    CHECK(logits_of(model2, p2, ids, 2, 5) == a);
    std::filesystem::remove_all(dir);
  }
  SECTION("a dense FeedForward block (\"ffn\") writes its expert keys in its own section") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, Residual<RmsNorm, FeedForward<Mlp<Gelu>, float>>>>;
    const Model model = tiny_model<Model>(tiny_config(4));
    CHECK(model.config().block_pattern == std::vector<std::string>{"mamba", "ffn"});
    REQUIRE(model.config().blocks.size() == 2);
    CHECK(model.config().blocks[1].at("activation").get<std::string>() == "gelu");
    auto p = model.init(Host{}, 7);
    CHECK(std::get<1>(p.layers).at(0).mixer.wi.numel() == kFf * 16);
    CHECK(std::get<1>(p.layers).at(0).mixer.wi.shape() == Extents<3>{1, kFf, 16});
    RoutingReport report;
    const auto ids = token_ids(2 * 4, 8);
    const auto a = logits_of(model, p, ids, 2, 4, &report);
    CHECK(report.size() == 0);  // nothing routed
    const auto dir = temp_dir("ffn");
    model.save(Host{}, p, dir);
    const io::Json j = read_json(dir / "config.json");
    const io::Json& ffn = j.at("blocks").at(1);
    CHECK(ffn.at("expert").get<std::string>() == "mlp");
    CHECK(ffn.at("activation").get<std::string>() == "gelu");
    CHECK(ffn.at("d_ff").get<index_t>() == kFf);
    const Checkpoint c(dir);
    CHECK(c.info("backbone.layers.1.mixer.wi.weight").shape == std::vector<index_t>{kFf, 16});
    CHECK(c.info("backbone.layers.3.mixer.wo.weight").shape == std::vector<index_t>{16, kFf});
    const Model model2(load_mamba_config(dir));
    CHECK(model2.block<1>().mixer().d_ff() == kFf);
    CHECK(logits_of(model2, model2.load(Host{}, c), ids, 2, 4) == a);
    std::filesystem::remove_all(dir);
  }
  SECTION("per-projection RoM reports a router per projection") {
    using Block = Residual<RmsNorm, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<>, float>>;
    const auto model = tiny_model<LanguageModel<Block>>(tiny_config(2));
    REQUIRE(model.config().blocks.size() == 1);
    CHECK(model.config().blocks[0].at("scope").get<std::string>() == "per_projection");
    const auto p = boosted_params(model, 5);
    RoutingReport report;
    logits_of(model, p, token_ids(4, 6), 1, 4, &report);
    CHECK(layer_names(report) == std::vector<std::string>{"layers.0.mixer.router_conv", "layers.0.mixer.router_gate",
                                                          "layers.0.mixer.router_out", "layers.1.mixer.router_conv",
                                                          "layers.1.mixer.router_gate", "layers.1.mixer.router_out"});
  }
}

TEMPLATE_TEST_CASE("Named variants round-trip through save, load_mamba_config and load", "[host][models][moe]",
                   MoeMambaLM<float>, BlackMambaLM<float>, RomLM<float>, RomMoeLM<float>, RomMoeLM<bf16>,
                   BlackMambaLM<f16>) {
  using Model = TestType;
  using T = typename Model::value_type;
  const VariantKeys want = keys_of(Model::variant);
  MambaConfig cfg = tiny_config(4);
  cfg.tie_embeddings = false;
  // non-default settings, which must survive the trip
  auto blocks = tiny_blocks<Model>();
  std::apply(
      [](auto&... c) {
        (
            [&] {
              if constexpr (
                  requires { c.routing.num_experts; } && requires { c.d_ff; }) {  // MoE
                c.routing.settings.capacity_factor = 1.25;
                c.routing.settings.aux_loss_coef = 0.02f;
              } else if constexpr (requires { c.routing.router.renormalize; }) {  // RoM
                c.routing.router.renormalize = true;
                c.routing.settings.z_loss_coef = 0.004f;
              }
            }(),
            ...);
      },
      blocks);
  const Model model(cfg, blocks);
  CHECK(model.config().moss_variant == Model::variant);
  CHECK(model.config().block_pattern == want.pattern);
  const auto p = boosted_params(model, 11);
  const auto dir = temp_dir("variant_a"), dir2 = temp_dir("variant_b");
  model.save(Host{}, p, dir);

  // config.json has moss's documented keys: one section per pattern position
  const io::Json j = read_json(dir / "config.json");
  CHECK(j.at("model_type").get<std::string>() == "moss");
  CHECK(j.at("moss_variant").get<std::string>() == Model::variant);
  CHECK(strings_of(j.at("block_pattern")) == want.pattern);
  CHECK(j.at("dtype").get<std::string>() == (std::is_same_v<T, float>  ? "float32"
                                             : std::is_same_v<T, bf16> ? "bfloat16"
                                                                       : "float16"));
  CHECK(j.at("num_hidden_layers").get<index_t>() == 4);
  CHECK(j.at("hidden_size").get<index_t>() == 16);
  CHECK(j.at("tie_word_embeddings").get<bool>() == false);
  CHECK_FALSE(j.contains("moe"));  // moss 0.1's shared sections are not written any more
  CHECK_FALSE(j.contains("rom"));
  REQUIRE(j.at("blocks").size() == want.pattern.size());
  for (std::size_t i = 0; i < want.pattern.size(); ++i) {
    const io::Json& s = j.at("blocks").at(i);
    INFO("blocks[" << i << "] " << want.pattern[i]);
    if (want.pattern[i] == "mamba") CHECK(s == io::Json::object());
    if (want.pattern[i] == "moe") {
      CHECK(s.at("num_experts").get<index_t>() == kMoeExperts);
      CHECK(s.at("top_k").get<int>() == 1);
      CHECK(s.at("router").get<std::string>() == want.moe_router);
      CHECK(s.at("expert").get<std::string>() == want.moe_expert);
      CHECK(s.at("activation").get<std::string>() == want.moe_activation);
      CHECK(s.at("d_ff").get<index_t>() == kFf);
      CHECK(s.at("capacity_factor").get<double>() == 1.25);
      CHECK(static_cast<float>(s.at("aux_loss_coef").get<double>()) == 0.02f);
      CHECK(static_cast<float>(s.at("z_loss_coef").get<double>()) == 0.001f);
      // a router writes its own settings only: Sinkhorn its mode, Switch nothing
      CHECK_FALSE(s.contains("normalize"));
      if (want.moe_router == "sinkhorn_top1")
        CHECK(s.at("sinkhorn_training").get<bool>() == false);
      else
        CHECK_FALSE(s.contains("sinkhorn_training"));
    }
    if (want.pattern[i] == "rom") {
      CHECK(s.at("num_experts").get<index_t>() == kRomExperts);
      CHECK(s.at("top_k").get<int>() == 1);
      CHECK(s.at("router").get<std::string>() == "top_k");
      CHECK(s.at("normalize").get<bool>() == true);
      CHECK(s.at("scope").get<std::string>() == "shared");
      CHECK(strings_of(s.at("projections")) == std::vector<std::string>{"conv", "gate", "out"});
      CHECK(s.at("weight_placement").get<std::string>() == "out");
      CHECK(static_cast<float>(s.at("z_loss_coef").get<double>()) == 0.004f);
    }
  }

  // the config reads back into the same model
  const MambaConfig cfg2 = load_mamba_config(dir);
  CHECK(cfg2.moss_variant == Model::variant);
  CHECK(cfg2.block_pattern == want.pattern);
  CHECK(cfg2.dtype == dtype_of<T>);
  CHECK_FALSE(cfg2.tie_embeddings);
  REQUIRE(cfg2.blocks.size() == want.pattern.size());
  for (std::size_t i = 0; i < want.pattern.size(); ++i) CHECK(cfg2.blocks[i] == j.at("blocks").at(i));
  const Model model2(cfg2);
  const auto p2 = model2.load(Host{}, Checkpoint(dir));
  // the runtime settings reach the layers: RoM's renormalisation, the MoE blocks' sizes and capacity
  if constexpr (requires { model2.template block<0>().mixer().router().renormalize; }) {
    CHECK(model2.template block<0>().mixer().router().renormalize);
    CHECK(model2.template block<0>().mixer().num_experts() == kRomExperts);
    CHECK(model2.template block<0>().mixer().settings().z_loss_coef == 0.004f);
  }
  if constexpr (std::tuple_size_v<decltype(p.layers)> == 2) {
    CHECK(model2.template block<1>().mixer().settings().capacity_factor == 1.25);
    CHECK(model2.template block<1>().mixer().settings().aux_loss_coef == 0.02f);
    CHECK(model2.template block<1>().mixer().num_experts() == kMoeExperts);
    CHECK(model2.template block<1>().mixer().d_ff() == kFf);
  }

  // weights bit for bit: saving the reloaded model writes the same files
  model2.save(Host{}, p2, dir2);
  check_same_files(dir, dir2);

  // and the same logits and routing
  const auto ids = token_ids(2 * 7, 12);
  RoutingReport ra, rb;
  const auto a = logits_of(model, p, ids, 2, 7, &ra);
  const auto b = logits_of(model2, p2, ids, 2, 7, &rb);
  CHECK(a == b);
  REQUIRE(ra.size() == rb.size());
  const auto sa = ra.read(), sb = rb.read();
  for (std::size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].layer == sb[i].layer);
    CHECK(sa[i].counts == sb[i].counts);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

namespace {

/// Two MoE blocks with different routers, expert counts and expert kinds in one pattern.
using SwitchMlp = Residual<RmsNorm, MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float>>;
using Top2Gated = Residual<RmsNorm, MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, float>>;
using TwoMoe = LanguageModel<Pattern<MambaBlock<float>, SwitchMlp, Top2Gated>>;
constexpr index_t kSwitchExperts = 4, kTop2Experts = 6, kTop2Ff = 20;

TwoMoe two_moe_model(index_t n_layers, double capacity_factor = 1.25) {
  auto b = TwoMoe::default_block_configs();
  std::get<1>(b).routing.num_experts = kSwitchExperts;
  std::get<1>(b).routing.settings.capacity_factor = capacity_factor;
  std::get<1>(b).d_ff = kFf;
  std::get<2>(b).routing.num_experts = kTop2Experts;
  std::get<2>(b).routing.router.renormalize = true;
  std::get<2>(b).routing.settings.aux_loss_coef = 0.03f;
  std::get<2>(b).d_ff = kTop2Ff;
  return TwoMoe(tiny_config(n_layers), b);
}

}  // namespace

TEST_CASE("dispatch_variant builds the named variants with the top_k of their config (1 or 2)", "[host][models][moe]") {
  // A top-2 model saves top_k 2 in each routed section; its loaded config dispatches to the K = 2
  // type, which loads the checkpoint; K = 1 types refuse it.
  auto round_trip = [&](auto tag, const char* name) {
    using Model = typename decltype(tag)::type;
    INFO(name);
    const Model model(tiny_config(4), tiny_blocks<Model>());
    const auto p = model.init(Host{}, 3);
    const auto dir = temp_dir(std::string("dispatch_") + name);
    model.save(Host{}, p, dir);
    const MambaConfig cfg = load_mamba_config(dir);
    CHECK(variant_top_k(cfg) == 2);
    const int k = dispatch_variant<float>(cfg, [&](auto t) {
      using Loaded = typename decltype(t)::type;
      CHECK(std::is_same_v<Loaded, Model>);
      const Loaded loaded(cfg);
      (void)loaded.load(Host{}, Checkpoint(dir));
      return 2;
    });
    CHECK(k == 2);
    std::filesystem::remove_all(dir);
  };
  round_trip(type_tag<MoeMambaLM<float, 2>>{}, "moe-mamba");
  round_trip(type_tag<RomLM<float, 2>>{}, "rom");
  round_trip(type_tag<RomMoeLM<float, 2>>{}, "rom-moe");

  // A K = 1 type refuses a top-2 section; K outside {1, 2} and sections that disagree are errors.
  const RomLM<float, 2> top2(tiny_config(4), tiny_blocks<RomLM<float, 2>>());
  const auto dir = temp_dir("dispatch_k");
  top2.save(Host{}, top2.init(Host{}, 4), dir);
  MambaConfig cfg = load_mamba_config(dir);
  CHECK_THROWS_WITH(RomLM<float>(cfg), ContainsSubstring("top_k is 2 but the layer type's router picks 1"));
  cfg.blocks[0]["top_k"] = 3;
  CHECK_THROWS_AS(dispatch_variant<float>(cfg, [](auto) { return 0; }), unsupported_error);
  CHECK_THROWS_WITH(dispatch_variant<float>(cfg, [](auto) { return 0; }),
                    ContainsSubstring("top_k is 3 but the built-in rom types route 1 or 2 experts per token"));
  MambaConfig hybrid = load_mamba_config(dir);
  hybrid.moss_variant = "rom-moe";
  hybrid.block_pattern = {"rom", "moe"};
  hybrid.blocks.push_back(io::Json::object());
  hybrid.blocks[1]["top_k"] = 1;
  CHECK_THROWS_WITH(variant_top_k(hybrid), ContainsSubstring("blocks[1].top_k is 1 but blocks[0].top_k is 2"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Two MoE blocks with different routers save and load back with their own sections", "[host][models][moe]") {
  const TwoMoe model = two_moe_model(6);
  CHECK(model.config().block_pattern == std::vector<std::string>{"mamba", "moe", "moe"});
  const auto p = boosted_params(model, 41);
  const auto ids = token_ids(2 * 8, 42);
  RoutingReport report;
  const auto a = logits_of(model, p, ids, 2, 8, &report);
  const auto stats = report.read();
  REQUIRE(stats.size() == 4);
  CHECK(layer_names(report) ==
        std::vector<std::string>{"layers.1.mixer", "layers.2.mixer", "layers.4.mixer", "layers.5.mixer"});
  for (std::size_t i : {0u, 2u}) {
    CHECK(stats[i].k == 1);
    CHECK(stats[i].counts.size() == static_cast<std::size_t>(kSwitchExperts));
  }
  for (std::size_t i : {1u, 3u}) {
    CHECK(stats[i].k == 2);
    CHECK(stats[i].counts.size() == static_cast<std::size_t>(kTop2Experts));
    CHECK(stats[i].dropped == 0);  // no capacity in this block
  }

  const auto dir = temp_dir("two_moe"), dir2 = temp_dir("two_moe_b");
  model.save(Host{}, p, dir);
  const io::Json j = read_json(dir / "config.json");
  CHECK(j.at("moss_variant").get<std::string>() == "custom");
  const io::Json& sw = j.at("blocks").at(1);
  const io::Json& t2 = j.at("blocks").at(2);
  CHECK(j.at("blocks").at(0) == io::Json::object());
  CHECK(sw.at("router").get<std::string>() == "top1_switch");
  CHECK(sw.at("top_k").get<int>() == 1);
  CHECK(sw.at("num_experts").get<index_t>() == kSwitchExperts);
  CHECK(sw.at("capacity_factor").get<double>() == 1.25);
  CHECK(sw.at("expert").get<std::string>() == "mlp");
  CHECK(sw.at("activation").get<std::string>() == "relu");
  CHECK(sw.at("d_ff").get<index_t>() == kFf);
  CHECK_FALSE(sw.contains("normalize"));
  CHECK(t2.at("router").get<std::string>() == "top_k");
  CHECK(t2.at("top_k").get<int>() == 2);
  CHECK(t2.at("normalize").get<bool>() == true);
  CHECK(t2.at("num_experts").get<index_t>() == kTop2Experts);
  CHECK(t2.at("capacity_factor").get<double>() == 0.0);
  CHECK(static_cast<float>(t2.at("aux_loss_coef").get<double>()) == 0.03f);
  CHECK(t2.at("expert").get<std::string>() == "gated_mlp");
  CHECK(t2.at("activation").get<std::string>() == "silu");
  CHECK(t2.at("d_ff").get<index_t>() == kTop2Ff);
  const Checkpoint c(dir);
  for (index_t i : {1, 4}) {
    const std::string m = "backbone.layers." + std::to_string(i) + ".mixer.";
    CHECK(c.info(m + "router.weight").shape == std::vector<index_t>{kSwitchExperts, 16});
    CHECK(c.info(m + "experts.wi.weight").shape == std::vector<index_t>{kSwitchExperts, kFf, 16});
    CHECK(c.info(m + "experts.wo.weight").shape == std::vector<index_t>{kSwitchExperts, 16, kFf});
  }
  for (index_t i : {2, 5}) {
    const std::string m = "backbone.layers." + std::to_string(i) + ".mixer.";
    CHECK(c.info(m + "router.weight").shape == std::vector<index_t>{kTop2Experts, 16});
    CHECK(c.info(m + "experts.gate.weight").shape == std::vector<index_t>{kTop2Experts, kTop2Ff, 16});
    CHECK(c.info(m + "experts.up.weight").shape == std::vector<index_t>{kTop2Experts, kTop2Ff, 16});
    CHECK(c.info(m + "experts.down.weight").shape == std::vector<index_t>{kTop2Experts, 16, kTop2Ff});
    CHECK_FALSE(c.contains(m + "experts.wi.weight"));
  }

  // From the folder alone: each block takes its own section.
  const TwoMoe model2(load_mamba_config(dir));
  CHECK(model2.block<1>().mixer().num_experts() == kSwitchExperts);
  CHECK(model2.block<1>().mixer().settings().capacity_factor == 1.25);
  CHECK(model2.block<1>().mixer().d_ff() == kFf);
  CHECK(model2.block<2>().mixer().num_experts() == kTop2Experts);
  CHECK(model2.block<2>().mixer().router().renormalize);
  CHECK(model2.block<2>().mixer().settings().capacity_factor == 0.0);
  CHECK(model2.block<2>().mixer().settings().aux_loss_coef == 0.03f);
  CHECK(model2.block<2>().mixer().d_ff() == kTop2Ff);
  const auto p2 = model2.load(Host{}, c);
  RoutingReport report2;
  CHECK(logits_of(model2, p2, ids, 2, 8, &report2) == a);
  const auto stats2 = report2.read();
  REQUIRE(stats2.size() == stats.size());
  for (std::size_t i = 0; i < stats.size(); ++i) {
    CHECK(stats2[i].counts == stats[i].counts);
    CHECK(stats2[i].kept == stats[i].kept);
    CHECK(stats2[i].aux_loss == stats[i].aux_loss);
  }
  model2.save(Host{}, p2, dir2);
  check_same_files(dir, dir2);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

TEST_CASE("A config.json in moss 0.1's layout (\"moe\" and \"rom\" sections) still loads", "[host][models][moe]") {
  // What moss 0.1 wrote for a rom-moe model (README.md of moss 0.1, "The moss config.json"):
  // one section per block name, no "blocks".
  const std::string v01 = R"({
    "architectures": ["MossForCausalLM"], "model_type": "moss", "hidden_size": 16, "num_hidden_layers": 4,
    "vocab_size": 40, "state_size": 4, "expand": 2, "intermediate_size": 32, "conv_kernel": 4,
    "time_step_rank": 2, "use_bias": false, "use_conv_bias": true, "tie_word_embeddings": true,
    "residual_in_fp32": true, "layer_norm_epsilon": 1e-05, "dtype": "float32",
    "moss_variant": "rom-moe", "block_pattern": ["rom", "moe"],
    "rom": {"num_experts": 3, "top_k": 1, "router": "top_k", "normalize": true, "capacity_factor": 0.0,
            "aux_loss_coef": 0.01, "z_loss_coef": 0.004, "scope": "shared",
            "projections": ["conv", "gate", "out"], "weight_placement": "out"},
    "moe": {"num_experts": 4, "top_k": 1, "router": "top1_switch", "normalize": false, "capacity_factor": 1.25,
            "aux_loss_coef": 0.02, "z_loss_coef": 0.001, "expert": "mlp", "activation": "relu", "d_ff": 24,
            "sinkhorn_training": false}
  })";
  const auto dir = temp_dir("v01");
  // Weights saved by this moss (the checkpoint names are moss 0.1's), under the 0.1 config.
  const RomMoeLM<float> model = tiny_model<RomMoeLM<float>>(tiny_config(4));
  const auto p = boosted_params(model, 51);
  model.save(Host{}, p, dir);
  write_text(dir / "config.json", v01);

  const MambaConfig cfg = load_mamba_config(dir);
  CHECK(cfg.moss_variant == "rom-moe");
  REQUIRE(cfg.blocks.size() == 2);  // each position took the section of its block's name
  CHECK(cfg.blocks[0].at("scope").get<std::string>() == "shared");
  CHECK(cfg.blocks[1].at("expert").get<std::string>() == "mlp");
  const RomMoeLM<float> loaded(cfg);
  CHECK(loaded.block<0>().mixer().num_experts() == kRomExperts);
  CHECK(loaded.block<0>().mixer().router().renormalize);
  CHECK(loaded.block<0>().mixer().settings().z_loss_coef == 0.004f);
  CHECK(loaded.block<1>().mixer().num_experts() == kMoeExperts);
  CHECK(loaded.block<1>().mixer().d_ff() == kFf);
  CHECK(loaded.block<1>().mixer().settings().capacity_factor == 1.25);
  CHECK(loaded.block<1>().mixer().settings().aux_loss_coef == 0.02f);
  // The model it describes is the saved one, with its settings: logits bit for bit once the
  // original gets the same settings.
  auto blocks = tiny_blocks<RomMoeLM<float>>();
  std::get<0>(blocks).routing.router.renormalize = true;
  std::get<0>(blocks).routing.settings.z_loss_coef = 0.004f;
  std::get<1>(blocks).routing.settings.capacity_factor = 1.25;
  std::get<1>(blocks).routing.settings.aux_loss_coef = 0.02f;
  const RomMoeLM<float> same(tiny_config(4), blocks);
  const auto ids = token_ids(2 * 7, 52);
  const auto p2 = loaded.load(Host{}, Checkpoint(dir));
  CHECK(logits_of(loaded, p2, ids, 2, 7) == logits_of(same, p, ids, 2, 7));
  // Saving it again writes today's layout.
  const auto dir2 = temp_dir("v01_resaved");
  loaded.save(Host{}, p2, dir2);
  const io::Json j = read_json(dir2 / "config.json");
  CHECK_FALSE(j.contains("moe"));
  CHECK_FALSE(j.contains("rom"));
  CHECK(j.at("blocks").at(0).at("normalize").get<bool>() == true);
  CHECK(j.at("blocks").at(1).at("capacity_factor").get<double>() == 1.25);

  SECTION("a dense FeedForward block of moss 0.1 reads the \"moe\" section's expert keys") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, Residual<RmsNorm, FeedForward<Mlp<Gelu>, float>>>>;
    const std::string text = R"({"model_type": "moss", "moss_variant": "custom", "hidden_size": 16,
      "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["mamba", "ffn"],
      "moe": {"expert": "mlp", "activation": "gelu", "d_ff": 24}})";
    const Model m(MambaConfig::from_json(io::parse_json(text, "config.json"), "config.json"));
    CHECK(m.block<1>().mixer().d_ff() == kFf);
    const std::string wrong = R"({"model_type": "moss", "moss_variant": "custom", "hidden_size": 16,
      "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["mamba", "ffn"],
      "moe": {"expert": "mlp", "activation": "relu", "d_ff": 24}})";
    REQUIRE_THROWS_WITH(Model(MambaConfig::from_json(io::parse_json(wrong, "config.json"), "config.json")),
                        ContainsSubstring("config.json: blocks[1].activation"));
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

TEST_CASE("MambaLM keeps writing the Hugging Face format", "[host][models][moe]") {
  const auto dir = temp_dir("hf");
  const MambaLM<float> model(tiny_config(2));
  CHECK(model.config().moss_variant.empty());
  model.save(Host{}, model.init(Host{}, 1), dir);
  const io::Json j = read_json(dir / "config.json");
  CHECK(j.at("model_type").get<std::string>() == "mamba");
  CHECK(strings_of(j.at("architectures")) == std::vector<std::string>{"MambaForCausalLM"});
  for (const char* key : {"moss_variant", "block_pattern", "blocks", "moe", "rom"}) {
    INFO(key);
    CHECK_FALSE(j.contains(key));
  }
  const MambaConfig c = load_mamba_config(dir);
  CHECK(c.moss_variant.empty());
  CHECK_FALSE(c.is_moss());
  CHECK_NOTHROW(MambaLM<float>(c).load(Host{}, Checkpoint(dir)));
  std::filesystem::remove_all(dir);
}

TEMPLATE_TEST_CASE("Prefill and decode steps of a MoE model equal the full forward (dropless)", "[host][models][moe]",
                   MoeMambaLM<float>, BlackMambaLM<float>, RomLM<float>, RomMoeLM<float>, TwoMoe) {
  using Model = TestType;
  const Model model = [] {
    if constexpr (std::is_same_v<Model, TwoMoe>)
      return two_moe_model(6, /*capacity_factor=*/0.0);  // dropless, as decode is
    else
      return tiny_model<Model>(tiny_config(4));
  }();
  const auto p = boosted_params(model, 21);
  const index_t batch = 2, L = 9, prompt = GENERATE(1, 4);
  const auto ids = token_ids(batch * L, 22);
  RoutingReport full_report;
  const auto full = logits_of(model, p, ids, batch, L, &full_report);
  for (const auto& s : full_report.read()) CHECK(s.dropped == 0);

  auto cache = model.make_cache(Host{}, batch);
  std::vector<std::int64_t> head(static_cast<std::size_t>(batch * prompt));
  for (index_t b = 0; b < batch; ++b) std::copy_n(ids.begin() + b * L, prompt, head.begin() + b * prompt);
  std::vector<float> last(static_cast<std::size_t>(batch * kVocab), NAN);
  model.forward(Host{}, p, ConstView<std::int64_t, 2>(head.data(), {batch, prompt}, "ids"),
                TensorView<float, 3>(last.data(), {batch, 1, kVocab}, "logits"), &cache);
  CHECK(cache.length == prompt);
  auto row = [&](index_t t) {
    std::vector<float> r(static_cast<std::size_t>(batch * kVocab));
    for (index_t b = 0; b < batch; ++b)
      std::copy_n(full.begin() + (b * L + t) * kVocab, kVocab, r.begin() + b * kVocab);
    return r;
  };
  CHECK(test::rel_l2(last, row(prompt - 1)) <= 1e-5);
  for (index_t t = prompt; t < L; ++t) {
    std::vector<std::int64_t> next(static_cast<std::size_t>(batch));
    for (index_t b = 0; b < batch; ++b) next[b] = ids[b * L + t];
    std::vector<float> step(static_cast<std::size_t>(batch * kVocab), NAN);
    model.step(Host{}, p, ConstView<std::int64_t, 1>(next.data(), {batch}, "ids"),
               TensorView<float, 2>(step.data(), {batch, kVocab}, "logits"), cache);
    INFO("position " << t);
    CHECK(test::rel_l2(step, row(t)) <= 1e-5);
  }
  CHECK(cache.length == L);
}

TEMPLATE_TEST_CASE("A sparse model is its layers composed as pre-norm residual blocks", "[host][models][moe]",
                   MoeMambaLM<float>, RomMoeLM<float>) {
  // h = embeddings[ids]; h += mixer_i(rms_norm(h) · norm_i) for each layer, block type i mod 2;
  // logits = lm_head(rms_norm(h) · norm_f). The stream and norms in double here; each mixer is
  // the library layer (tested against float64 in tests/layers).
  using Model = TestType;
  const MambaConfig cfg = tiny_config(4);
  const Model model = tiny_model<Model>(cfg);
  const auto p = boosted_params(model, 31);
  const index_t batch = 2, L = 6, D = cfg.d_model, tokens = batch * L;
  const auto ids = token_ids(tokens, 32);
  const auto got = logits_of(model, p, ids, batch, L);

  std::vector<double> h(static_cast<std::size_t>(tokens * D));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t d = 0; d < D; ++d) h[t * D + d] = p.embeddings.data()[ids[t] * D + d];
  auto norm = [&](const Tensor<float, 1>& w) {
    std::vector<double> out(h.size());
    for (index_t t = 0; t < tokens; ++t) {
      double ss = 0;
      for (index_t d = 0; d < D; ++d) ss += h[t * D + d] * h[t * D + d];
      const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + static_cast<double>(cfg.eps));
      for (index_t d = 0; d < D; ++d) out[t * D + d] = h[t * D + d] * r * w.data()[d];
    }
    return out;
  };
  for (index_t i = 0; i < cfg.n_layers; ++i) {
    auto apply = [&](auto I) {
      const auto& block = std::get<decltype(I)::value>(p.layers)[static_cast<std::size_t>(i / 2)];
      const auto& mixer = model.template block<decltype(I)::value>().mixer();
      const auto n = norm(block.norm.weight);
      std::vector<float> in(n.begin(), n.end()), out(in.size(), NAN);
      mixer.forward(Host{}, block.mixer, ConstView<float, 3>(in.data(), {batch, L, D}, "x"),
                    TensorView<float, 3>(out.data(), {batch, L, D}, "out"));
      for (std::size_t k = 0; k < h.size(); ++k) h[k] += out[k];
    };
    if (i % 2 == 0)
      apply(std::integral_constant<std::size_t, 0>{});
    else
      apply(std::integral_constant<std::size_t, 1>{});
  }
  REQUIRE(cfg.tie_embeddings);
  auto head = [&] {
    const auto n = norm(p.norm_f.weight);
    std::vector<double> logits(static_cast<std::size_t>(tokens * kVocab));
    for (index_t t = 0; t < tokens; ++t)
      for (index_t v = 0; v < kVocab; ++v) {
        double s = 0;
        for (index_t d = 0; d < D; ++d) s += p.embeddings.data()[v * D + d] * n[t * D + d];
        logits[t * kVocab + v] = s;
      }
    return logits;
  };
  const auto want = head();
  const double err = test::rel_l2(got, want);
  INFO("relative L2 error " << err);
  CHECK(err <= 1e-5);
  // The layers matter: without them the logits would be far off.
  for (index_t t = 0; t < tokens; ++t)
    for (index_t d = 0; d < D; ++d) h[t * D + d] = p.embeddings.data()[ids[t] * D + d];
  const double apart = test::rel_l2(got, head());
  INFO("distance to the embeddings-only model " << apart);
  CHECK(apart > 0.1);
}

namespace {

/// `c` with the section of pattern position `i` replaced by `section` (the others as the model
/// type's defaults write them, with the test's sizes).
template <class Model>
MambaConfig with_section(MambaConfig c, std::size_t i, const io::Json& section) {
  const Model defaults(c, tiny_blocks<Model>());
  c.blocks = defaults.config().blocks;
  c.moss_variant = "";
  c.block_pattern = {};
  for (const auto& [key, value] : section.items()) c.blocks.at(i)[key] = value;
  return c;
}

/// A config.json text of a moss model of the tiny sizes, with `extra` (JSON members) appended.
MambaConfig parse_moss(const std::string& extra) {
  const std::string text = R"({"model_type": "moss", "hidden_size": 16, "num_hidden_layers": 4, "vocab_size": 40,
      "state_size": 4)" + (extra.empty() ? "" : ", " + extra) +
                           "}";
  return MambaConfig::from_json(io::parse_json(text, "config.json"), "config.json");
}

}  // namespace

TEST_CASE("Config contradictions are config_errors naming the section and key", "[host][models][moe][errors]") {
  MambaConfig c = tiny_config(4);
  auto section = [](const std::string& text) { return io::parse_json(text, "section"); };
  SECTION("blocks[0].router top1_switch for RomLM, whose router is top_k") {
    const MambaConfig bad = with_section<RomLM<float>>(c, 0, section(R"({"router": "top1_switch"})"));
    REQUIRE_THROWS_AS(RomLM<float>(bad), config_error);
    REQUIRE_THROWS_WITH(RomLM<float>(bad), ContainsSubstring("blocks[0].router") &&
                                               ContainsSubstring("\"top1_switch\"") && ContainsSubstring("\"top_k\""));
  }
  SECTION("the same, read from a config.json, in today's layout and in moss 0.1's") {
    const auto dir = temp_dir("contradiction");
    write_text(dir / "config.json", R"({"model_type": "moss", "moss_variant": "rom", "hidden_size": 16,
                 "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["rom"],
                 "blocks": [{"num_experts": 3, "router": "top1_switch", "top_k": 1}]})");
    const MambaConfig fc = load_mamba_config(dir);
    REQUIRE(fc.blocks.size() == 1);
    CHECK(fc.blocks[0].at("router").get<std::string>() == "top1_switch");
    REQUIRE_THROWS_WITH(RomLM<float>(fc), ContainsSubstring((dir / "config.json").string() + ": blocks[0].router"));
    write_text(dir / "config.json", R"({"model_type": "moss", "moss_variant": "rom", "hidden_size": 16,
                 "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["rom"],
                 "rom": {"num_experts": 3, "router": "top1_switch", "top_k": 1}})");
    const MambaConfig old = load_mamba_config(dir);
    REQUIRE_THROWS_WITH(RomLM<float>(old), ContainsSubstring("blocks[0].router"));
    std::filesystem::remove_all(dir);
  }
  SECTION("a block_pattern that differs from the type's") {
    c.block_pattern = {"moe", "mamba"};
    REQUIRE_THROWS_AS(tiny_model<MoeMambaLM<float>>(c), config_error);
    REQUIRE_THROWS_WITH(tiny_model<MoeMambaLM<float>>(c), ContainsSubstring("block_pattern") &&
                                                              ContainsSubstring("[\"moe\", \"mamba\"]") &&
                                                              ContainsSubstring("[\"mamba\", \"moe\"]"));
    c.block_pattern = {"rom"};
    REQUIRE_THROWS_WITH(tiny_model<RomMoeLM<float>>(c), ContainsSubstring("block_pattern"));
  }
  SECTION("a count of sections other than the pattern's") {
    c.blocks = {io::Json::object()};
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(c),
                        ContainsSubstring("blocks has 1 sections") && ContainsSubstring("[\"mamba\", \"moe\"]"));
  }
  SECTION("num_experts 0 or missing with Experts<>, and against Experts<N>") {
    REQUIRE_THROWS_AS(MoeMambaLM<float>(with_section<MoeMambaLM<float>>(c, 1, section(R"({"num_experts": 0})"))),
                      config_error);
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(with_section<MoeMambaLM<float>>(c, 1, section(R"({"num_experts": 0})"))),
                        ContainsSubstring("blocks[1].num_experts"));
    REQUIRE_THROWS_WITH(RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"num_experts": 0})"))),
                        ContainsSubstring("blocks[0].num_experts"));
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(c), ContainsSubstring("blocks[1].num_experts"));  // no section at all
    using Fixed = LanguageModel<Pattern<MambaBlock<float>, SwitchMoeBlock<float, Experts<4>>>>;
    REQUIRE_THROWS_WITH(Fixed(with_section<Fixed>(c, 1, section(R"({"num_experts": 8})"))),
                        ContainsSubstring("blocks[1].num_experts") && ContainsSubstring("Experts<4>"));
    CHECK(Fixed(with_section<Fixed>(c, 1, section(R"({"num_experts": 4})"))).block<1>().mixer().num_experts() == 4);
    CHECK(Fixed(c).block<1>().mixer().num_experts() == 4);  // the type's count fills a missing key
  }
  SECTION("moss_variant of another model") {
    c.moss_variant = "rom";
    REQUIRE_THROWS_WITH(tiny_model<MoeMambaLM<float>>(c),
                        ContainsSubstring("moss_variant") && ContainsSubstring("\"moe-mamba\""));
  }
  SECTION("router, top_k, expert and activation keys") {
    REQUIRE_THROWS_WITH(BlackMambaLM<float>(with_section<BlackMambaLM<float>>(c, 1, section(R"({"router": "top_k"})"))),
                        ContainsSubstring("blocks[1].router"));
    REQUIRE_THROWS_WITH(RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"top_k": 2})"))),
                        ContainsSubstring("blocks[0].top_k"));
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(with_section<MoeMambaLM<float>>(c, 1, section(R"({"expert": "gated_mlp"})"))),
                        ContainsSubstring("blocks[1].expert"));
    REQUIRE_THROWS_WITH(
        BlackMambaLM<float>(with_section<BlackMambaLM<float>>(c, 1, section(R"({"activation": "relu"})"))),
        ContainsSubstring("blocks[1].activation"));
    // keys that agree with the type are accepted
    CHECK_NOTHROW(MoeMambaLM<float>(with_section<MoeMambaLM<float>>(
        c, 1, section(R"({"router": "top1_switch", "top_k": 1, "expert": "mlp", "activation": "relu"})"))));
    // the second of two MoE blocks is checked against its own type
    const MambaConfig c6 = tiny_config(6);
    REQUIRE_THROWS_WITH(TwoMoe(with_section<TwoMoe>(c6, 2, section(R"({"router": "top1_switch"})"))),
                        ContainsSubstring("blocks[2].router") && ContainsSubstring("\"top_k\""));
    REQUIRE_THROWS_WITH(TwoMoe(with_section<TwoMoe>(c6, 2, section(R"({"top_k": 1})"))),
                        ContainsSubstring("blocks[2].top_k"));
    REQUIRE_THROWS_WITH(TwoMoe(with_section<TwoMoe>(c6, 1, section(R"({"expert": "gated_mlp"})"))),
                        ContainsSubstring("blocks[1].expert"));
  }
  SECTION("RoM scope, projections and weight placement") {
    REQUIRE_THROWS_WITH(RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"scope": "per_projection"})"))),
                        ContainsSubstring("blocks[0].scope"));
    REQUIRE_THROWS_WITH(RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"projections": ["conv", "out"]})"))),
                        ContainsSubstring("blocks[0].projections"));
    REQUIRE_THROWS_WITH(RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"weight_placement": "all"})"))),
                        ContainsSubstring("blocks[0].weight_placement"));
    // any order
    CHECK_NOTHROW(
        RomLM<float>(with_section<RomLM<float>>(c, 0, section(R"({"projections": ["out", "gate", "conv"]})"))));
  }
  SECTION("bad values in config.json") {
    REQUIRE_THROWS_WITH(
        MoeMambaLM<float>(parse_moss(
            R"("block_pattern": ["mamba", "moe"], "blocks": [{}, {"num_experts": 4, "capacity_factor": -1}])")),
        ContainsSubstring("blocks[1]") && ContainsSubstring("capacity_factor"));
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(parse_moss(
                            R"("block_pattern": ["mamba", "moe"], "moe": {"num_experts": 4, "capacity_factor": -1})")),
                        ContainsSubstring("capacity_factor"));
    REQUIRE_THROWS_AS(parse_moss(R"("block_pattern": ["mamba", "moe"], "moe": 5)"), config_error);
    REQUIRE_THROWS_AS(parse_moss(R"("block_pattern": ["mamba", "moe"], "blocks": 5)"), config_error);
    REQUIRE_THROWS_WITH(parse_moss(R"("block_pattern": ["mamba", "moe"], "blocks": [{}, 3])"),
                        ContainsSubstring("blocks[1]"));
    REQUIRE_THROWS_WITH(RomLM<float>(parse_moss(R"("block_pattern": ["rom"], "rom": {"num_experts": -2})")),
                        ContainsSubstring("num_experts"));
    REQUIRE_THROWS_WITH(RomLM<float>(parse_moss(R"("blocks": [{"num_experts": "three"}])")),
                        ContainsSubstring("config.json: blocks[0].num_experts is a string"));
  }
}
