// Host tests of the sparse language models (REFERENCE.md §2–3): block patterns, the named
// variants' config.json and checkpoint round trips, decode against the full forward, the
// residual wiring against a hand composition of the layers, and config contradictions.
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

#include "layers/moe_reference.hpp"
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

constexpr index_t kVocab = 40, kMoeExperts = 4, kRomExperts = 3, kFf = 24;

MambaConfig tiny_config(index_t n_layers = 4) {
  MambaConfig c;
  c.d_model = 16;
  c.n_layers = n_layers;
  c.vocab_size = kVocab;
  c.d_state = 4;
  c.dt_rank = 2;
  c.moe.num_experts = kMoeExperts;
  c.moe.d_ff = kFf;
  c.rom.num_experts = kRomExperts;
  return c;
}

/// Makes a block's weights large enough that the mixers matter next to the embeddings and the
/// routers decide clearly (init's N(0, 0.02²) leaves every layer nearly silent).
template <class P>
void boost(P& p, std::uint64_t seed) {
  if constexpr (requires { p.experts; }) {
    test::fill_normal(p.router, seed, 0.5);
    test::fill_normal(p.experts.wi, seed + 1, 0.25);
    if (p.experts.up.size()) test::fill_normal(p.experts.up, seed + 2, 0.25);
    test::fill_normal(p.experts.wo, seed + 3, 0.2);
  } else {
    test::fill_normal(p.in_proj, seed, 0.25);
    test::fill_normal(p.out_proj, seed + 1, 0.18);
    if constexpr (requires { p.router; }) test::fill_normal(p.router, seed + 2, 0.5);
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
  bool moe = false, rom = false;
  std::string moe_router, moe_expert, moe_activation;
};

VariantKeys keys_of(std::string_view variant) {
  if (variant == "moe-mamba") return {{"mamba", "moe"}, true, false, "top1_switch", "mlp", "relu"};
  if (variant == "blackmamba") return {{"mamba", "moe"}, true, false, "sinkhorn_top1", "gated_mlp", "silu"};
  if (variant == "rom") return {{"rom"}, false, true, "", "", ""};
  if (variant == "rom-moe") return {{"rom", "moe"}, true, true, "top1_switch", "mlp", "relu"};
  FAIL("unknown variant " << variant);
  return {};
}

std::vector<std::string> strings_of(const json::Value& v) {
  std::vector<std::string> r;
  for (const auto& e : v.as_array()) r.push_back(e.as_string());
  return r;
}

}  // namespace

TEST_CASE("A Pattern whose length does not divide the depth is a config_error", "[host][models][moe][errors]") {
  using Model = LanguageModel<Pattern<MambaBlock<float>, SwitchMoeBlock<float>>>;
  REQUIRE_THROWS_AS(Model(tiny_config(3)), config_error);
  REQUIRE_THROWS_WITH(Model(tiny_config(3)), ContainsSubstring("num_hidden_layers is 3") &&
                                                 ContainsSubstring("multiple of the block pattern's length 2") &&
                                                 ContainsSubstring("[\"mamba\", \"moe\"]"));
  using Three = LanguageModel<Pattern<MambaBlock<float>, RomBlock<float>, SwitchMoeBlock<float>>>;
  REQUIRE_THROWS_WITH(Three(tiny_config(4)),
                      ContainsSubstring("num_hidden_layers is 4") && ContainsSubstring("length 3"));
  REQUIRE_THROWS_AS(MoeMambaLM<float>(tiny_config(5)), config_error);
}

TEST_CASE("Layer i of a Pattern uses block type i mod n", "[host][models][moe]") {
  SECTION("Mamba and MoE alternating") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, SwitchMoeBlock<float>>>;
    const Model model(tiny_config(4));
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
    const Model model(tiny_config(6));
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
    // the custom model reloads from its own config
    const MambaConfig cfg2 = load_mamba_config(dir);
    CHECK(cfg2.moss_variant == "custom");
    CHECK(cfg2.block_pattern == std::vector<std::string>{"mamba", "rom", "moe"});
    const Model model2(cfg2);
    const auto p2 = model2.load(Host{}, c);
    CHECK(logits_of(model2, p2, ids, 2, 5) == a);
    std::filesystem::remove_all(dir);
  }
  SECTION("a dense FeedForward block (\"ffn\") reads the moe section's expert keys") {
    using Model = LanguageModel<Pattern<MambaBlock<float>, Residual<RmsNorm, FeedForward<Mlp<Gelu>, float>>>>;
    const Model model(tiny_config(4));
    CHECK(model.config().block_pattern == std::vector<std::string>{"mamba", "ffn"});
    CHECK(model.config().moe.activation == "gelu");
    auto p = model.init(Host{}, 7);
    CHECK(std::get<1>(p.layers).at(0).mixer.wi.size() == kFf * 16);
    RoutingReport report;
    const auto ids = token_ids(2 * 4, 8);
    const auto a = logits_of(model, p, ids, 2, 4, &report);
    CHECK(report.size() == 0);  // nothing routed
    const auto dir = temp_dir("ffn");
    model.save(Host{}, p, dir);
    const json::Value j = json::parse(read_text(dir / "config.json"), "config.json");
    CHECK(j.at("moe").at("expert").as_string() == "mlp");
    CHECK(j.at("moe").at("activation").as_string() == "gelu");
    CHECK(j.at("moe").at("d_ff").as_int() == kFf);
    const Checkpoint c(dir);
    CHECK(c.info("backbone.layers.1.mixer.wi.weight").shape == std::vector<index_t>{kFf, 16});
    CHECK(c.info("backbone.layers.3.mixer.wo.weight").shape == std::vector<index_t>{16, kFf});
    const Model model2(load_mamba_config(dir));
    CHECK(logits_of(model2, model2.load(Host{}, c), ids, 2, 4) == a);
    std::filesystem::remove_all(dir);
  }
  SECTION("per-projection RoM reports a router per projection") {
    using Block = Residual<RmsNorm, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<>, float>>;
    const LanguageModel<Block> model(tiny_config(2));
    CHECK(model.config().rom.scope == "per_projection");
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
  cfg.moe.settings.capacity_factor = 1.25;
  cfg.moe.settings.aux_loss_coef = 0.02f;
  cfg.rom.normalize = true;
  cfg.rom.settings.z_loss_coef = 0.004f;
  const Model model(cfg);
  CHECK(model.config().moss_variant == Model::variant);
  CHECK(model.config().block_pattern == want.pattern);
  const auto p = boosted_params(model, 11);
  const auto dir = temp_dir("variant_a"), dir2 = temp_dir("variant_b");
  model.save(Host{}, p, dir);

  // config.json has moss's documented keys
  const json::Value j = json::parse(read_text(dir / "config.json"), "config.json");
  CHECK(j.at("model_type").as_string() == "moss");
  CHECK(j.at("moss_variant").as_string() == Model::variant);
  CHECK(strings_of(j.at("block_pattern")) == want.pattern);
  CHECK(j.at("dtype").as_string() == (std::is_same_v<T, float>  ? "float32"
                                      : std::is_same_v<T, bf16> ? "bfloat16"
                                                                : "float16"));
  CHECK(j.at("num_hidden_layers").as_int() == 4);
  CHECK(j.at("hidden_size").as_int() == 16);
  CHECK(j.at("tie_word_embeddings").as_bool() == false);
  CHECK((j.find("moe") != nullptr) == want.moe);
  CHECK((j.find("rom") != nullptr) == want.rom);
  if (want.moe) {
    const json::Value& m = j.at("moe");
    CHECK(m.at("num_experts").as_int() == kMoeExperts);
    CHECK(m.at("top_k").as_int() == 1);
    CHECK(m.at("router").as_string() == want.moe_router);
    CHECK(m.at("expert").as_string() == want.moe_expert);
    CHECK(m.at("activation").as_string() == want.moe_activation);
    CHECK(m.at("d_ff").as_int() == kFf);
    CHECK(m.at("capacity_factor").as_double() == 1.25);
    CHECK(static_cast<float>(m.at("aux_loss_coef").as_double()) == 0.02f);
    CHECK(static_cast<float>(m.at("z_loss_coef").as_double()) == 0.001f);
    CHECK(m.at("normalize").as_bool() == false);
    CHECK(m.at("sinkhorn_training").as_bool() == false);
  }
  if (want.rom) {
    const json::Value& r = j.at("rom");
    CHECK(r.at("num_experts").as_int() == kRomExperts);
    CHECK(r.at("top_k").as_int() == 1);
    CHECK(r.at("router").as_string() == "top_k");
    CHECK(r.at("normalize").as_bool() == true);
    CHECK(r.at("scope").as_string() == "shared");
    CHECK(strings_of(r.at("projections")) == std::vector<std::string>{"conv", "gate", "out"});
    CHECK(r.at("weight_placement").as_string() == "out");
    CHECK(static_cast<float>(r.at("z_loss_coef").as_double()) == 0.004f);
  }

  // the config reads back into the same model
  const MambaConfig cfg2 = load_mamba_config(dir);
  CHECK(cfg2.moss_variant == Model::variant);
  CHECK(cfg2.block_pattern == want.pattern);
  CHECK(cfg2.dtype == dtype_of<T>);
  CHECK_FALSE(cfg2.tie_embeddings);
  if (want.moe) {
    CHECK(cfg2.moe.num_experts == kMoeExperts);
    CHECK(cfg2.moe.d_ff == kFf);
    CHECK(cfg2.moe.settings.capacity_factor == 1.25);
    CHECK(cfg2.moe.settings.aux_loss_coef == 0.02f);
  }
  if (want.rom) {
    CHECK(cfg2.rom.num_experts == kRomExperts);
    CHECK(cfg2.rom.normalize);
    CHECK(cfg2.rom.settings.z_loss_coef == 0.004f);
  }
  const Model model2(cfg2);
  const auto p2 = model2.load(Host{}, Checkpoint(dir));
  // the runtime settings reach the layers: RoM's renormalisation, the MoE blocks' capacity
  if constexpr (requires { model2.template block<0>().mixer().router().renormalize; })
    CHECK(model2.template block<0>().mixer().router().renormalize);
  if constexpr (std::tuple_size_v<decltype(p.layers)> == 2)
    CHECK(model2.template block<1>().mixer().settings().capacity_factor == 1.25);

  // weights bit for bit: saving the reloaded model writes the same files
  model2.save(Host{}, p2, dir2);
  CHECK(read_text(dir / "model.safetensors") == read_text(dir2 / "model.safetensors"));
  CHECK(read_text(dir / "config.json") == read_text(dir2 / "config.json"));

  // and the same logits and routing
  const auto ids = token_ids(2 * 7, 12);
  RoutingReport ra, rb;
  const auto a = logits_of(model, p, ids, 2, 7, &ra);
  const auto b = logits_of(model2, p2, ids, 2, 7, &rb);
  CHECK(a == b);
  REQUIRE(ra.size() == rb.size());
  for (std::size_t i = 0; i < ra.size(); ++i) {
    CHECK(ra.read()[i].layer == rb.read()[i].layer);
    CHECK(ra.read()[i].counts == rb.read()[i].counts);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

TEST_CASE("MambaLM keeps writing the Hugging Face format", "[host][models][moe]") {
  const auto dir = temp_dir("hf");
  const MambaLM<float> model(tiny_config(2));
  CHECK(model.config().moss_variant.empty());
  model.save(Host{}, model.init(Host{}, 1), dir);
  const json::Value j = json::parse(read_text(dir / "config.json"), "config.json");
  CHECK(j.at("model_type").as_string() == "mamba");
  CHECK(strings_of(j.at("architectures")) == std::vector<std::string>{"MambaForCausalLM"});
  for (const char* key : {"moss_variant", "block_pattern", "moe", "rom"}) {
    INFO(key);
    CHECK(j.find(key) == nullptr);
  }
  const MambaConfig c = load_mamba_config(dir);
  CHECK(c.moss_variant.empty());
  CHECK_FALSE(c.is_moss());
  CHECK_NOTHROW(MambaLM<float>(c).load(Host{}, Checkpoint(dir)));
  std::filesystem::remove_all(dir);
}

TEMPLATE_TEST_CASE("Prefill and decode steps of a MoE model equal the full forward (dropless)", "[host][models][moe]",
                   MoeMambaLM<float>, BlackMambaLM<float>, RomLM<float>, RomMoeLM<float>) {
  using Model = TestType;
  const Model model(tiny_config(4));
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
  const Model model(cfg);
  const auto p = boosted_params(model, 31);
  const index_t batch = 2, L = 6, D = cfg.d_model, tokens = batch * L;
  const auto ids = token_ids(tokens, 32);
  const auto got = logits_of(model, p, ids, batch, L);

  std::vector<double> h(static_cast<std::size_t>(tokens * D));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t d = 0; d < D; ++d) h[t * D + d] = p.embeddings.data()[ids[t] * D + d];
  auto norm = [&](const Buffer<float>& w) {
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

TEST_CASE("Config contradictions are config_errors naming the key", "[host][models][moe][errors]") {
  MambaConfig c = tiny_config(4);
  SECTION("rom.router top1_switch for RomLM, whose router is top_k") {
    c.rom.router = "top1_switch";
    REQUIRE_THROWS_AS(RomLM<float>(c), config_error);
    REQUIRE_THROWS_WITH(RomLM<float>(c), ContainsSubstring("rom.router") && ContainsSubstring("\"top1_switch\"") &&
                                             ContainsSubstring("\"top_k\""));
  }
  SECTION("the same, read from a config.json") {
    const auto dir = temp_dir("contradiction");
    {
      std::ofstream out(dir / "config.json");
      out << R"({"model_type": "moss", "moss_variant": "rom", "hidden_size": 16, "num_hidden_layers": 2,
                 "vocab_size": 40, "state_size": 4, "block_pattern": ["rom"],
                 "rom": {"num_experts": 3, "router": "top1_switch", "top_k": 1}})";
    }
    const MambaConfig fc = load_mamba_config(dir);
    CHECK(fc.rom.router == "top1_switch");
    REQUIRE_THROWS_WITH(RomLM<float>(fc), ContainsSubstring("rom.router"));
    std::filesystem::remove_all(dir);
  }
  SECTION("a block_pattern that differs from the type's") {
    c.block_pattern = {"moe", "mamba"};
    REQUIRE_THROWS_AS(MoeMambaLM<float>(c), config_error);
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(c), ContainsSubstring("block_pattern") &&
                                                  ContainsSubstring("[\"moe\", \"mamba\"]") &&
                                                  ContainsSubstring("[\"mamba\", \"moe\"]"));
    c.block_pattern = {"rom"};
    REQUIRE_THROWS_WITH(RomMoeLM<float>(c), ContainsSubstring("block_pattern"));
  }
  SECTION("num_experts 0 with Experts<>") {
    c.moe.num_experts = 0;
    REQUIRE_THROWS_AS(MoeMambaLM<float>(c), config_error);
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(c), ContainsSubstring("moe.num_experts"));
    c.moe.num_experts = kMoeExperts;
    c.rom.num_experts = 0;
    REQUIRE_THROWS_WITH(RomLM<float>(c), ContainsSubstring("rom.num_experts"));
  }
  SECTION("moss_variant of another model") {
    c.moss_variant = "rom";
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(c), ContainsSubstring("moss_variant") && ContainsSubstring("\"moe-mamba\""));
  }
  SECTION("router, top_k, expert and activation keys") {
    MambaConfig a = c;
    a.moe.router = "top_k";
    REQUIRE_THROWS_WITH(BlackMambaLM<float>(a), ContainsSubstring("moe.router"));
    MambaConfig b = c;
    b.rom.top_k = 2;
    REQUIRE_THROWS_WITH(RomLM<float>(b), ContainsSubstring("rom.top_k"));
    MambaConfig e = c;
    e.moe.expert = "gated_mlp";
    REQUIRE_THROWS_WITH(MoeMambaLM<float>(e), ContainsSubstring("moe.expert"));
    MambaConfig f = c;
    f.moe.activation = "relu";
    REQUIRE_THROWS_WITH(BlackMambaLM<float>(f), ContainsSubstring("moe.activation"));
    MambaConfig ok = c;  // keys that agree with the type are accepted
    ok.moe.router = "top1_switch";
    ok.moe.top_k = 1;
    ok.moe.expert = "mlp";
    ok.moe.activation = "relu";
    CHECK_NOTHROW(MoeMambaLM<float>(ok));
  }
  SECTION("RoM scope, projections and weight placement") {
    MambaConfig a = c;
    a.rom.scope = "per_projection";
    REQUIRE_THROWS_WITH(RomLM<float>(a), ContainsSubstring("rom.scope"));
    MambaConfig b = c;
    b.rom.projections = {"conv", "out"};
    REQUIRE_THROWS_WITH(RomLM<float>(b), ContainsSubstring("rom.projections"));
    MambaConfig d = c;
    d.rom.weight_placement = "all";
    REQUIRE_THROWS_WITH(RomLM<float>(d), ContainsSubstring("rom.weight_placement"));
    MambaConfig ok = c;
    ok.rom.projections = {"out", "gate", "conv"};  // any order
    CHECK_NOTHROW(RomLM<float>(ok));
  }
  SECTION("bad values in config.json") {
    auto parse = [](const std::string& text) {
      return MambaConfig::from_json(json::parse(text, "config.json"), "config.json");
    };
    REQUIRE_THROWS_WITH(parse(R"({"model_type": "moss", "moe": {"capacity_factor": -1}})"),
                        ContainsSubstring("capacity_factor"));
    REQUIRE_THROWS_AS(parse(R"({"model_type": "moss", "moe": 5})"), config_error);
    REQUIRE_THROWS_WITH(parse(R"({"model_type": "moss", "rom": {"num_experts": -2}})"),
                        ContainsSubstring("num_experts"));
  }
}
