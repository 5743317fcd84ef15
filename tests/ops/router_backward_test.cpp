// tests/ops/router_backward_test.cpp: `route_backward` on the host: float64 central differences
// of `route` / `route_select` run in double (gates, Switch aux loss and z-loss) for Top1Switch,
// TopK<2> with and without renormalisation, TopK<1> renormalised and SinkhornTop1, over zero,
// one and several tokens; every perturbation is checked not to change the selection. Also the
// float instantiation against the double one, bitwise repeatability, accumulation, the double
// forward against the float one, and validation errors naming the tensor.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router_backward.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// `check_gradient`, also printing the measured error when MOSS_PRINT_GRAD_ERRORS is set.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  if (std::getenv("MOSS_PRINT_GRAD_ERRORS")) {
    const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
    std::printf("grad-error route_backward %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

constexpr double kAux = 0.3, kZ = 0.05;  // large coefficients, so that a wrong term shows

/// One routing case in double: x (tokens, D), weight (X, D), the gate gradient (tokens, K).
template <class R>
struct Case {
  R router;
  index_t tokens, D, X;
  std::vector<double> x, w, dgate;
  std::vector<std::int32_t> expert0;  // the selection at the unperturbed point
  std::vector<std::int32_t> counts;   // its per-expert counts (f, a constant)
  bool selection_changed = false;

  Case(R r, index_t tokens_, index_t D_, index_t X_, std::uint64_t seed) : router(r), tokens(tokens_), D(D_), X(X_) {
    x = moss::test::randn_f64(static_cast<std::size_t>(tokens * D), seed);
    w = moss::test::randn_f64(static_cast<std::size_t>(X * D), seed + 1, 0.7);
    dgate = moss::test::randn_f64(static_cast<std::size_t>(tokens * R::k), seed + 2);
    std::vector<double> logits, gate;
    forward(logits, expert0, gate);
    counts.assign(static_cast<std::size_t>(X), 0);
    for (auto e : expert0) ++counts[e];
  }

  void forward(std::vector<double>& logits, std::vector<std::int32_t>& expert, std::vector<double>& gate) const {
    logits.assign(static_cast<std::size_t>(tokens * X), 0.0);
    expert.assign(static_cast<std::size_t>(tokens * R::k), 0);
    gate.assign(expert.size(), 0.0);
    moss::RouteArgs<double, R> a;
    a.router = router;
    a.x = ConstView<double, 2>(x.data(), {tokens, D}, "x");
    a.weight = ConstView<double, 2>(w.data(), {X, D}, "weight");
    a.logits = TensorView<double, 2>(logits.data(), {tokens, X}, "logits");
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {tokens, index_t{R::k}}, "expert");
    a.gate = TensorView<double, 2>(gate.data(), {tokens, index_t{R::k}}, "gate");
    moss::route(moss::Host{}, a);
  }

  /// L = Σ dgate · gate + α · aux + β · z from given logits (selected by `route_select` in double).
  double loss_from_logits(const std::vector<double>& logits) {
    std::vector<std::int32_t> expert(static_cast<std::size_t>(tokens * R::k));
    std::vector<double> gate(expert.size());
    moss::RouteSelectArgs<R, double> s{router, ConstView<double, 2>(logits.data(), {tokens, X}, "logits"),
                                       ConstView<double, 2>(logits.data(), {tokens, X}, "scores"),
                                       TensorView<std::int32_t, 2>(expert.data(), {tokens, index_t{R::k}}, "expert"),
                                       TensorView<double, 2>(gate.data(), {tokens, index_t{R::k}}, "gate")};
    moss::route_select(moss::Host{}, s);
    if (expert != expert0) selection_changed = true;
    double l = moss::test::dot(gate, dgate);
    if (tokens == 0) return l;
    std::vector<double> P(static_cast<std::size_t>(X), 0.0);
    double z = 0;
    for (index_t t = 0; t < tokens; ++t) {
      double m = logits[t * X];
      for (index_t i = 1; i < X; ++i) m = std::max(m, logits[t * X + i]);
      double s_ = 0;
      for (index_t i = 0; i < X; ++i) s_ += std::exp(logits[t * X + i] - m);
      for (index_t i = 0; i < X; ++i) P[i] += std::exp(logits[t * X + i] - m) / s_ / tokens;
      const double lse = m + std::log(s_);
      z += lse * lse / tokens;
    }
    double aux = 0;
    for (index_t i = 0; i < X; ++i) aux += counts[i] / double(tokens * R::k) * P[i];
    if (R::aux_loss) l += kAux * X * aux;
    return l + kZ * z;
  }

  double loss() {
    std::vector<double> logits, gate;
    std::vector<std::int32_t> expert;
    forward(logits, expert, gate);
    return loss_from_logits(logits);
  }
};

/// The gradients of one case.
template <class T>
struct Grads {
  std::vector<moss::compute_t<T>> dlogits, dw;
  std::vector<T> dx;
};

/// route_backward<T, R> on the case's inputs rounded to T (weight, logits and dgate to compute_t<T>).
template <class T, class R>
Grads<T> backward(const Case<R>& c, bool accumulate = false, Grads<T> g = {}) {
  using C = moss::compute_t<T>;
  auto round = [](const std::vector<double>& v, auto tag) {
    using U = decltype(tag);
    std::vector<U> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      if constexpr (std::is_same_v<U, double>) {
        r[i] = v[i];
      } else {
        r[i] = moss::from_float<U>(static_cast<float>(v[i]));
      }
    }
    return r;
  };
  std::vector<double> logits, gate;
  std::vector<std::int32_t> expert;
  c.forward(logits, expert, gate);
  const std::vector<T> x = round(c.x, T{});
  const std::vector<C> w = round(c.w, C{}), lg = round(logits, C{}), dg = round(c.dgate, C{});
  if (g.dlogits.empty()) g.dlogits.assign(logits.size(), C(9));
  if (g.dw.empty()) g.dw.assign(w.size(), C(9));
  if (g.dx.empty()) g.dx = round(std::vector<double>(x.size(), 9.0), T{});
  moss::RouteBackwardArgs<T, R> a;
  a.router = c.router;
  a.x = ConstView<T, 2>(x.data(), {c.tokens, c.D}, "x");
  a.weight = ConstView<C, 2>(w.data(), {c.X, c.D}, "weight");
  a.logits = ConstView<C, 2>(lg.data(), {c.tokens, c.X}, "logits");
  a.expert = ConstView<std::int32_t, 2>(c.expert0.data(), {c.tokens, index_t{R::k}}, "expert");
  a.dgate = ConstView<C, 2>(dg.data(), {c.tokens, index_t{R::k}}, "dgate");
  a.counts = ConstView<std::int32_t, 1>(c.counts.data(), {c.X}, "counts");
  a.aux_loss_coef = C(kAux);
  a.z_loss_coef = C(kZ);
  a.dlogits = TensorView<C, 2>(g.dlogits.data(), {c.tokens, c.X}, "dlogits");
  a.dx = TensorView<T, 2>(g.dx.data(), {c.tokens, c.D}, "dx");
  a.dweight = TensorView<C, 2>(g.dw.data(), {c.X, c.D}, "dweight");
  a.accumulate = accumulate;
  moss::route_backward(moss::Host{}, a);
  return g;
}

/// Checks every gradient of one case against central differences in double.
template <class R>
void check_case(Case<R> c) {
  CAPTURE(c.tokens, c.D, c.X, R::k);
  const Grads<double> g = backward<double>(c);
  std::vector<double> logits, gate;
  std::vector<std::int32_t> expert;
  c.forward(logits, expert, gate);
  check_grad(
      "logits", g.dlogits, [&] { return c.loss_from_logits(logits); }, logits);
  check_grad(
      "x", g.dx, [&] { return c.loss(); }, c.x);
  check_grad(
      "weight", g.dw, [&] { return c.loss(); }, c.w);
  CHECK_FALSE(c.selection_changed);  // no finite difference crossed a selection change
}

}  // namespace

TEST_CASE("route_backward matches finite differences in double: Top1Switch", "[route_backward]") {
  for (index_t tokens : {0, 1, 6, 11}) check_case(Case<moss::Top1Switch>({}, tokens, 5, 4, 10 + tokens));
}

TEST_CASE("route_backward matches finite differences in double: TopK<2>", "[route_backward]") {
  for (bool renorm : {false, true}) {
    CAPTURE(renorm);
    moss::TopK<2> r;
    r.renormalize = renorm;
    for (index_t tokens : {0, 1, 7}) check_case(Case<moss::TopK<2>>(r, tokens, 3, 5, 20 + tokens));
  }
}

TEST_CASE("route_backward matches finite differences in double: TopK<1> renormalised, SinkhornTop1",
          "[route_backward]") {
  moss::TopK<1> r;
  r.renormalize = true;  // g = 1: only the losses have a gradient
  check_case(Case<moss::TopK<1>>(r, 6, 4, 3, 30));
  check_case(Case<moss::SinkhornTop1>({}, 6, 4, 3, 40));  // no aux loss
  check_case(Case<moss::SinkhornTop1>({}, 1, 2, 1, 41));  // one expert
}

TEST_CASE("route_backward: float agrees with double, bitwise repeatable, accumulate", "[route_backward]") {
  moss::TopK<2> r;
  r.renormalize = true;
  Case<moss::TopK<2>> c(r, 9, 6, 5, 50);
  for (auto* v : {&c.x, &c.w, &c.dgate})
    for (auto& e : *v) e = static_cast<float>(e);
  const auto d = backward<double>(c);
  const auto f = backward<float>(c), f2 = backward<float>(c);
  const auto h = backward<moss::bf16>(c);
  auto err = [](const auto& a, const std::vector<double>& b) {
    double scale = 1e-30, worst = 0;
    for (std::size_t i = 0; i < b.size(); ++i) {
      scale = std::max(scale, std::abs(b[i]));
      worst = std::max(worst, std::abs(moss::test::as_double(a[i]) - b[i]));
    }
    return worst / scale;
  };
  CHECK(err(f.dlogits, d.dlogits) < 1e-5);
  CHECK(err(f.dx, d.dx) < 1e-5);
  CHECK(err(f.dw, d.dw) < 1e-5);
  CHECK(err(h.dx, d.dx) < 3e-2);
  CHECK(std::memcmp(f.dlogits.data(), f2.dlogits.data(), f.dlogits.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(f.dx.data(), f2.dx.data(), f.dx.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(f.dw.data(), f2.dw.data(), f.dw.size() * sizeof(float)) == 0);
  Grads<double> start;
  start.dw = moss::test::randn_f64(d.dw.size(), 3);
  const auto acc = backward<double>(c, true, start);
  for (std::size_t i = 0; i < d.dw.size(); ++i) CHECK(acc.dw[i] == start.dw[i] + d.dw[i]);
}

TEST_CASE("route in double agrees with the float route", "[route_backward]") {
  Case<moss::TopK<2>> c({}, 8, 6, 5, 60);
  for (auto* v : {&c.x, &c.w})
    for (auto& e : *v) e = static_cast<float>(e);
  std::vector<double> logits, gate;
  std::vector<std::int32_t> expert;
  c.forward(logits, expert, gate);
  std::vector<float> xf(c.x.begin(), c.x.end()), wf(c.w.begin(), c.w.end()), lf(logits.size()), gf(gate.size());
  std::vector<std::int32_t> ef(expert.size());
  moss::route(moss::Host{},
              moss::RouteArgs<float, moss::TopK<2>>{{},
                                                    ConstView<float, 2>(xf.data(), {8, 6}, "x"),
                                                    ConstView<float, 2>(wf.data(), {5, 6}, "weight"),
                                                    TensorView<float, 2>(lf.data(), {8, 5}, "logits"),
                                                    TensorView<std::int32_t, 2>(ef.data(), {8, 2}, "expert"),
                                                    TensorView<float, 2>(gf.data(), {8, 2}, "gate")});
  CHECK(ef == expert);
  for (std::size_t i = 0; i < lf.size(); ++i) CHECK(std::abs(lf[i] - logits[i]) <= 1e-5 * (1 + std::abs(logits[i])));
  for (std::size_t i = 0; i < gf.size(); ++i) CHECK(std::abs(gf[i] - gate[i]) <= 1e-5);
}

TEST_CASE("route_backward validation names the tensor", "[route_backward]") {
  Case<moss::TopK<2>> c({}, 4, 3, 5, 70);
  std::vector<double> logits, gate;
  std::vector<std::int32_t> expert;
  c.forward(logits, expert, gate);
  std::vector<double> dl(logits.size()), dx(c.x.size()), dw(c.w.size());
  moss::RouteBackwardArgs<double, moss::TopK<2>> a;
  a.x = ConstView<double, 2>(c.x.data(), {4, 3}, "x");
  a.weight = ConstView<double, 2>(c.w.data(), {5, 3}, "weight");
  a.logits = ConstView<double, 2>(logits.data(), {4, 5}, "logits");
  a.expert = ConstView<std::int32_t, 2>(expert.data(), {4, 2}, "expert");
  a.dgate = ConstView<double, 2>(c.dgate.data(), {4, 2}, "dgate");
  a.counts = ConstView<std::int32_t, 1>(c.counts.data(), {5}, "counts");
  a.aux_loss_coef = 0.01;
  a.dlogits = TensorView<double, 2>(dl.data(), {4, 5}, "dlogits");
  a.dx = TensorView<double, 2>(dx.data(), {4, 3}, "dx");
  a.dweight = TensorView<double, 2>(dw.data(), {5, 3}, "dweight");
  REQUIRE_NOTHROW(moss::route_backward(moss::Host{}, a));
  auto bad = a;
  bad.dweight = TensorView<double, 2>(dw.data(), {3, 5}, "dweight");
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad),
                      ContainsSubstring("dweight") && ContainsSubstring("[5, 3]"));
  bad = a;
  bad.counts = {};
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad), ContainsSubstring("counts"));
  bad.aux_loss_coef = 0;  // without the aux loss the counts are not needed
  REQUIRE_NOTHROW(moss::route_backward(moss::Host{}, bad));
  bad = a;
  bad.dgate = ConstView<double, 2>(c.dgate.data(), {4, 1}, "dgate");
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad), ContainsSubstring("dgate"));
  bad = a;
  bad.logits = ConstView<double, 2>(logits.data(), {4, 4}, "logits");
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad), ContainsSubstring("logits"));
  bad = a;
  bad.dx = TensorView<double, 2>(dx.data(), {3, 3}, "dx");
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad), ContainsSubstring("dx"));
  std::vector<std::int32_t> broken = expert;
  broken[3] = 5;
  bad = a;
  bad.expert = ConstView<std::int32_t, 2>(broken.data(), {4, 2}, "expert");
  std::fill(dw.begin(), dw.end(), 7.0);
  REQUIRE_THROWS_WITH(moss::route_backward(moss::Host{}, bad), ContainsSubstring("expert[1, 1] = 5"));
  CHECK(dw[0] == 7.0);  // nothing written
}
