// tests/train/optimizer_test.cpp: AdamW (moss/train/optimizer.hpp) against a float64 loop of the
// published algorithm in PyTorch's order, with and without decay; bitwise repeatability;
// validation; the default weight-decay rule.
#include "moss/train/optimizer.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "moss_test.hpp"

namespace {

struct Hyper {
  double lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.1;
  bool decay = true;
};

/// The reference: torch.optim.AdamW's update (decoupled decay first, then the moments, the bias
/// corrections and the step), in double, for steps 1..steps with gradients grads[t].
std::vector<double> reference(std::vector<double> p, const std::vector<std::vector<double>>& grads, const Hyper& h) {
  std::vector<double> m(p.size(), 0.0), v(p.size(), 0.0);
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    const std::vector<double>& g = grads[t - 1];
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (h.decay) p[i] *= 1.0 - h.lr * h.wd;
      m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
      v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
      const double mhat = m[i] / (1.0 - std::pow(h.beta1, static_cast<double>(t)));
      const double vhat = v[i] / (1.0 - std::pow(h.beta2, static_cast<double>(t)));
      p[i] -= h.lr * mhat / (std::sqrt(vhat) + h.eps);
    }
  }
  return p;
}

/// Runs `adamw_step` over the same steps with Real = compute_t<T>.
template <class T>
std::vector<moss::compute_t<T>> run(const std::vector<double>& p0, const std::vector<std::vector<double>>& grads,
                              const Hyper& h) {
  using R = moss::compute_t<T>;
  const auto n = static_cast<moss::index_t>(p0.size());
  std::vector<R> p(p0.begin(), p0.end()), m(p0.size(), R(0)), v(p0.size(), R(0)), g(p0.size());
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<R>(grads[t - 1][i]);
    moss::AdamWArgs<T> a;
    a.param = moss::TensorView<R, 1>(p.data(), {n}, "param");
    a.grad = moss::ConstView<R, 1>(g.data(), {n}, "grad");
    a.m = moss::TensorView<R, 1>(m.data(), {n}, "m");
    a.v = moss::TensorView<R, 1>(v.data(), {n}, "v");
    a.lr = h.lr;
    a.beta1 = h.beta1;
    a.beta2 = h.beta2;
    a.eps = h.eps;
    a.weight_decay = h.wd;
    a.decay = h.decay;
    a.step = static_cast<std::int64_t>(t);
    moss::adamw_step(moss::Host{}, a);
  }
  return p;
}

struct Problem {
  std::vector<double> p0;
  std::vector<std::vector<double>> grads;
};

Problem make_problem(std::size_t n, std::size_t steps, std::uint64_t seed) {
  Problem pr;
  const auto p = moss::test::randn(n, seed);
  pr.p0.assign(p.begin(), p.end());
  for (std::size_t t = 0; t < steps; ++t) {
    const auto g = moss::test::randn(n, seed + 100 + t, 0.5f);
    pr.grads.emplace_back(g.begin(), g.end());
  }
  // A few structured values: a zero gradient, a tiny one, a large one.
  for (auto& g : pr.grads) {
    g[0] = 0.0;
    g[1] = 1e-7;
    g[2] = 50.0;
  }
  return pr;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

}  // namespace

TEST_CASE("adamw: double instantiation matches the published algorithm over several steps", "[host][train]") {
  const Problem pr = make_problem(37, 6, 11);
  for (bool decay : {true, false}) {
    INFO("decay " << decay);
    Hyper h;
    h.decay = decay;
    const std::vector<double> want = reference(pr.p0, pr.grads, h);
    const std::vector<double> got = run<double>(pr.p0, pr.grads, h);
    CHECK(max_abs_diff(got, want) < 1e-14);
    // The update moved the parameters by about lr per step (Adam's step is ~lr·sign(g)).
    CHECK(max_abs_diff(got, pr.p0) > 1e-3);
  }
}

TEST_CASE("adamw: decay on and off differ by the decoupled decay only", "[host][train]") {
  const Problem pr = make_problem(16, 3, 5);
  Hyper on, off;
  off.decay = false;
  const std::vector<double> a = run<double>(pr.p0, pr.grads, on);
  const std::vector<double> b = run<double>(pr.p0, pr.grads, off);
  CHECK(max_abs_diff(a, b) > 1e-4);
  // Weight decay 0 with decay on is the same as decay off, bitwise.
  Hyper zero;
  zero.wd = 0.0;
  const std::vector<double> c = run<double>(pr.p0, pr.grads, zero);
  CHECK(c == b);
  // Decay off ignores weight_decay entirely.
  Hyper off_big = off;
  off_big.wd = 0.9;
  CHECK(run<double>(pr.p0, pr.grads, off_big) == b);
}

TEST_CASE("adamw: float master weights agree with the float64 reference to float precision", "[host][train]") {
  const Problem pr = make_problem(64, 5, 23);
  for (bool decay : {true, false}) {
    INFO("decay " << decay);
    Hyper h;
    h.decay = decay;
    const std::vector<double> want = reference(pr.p0, pr.grads, h);
    const std::vector<float> got_f = run<moss::bf16>(pr.p0, pr.grads, h);
    const std::vector<double> got(got_f.begin(), got_f.end());
    CHECK(max_abs_diff(got, want) < 2e-5);
    CHECK(run<float>(pr.p0, pr.grads, h) == got_f);  // compute_t is float for every storage type
  }
}

TEST_CASE("adamw: the first step moves every parameter with a nonzero gradient by lr", "[host][train]") {
  // At t = 1, m̂ = g and v̂ = g², so the step is lr · g / (|g| + eps) ≈ lr · sign(g).
  std::vector<double> p0 = {1.0, -2.0, 0.5, 3.0};
  std::vector<std::vector<double>> g = {{0.3, -4.0, 0.0, 1e3}};
  Hyper h;
  h.decay = false;
  h.eps = 0.0;
  const std::vector<double> p = run<double>(p0, g, h);
  CHECK(std::fabs(p[0] - (1.0 - h.lr)) < 1e-15);
  CHECK(std::fabs(p[1] - (-2.0 + h.lr)) < 1e-15);
  CHECK(std::isnan(p[2]));  // 0 / (0 + 0): eps = 0 is allowed and gives NaN for a zero gradient
  CHECK(std::fabs(p[3] - (3.0 - h.lr)) < 1e-15);
}

TEST_CASE("adamw: bitwise repeatable", "[host][train]") {
  const Problem pr = make_problem(257, 4, 99);
  Hyper h;
  const std::vector<float> a = run<float>(pr.p0, pr.grads, h);
  const std::vector<float> b = run<float>(pr.p0, pr.grads, h);
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("adamw: validation names the setting", "[host][train]") {
  std::vector<float> p(4, 1.0f), g(4, 0.5f), m(4, 0.0f), v(4, 0.0f), short_v(3, 0.0f);
  const auto make = [&] {
    moss::AdamWArgs<float> a;
    a.param = moss::TensorView<float, 1>(p.data(), {4}, "param");
    a.grad = moss::ConstView<float, 1>(g.data(), {4}, "grad");
    a.m = moss::TensorView<float, 1>(m.data(), {4}, "m");
    a.v = moss::TensorView<float, 1>(v.data(), {4}, "v");
    return a;
  };
  using Catch::Matchers::ContainsSubstring;
  auto a = make();
  a.lr = -1;
  CHECK_THROWS_WITH(moss::adamw_step(moss::Host{}, a), ContainsSubstring("lr is -1"));
  a = make();
  a.beta1 = 1.0;
  CHECK_THROWS_WITH(moss::adamw_step(moss::Host{}, a), ContainsSubstring("beta1 is 1"));
  a = make();
  a.beta2 = -0.1;
  CHECK_THROWS_WITH(moss::adamw_step(moss::Host{}, a), ContainsSubstring("beta2 is -0.1"));
  a = make();
  a.eps = NAN;
  CHECK_THROWS_AS(moss::adamw_step(moss::Host{}, a), moss::config_error);
  a = make();
  a.weight_decay = -0.5;
  CHECK_THROWS_WITH(moss::adamw_step(moss::Host{}, a), ContainsSubstring("weight_decay is -0.5"));
  a = make();
  a.step = 0;
  CHECK_THROWS_WITH(moss::adamw_step(moss::Host{}, a), ContainsSubstring("step is 0"));
  a = make();
  a.v = moss::TensorView<float, 1>(short_v.data(), {3}, "v");
  CHECK_THROWS_AS(moss::adamw_step(moss::Host{}, a), moss::shape_error);
  a = make();
  a.m = moss::TensorView<float, 1>(m.data(), {2}, {2}, "m");
  CHECK_THROWS_AS(moss::adamw_step(moss::Host{}, a), moss::shape_error);
  // Nothing was written by the rejected calls.
  CHECK(p == std::vector<float>(4, 1.0f));
  CHECK(m == std::vector<float>(4, 0.0f));
  a = make();
  CHECK_NOTHROW(moss::adamw_step(moss::Host{}, a));
  CHECK(p != std::vector<float>(4, 1.0f));
}

TEST_CASE("adamw: default weight-decay rule from checkpoint names", "[host][train]") {
  for (const char* name :
       {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.layers.0.norm.weight",
        "backbone.norm_f.weight", "backbone.layers.0.mixer.conv1d.bias", "backbone.layers.0.mixer.dt_proj.bias",
        "backbone.layers.1.mixer.in_proj.bias", "backbone.layers.1.mixer.router.weight",
        "backbone.layers.1.mixer.router_out.weight", "backbone.layers.1.mixer.router_conv.weight",
        "backbone.layers.1.mixer.router.classifier.weight", "backbone.layers.1.mixer.experts.bias"}) {
    INFO(name);
    CHECK_FALSE(moss::decays(name));
    CHECK_FALSE(moss::default_param_group(name).weight_decay);
    CHECK(moss::default_param_group(name).name == "no_decay");
  }
  for (const char* name :
       {"backbone.embeddings.weight", "lm_head.weight", "backbone.layers.0.mixer.in_proj.weight",
        "backbone.layers.0.mixer.x_proj.weight", "backbone.layers.0.mixer.dt_proj.weight",
        "backbone.layers.0.mixer.out_proj.weight", "backbone.layers.0.mixer.conv1d.weight",
        "backbone.layers.1.mixer.experts.wi.weight", "backbone.layers.1.mixer.experts.wo.weight",
        "backbone.layers.1.mixer.in_proj.weight", "backbone.layers.1.mixer.Dense.weight"}) {
    INFO(name);
    CHECK(moss::decays(name));
    CHECK(moss::default_param_group(name).weight_decay);
    CHECK(moss::default_param_group(name).name == "decay");
  }
}
