// tests/ops/router_test.cpp: `route`, `route_logits`, `route_select` and `router_stats` on the
// host against hand-worked selections (docs/math.md §2.2: ties, NaN, K = X), the logits against a
// float64 loop and against the documented warp summation order (re-derived here), route_logits
// bit for bit against route, route_select with scores that are not the logits, the worked
// example of the load-balancing loss, the z-loss, and every validation error. The Sinkhorn
// balancing is its own op (tests/ops/sinkhorn_test.cpp).
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "moss/ops/permute.hpp"
#include "moss/ops/router.hpp"
#include "moss_test.hpp"
#include "router_test_routers.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;
using moss::test::ArgmaxScores;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Bitwise float equality (NaN == NaN, −0 ≠ +0).
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

/// The outputs of one `route` call.
struct Routed {
  std::vector<float> logits;         // (tokens, X)
  std::vector<std::int32_t> expert;  // (tokens, K)
  std::vector<float> gate;           // (tokens, K)
};

/// Runs `route` on the host over x (tokens, D) with row stride `x_stride` and weight (X, D). The
/// outputs are poisoned first so an element the op forgets to write is caught.
template <class T, class R>
Routed run_route(const R& router, const std::vector<T>& x, index_t tokens, index_t D, index_t x_stride,
                 const std::vector<float>& w, index_t X) {
  Routed o;
  o.logits.assign(static_cast<std::size_t>(tokens * X), kNaN);
  o.expert.assign(static_cast<std::size_t>(tokens * R::k), -7);
  o.gate.assign(static_cast<std::size_t>(tokens * R::k), -7.0f);
  moss::RouteArgs<T, R> a;
  a.router = router;
  a.x = ConstView<T, 2>(x.data(), {tokens, D}, {x_stride, 1}, "x");
  a.weight = ConstView<float, 2>(w.data(), {X, D}, "weight");
  a.logits = TensorView<float, 2>(o.logits.data(), {tokens, X}, "logits");
  a.expert = TensorView<std::int32_t, 2>(o.expert.data(), {tokens, R::k}, "expert");
  a.gate = TensorView<float, 2>(o.gate.data(), {tokens, R::k}, "gate");
  moss::route(moss::Host{}, a);
  return o;
}

/// Runs `route_logits` on the host (logits poisoned with NaN first).
template <class T>
std::vector<float> run_route_logits(const std::vector<T>& x, index_t tokens, index_t D, index_t x_stride,
                                    const std::vector<float>& w, index_t X) {
  std::vector<float> logits(static_cast<std::size_t>(tokens * X), kNaN);
  moss::RouteLogitsArgs<T> a{ConstView<T, 2>(x.data(), {tokens, D}, {x_stride, 1}, "x"),
                             ConstView<float, 2>(w.data(), {X, D}, "weight"),
                             TensorView<float, 2>(logits.data(), {tokens, X}, "logits")};
  moss::route_logits(moss::Host{}, a);
  return logits;
}

/// Runs `route_select` on the host over given logits and scores (tokens, X); outputs poisoned.
template <class R>
Routed run_route_select(const R& router, const std::vector<float>& logits, const std::vector<float>& scores,
                        index_t tokens, index_t X) {
  Routed o;
  o.logits = logits;
  o.expert.assign(static_cast<std::size_t>(tokens * R::k), -7);
  o.gate.assign(static_cast<std::size_t>(tokens * R::k), -7.0f);
  moss::RouteSelectArgs<R> a;
  a.router = router;
  a.logits = ConstView<float, 2>(logits.data(), {tokens, X}, "logits");
  a.scores = ConstView<float, 2>(scores.data(), {tokens, X}, "scores");
  a.expert = TensorView<std::int32_t, 2>(o.expert.data(), {tokens, R::k}, "expert");
  a.gate = TensorView<float, 2>(o.gate.data(), {tokens, R::k}, "gate");
  moss::route_select(moss::Host{}, a);
  return o;
}

/// Routes one token whose logits are exactly `row`: d_model = 1, x = 1, weight[i] = row[i]
/// (1 · w + 0 is exact, NaN included). Checks that the op's logits are `row` bit for bit.
template <class R>
Routed route_logits(const R& router, const std::vector<float>& row) {
  const std::vector<float> x{1.0f};
  const index_t X = static_cast<index_t>(row.size());
  Routed o = run_route<float>(router, x, 1, 1, 1, row, X);
  for (index_t i = 0; i < X; ++i) REQUIRE(same_bits(o.logits[i], row[i]));
  return o;
}

/// softmax(row)[e] in float64.
double softmax64(const std::vector<float>& row, std::size_t e) {
  double m = -INFINITY;
  for (float v : row) m = std::max(m, static_cast<double>(v));
  double s = 0;
  for (float v : row) s += std::exp(static_cast<double>(v) - m);
  return std::exp(static_cast<double>(row[e]) - m) / s;
}

double sigmoid64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// |a − b| ≤ rel · |b|.
bool near_rel(double a, double b, double rel) { return std::fabs(a - b) <= rel * std::fabs(b); }

/// x · w summed exactly as the comment of ops/router/math.hpp describes, written here without
/// the library's helpers: lane l (of 32) fuses-multiply-adds the 16-byte chunks l, l + 32, ...
/// (chunk c = elements [c·V, c·V + V), V = 16 / sizeof(T)), then the xor butterfly over
/// offsets 16, 8, 4, 2, 1 (lane 0's value: a binary tree, own half on the left).
template <class T>
float warp_order_dot(const T* x, const float* w, index_t D) {
  constexpr index_t V = static_cast<index_t>(16 / sizeof(T));
  float partial[32];
  for (int lane = 0; lane < 32; ++lane) {
    float acc = 0.0f;
    for (index_t chunk = lane; chunk * V < D; chunk += 32)
      for (index_t i = chunk * V; i < std::min(D, chunk * V + V); ++i) acc = std::fma(moss::to_float(x[i]), w[i], acc);
    partial[lane] = acc;
  }
  // After the butterfly steps with offsets 16 .. off, lane l holds S(l, off) = S(l, 2·off) +
  // S(l ^ off, 2·off), and S(l, 32) = partial[l].
  struct Tree {
    const float* p;
    float operator()(int lane, int off) const {
      return off == 32 ? p[lane] : (*this)(lane, off * 2) + (*this)(lane ^ off, off * 2);
    }
  };
  return Tree{partial}(0, 1);
}

/// The logits (tokens, X) in float64 from the stored (rounded) x.
template <class T>
std::vector<double> logits64(const std::vector<T>& x, index_t tokens, index_t D, index_t stride,
                             const std::vector<float>& w, index_t X) {
  std::vector<double> l(static_cast<std::size_t>(tokens * X));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t i = 0; i < X; ++i) {
      double s = 0;
      for (index_t d = 0; d < D; ++d)
        s += static_cast<double>(moss::to_float(x[t * stride + d])) * static_cast<double>(w[i * D + d]);
      l[t * X + i] = s;
    }
  return l;
}

}  // namespace

TEMPLATE_TEST_CASE("route: hand-computed logits and selections", "[host][ops][router]", float, f16, bf16) {
  using T = TestType;
  // Every value and every logit is exact in all three storage types.
  const auto x = moss::test::to_storage<T>({1, 2, 3, -1, 0.5f, 2});            // (2, 3)
  const std::vector<float> w{1, 0, 0, 0, 1, -1, 0.5f, 0.5f, 0.5f, -1, -1, 1};  // (4, 3)
  const std::vector<float> l0{1, -1, 3, 0}, l1{-1, -1.5f, 0.75f, 2.5f};

  const Routed r = run_route(moss::Top1Switch{}, x, 2, 3, 3, w, 4);
  for (index_t i = 0; i < 4; ++i) {
    CHECK(r.logits[i] == l0[i]);
    CHECK(r.logits[4 + i] == l1[i]);
  }
  CHECK(r.expert == std::vector<std::int32_t>{2, 3});
  CHECK(near_rel(r.gate[0], softmax64(l0, 2), 1e-6));
  CHECK(near_rel(r.gate[1], softmax64(l1, 3), 1e-6));

  moss::TopK<3> top3;
  const Routed r3 = run_route(top3, x, 2, 3, 3, w, 4);
  CHECK(r3.expert == std::vector<std::int32_t>{2, 0, 3, 3, 2, 0});
}

TEST_CASE("route: Top1Switch weight is the softmax probability of the argmax, not renormalised",
          "[host][ops][router]") {
  const std::vector<float> row{1.0f, 3.0f, 2.0f, -1.0f};
  const Routed r = route_logits(moss::Top1Switch{}, row);
  REQUIRE(r.expert[0] == 1);
  const double p = softmax64(row, 1);  // ≈ 0.6439
  CHECK(near_rel(r.gate[0], p, 1e-6));
  CHECK(r.gate[0] < 0.7f);

  // A random batch: the argmax of every row and its probability.
  const index_t T = 29, X = 7, D = 10;
  const auto x = moss::test::randn(T * D, 11);
  const auto w = moss::test::randn(X * D, 12, 0.5f);
  const Routed b = run_route(moss::Top1Switch{}, x, T, D, D, w, X);
  for (index_t t = 0; t < T; ++t) {
    const std::vector<float> lg(b.logits.begin() + t * X, b.logits.begin() + (t + 1) * X);
    CAPTURE(t);
    REQUIRE(b.expert[t] == moss::test::argmax_row(b.logits, t, X));
    REQUIRE(near_rel(b.gate[t], softmax64(lg, static_cast<std::size_t>(b.expert[t])), 1e-6));
  }
}

TEST_CASE("route: TopK<2> with and without renormalisation", "[host][ops][router]") {
  const std::vector<float> row{0.5f, 2.0f, -1.0f, 1.5f};
  moss::TopK<2> plain;
  const Routed r = route_logits(plain, row);
  REQUIRE(r.expert == std::vector<std::int32_t>{1, 3});  // slot 0 holds the largest
  const double p1 = softmax64(row, 1), p3 = softmax64(row, 3);
  CHECK(near_rel(r.gate[0], p1, 1e-6));
  CHECK(near_rel(r.gate[1], p3, 1e-6));
  CHECK(r.gate[0] + r.gate[1] < 0.95f);  // the unchosen experts keep their share

  moss::TopK<2> renorm;
  renorm.renormalize = true;
  const Routed n = route_logits(renorm, row);
  REQUIRE(n.expert == std::vector<std::int32_t>{1, 3});
  CHECK(near_rel(n.gate[0], p1 / (p1 + p3), 1e-6));
  CHECK(near_rel(n.gate[1], p3 / (p1 + p3), 1e-6));
  CHECK(std::fabs(n.gate[0] + n.gate[1] - 1.0f) <= 1e-6f);

  SECTION("top-1 with renormalisation gives weight 1 exactly") {
    moss::TopK<1> one;
    one.renormalize = true;
    const Routed o = route_logits(one, row);
    CHECK(o.expert[0] == 1);
    CHECK(o.gate[0] == 1.0f);
    moss::TopK<1> one_plain;
    const Routed q = route_logits(one_plain, row);
    CHECK(q.expert[0] == 1);
    CHECK(near_rel(q.gate[0], p1, 1e-6));
  }
  SECTION("random batch: renormalised weights sum to 1 and keep the ratio of the probabilities") {
    const index_t T = 31, X = 9, D = 16;
    const auto x = moss::test::randn(T * D, 21);
    const auto w = moss::test::randn(X * D, 22, 0.4f);
    const Routed a = run_route(plain, x, T, D, D, w, X);
    const Routed b = run_route(renorm, x, T, D, D, w, X);
    REQUIRE(a.expert == b.expert);
    for (index_t t = 0; t < T; ++t) {
      CAPTURE(t);
      const std::vector<float> lg(a.logits.begin() + t * X, a.logits.begin() + (t + 1) * X);
      // Slot 0 and 1 are the two largest logits, distinct experts, slot 0 ≥ slot 1 ≥ the rest.
      REQUIRE(a.expert[2 * t] != a.expert[2 * t + 1]);
      for (index_t i = 0; i < X; ++i) {
        if (i == a.expert[2 * t] || i == a.expert[2 * t + 1]) continue;
        REQUIRE(lg[a.expert[2 * t + 1]] >= lg[i]);
      }
      REQUIRE(lg[a.expert[2 * t]] >= lg[a.expert[2 * t + 1]]);
      const double q0 = softmax64(lg, a.expert[2 * t]), q1 = softmax64(lg, a.expert[2 * t + 1]);
      REQUIRE(near_rel(a.gate[2 * t], q0, 1e-6));
      REQUIRE(near_rel(a.gate[2 * t + 1], q1, 1e-6));
      REQUIRE(near_rel(b.gate[2 * t], q0 / (q0 + q1), 1e-6));
      REQUIRE(near_rel(b.gate[2 * t + 1], q1 / (q0 + q1), 1e-6));
      REQUIRE(std::fabs(b.gate[2 * t] + b.gate[2 * t + 1] - 1.0f) <= 1e-6f);
    }
  }
}

TEST_CASE("route: ties go to the lowest expert index", "[host][ops][router]") {
  SECTION("Top1Switch") {
    CHECK(route_logits(moss::Top1Switch{}, {1, 2, 2, 0}).expert[0] == 1);
    CHECK(route_logits(moss::Top1Switch{}, {3, 0, 0, 3}).expert[0] == 0);
    CHECK(route_logits(moss::Top1Switch{}, {-1, -2, -1, -1}).expert[0] == 0);
  }
  SECTION("TopK") {
    CHECK(route_logits(moss::TopK<2>{}, {1, 2, 2, 0}).expert == std::vector<std::int32_t>{1, 2});
    CHECK(route_logits(moss::TopK<2>{}, {3, 0, 0, 3}).expert == std::vector<std::int32_t>{0, 3});
    CHECK(route_logits(moss::TopK<2>{}, {0, 5, 1, 1, 1}).expert == std::vector<std::int32_t>{1, 2});
    const Routed eq = route_logits(moss::TopK<3>{}, {0.5f, 0.5f, 0.5f, 0.5f});
    CHECK(eq.expert == std::vector<std::int32_t>{0, 1, 2});
    for (float g : eq.gate) CHECK(g == 0.25f);
  }
  SECTION("SinkhornTop1 inference") { CHECK(route_logits(moss::SinkhornTop1{}, {-1, 4, 0, 4}).expert[0] == 1); }
}

TEST_CASE("route: a NaN logit is never selected unless all are NaN", "[host][ops][router]") {
  SECTION("Top1Switch: the largest number wins; the softmax of a NaN row, and so the weight, is NaN") {
    struct Case {
      std::vector<float> row;
      std::int32_t expert;
    };
    for (const Case& c : {Case{{kNaN, 1, 3, 2}, 2}, Case{{1, 3, 2, kNaN}, 1}, Case{{1, kNaN, 3, kNaN}, 2},
                          Case{{kNaN, -4, kNaN, -5}, 1}}) {
      CAPTURE(c.row);
      const Routed r = route_logits(moss::Top1Switch{}, c.row);
      CHECK(r.expert[0] == c.expert);
      CHECK(std::isnan(r.gate[0]));
    }
    // −inf is still a number: it ranks above NaN.
    CHECK(route_logits(moss::Top1Switch{}, {kNaN, -INFINITY}).expert[0] == 1);
  }
  SECTION("TopK: NaN only when no number is left, then the lowest unused indices") {
    const Routed r2 = route_logits(moss::TopK<2>{}, {2.0f, kNaN, 1.0f, kNaN});
    CHECK(r2.expert == std::vector<std::int32_t>{0, 2});
    CHECK(std::isnan(r2.gate[0]));
    CHECK(std::isnan(r2.gate[1]));
    const Routed r3 = route_logits(moss::TopK<3>{}, {kNaN, kNaN, 0.5f, kNaN});
    CHECK(r3.expert == std::vector<std::int32_t>{2, 0, 1});
    const Routed r4 = route_logits(moss::TopK<4>{}, {kNaN, 1.0f, kNaN, 2.0f});
    CHECK(r4.expert == std::vector<std::int32_t>{3, 1, 0, 2});
  }
  SECTION("all NaN: expert 0 (then 1, 2, ...), NaN weight") {
    const Routed a = route_logits(moss::Top1Switch{}, {kNaN, kNaN, kNaN});
    CHECK(a.expert[0] == 0);
    CHECK(std::isnan(a.gate[0]));
    moss::TopK<2> renorm;
    renorm.renormalize = true;
    const Routed b = route_logits(renorm, {kNaN, kNaN, kNaN});
    CHECK(b.expert == std::vector<std::int32_t>{0, 1});
    CHECK(std::isnan(b.gate[0]));
    CHECK(std::isnan(b.gate[1]));
    const Routed s = route_logits(moss::SinkhornTop1{}, {kNaN, kNaN, kNaN});
    CHECK(s.expert[0] == 0);
    CHECK(std::isnan(s.gate[0]));
  }
  SECTION("SinkhornTop1 inference: the gate is sigmoid of the chosen (finite) logit") {
    const Routed s = route_logits(moss::SinkhornTop1{}, {kNaN, 0.25f, -3.0f});
    CHECK(s.expert[0] == 1);
    CHECK(near_rel(s.gate[0], sigmoid64(0.25), 1e-6));
  }
  SECTION("a NaN in one token does not leak into another") {
    const index_t T = 3, X = 3, D = 2;
    const std::vector<float> x{1.0f, 0.5f, kNaN, 1.0f, -1.0f, 2.0f};
    const std::vector<float> w{1, 0, 0, 1, 1, 1};
    const Routed r = run_route(moss::Top1Switch{}, x, T, D, D, w, X);
    // NaN · 0 is NaN: every logit of token 1 is NaN, so expert 0 with a NaN weight.
    for (index_t i = 0; i < X; ++i) CHECK(std::isnan(r.logits[X + i]));
    CHECK(r.expert[1] == 0);
    CHECK(std::isnan(r.gate[1]));
    CHECK(r.expert[0] == 2);  // (1, 0.5, 1.5)
    CHECK(r.expert[2] == 1);  // (−1, 2, 1)
    CHECK(near_rel(r.gate[0], softmax64({1, 0.5f, 1.5f}, 2), 1e-6));
    CHECK(near_rel(r.gate[2], softmax64({-1, 2, 1}, 1), 1e-6));
  }
}

TEST_CASE("route: K = X picks every expert once, in logit order", "[host][ops][router]") {
  const std::vector<float> row{0.3f, -1.0f, 2.0f, 0.7f};
  const Routed r = route_logits(moss::TopK<4>{}, row);
  CHECK(r.expert == std::vector<std::int32_t>{2, 3, 0, 1});
  double total = 0;
  for (int s = 0; s < 4; ++s) {
    CHECK(near_rel(r.gate[s], softmax64(row, r.expert[s]), 1e-6));
    total += r.gate[s];
  }
  CHECK(std::fabs(total - 1.0) <= 1e-6);

  // A random batch with X = K = 6: a permutation per token with non-increasing logits.
  const index_t T = 23, X = 6, D = 12;
  const auto x = moss::test::randn(T * D, 31);
  const auto w = moss::test::randn(X * D, 32);
  moss::TopK<6> all;
  all.renormalize = true;
  const Routed b = run_route(all, x, T, D, D, w, X);
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    std::set<std::int32_t> seen(b.expert.begin() + t * X, b.expert.begin() + (t + 1) * X);
    REQUIRE(seen.size() == static_cast<std::size_t>(X));
    REQUIRE(*seen.begin() == 0);
    REQUIRE(*seen.rbegin() == X - 1);
    float sum = 0;
    for (index_t s = 0; s < X; ++s) {
      sum += b.gate[t * X + s];
      if (s > 0) REQUIRE(b.logits[t * X + b.expert[t * X + s - 1]] >= b.logits[t * X + b.expert[t * X + s]]);
    }
    REQUIRE(std::fabs(sum - 1.0f) <= 1e-6f);
  }
}

TEST_CASE("route: SinkhornTop1 inference mode is the argmax of sigmoid(logits), gate sigmoid(logit)",
          "[host][ops][router]") {
  const index_t T = 40, X = 8, D = 24;
  const auto x = moss::test::randn(T * D, 41);
  const auto w = moss::test::randn(X * D, 42, 0.3f);
  const Routed r = run_route(moss::SinkhornTop1{}, x, T, D, D, w, X);
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    std::vector<double> sig(static_cast<std::size_t>(X));
    for (index_t i = 0; i < X; ++i) sig[i] = sigmoid64(r.logits[t * X + i]);
    REQUIRE(r.expert[t] == moss::test::argmax_row(sig, 0, X));
    REQUIRE(near_rel(r.gate[t], sigmoid64(r.logits[t * X + r.expert[t]]), 1e-6));
  }
  // sigmoid(20) and sigmoid(30) are both 1.0f, but the ranking is on the logits: expert 1.
  const Routed sat = route_logits(moss::SinkhornTop1{}, {20.0f, 30.0f, -5.0f});
  CHECK(sat.expert[0] == 1);
  CHECK(sat.gate[0] == 1.0f);
  const Routed neg = route_logits(moss::SinkhornTop1{}, {-2.0f, -0.5f, -1.0f});
  CHECK(neg.expert[0] == 1);
  CHECK(near_rel(neg.gate[0], sigmoid64(-0.5), 1e-6));
}

TEMPLATE_TEST_CASE("route: logits match a float64 loop and the documented warp order bit for bit",
                   "[host][ops][router]", float, f16, bf16) {
  using T = TestType;
  // d_model crosses the 16-byte chunk (4 floats, 8 halves) and the 32-lane sweep (128 floats,
  // 256 halves) in every way; x rows are strided.
  const index_t dims[] = {1, 3, 8, 9, 31, 128, 129, 257, 1000, 4099};
  std::uint64_t seed = 600;
  for (index_t D : dims) {
    CAPTURE(D);
    const index_t tokens = 13, X = 5, stride = D + 3;
    const auto x = moss::test::to_storage<T>(moss::test::randn(tokens * stride, seed += 7));
    const auto w = moss::test::randn(X * D, seed += 7, 1.0f / std::sqrt(static_cast<float>(D)));
    const Routed r = run_route(moss::TopK<2>{}, x, tokens, D, stride, w, X);
    // The inputs are taken exactly as stored: only the float32 accumulation differs.
    CHECK(moss::test::rel_l2(r.logits, logits64(x, tokens, D, stride, w, X)) <= 1e-6);
    for (index_t t = 0; t < tokens; ++t)
      for (index_t i = 0; i < X; ++i) {
        const float lib = moss::detail::route::dot_in_kernel_order(x.data() + t * stride, w.data() + i * D, D);
        const float mine = warp_order_dot(x.data() + t * stride, w.data() + i * D, D);
        CAPTURE(t, i);
        REQUIRE(same_bits(r.logits[t * X + i], lib));
        REQUIRE(same_bits(r.logits[t * X + i], mine));
      }
  }
}

TEST_CASE("route: zero tokens write nothing", "[host][ops][router]") {
  const std::vector<float> x{1.0f, 2.0f}, w{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const Routed r = run_route(moss::SinkhornTop1{}, x, 0, 2, 2, w, 3);
  CHECK(r.logits.empty());
  const Routed q = run_route(moss::TopK<2>{}, x, 0, 2, 2, w, 3);
  CHECK(q.expert.empty());
  const auto l = run_route_logits(x, 0, 2, 2, w, 3);
  CHECK(l.empty());
  const Routed s = run_route_select(moss::TopK<2>{}, {}, {}, 0, 3);
  CHECK(s.expert.empty());
}

TEMPLATE_TEST_CASE("route_logits: bit-identical to route's logits", "[host][ops][router]", float, f16, bf16) {
  using T = TestType;
  // d_model across the 16-byte chunk and the 32-lane sweep; strided rows; 1 … kMaxExperts experts.
  struct Shape {
    index_t tokens, D, stride, X;
  };
  std::uint64_t seed = 1300;
  for (const Shape& sh : {Shape{1, 1, 1, 1}, Shape{5, 3, 7, 4}, Shape{17, 129, 129, 9}, Shape{9, 257, 300, 17},
                          Shape{3, 1000, 1003, 256}, Shape{33, 64, 64, 8}}) {
    CAPTURE(sh.tokens, sh.D, sh.stride, sh.X);
    const auto x = moss::test::to_storage<T>(moss::test::randn(sh.tokens * sh.stride, seed += 3));
    const auto w = moss::test::randn(sh.X * sh.D, seed += 3, 1.0f / std::sqrt(static_cast<float>(sh.D)));
    const std::vector<float> l = run_route_logits(x, sh.tokens, sh.D, sh.stride, w, sh.X);
    for (float v : l) REQUIRE(!std::isnan(v));  // every poisoned element was written
    const Routed a = run_route(moss::Top1Switch{}, x, sh.tokens, sh.D, sh.stride, w, sh.X);
    REQUIRE(l.size() == a.logits.size());
    CHECK(std::memcmp(l.data(), a.logits.data(), l.size() * sizeof(float)) == 0);
    if (sh.X >= 2) {
      moss::TopK<2> renorm;
      renorm.renormalize = true;
      const Routed b = run_route(renorm, x, sh.tokens, sh.D, sh.stride, w, sh.X);
      CHECK(std::memcmp(l.data(), b.logits.data(), l.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("route ranks the logits for any router: scores = logits", "[host][ops][router]") {
  // A router that ranks `scores` and reports the logit it chose as its weight: route passes the
  // logits as the scores, so it picks the largest logit, also for SinkhornTop1 in training mode
  // (its balanced scores come from its own batch hook, which route does not call).
  const index_t T = 37, X = 6, D = 12;
  const auto x = moss::test::randn(T * D, 1401);
  const auto w = moss::test::randn(X * D, 1402, 0.4f);
  const Routed r = run_route(ArgmaxScores{}, x, T, D, D, w, X);
  moss::SinkhornTop1 train;
  train.training = true;
  const Routed s = run_route(train, x, T, D, D, w, X);
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    REQUIRE(r.expert[t] == moss::test::argmax_row(r.logits, t, X));
    REQUIRE(same_bits(r.gate[t], r.logits[t * X + r.expert[t]]));
    REQUIRE(s.expert[t] == r.expert[t]);
    REQUIRE(near_rel(s.gate[t], sigmoid64(s.logits[t * X + s.expert[t]]), 1e-6));
  }
}

TEST_CASE("route_select: ranks the given scores and weighs by the logits", "[host][ops][router]") {
  const index_t T = 41, X = 9;
  const auto logits = moss::test::randn(T * X, 1501, 1.5f);
  // Scores unrelated to the logits, with ties (quantised) and a NaN column entry per few tokens.
  auto scores = moss::test::randn(T * X, 1502);
  for (float& v : scores) v = std::round(v * 4.0f) / 4.0f;
  for (index_t t = 0; t < T; t += 5) scores[t * X + (t % X)] = kNaN;

  SECTION("the argmax of the scores (ties → lowest, NaN never while numbers are left), the chosen logit") {
    const Routed r = run_route_select(ArgmaxScores{}, logits, scores, T, X);
    for (index_t t = 0; t < T; ++t) {
      CAPTURE(t);
      index_t best = -1;
      for (index_t i = 0; i < X; ++i)
        if (!std::isnan(scores[t * X + i]) && (best < 0 || scores[t * X + i] > scores[t * X + best])) best = i;
      REQUIRE(r.expert[t] == best);
      REQUIRE(same_bits(r.gate[t], logits[t * X + best]));
    }
  }
  SECTION("TopK<2>: the two best scores, softmax(logits) weights") {
    const Routed r = run_route_select(moss::TopK<2>{}, logits, scores, T, X);
    for (index_t t = 0; t < T; ++t) {
      CAPTURE(t);
      const std::vector<float> lg(logits.begin() + t * X, logits.begin() + (t + 1) * X);
      std::vector<index_t> order;
      for (index_t i = 0; i < X; ++i)
        if (!std::isnan(scores[t * X + i])) order.push_back(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](index_t a, index_t b) { return scores[t * X + a] > scores[t * X + b]; });
      REQUIRE(r.expert[2 * t] == order[0]);
      REQUIRE(r.expert[2 * t + 1] == order[1]);
      REQUIRE(near_rel(r.gate[2 * t], softmax64(lg, order[0]), 1e-6));
      REQUIRE(near_rel(r.gate[2 * t + 1], softmax64(lg, order[1]), 1e-6));
    }
  }
  SECTION("scores = logits gives route's selection bit for bit") {
    const index_t D = 10;
    const auto x = moss::test::randn(T * D, 1503);
    const auto w = moss::test::randn(X * D, 1504, 0.5f);
    moss::TopK<3> renorm;
    renorm.renormalize = true;
    const Routed a = run_route(renorm, x, T, D, D, w, X);
    const Routed b = run_route_select(renorm, a.logits, a.logits, T, X);
    CHECK(b.expert == a.expert);
    CHECK(std::memcmp(b.gate.data(), a.gate.data(), a.gate.size() * sizeof(float)) == 0);
    const Routed c = run_route(moss::SinkhornTop1{}, x, T, D, D, w, X);
    const Routed d = run_route_select(moss::SinkhornTop1{}, c.logits, c.logits, T, X);
    CHECK(d.expert == c.expert);
    CHECK(std::memcmp(d.gate.data(), c.gate.data(), c.gate.size() * sizeof(float)) == 0);
  }
}

namespace {

/// Runs `router_stats` over logits (T, X) and counts (X); the output is poisoned first.
std::vector<float> run_stats(const std::vector<float>& logits, index_t T, index_t X,
                             const std::vector<std::int32_t>& counts, index_t k, bool aux_loss = true,
                             float alpha = 0.01f, float beta = 0.001f) {
  std::vector<float> out(static_cast<std::size_t>(moss::router_stats_size(X)), kNaN);
  moss::RouterStatsArgs a;
  a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
  a.counts = ConstView<std::int32_t, 1>(counts.data(), {X}, "counts");
  a.k = k;
  a.aux_loss = aux_loss;
  a.aux_loss_coef = alpha;
  a.z_loss_coef = beta;
  a.out = TensorView<float, 1>(out.data(), {moss::router_stats_size(X)}, "out");
  moss::router_stats(moss::Host{}, a);
  return out;
}

}  // namespace

TEST_CASE("router_stats: the worked example of docs/math.md §2.4", "[host][ops][router]") {
  // X = 2, K = 1, p = (0.9, 0.1) and (0.4, 0.6): logits = log p, so softmax gives p and
  // logsumexp = log 1 = 0.
  const std::vector<float> logits{std::log(0.9f), std::log(0.1f), std::log(0.4f), std::log(0.6f)};
  // The selection (expert 0, then expert 1) and the counts (1, 1) come from the router and the plan.
  const Routed r = run_route(moss::Top1Switch{}, std::vector<float>{1.0f, 0.0f, 0.0f, 1.0f}, 2, 2, 2,
                             std::vector<float>{logits[0], logits[2], logits[1], logits[3]}, 2);
  REQUIRE(r.logits == logits);
  REQUIRE(r.expert == std::vector<std::int32_t>{0, 1});
  CHECK(near_rel(r.gate[0], 0.9, 1e-6));
  CHECK(near_rel(r.gate[1], 0.6, 1e-6));
  const moss::PermutePlan plan =
      moss::make_permute_plan(moss::Host{}, ConstView<std::int32_t, 2>(r.expert.data(), {2, 1}, "expert"), 2, 0);
  const std::vector<std::int32_t> counts(plan.counts.data(), plan.counts.data() + 2);
  REQUIRE(counts == std::vector<std::int32_t>{1, 1});

  const auto s = run_stats(logits, 2, 2, counts, 1);
  CHECK(near_rel(s[0], 0.01, 1e-6));  // aux = 0.01 · 2 · (0.5·0.65 + 0.5·0.35)
  CHECK(std::fabs(s[1]) <= 1e-9);     // z: logsumexp = 0 for every token
  CHECK(near_rel(s[2], 0.65, 1e-6));  // P_0
  CHECK(near_rel(s[3], 0.35, 1e-6));  // P_1

  SECTION("α scales the loss; aux_loss = false gives 0 and keeps the rest") {
    CHECK(near_rel(run_stats(logits, 2, 2, counts, 1, true, 0.02f)[0], 0.02, 1e-6));
    const auto off = run_stats(logits, 2, 2, counts, 1, false);
    CHECK(off[0] == 0.0f);
    CHECK(off[2] == s[2]);
    CHECK(off[3] == s[3]);
  }
  SECTION("an unbalanced assignment costs more: both tokens on expert 0") {
    // f = (1, 0): aux = 0.01 · 2 · 0.65 = 0.013.
    CHECK(near_rel(run_stats(logits, 2, 2, {2, 0}, 1)[0], 0.013, 1e-6));
  }
}

TEST_CASE("router_stats: uniform routing gives aux = α and z = β·(c + log X)²", "[host][ops][router]") {
  const index_t T = 6, X = 3;
  const std::vector<float> logits(T * X, 0.7f);
  const auto s = run_stats(logits, T, X, {4, 4, 4}, 2, true, 0.01f, 0.5f);
  CHECK(near_rel(s[0], 0.01, 1e-6));
  const double lse = 0.7 + std::log(3.0);
  CHECK(near_rel(s[1], 0.5 * lse * lse, 1e-6));
  for (index_t i = 0; i < X; ++i) CHECK(near_rel(s[2 + i], 1.0 / 3.0, 1e-6));
}

TEST_CASE("router_stats: a random batch against float64", "[host][ops][router]") {
  const index_t T = 57, X = 8, D = 20;
  const auto x = moss::test::randn(T * D, 71);
  const auto w = moss::test::randn(X * D, 72, 0.6f);
  moss::TopK<2> router;
  const Routed r = run_route(router, x, T, D, D, w, X);
  std::vector<std::int32_t> counts(X, 0);
  for (std::int32_t e : r.expert) ++counts[e];
  const float alpha = 0.03f, beta = 0.002f;
  const auto s = run_stats(r.logits, T, X, counts, 2, true, alpha, beta);

  std::vector<double> P(X, 0.0);
  double z = 0;
  for (index_t t = 0; t < T; ++t) {
    double m = -INFINITY, sum = 0;
    for (index_t i = 0; i < X; ++i) m = std::max(m, static_cast<double>(r.logits[t * X + i]));
    for (index_t i = 0; i < X; ++i) sum += std::exp(r.logits[t * X + i] - m);
    for (index_t i = 0; i < X; ++i) P[i] += std::exp(r.logits[t * X + i] - m) / sum / T;
    z += (m + std::log(sum)) * (m + std::log(sum));
  }
  double aux = 0;
  for (index_t i = 0; i < X; ++i) aux += counts[i] / static_cast<double>(2 * T) * P[i];
  aux *= static_cast<double>(alpha) * X;
  z *= static_cast<double>(beta) / T;
  CHECK(near_rel(s[0], aux, 1e-5));
  CHECK(near_rel(s[1], z, 1e-5));
  double total = 0;
  for (index_t i = 0; i < X; ++i) {
    CAPTURE(i);
    CHECK(near_rel(s[2 + i], P[i], 1e-5));
    total += s[2 + i];
  }
  CHECK(std::fabs(total - 1.0) <= 1e-5);
  CHECK(s[0] > static_cast<float>(alpha) * 0.5f);  // a real, non-trivial loss
}

TEST_CASE("router_stats: zero tokens give zeros", "[host][ops][router]") {
  const std::vector<float> none;
  const auto s = run_stats(none, 0, 4, {0, 0, 0, 0}, 1);
  CHECK(s == std::vector<float>(6, 0.0f));
}

TEST_CASE("route and router_stats: every validation error", "[host][ops][router][errors]") {
  const index_t T = 2, D = 6, X = 4;
  const auto x = moss::test::randn(T * 12, 81);
  const auto w = moss::test::randn(300 * D, 82);
  std::vector<float> logits(300 * T), gate(2 * T);
  std::vector<std::int32_t> expert(2 * T);
  const moss::Host host;
  const auto good = [&] {
    moss::RouteArgs<float, moss::TopK<2>> a;
    a.x = ConstView<float, 2>(x.data(), {T, D}, "x");
    a.weight = ConstView<float, 2>(w.data(), {X, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, X}, "logits");
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 2}, "expert");
    a.gate = TensorView<float, 2>(gate.data(), {T, 2}, "gate");
    return a;
  };
  REQUIRE_NOTHROW(moss::route(host, good()));

  SECTION("weight's d_model differs from x's") {
    auto a = good();
    a.weight = ConstView<float, 2>(w.data(), {X, 5}, "weight");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a),
                        ContainsSubstring("route: weight is [4, 5] (experts, d_model) but expected [4, 6]"));
  }
  SECTION("logits have the wrong shape") {
    auto a = good();
    a.logits = TensorView<float, 2>(logits.data(), {T, 3}, "logits");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a),
                        ContainsSubstring("logits is [2, 3] (tokens, experts) but expected [2, 4]"));
  }
  SECTION("expert has the wrong K") {
    auto a = good();
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 1}, "expert");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("expert is [2, 1] (tokens, K) but expected [2, 2]"));
  }
  SECTION("gate has the wrong number of tokens") {
    auto a = good();
    a.gate = TensorView<float, 2>(gate.data(), {1, 2}, "gate");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("gate is [1, 2] (tokens, K) but expected [2, 2]"));
  }
  SECTION("logits not contiguous") {
    auto a = good();
    a.logits = TensorView<float, 2>(logits.data(), {T, X}, {8, 1}, "logits");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("logits [2, 4] must be contiguous"));
  }
  SECTION("weight not contiguous") {
    auto a = good();
    a.weight = ConstView<float, 2>(w.data(), {X, D}, {8, 1}, "weight");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("weight [4, 6] must be contiguous"));
  }
  SECTION("x without unit inner stride, or with overlapping rows") {
    auto a = good();
    a.x = ConstView<float, 2>(x.data(), {T, D}, {12, 2}, "x");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("x needs unit stride in its last dimension"));
    a.x = ConstView<float, 2>(x.data(), {T, D}, {5, 1}, "x");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("x has row stride 5 but its rows are 6 wide"));
  }
  SECTION("d_model = 0") {
    auto a = good();
    a.x = ConstView<float, 2>(x.data(), {T, 0}, "x");
    a.weight = ConstView<float, 2>(w.data(), {X, 0}, "weight");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("route: x is [2, 0] (tokens, d_model)"));
  }
  SECTION("no experts") {
    auto a = good();
    a.weight = ConstView<float, 2>(w.data(), {0, D}, "weight");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("weight is [0, 6] (experts, d_model)"));
  }
  SECTION("X > kMaxExperts is unsupported") {
    moss::RouteArgs<float, moss::Top1Switch> a;
    a.x = ConstView<float, 2>(x.data(), {T, D}, "x");
    a.weight = ConstView<float, 2>(w.data(), {moss::kMaxExperts + 1, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, moss::kMaxExperts + 1}, "logits");
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 1}, "expert");
    a.gate = TensorView<float, 2>(gate.data(), {T, 1}, "gate");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("route: 257 experts; supported: 1 to 256"));
    a.weight = ConstView<float, 2>(w.data(), {moss::kMaxExperts, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, moss::kMaxExperts}, "logits");
    REQUIRE_NOTHROW(moss::route(host, a));
  }
  SECTION("K > X") {
    moss::RouteArgs<float, moss::TopK<3>> a;
    a.x = ConstView<float, 2>(x.data(), {T, D}, "x");
    a.weight = ConstView<float, 2>(w.data(), {2, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, 2}, "logits");
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 3}, "expert");
    a.gate = TensorView<float, 2>(gate.data(), {T, 3}, "gate");
    REQUIRE_THROWS_AS(moss::route(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("K = 3 experts per token but there are only 2"));
  }
  SECTION("missing data") {
    auto a = good();
    a.gate.data = nullptr;
    REQUIRE_THROWS_AS(moss::route(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route(host, a), ContainsSubstring("gate [2, 2] has no data"));
  }

  // router_stats
  std::vector<std::int32_t> counts(300, 1);
  std::vector<float> out(302);
  const auto stats = [&] {
    moss::RouterStatsArgs a;
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
    a.counts = ConstView<std::int32_t, 1>(counts.data(), {X}, "counts");
    a.k = 2;
    a.out = TensorView<float, 1>(out.data(), {X + 2}, "stats");
    return a;
  };
  REQUIRE_NOTHROW(moss::router_stats(host, stats()));
  SECTION("router_stats: counts of the wrong length") {
    auto a = stats();
    a.counts = ConstView<std::int32_t, 1>(counts.data(), {3}, "counts");
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::router_stats(host, a),
                        ContainsSubstring("router_stats: counts is [3] (experts) but expected [4]"));
  }
  SECTION("router_stats: out of the wrong length") {
    auto a = stats();
    a.out = TensorView<float, 1>(out.data(), {X}, "stats");
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::router_stats(host, a), ContainsSubstring("stats is [4] (2 + experts) but expected [6]"));
  }
  SECTION("router_stats: K > X or K = 0") {
    auto a = stats();
    a.k = 5;
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::router_stats(host, a), ContainsSubstring("router_stats: K = 5 with 4 experts"));
    a.k = 0;
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::config_error);
  }
  SECTION("router_stats: X > kMaxExperts") {
    auto a = stats();
    a.logits = ConstView<float, 2>(logits.data(), {1, 257}, "logits");
    a.counts = ConstView<std::int32_t, 1>(counts.data(), {257}, "counts");
    a.out = TensorView<float, 1>(out.data(), {259}, "stats");
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::router_stats(host, a), ContainsSubstring("257 experts; supported: 1 to 256"));
  }
  SECTION("router_stats: logits not contiguous") {
    auto a = stats();
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, {9, 1}, "logits");
    REQUIRE_THROWS_AS(moss::router_stats(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::router_stats(host, a), ContainsSubstring("logits [2, 4] must be contiguous"));
  }
}

TEST_CASE("route_logits and route_select: every validation error", "[host][ops][router][errors]") {
  const index_t T = 3, D = 5, X = 4;
  const auto x = moss::test::randn(T * 8, 91);
  const auto w = moss::test::randn(300 * D, 92);
  std::vector<float> logits(300 * T), scores(300 * T), gate(3 * T);
  std::vector<std::int32_t> expert(3 * T);
  const moss::Host host;
  const auto good_logits = [&] {
    return moss::RouteLogitsArgs<float>{ConstView<float, 2>(x.data(), {T, D}, "x"),
                                        ConstView<float, 2>(w.data(), {X, D}, "weight"),
                                        TensorView<float, 2>(logits.data(), {T, X}, "logits")};
  };
  REQUIRE_NOTHROW(moss::route_logits(host, good_logits()));
  SECTION("route_logits: logits of the wrong shape, or not contiguous") {
    auto a = good_logits();
    a.logits = TensorView<float, 2>(logits.data(), {T, 5}, "logits");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a),
                        ContainsSubstring("route_logits: logits is [3, 5] (tokens, experts) but expected [3, 4]"));
    a.logits = TensorView<float, 2>(logits.data(), {T, X}, {6, 1}, "logits");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a), ContainsSubstring("logits [3, 4] must be contiguous"));
  }
  SECTION("route_logits: weight's d_model differs, x rows overlap, d_model = 0") {
    auto a = good_logits();
    a.weight = ConstView<float, 2>(w.data(), {X, 6}, "weight");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a),
                        ContainsSubstring("route_logits: weight is [4, 6] (experts, d_model) but expected [4, 5]"));
    a = good_logits();
    a.x = ConstView<float, 2>(x.data(), {T, D}, {4, 1}, "x");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a), ContainsSubstring("x has row stride 4 but its rows are 5 wide"));
    a = good_logits();
    a.x = ConstView<float, 2>(x.data(), {T, 0}, "x");
    a.weight = ConstView<float, 2>(w.data(), {X, 0}, "weight");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::config_error);
  }
  SECTION("route_logits: no experts, or more than kMaxExperts") {
    auto a = good_logits();
    a.weight = ConstView<float, 2>(w.data(), {0, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, 0}, "logits");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a), ContainsSubstring("weight is [0, 5] (experts, d_model)"));
    a.weight = ConstView<float, 2>(w.data(), {257, D}, "weight");
    a.logits = TensorView<float, 2>(logits.data(), {T, 257}, "logits");
    REQUIRE_THROWS_AS(moss::route_logits(host, a), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::route_logits(host, a),
                        ContainsSubstring("route_logits: 257 experts; supported: 1 to 256"));
  }

  const auto good_select = [&] {
    moss::RouteSelectArgs<moss::TopK<3>> a;
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
    a.scores = ConstView<float, 2>(scores.data(), {T, X}, "scores");
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 3}, "expert");
    a.gate = TensorView<float, 2>(gate.data(), {T, 3}, "gate");
    return a;
  };
  REQUIRE_NOTHROW(moss::route_select(host, good_select()));
  SECTION("route_select: scores of the wrong shape, or not contiguous") {
    auto a = good_select();
    a.scores = ConstView<float, 2>(scores.data(), {T, 3}, "scores");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a),
                        ContainsSubstring("route_select: scores is [3, 3] (tokens, experts) but expected [3, 4]"));
    a.scores = ConstView<float, 2>(scores.data(), {2, X}, "scores");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    a.scores = ConstView<float, 2>(scores.data(), {T, X}, {5, 1}, "scores");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a), ContainsSubstring("scores [3, 4] must be contiguous"));
  }
  SECTION("route_select: logits not contiguous, or missing") {
    auto a = good_select();
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, {5, 1}, "logits");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a), ContainsSubstring("logits [3, 4] must be contiguous"));
    a = good_select();
    a.scores.data = nullptr;
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a), ContainsSubstring("scores [3, 4] has no data"));
  }
  SECTION("route_select: expert or gate of the wrong shape") {
    auto a = good_select();
    a.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 2}, "expert");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a),
                        ContainsSubstring("expert is [3, 2] (tokens, K) but expected [3, 3]"));
    a = good_select();
    a.gate = TensorView<float, 2>(gate.data(), {2, 3}, "gate");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, a),
                        ContainsSubstring("gate is [2, 3] (tokens, K) but expected [3, 3]"));
  }
  SECTION("route_select: K > X, no experts, more than kMaxExperts") {
    auto a = good_select();
    a.logits = ConstView<float, 2>(logits.data(), {T, 2}, "logits");
    a.scores = ConstView<float, 2>(scores.data(), {T, 2}, "scores");
    REQUIRE_THROWS_AS(moss::route_select(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(
        moss::route_select(host, a),
        ContainsSubstring("route_select: the router picks K = 3 experts per token but there are only 2"));
    moss::RouteSelectArgs<moss::Top1Switch> b;
    b.logits = ConstView<float, 2>(logits.data(), {T, 0}, "logits");
    b.scores = ConstView<float, 2>(scores.data(), {T, 0}, "scores");
    b.expert = TensorView<std::int32_t, 2>(expert.data(), {T, 1}, "expert");
    b.gate = TensorView<float, 2>(gate.data(), {T, 1}, "gate");
    REQUIRE_THROWS_AS(moss::route_select(host, b), moss::config_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, b), ContainsSubstring("logits is [3, 0] (tokens, experts)"));
    b.logits = ConstView<float, 2>(logits.data(), {T, 257}, "logits");
    b.scores = ConstView<float, 2>(scores.data(), {T, 257}, "scores");
    REQUIRE_THROWS_AS(moss::route_select(host, b), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::route_select(host, b),
                        ContainsSubstring("route_select: 257 experts; supported: 1 to 256"));
  }
}

TEST_CASE("RouterSettings::validate refuses negative and non-finite values", "[host][ops][router][errors]") {
  moss::RouterSettings s;
  REQUIRE_NOTHROW(s.validate("layer"));
  s.capacity_factor = 1.25;
  REQUIRE_NOTHROW(s.validate("layer"));
  s.capacity_factor = -1.0;
  REQUIRE_THROWS_AS(s.validate("layer"), moss::config_error);
  REQUIRE_THROWS_WITH(s.validate("layer"), ContainsSubstring("layer: capacity_factor is -1"));
  s.capacity_factor = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(s.validate("layer"), moss::config_error);
  s.capacity_factor = 0.0;
  s.aux_loss_coef = kNaN;
  REQUIRE_THROWS_AS(s.validate("layer"), moss::config_error);
  REQUIRE_THROWS_WITH(s.validate("layer"), ContainsSubstring("aux_loss_coef"));
  s.aux_loss_coef = 0.01f;
  s.z_loss_coef = -0.001f;
  REQUIRE_THROWS_AS(s.validate("layer"), moss::config_error);
  REQUIRE_THROWS_WITH(s.validate("layer"), ContainsSubstring("z_loss_coef"));
}
