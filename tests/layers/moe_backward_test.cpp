// tests/layers/moe_backward_test.cpp: training of the feed-forward blocks on the host. The dense
// FeedForward (Mlp, GatedMlp) and the sparse MoeFeedForward (Switch top-1 with Mlp<Relu>, top-2
// renormalised with GatedMlp<Silu>, with and without a capacity that drops pairs): every
// parameter's and the input's gradient against central differences of the float forward along
// random directions (the router's auxiliary losses off here: route_backward's own test checks
// them in double), and a MoE-Mamba language model's loss_and_grads the same way.
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "model_grad_check.hpp"
#include "moss/models/language_model.hpp"
#include "moss/models/variants.hpp"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Host;
using moss::index_t;
using moss::TensorView;

// The routing choice is a constant of the gradient: a step that moves a token across a tie would
// change it. Routers with well separated logits (weights ~0.8) and a step of 1e-3 keep every
// choice (checked: the loss is smooth along each direction at this step).
constexpr double kStep = 1e-3;

/// Fills every tensor of a block's Params with N(mean, stddev) values, seed by seed.
template <class Block, class P>
void fill(P& p, std::uint64_t seed, float stddev) {
  Block::visit_params(p, [&](const std::string& name, auto& t) {
    const float s = name.find("router") != std::string::npos ? 0.8f : stddev;
    moss::test::fill_normal(t, seed++, s);
  });
}

/// Checks every gradient of `block` (a feed-forward block) for L = <block(x), w>.
template <class Block>
void check_block(const Block& block, index_t batch, index_t L, index_t D, std::uint64_t seed) {
  moss::Rng rng(seed);
  auto p = block.init(Host{}, rng, 2);
  fill<Block>(p, seed + 1, 0.4f);
  const index_t n = batch * L * D;
  auto x = moss::test::randn(static_cast<std::size_t>(n), seed + 50);
  const auto w = moss::test::randn(static_cast<std::size_t>(n), seed + 51);
  std::vector<float> out(static_cast<std::size_t>(n)), dx(static_cast<std::size_t>(n), NAN);
  const ConstView<float, 3> xv(x.data(), {batch, L, D}, "x");
  const TensorView<float, 3> ov(out.data(), {batch, L, D}, "out");
  auto loss = [&] {
    block.forward(Host{}, p, xv, ov);
    double l = 0;
    for (index_t i = 0; i < n; ++i) l += static_cast<double>(out[i]) * w[i];
    return l;
  };
  typename Block::Saved saved;
  block.forward_train(Host{}, p, xv, ov, saved);
  auto g = block.make_grads(Host{}, p);
  block.backward(Host{}, p, xv, saved, ConstView<float, 3>(w.data(), {batch, L, D}, "dout"),
                 TensorView<float, 3>(dx.data(), {batch, L, D}, "dx"), g);
  moss::test::check_all_directional([](auto& set, auto&& f) { Block::visit_params(set, f); }, p, g, loss, seed + 100,
                                    kStep);
  moss::test::check_directional("x", dx.data(), x.data(), x.size(), loss, seed + 200, kStep);
}

moss::RouterSettings no_aux(double capacity = 0) {
  moss::RouterSettings s;
  s.aux_loss_coef = 0;
  s.z_loss_coef = 0;
  s.capacity_factor = capacity;
  return s;
}

}  // namespace

TEST_CASE("FeedForward backward: Mlp and GatedMlp gradients match central differences", "[host][layers][backward]") {
  check_block(moss::FeedForward<moss::Mlp<moss::Relu>, float>(6, 10), 2, 5, 6, 10);
  check_block(moss::FeedForward<moss::GatedMlp<moss::Silu>, float>(5, 7), 1, 9, 5, 20);
}

TEST_CASE("MoeFeedForward backward: experts and router gradients match central differences",
          "[host][layers][backward]") {
  SECTION("Switch top-1, Mlp<Relu>, dropless") {
    check_block(
        moss::MoeFeedForward<moss::Top1Switch, moss::Experts<4>, moss::Mlp<moss::Relu>, float>(6, 8, 4, {}, no_aux()),
        2, 9, 6, 30);
  }
  SECTION("top-2 renormalised, GatedMlp<Silu>") {
    moss::TopK<2> router;
    router.renormalize = true;
    check_block(moss::MoeFeedForward<moss::TopK<2>, moss::Experts<3>, moss::GatedMlp<moss::Silu>, float>(
                    5, 6, 3, router, no_aux()),
                3, 4, 5, 40);
  }
  SECTION("Switch top-1 with a capacity that drops pairs") {
    check_block(moss::MoeFeedForward<moss::Top1Switch, moss::Experts<4>, moss::Mlp<moss::Relu>, float>(6, 8, 4, {},
                                                                                                       no_aux(0.5)),
                2, 8, 6, 50);
  }
}

TEST_CASE("MoeFeedForward backward with no token writes zero gradients", "[host][layers][backward]") {
  using Block = moss::MoeFeedForward<moss::Top1Switch, moss::Experts<4>, moss::Mlp<moss::Relu>, float>;
  const Block block(6, 8, 4);
  moss::Rng rng(3);
  const auto p = block.init(Host{}, rng, 2);
  auto g = block.make_grads(Host{}, p);
  Block::visit_params(g, [&](const std::string&, auto& t) { moss::test::fill_normal(t, 5, 1.0f); });
  std::vector<float> empty;
  Block::Saved saved;
  const ConstView<float, 3> x(empty.data(), {3, 0, 6}, "x");
  block.forward_train(Host{}, p, x, TensorView<float, 3>(empty.data(), {3, 0, 6}, "out"), saved);
  block.backward(Host{}, p, x, saved, x, TensorView<float, 3>(empty.data(), {3, 0, 6}, "dx"), g);
  Block::visit_params(g, [&](const std::string& name, auto& t) {
    CAPTURE(name);
    for (index_t i = 0; i < t.numel(); ++i) REQUIRE(t.data()[i] == 0.0f);
  });
}

TEST_CASE("MoeMambaLM loss_and_grads: every gradient matches central differences", "[host][models][backward]") {
  const std::size_t n = moss::test::check_model_gradients<moss::MoeMambaLM<float>>(
      [](auto& blocks) {
        std::get<1>(blocks).routing.num_experts = 3;
        std::get<1>(blocks).routing.settings = no_aux();
        std::get<1>(blocks).d_ff = 8;
      },
      600, kStep);
  CHECK(n == 2 + 10 + 4);  // embeddings, norm_f; Mamba layer: norm + 9; MoE layer: norm, router, wi, wo
}
