// Host tests of the expert kind that examples/05_custom_expert.cpp defines in its own file (a
// squared-ReLU MLP, wo · relu(wi · x)²): routed in a MoeFeedForward and dense in a FeedForward
// against a float64 loop (docs/math.md §2), its checkpoint names and config section, a
// save/load round trip, and the example program itself.
#include <unistd.h>

#include <catch2/catch_approx.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstring>
#include <filesystem>

#include "moss/moss.hpp"
#include "moss_test.hpp"

// The example's `main` is renamed so that this test can include the example as it is and run it.
#define main custom_expert_example_main
#include "../../examples/05_custom_expert.cpp"
#undef main

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

constexpr index_t kD = 24, kF = 40, kX = 5, kTokens = 3 * 7;

/// Widens host tensor `t` to double.
template <class T, std::size_t Rank>
std::vector<double> widened(const Tensor<T, Rank>& t) {
  return test::to_double(test::host_copy(t));
}

/// The float64 squared-ReLU MLP of expert e on token row x: wo_e · relu(wi_e · x)², added to
/// `out` times g.
void ref_expert(const std::vector<double>& wi, const std::vector<double>& wo, index_t e, const double* x, double g,
                double* out) {
  for (index_t f = 0; f < kF; ++f) {
    double h = 0;
    for (index_t d = 0; d < kD; ++d) h += wi[(e * kF + f) * kD + d] * x[d];
    h = h > 0 ? h * h : 0.0;
    for (index_t d = 0; d < kD; ++d) out[d] += g * wo[(e * kD + d) * kF + f] * h;
  }
}

/// Host params of `layer` with weights large enough that the experts' outputs matter.
template <class Layer>
typename Layer::Params boosted(const Layer& layer, std::uint64_t seed) {
  Rng rng(seed);
  auto p = layer.init(Host{}, rng, 1);
  if constexpr (requires { p.router; }) {
    test::fill_normal(p.router, seed + 1, 0.5);
    test::fill_normal(p.experts.wi, seed + 2, 0.3);
    test::fill_normal(p.experts.wo, seed + 3, 0.3);
  } else {
    test::fill_normal(p.wi, seed + 2, 0.3);
    test::fill_normal(p.wo, seed + 3, 0.3);
  }
  return p;
}

template <class T>
std::vector<T> inputs(std::uint64_t seed) {
  return test::to_storage<T>(test::randn(static_cast<std::size_t>(kTokens * kD), seed));
}

template <class T, class Layer>
std::vector<T> forward(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x) {
  std::vector<T> out(x.size(), from_float<T>(NAN));
  layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {3, 7, kD}, "x"), TensorView<T, 3>(out.data(), {3, 7, kD}, "out"));
  return out;
}

template <class T>
using TopTwo = MoeFeedForward<TopK<2>, Experts<>, SquaredReluMlp, T>;

}  // namespace

TEMPLATE_TEST_CASE("A squared-ReLU MLP expert kind of one's own runs routed in MoeFeedForward",
                   "[host][models][experts]", float, bf16) {
  using T = TestType;
  const TopTwo<T> layer(kD, kF, kX, TopK<2>{/*renormalize=*/true});
  const auto p = boosted(layer, 7);
  const auto x = inputs<T>(8);
  const auto got = forward<T>(layer, p, x);

  // float64 loop: float32 logits, the router's own selection, then Σ_slots g · expert(x).
  const std::vector<double> xd = test::to_double(x), wi = widened(p.experts.wi), wo = widened(p.experts.wo);
  const std::vector<float> router = test::host_copy(p.router);
  std::vector<double> want(xd.size(), 0.0);
  std::vector<int> used(kX, 0);
  for (index_t t = 0; t < kTokens; ++t) {
    std::vector<float> logits(kX);
    for (index_t e = 0; e < kX; ++e) {
      double s = 0;
      for (index_t d = 0; d < kD; ++d) s += double(router[e * kD + d]) * xd[t * kD + d];
      logits[e] = static_cast<float>(s);
    }
    int experts[2];
    float g[2];
    layer.router().select(logits.data(), logits.data(), kX, experts, g);
    CHECK(g[0] + g[1] == Catch::Approx(1.0f));
    for (int s = 0; s < 2; ++s) {
      ++used[experts[s]];
      ref_expert(wi, wo, experts[s], &xd[t * kD], g[s], &want[t * kD]);
    }
  }
  int busy = 0;
  for (int u : used) busy += u > 0;
  CHECK(busy >= 3);  // the routing spreads tokens over several experts
  const double err = test::rel_l2(got, want);
  INFO("relative L2 error " << err);
  CHECK(err <= test::op_tolerance<T>());
}

TEST_CASE("The custom expert kind runs dense in a FeedForward (one expert, unstacked names)",
          "[host][models][experts]") {
  const FeedForward<SquaredReluMlp, float> layer(kD, kF);
  const auto p = boosted(layer, 17);
  CHECK(p.wi.shape() == Extents<3>{1, kF, kD});
  CHECK(p.wo.shape() == Extents<3>{1, kD, kF});
  const auto x = inputs<float>(18);
  const auto got = forward<float>(layer, p, x);
  const std::vector<double> xd = test::to_double(x), wi = widened(p.wi), wo = widened(p.wo);
  std::vector<double> want(xd.size(), 0.0);
  for (index_t t = 0; t < kTokens; ++t) ref_expert(wi, wo, 0, &xd[t * kD], 1.0, &want[t * kD]);
  CHECK(test::rel_l2(got, want) <= 1e-5);

  const auto file = std::filesystem::temp_directory_path() / ("moss_ffn_sq_" + std::to_string(::getpid()));
  SafetensorsWriter w;
  layer.save(Host{}, p, w, "m.");
  w.write(file);
  const SafetensorsFile f(file.string());
  CHECK(f.info("m.wi.weight").shape == std::vector<index_t>{kF, kD});
  CHECK(f.info("m.wo.weight").shape == std::vector<index_t>{kD, kF});
  const auto q = layer.load(Host{}, f, "m.");
  CHECK(test::same_bits(q.wi, p.wi));
  CHECK(test::same_bits(q.wo, p.wo));
  std::filesystem::remove(file);
}

TEST_CASE("The custom expert kind saves, loads and names itself in config.json", "[host][models][experts]") {
  const TopTwo<bf16> layer(kD, kF, kX);
  const auto p = boosted(layer, 27);
  const auto file = std::filesystem::temp_directory_path() / ("moss_moe_sq_" + std::to_string(::getpid()));
  SafetensorsWriter w;
  layer.save(Host{}, p, w, "backbone.layers.1.mixer.");
  w.write(file);
  const SafetensorsFile f(file.string());
  CHECK(f.info("backbone.layers.1.mixer.experts.wi.weight").shape == std::vector<index_t>{kX, kF, kD});
  CHECK(f.info("backbone.layers.1.mixer.experts.wo.weight").shape == std::vector<index_t>{kX, kD, kF});
  CHECK(f.info("backbone.layers.1.mixer.router.weight").shape == std::vector<index_t>{kX, kD});
  const auto q = layer.load(Host{}, f, "backbone.layers.1.mixer.");
  CHECK(test::same_bits(q.router, p.router));
  CHECK(test::same_bits(q.experts.wi, p.experts.wi));
  CHECK(test::same_bits(q.experts.wo, p.experts.wo));
  const auto x = inputs<bf16>(28);
  const auto a = forward<bf16>(layer, p, x), b = forward<bf16>(layer, q, x);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0);
  std::filesystem::remove(file);

  io::Json section = io::Json::object();
  layer.config().to_json(section);
  CHECK(section.at("expert").get<std::string>() == "squared_relu_mlp");
  CHECK(section.at("d_ff").get<index_t>() == kF);
  CHECK(section.at("num_experts").get<index_t>() == kX);
  const auto read = TopTwo<bf16>::Config::from_json(io::JsonRef(section, "config.json: blocks[1]"));
  CHECK(read.d_ff == kF);
  CHECK(read.routing.num_experts == kX);
  section["expert"] = "mlp";
  REQUIRE_THROWS_AS(TopTwo<bf16>::Config::from_json(io::JsonRef(section, "config.json: blocks[1]")), config_error);
  REQUIRE_THROWS_WITH(TopTwo<bf16>::Config::from_json(io::JsonRef(section, "config.json: blocks[1]")),
                      ContainsSubstring("blocks[1].expert") && ContainsSubstring("\"squared_relu_mlp\""));
}

TEST_CASE("examples/05_custom_expert runs and agrees with its host loop", "[host][models][experts]") {
  CHECK(custom_expert_example_main() == 0);
}
