// tests/layers/rom_backward_test.cpp: `RoutedMamba::backward` on the host. For every routing
// scope (shared, per-projection, a scope of one's own with Out routed on its own input), several
// placements of g (Out, all, Gate, Conv, none), K = 1 and 2, unfused projections (only some
// routed) and a capacity that drops pairs: every parameter's and the input's gradient against
// central differences of the float forward along random directions, for L = <out, w> (aux
// losses off here: route_backward's own test checks them in double). Then recompute gives the
// bits of keep, accumulate adds, and a RoM language model's loss_and_grads.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "custom_components.hpp"
#include "grad_check.hpp"
#include "model_grad_check.hpp"
#include "moss/layers/routed_mamba.hpp"
#include "moss/models/language_model.hpp"
#include "moss/models/variants.hpp"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Host;
using moss::index_t;
using moss::TensorView;

// The routing choice is a constant of the gradient; routers with well separated logits (weights
// ~0.8) keep every choice at these steps, which are still large enough for the scan's small
// gradients to stand above float rounding (the Mamba test's trade-off, docs in its file).
// Measured: a layer passes at 1e-2 (at 3e-2 choices flip); the two-layer model passes at 2e-3 and
// 3e-3 (at 1e-3 dt_proj's derivative is 4 % off in float noise, at 5e-3 a choice flips).
constexpr double kStep = 1e-2, kModelStep = 3e-3;
// One direction of dt_proj in the first shared case has a derivative of 1.6e-5, where the
// central difference's noise is ~1e-6: the absolute floor of such cases.
constexpr double kAbsTol = 1e-5;

moss::MambaDims dims(index_t D, index_t ED, index_t N, index_t W, index_t R) {
  return {.d_model = D, .d_inner = ED, .d_state = N, .d_conv = W, .dt_rank = R, .use_bias = false};
}

moss::RouterSettings no_aux(double capacity = 0) {
  moss::RouterSettings s;
  s.aux_loss_coef = 0;
  s.z_loss_coef = 0;
  s.capacity_factor = capacity;
  return s;
}

/// Fills a RoM mixer's parameters for a gradient check: large enough weights that every
/// gradient stands above float rounding, A following A_log.
template <class Layer>
void fill(const Layer& layer, typename Layer::Params& p, std::uint64_t seed) {
  Layer::visit_params(p, [&](const std::string& name, auto& t) {
    float stddev = 0.4f, mean = 0.0f;
    if (name.starts_with("router")) stddev = 0.8f;
    if (name == "dt_proj.bias") mean = -1.0f, stddev = 0.3f;
    if (name == "A_log") mean = 0.3f, stddev = 0.2f;
    if (name == "D") mean = 1.0f, stddev = 0.3f;
    if (name == "conv1d.bias") stddev = 0.1f;
    moss::test::fill_normal(t, seed++, stddev, mean);
  });
  layer.refresh_derived(Host{}, p);
}

/// Every gradient of `layer` against central differences; returns the number of parameters.
template <class Layer>
std::size_t check_layer(const Layer& layer, index_t batch, index_t L, std::uint64_t seed) {
  const index_t D = layer.dims().d_model;
  moss::Rng rng(seed);
  auto p = layer.init(Host{}, rng, 2);
  fill(layer, p, seed + 1);
  const index_t n = batch * L * D;
  auto x = moss::test::randn(static_cast<std::size_t>(n), seed + 50);
  const auto w = moss::test::randn(static_cast<std::size_t>(n), seed + 51);
  std::vector<float> out(static_cast<std::size_t>(n)), dx(static_cast<std::size_t>(n), NAN);
  const ConstView<float, 3> xv(x.data(), {batch, L, D}, "x");
  const TensorView<float, 3> ov(out.data(), {batch, L, D}, "out");
  auto loss = [&] {
    layer.refresh_derived(Host{}, p);  // A follows A_log
    layer.forward(Host{}, p, xv, ov);
    double l = 0;
    for (index_t i = 0; i < n; ++i) l += static_cast<double>(out[i]) * w[i];
    return l;
  };
  typename Layer::Saved saved;
  layer.forward_train(Host{}, p, xv, ov, saved);
  auto g = layer.make_grads(Host{}, p);
  layer.backward(Host{}, p, xv, saved, ConstView<float, 3>(w.data(), {batch, L, D}, "dout"),
                 TensorView<float, 3>(dx.data(), {batch, L, D}, "dx"), g);
  const std::size_t count = moss::test::check_all_directional([](auto& set, auto&& f) { Layer::visit_params(set, f); },
                                                              p, g, loss, seed + 100, kStep, 2e-2, kAbsTol);
  moss::test::check_directional("x", dx.data(), x.data(), x.size(), loss, seed + 200, kStep, 2e-2, kAbsTol);
  return count;
}

using moss::Conv;
using moss::Experts;
using moss::Gate;
using moss::Out;
using moss::RomVariant;
using moss::Routed;
using moss::RoutedMamba;
using moss::TopK;
using CGO = Routed<Conv, Gate, Out>;

}  // namespace

TEST_CASE("RoutedMamba backward: shared routing, every placement, matches central differences",
          "[host][layers][backward]") {
  SECTION("top-1, g on Out (the paper's RoM)") {
    const RoutedMamba<TopK<1>, moss::SharedRouting, Experts<>, float> layer(dims(5, 8, 3, 4, 2), 3, {}, no_aux());
    CHECK(check_layer(layer, 2, 6, 10) == 1 + 1 + 7 + 1);  // router, in_proj, core (7), out_proj
  }
  SECTION("top-2 renormalised, g on every projection") {
    TopK<2> router;
    router.renormalize = true;
    const RoutedMamba<TopK<2>, moss::SharedRouting, Experts<>, float, RomVariant<CGO, moss::WeightAll>> layer(
        dims(4, 6, 2, 3, 1), 3, router, no_aux());
    check_layer(layer, 1, 9, 20);
  }
  SECTION("only Gate routed, g on Gate: Conv and Out dense") {
    const RoutedMamba<TopK<1>, moss::SharedRouting, Experts<>, float, RomVariant<Routed<Gate>, moss::WeightGate>> layer(
        dims(5, 6, 2, 4, 2), 4, {}, no_aux());
    CHECK(check_layer(layer, 2, 5, 30) == 1 + 2 + 7 + 1);  // router, conv, gate, core, out
  }
  SECTION("Conv and Out routed, unweighted (WeightNone): the router learns nothing without its losses") {
    const RoutedMamba<TopK<1>, moss::SharedRouting, Experts<>, float, RomVariant<Routed<Conv, Out>, moss::WeightNone>>
        layer(dims(4, 6, 2, 4, 1), 3, {}, no_aux());
    check_layer(layer, 2, 4, 40);
  }
  SECTION("top-1 with a capacity that drops pairs") {
    const RoutedMamba<TopK<1>, moss::SharedRouting, Experts<>, float> layer(dims(5, 6, 2, 4, 2), 3, {}, no_aux(0.5));
    check_layer(layer, 2, 8, 50);
  }
}

TEST_CASE("RoutedMamba backward: per-projection routing and a scope of one's own match central differences",
          "[host][layers][backward]") {
  SECTION("per-projection routers, Out routed on its own input y") {
    const RoutedMamba<TopK<1>, moss::PerProjectionRouting, Experts<>, float> layer(dims(5, 6, 2, 4, 2), 3, {},
                                                                                   no_aux());
    CHECK(check_layer(layer, 2, 5, 60) == 3 + 2 + 7 + 1);  // three routers, conv, gate, core, out
  }
  SECTION("in/out scope (Conv and Gate share router_in, Out its own), g on Conv only, top-2") {
    const RoutedMamba<TopK<2>, moss::test::InOutRouting, Experts<>, float, RomVariant<CGO, moss::test::WeightConv>>
        layer(dims(4, 6, 2, 3, 1), 3, {}, no_aux());
    check_layer(layer, 1, 7, 70);
  }
}

TEST_CASE("RoutedMamba backward: recompute gives the bits of keep, accumulate adds, saved must match",
          "[host][layers][backward]") {
  using Layer = RoutedMamba<TopK<2>, moss::SharedRouting, Experts<>, float, RomVariant<CGO, moss::WeightAll>>;
  moss::RouterSettings settings;  // aux and z-losses on: they add to the routers' gradients
  settings.capacity_factor = 0.75;
  const Layer layer(dims(6, 8, 3, 4, 2), 4, {}, settings);
  moss::Rng rng(80);
  const auto p = layer.init(Host{}, rng, 2);
  const index_t batch = 2, L = 9, D = 6, n = batch * L * D;
  const auto x = moss::test::randn(static_cast<std::size_t>(n), 81);
  const auto w = moss::test::randn(static_cast<std::size_t>(n), 82);
  std::vector<float> out(static_cast<std::size_t>(n));
  const ConstView<float, 3> xv(x.data(), {batch, L, D}, "x");
  const ConstView<float, 3> dv(w.data(), {batch, L, D}, "dout");
  const auto run = [&](moss::ActivationPolicy policy, int times, std::vector<float>& dx) {
    Layer::Saved saved;
    layer.forward_train(Host{}, p, xv, TensorView<float, 3>(out.data(), {batch, L, D}, "out"), saved, policy);
    CHECK((saved.core.v.data() != nullptr) == (policy == moss::ActivationPolicy::keep));
    auto g = layer.make_grads(Host{}, p);
    dx.assign(static_cast<std::size_t>(n), 0.0f);
    for (int t = 0; t < times; ++t)
      layer.backward(Host{}, p, xv, saved, dv, TensorView<float, 3>(dx.data(), {batch, L, D}, "dx"), g,
                     /*accumulate=*/true);
    return g;
  };
  std::vector<float> dx_keep, dx_re, dx_two;
  auto keep = run(moss::ActivationPolicy::keep, 1, dx_keep);
  auto re = run(moss::ActivationPolicy::recompute, 1, dx_re);
  auto two = run(moss::ActivationPolicy::keep, 2, dx_two);
  CHECK(dx_keep == dx_re);
  CHECK(dx_two == dx_keep);  // dx is written, never accumulated
  std::vector<float*> a, b, c;
  std::vector<index_t> sizes;
  std::vector<std::string> names;
  Layer::visit_params(keep, [&](const std::string& name, auto& t) {
    a.push_back(t.data());
    sizes.push_back(t.numel());
    names.push_back(name);
  });
  Layer::visit_params(re, [&](const std::string&, auto& t) { b.push_back(t.data()); });
  Layer::visit_params(two, [&](const std::string&, auto& t) { c.push_back(t.data()); });
  REQUIRE(names.front() == "router.weight");
  for (std::size_t k = 0; k < a.size(); ++k) {
    CAPTURE(names[k]);
    CHECK(std::memcmp(a[k], b[k], static_cast<std::size_t>(sizes[k]) * sizeof(float)) == 0);
    std::vector<float> doubled(a[k], a[k] + sizes[k]);
    for (auto& v : doubled) v += v;
    CHECK(std::memcmp(doubled.data(), c[k], static_cast<std::size_t>(sizes[k]) * sizeof(float)) == 0);
    bool nonzero = false;
    for (index_t i = 0; i < sizes[k]; ++i) nonzero = nonzero || a[k][i] != 0.0f;
    CHECK(nonzero);
  }

  // No token: the gradients are written as zeros (stale values do not survive), dx has nothing.
  {
    Layer::Saved none;
    std::vector<float> empty;
    layer.forward_train(Host{}, p, ConstView<float, 3>(empty.data(), {2, 0, D}, "x"),
                        TensorView<float, 3>(empty.data(), {2, 0, D}, "out"), none);
    auto stale = run(moss::ActivationPolicy::keep, 1, dx_two);  // nonzero gradients
    layer.backward(Host{}, p, ConstView<float, 3>(empty.data(), {2, 0, D}, "x"), none,
                   ConstView<float, 3>(empty.data(), {2, 0, D}, "dout"),
                   TensorView<float, 3>(empty.data(), {2, 0, D}, "dx"), stale);
    Layer::visit_params(stale, [&](const std::string& name, auto& t) {
      CAPTURE(name);
      for (index_t i = 0; i < t.numel(); ++i) REQUIRE(t.data()[i] == 0.0f);
    });
  }

  // A saved state from another input shape is refused, naming what it holds.
  Layer::Saved other;
  const std::vector<float> x2(static_cast<std::size_t>(D * 3), 0.5f);
  std::vector<float> o2(x2.size());
  layer.forward_train(Host{}, p, ConstView<float, 3>(x2.data(), {1, 3, D}, "x"),
                      TensorView<float, 3>(o2.data(), {1, 3, D}, "out"), other);
  auto g = layer.make_grads(Host{}, p);
  std::vector<float> dx(static_cast<std::size_t>(n));
  REQUIRE_THROWS_WITH(layer.backward(Host{}, p, xv, other, dv, TensorView<float, 3>(dx.data(), {batch, L, D}, "dx"), g),
                      Catch::Matchers::ContainsSubstring("the saved activations are of batch 1 and seqlen 3"));
}

TEST_CASE("RomLM and RomMoeLM loss_and_grads: every gradient matches central differences", "[host][models][backward]") {
  SECTION("RomLM") {
    using Model = moss::RomLM<float>;
    const std::size_t n = moss::test::check_model_gradients<Model>(
        [](auto& blocks) {
          std::get<0>(blocks).routing.num_experts = 3;
          std::get<0>(blocks).routing.settings = no_aux();
        },
        900, kModelStep);
    CHECK(n == 2 + 2 * 11);  // embeddings, norm_f; per layer: norm, router, in, core (7), out
  }
  SECTION("RomMoeLM") {
    using Model = moss::RomMoeLM<float>;
    const std::size_t n = moss::test::check_model_gradients<Model>(
        [](auto& blocks) {
          std::get<0>(blocks).routing.num_experts = 3;
          std::get<0>(blocks).routing.settings = no_aux();
          std::get<1>(blocks).routing.num_experts = 3;
          std::get<1>(blocks).routing.settings = no_aux();
          std::get<1>(blocks).d_ff = 8;
        },
        1000, kModelStep);
    CHECK(n == 2 + 11 + 4);  // RoM layer: 11; MoE layer: norm, router, wi, wo
  }
}
