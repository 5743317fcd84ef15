// tests/ops/sinkhorn_test.cpp: `sinkhorn` on the host (docs/math.md §2.2) against hand-worked
// cases (one token, one expert, a uniform batch), an independent float64 loop of the same
// iteration (a fixed number of rounds) and one iterated to convergence, the balanced column and
// row sums, the tolerance and the max_rounds cap, NaN and infinite logits, the workspace
// contract on the host, every validation error, and SinkhornTop1's training-mode routing
// composed from route_logits → sinkhorn → route_select.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "moss/ops/router.hpp"
#include "moss/ops/sinkhorn.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Runs `sinkhorn` on the host into a NaN-poisoned scores matrix (so every element must be written).
std::vector<float> run_sinkhorn(const std::vector<float>& logits, index_t T, index_t X, float tolerance = 1e-4f,
                                int max_rounds = 100) {
  std::vector<float> scores(static_cast<std::size_t>(T * X), kNaN);
  moss::SinkhornArgs a;
  a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
  a.scores = TensorView<float, 2>(scores.data(), {T, X}, "scores");
  a.tolerance = tolerance;
  a.max_rounds = max_rounds;
  moss::sinkhorn(moss::Host{}, a);
  return scores;
}

/// The iteration of docs/math.md §2.2 in float64, written here without the library: exactly
/// `rounds` rounds, or, with rounds < 0, until no entry of the balanced matrix moves by more than
/// 1e-11 relative in a round (20–30 rounds for the shapes here), with the row shift and ε = 1e-8
/// as specified. The matrix, not the scales, is what converges: ε breaks the scale invariance
/// (d0·k, d1/k) only weakly, so the scales drift by ~1e-7 per round long after the matrix has
/// settled, and a test on them never stops (it ran a million rounds, 100 s under ASan).
std::vector<double> sinkhorn64(const std::vector<float>& logits, index_t T, index_t X, int rounds) {
  std::vector<double> c(logits.size()), d0(static_cast<std::size_t>(T), 1.0), d1(static_cast<std::size_t>(X), 1.0);
  for (index_t t = 0; t < T; ++t) {
    double m = -INFINITY;
    for (index_t i = 0; i < X; ++i) m = std::max(m, static_cast<double>(logits[t * X + i]));
    for (index_t i = 0; i < X; ++i) c[t * X + i] = std::exp(static_cast<double>(logits[t * X + i]) - m);
  }
  const auto balanced = [&](index_t t, index_t i) { return c[t * X + i] * d1[i] * d0[t]; };
  constexpr int kConvergenceCap = 10000;
  std::vector<double> last(c.size(), 0.0);
  for (int round = 0; rounds < 0 || round < rounds; ++round) {
    REQUIRE(round < kConvergenceCap);  // the float64 reference converged
    for (index_t t = 0; t < T; ++t) {
      double s = 0;
      for (index_t i = 0; i < X; ++i) s += d1[i] * c[t * X + i];
      d0[t] = 1.0 / (static_cast<double>(T) * (s + 1e-8));
    }
    for (index_t i = 0; i < X; ++i) {
      double s = 0;
      for (index_t t = 0; t < T; ++t) s += d0[t] * c[t * X + i];
      d1[i] = 1.0 / (static_cast<double>(X) * (s + 1e-8));
    }
    if (rounds >= 0) continue;
    double change = 0;
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < X; ++i) {
        const double p = balanced(t, i);
        change = std::max(change, std::fabs(p - last[t * X + i]) / p);
        last[t * X + i] = p;
      }
    if (change <= 1e-11) break;
  }
  for (index_t t = 0; t < T; ++t)
    for (index_t i = 0; i < X; ++i) c[t * X + i] = balanced(t, i);
  return c;
}

/// The column sums (X) or the row sums (T) of a (T, X) matrix, in double.
template <class V>
std::vector<double> sums(const std::vector<V>& m, index_t T, index_t X, bool columns) {
  std::vector<double> s(static_cast<std::size_t>(columns ? X : T), 0.0);
  for (index_t t = 0; t < T; ++t)
    for (index_t i = 0; i < X; ++i) s[columns ? i : t] += m[t * X + i];
  return s;
}
template <class V>
std::vector<double> column_sums(const std::vector<V>& m, index_t T, index_t X) {
  return sums(m, T, X, true);
}
template <class V>
std::vector<double> row_sums(const std::vector<V>& m, index_t T, index_t X) {
  return sums(m, T, X, false);
}

/// |a − b| ≤ rel · |b|.
bool near_rel(double a, double b, double rel) { return std::fabs(a - b) <= rel * std::fabs(b); }

/// max_i |a_i − b_i| / |b_i|.
template <class A, class B>
double max_rel(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    m = std::max(
        m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) / std::fabs(static_cast<double>(b[i])));
  return m;
}

/// A skewed batch of logits (T, X): expert 0 gets +3, so an unbalanced argmax sends it most tokens.
std::vector<float> skewed_logits(index_t T, index_t X, std::uint64_t seed) {
  auto l = moss::test::randn(T * X, seed);
  for (index_t t = 0; t < T; ++t) l[t * X] += 3.0f;
  return l;
}

}  // namespace

TEST_CASE("sinkhorn: hand-worked cases", "[host][ops][sinkhorn]") {
  SECTION("one token: every score is 1/X whatever the logits") {
    // d0 = 1 / Σ_i c_i, d1_i = 1 / (X·d0·c_i), so d1_i·c_i·d0 = 1/X after the first round (up to ε).
    const std::vector<float> l{0.5f, -2.0f, 3.0f, 1.0f, 0.0f};
    for (float s : run_sinkhorn(l, 1, 5)) CHECK(near_rel(s, 0.2, 1e-5));  // ε/(d0·c_i) ≈ 2e-6 at c = e^-5
  }
  SECTION("one expert: every score is 1/T whatever the logits") {
    const std::vector<float> l{4.0f, -1.0f, 0.25f, 7.0f};
    for (float s : run_sinkhorn(l, 4, 1)) CHECK(near_rel(s, 0.25, 1e-6));
  }
  SECTION("a uniform batch: every score is 1/(T·X)") {
    const std::vector<float> l(6 * 4, 1.75f);
    for (float s : run_sinkhorn(l, 6, 4)) CHECK(near_rel(s, 1.0 / 24.0, 1e-6));
  }
  SECTION("two tokens that prefer the same expert are split between the experts") {
    // Both tokens prefer expert 0, token 0 more strongly: the balanced matrix gives expert 0 to
    // token 0 and expert 1 to token 1 (each column sums to 1/2).
    const std::vector<float> l{3.0f, 0.0f, 1.0f, 0.0f};
    const auto s = run_sinkhorn(l, 2, 2);
    CHECK(moss::test::argmax_row(s, 0, 2) == 0);
    CHECK(moss::test::argmax_row(s, 1, 2) == 1);
    CHECK(near_rel(s[0] + s[2], 0.5, 1e-6));
    CHECK(near_rel(s[1] + s[3], 0.5, 1e-6));
    CHECK(moss::test::rel_l2(s, sinkhorn64(l, 2, 2, -1)) <= 1e-4);
  }
}

TEST_CASE("sinkhorn: balanced columns and rows, against float64 iterated to convergence", "[host][ops][sinkhorn]") {
  struct Case {
    index_t T, X;
    bool skewed;
  };
  std::uint64_t seed = 40;
  for (const Case& c : {Case{64, 4, true}, Case{200, 8, false}, Case{333, 17, true}, Case{50, 64, false}}) {
    CAPTURE(c.T, c.X, c.skewed);
    const auto l = c.skewed ? skewed_logits(c.T, c.X, seed += 5) : moss::test::randn(c.T * c.X, seed += 5, 2.0f);
    const auto s = run_sinkhorn(l, c.T, c.X);
    for (float v : s) REQUIRE(v > 0.0f);
    // The last update is the column scale: the columns sum to 1/X up to rounding and ε.
    for (double col : column_sums(s, c.T, c.X)) CHECK(near_rel(col, 1.0 / static_cast<double>(c.X), 1e-5));
    // The rows sum to 1/T up to the stopping tolerance.
    for (double row : row_sums(s, c.T, c.X)) CHECK(near_rel(row, 1.0 / static_cast<double>(c.T), 1e-3));
    const auto ref = sinkhorn64(l, c.T, c.X, -1);
    CHECK(moss::test::rel_l2(s, ref) <= 1e-4);
    // Wherever the converged row has a clear winner, it is this matrix's argmax too.
    for (index_t t = 0; t < c.T; ++t) {
      std::vector<double> row(ref.begin() + t * c.X, ref.begin() + (t + 1) * c.X);
      std::sort(row.rbegin(), row.rend());
      if (c.X > 1 && row[0] - row[1] > 1e-2 * row[0]) {
        CAPTURE(t);
        CHECK(moss::test::argmax_row(s, t, c.X) == moss::test::argmax_row(ref, t, c.X));
      }
    }
  }
}

TEST_CASE("sinkhorn: max_rounds caps the iteration, tolerance 0 runs every round", "[host][ops][sinkhorn]") {
  const index_t T = 97, X = 8;
  const auto l = skewed_logits(T, X, 77);
  for (int rounds : {1, 2, 3, 7, 30}) {
    CAPTURE(rounds);
    const auto s = run_sinkhorn(l, T, X, 0.0f, rounds);
    // Exactly `rounds` rounds of the float64 loop, up to float32 rounding.
    CHECK(max_rel(s, sinkhorn64(l, T, X, rounds)) <= 2e-5);
    for (double col : column_sums(s, T, X)) CHECK(near_rel(col, 1.0 / X, 1e-5));
  }
  // One round leaves the rows far from 1/T on a skewed batch: the cap really stopped it.
  const auto one = run_sinkhorn(l, T, X, 0.0f, 1);
  const auto rows = row_sums(one, T, X);
  CHECK(max_rel(rows, std::vector<double>(static_cast<std::size_t>(T), 1.0 / T)) > 0.05);
  // A larger tolerance with the default cap stops early, a smaller one later and closer.
  const auto ref = sinkhorn64(l, T, X, -1);
  const double loose = moss::test::rel_l2(run_sinkhorn(l, T, X, 1e-1f), ref);
  const double tight = moss::test::rel_l2(run_sinkhorn(l, T, X, 1e-6f), ref);
  CAPTURE(loose, tight);
  CHECK(tight < loose);
  CHECK(tight <= 1e-5);
}

TEST_CASE("sinkhorn: converges before the cap and stops at the first round under the tolerance",
          "[host][ops][sinkhorn]") {
  const index_t T = 128, X = 8;
  const auto l = skewed_logits(T, X, 91);
  const auto converged = run_sinkhorn(l, T, X);  // tolerance 1e-4, at most 100 rounds
  // Running exactly n rounds (tolerance 0) repeats the same float operations, so the stopping
  // round n is the one whose result matches bit for bit.
  int stopped = -1;
  for (int n = 1; n <= 100 && stopped < 0; ++n) {
    const auto s = run_sinkhorn(l, T, X, 0.0f, n);
    if (std::memcmp(s.data(), converged.data(), s.size() * sizeof(float)) == 0) stopped = n;
  }
  CAPTURE(stopped);
  REQUIRE(stopped > 1);
  CHECK(stopped < 100);
  // One round more moves the column scales by less than the tolerance: the matrix barely changes.
  CHECK(max_rel(run_sinkhorn(l, T, X, 0.0f, stopped + 1), converged) <= 1e-3);
}

TEST_CASE("sinkhorn: NaN and infinite logits propagate, nothing crashes", "[host][ops][sinkhorn]") {
  const index_t T = 6, X = 4;
  auto l = moss::test::randn(T * X, 5);
  SECTION("a NaN logit makes every score NaN (it enters every column sum)") {
    l[2 * X + 1] = kNaN;
    for (float v : run_sinkhorn(l, T, X)) CHECK(std::isnan(v));
    for (float v : run_sinkhorn(l, T, X, 0.0f, 100)) CHECK(std::isnan(v));  // stops at the NaN, not at the cap
  }
  SECTION("+inf: exp(inf − inf) is NaN, so every score is NaN") {
    l[3 * X] = INFINITY;
    for (float v : run_sinkhorn(l, T, X)) CHECK(std::isnan(v));
  }
  SECTION("−inf in a row of numbers is an impossible expert: score 0, the rest balanced") {
    l[1 * X + 2] = -INFINITY;
    const auto s = run_sinkhorn(l, T, X);
    CHECK(s[1 * X + 2] == 0.0f);
    for (float v : s) CHECK(std::isfinite(v));
    for (double col : column_sums(s, T, X)) CHECK(near_rel(col, 1.0 / X, 1e-5));
  }
}

TEST_CASE("sinkhorn: zero tokens write nothing, the host needs no workspace", "[host][ops][sinkhorn]") {
  const std::vector<float> none;
  CHECK(run_sinkhorn(none, 0, 8).empty());
  const index_t T = 10, X = 3;
  const auto l = moss::test::randn(T * X, 8);
  std::vector<float> scores(T * X, kNaN);
  moss::SinkhornArgs a;
  a.logits = ConstView<float, 2>(l.data(), {T, X}, "logits");
  a.scores = TensorView<float, 2>(scores.data(), {T, X}, "scores");
  CHECK(moss::workspace_bytes(moss::Host{}, a) == 0);
  // A caller workspace is accepted (and unused) on the host: the same result.
  std::vector<unsigned char> scratch(64);
  a.workspace = moss::Workspace{scratch.data(), scratch.size()};
  moss::sinkhorn(moss::Host{}, a);
  const auto want = run_sinkhorn(l, T, X);
  CHECK(std::memcmp(scores.data(), want.data(), want.size() * sizeof(float)) == 0);
}

TEST_CASE("sinkhorn: every validation error", "[host][ops][sinkhorn][errors]") {
  const index_t T = 4, X = 3;
  std::vector<float> logits(5000 * 2), scores(5000 * 2);
  const moss::Host host;
  const auto good = [&] {
    moss::SinkhornArgs a;
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
    a.scores = TensorView<float, 2>(scores.data(), {T, X}, "scores");
    return a;
  };
  REQUIRE_NOTHROW(moss::sinkhorn(host, good()));
  SECTION("scores of the wrong shape") {
    auto a = good();
    a.scores = TensorView<float, 2>(scores.data(), {T, 2}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a),
                        ContainsSubstring("sinkhorn: scores is [4, 2] (tokens, experts) but expected [4, 3]"));
    REQUIRE_THROWS_AS(moss::workspace_bytes(host, a), moss::shape_error);
  }
  SECTION("logits or scores not contiguous, or missing") {
    auto a = good();
    a.logits = ConstView<float, 2>(logits.data(), {T, X}, {4, 1}, "logits");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("logits [4, 3] must be contiguous"));
    a = good();
    a.scores = TensorView<float, 2>(scores.data(), {T, X}, {4, 1}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("scores [4, 3] must be contiguous"));
    a = good();
    a.scores.data = nullptr;
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("scores [4, 3] has no data"));
  }
  SECTION("scores overlapping logits") {
    auto a = good();
    a.scores = TensorView<float, 2>(logits.data() + 5, {T, X}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("sinkhorn: scores [4, 3] overlaps logits"));
    a.scores = TensorView<float, 2>(logits.data(), {T, X}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::shape_error);
    a.scores = TensorView<float, 2>(logits.data() + T * X, {T, X}, "scores");  // adjacent: fine
    REQUIRE_NOTHROW(moss::sinkhorn(host, a));
  }
  SECTION("no experts, or more than kSinkhornMaxExperts") {
    auto a = good();
    a.logits = ConstView<float, 2>(logits.data(), {T, 0}, "logits");
    a.scores = TensorView<float, 2>(scores.data(), {T, 0}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("sinkhorn: logits is [4, 0] (tokens, experts)"));
    a.logits = ConstView<float, 2>(logits.data(), {2, moss::kSinkhornMaxExperts + 1}, "logits");
    a.scores = TensorView<float, 2>(scores.data(), {2, moss::kSinkhornMaxExperts + 1}, "scores");
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::unsupported_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("sinkhorn: 4097 experts; supported: 1 to 4096"));
    a.logits = ConstView<float, 2>(logits.data(), {2, moss::kSinkhornMaxExperts}, "logits");
    a.scores = TensorView<float, 2>(scores.data(), {2, moss::kSinkhornMaxExperts}, "scores");
    REQUIRE_NOTHROW(moss::sinkhorn(host, a));
  }
  SECTION("tolerance negative or not finite; max_rounds below 1") {
    auto a = good();
    a.tolerance = -1e-4f;
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("sinkhorn: tolerance is -0.0001"));
    a.tolerance = kNaN;
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::config_error);
    a.tolerance = INFINITY;
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::config_error);
    a = good();
    a.max_rounds = 0;
    REQUIRE_THROWS_AS(moss::sinkhorn(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(host, a), ContainsSubstring("sinkhorn: max_rounds is 0, expected ≥ 1"));
  }
}

TEST_CASE("SinkhornTop1 training mode: route_logits → sinkhorn → route_select ranks the balanced matrix",
          "[host][ops][sinkhorn][router]") {
  // A skewed batch: expert 0's weight row is aligned with a shared component of every token, so
  // ranking the logits sends most tokens to expert 0.
  const index_t T = 64, X = 4, D = 16;
  auto x = moss::test::randn(T * D, 51, 0.5f);
  for (index_t t = 0; t < T; ++t) x[t * D] += 2.0f;
  auto w = moss::test::randn(X * D, 52, 0.5f);
  w[0] += 1.5f;
  std::vector<float> logits(T * X), scores(T * X), gate(T), inf_gate(T);
  std::vector<std::int32_t> expert(T), inf_expert(T);
  const moss::Host host;
  moss::route_logits(host, moss::RouteLogitsArgs<float>{ConstView<float, 2>(x.data(), {T, D}, "x"),
                                                        ConstView<float, 2>(w.data(), {X, D}, "weight"),
                                                        TensorView<float, 2>(logits.data(), {T, X}, "logits")});
  moss::SinkhornArgs sa;
  sa.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
  sa.scores = TensorView<float, 2>(scores.data(), {T, X}, "scores");
  moss::sinkhorn(host, sa);
  moss::SinkhornTop1 train;
  train.training = true;
  moss::route_select(
      host, moss::RouteSelectArgs<moss::SinkhornTop1>{train, ConstView<float, 2>(logits.data(), {T, X}, "logits"),
                                                      ConstView<float, 2>(scores.data(), {T, X}, "scores"),
                                                      TensorView<std::int32_t, 2>(expert.data(), {T, 1}, "expert"),
                                                      TensorView<float, 2>(gate.data(), {T, 1}, "gate")});
  moss::route_select(host, moss::RouteSelectArgs<moss::SinkhornTop1>{
                               moss::SinkhornTop1{}, ConstView<float, 2>(logits.data(), {T, X}, "logits"),
                               ConstView<float, 2>(logits.data(), {T, X}, "scores"),
                               TensorView<std::int32_t, 2>(inf_expert.data(), {T, 1}, "expert"),
                               TensorView<float, 2>(inf_gate.data(), {T, 1}, "gate")});
  std::vector<int> count_inf(X, 0), count_trn(X, 0);
  for (index_t t = 0; t < T; ++t) {
    ++count_inf[inf_expert[t]];
    ++count_trn[expert[t]];
  }
  CAPTURE(count_inf, count_trn);
  REQUIRE(count_inf[0] >= 3 * T / 4);  // the input really is skewed
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    REQUIRE(expert[t] == moss::test::argmax_row(scores, t, X));  // the argmax of each balanced row
    REQUIRE(near_rel(gate[t], 1.0 / (1.0 + std::exp(-static_cast<double>(logits[t * X + expert[t]]))), 1e-6));
  }
  const auto used = [](const std::vector<int>& c) {
    return std::count_if(c.begin(), c.end(), [](int n) { return n > 0; });
  };
  CHECK(used(count_trn) == X);
  CHECK(used(count_trn) > used(count_inf));
  CHECK(*std::max_element(count_trn.begin(), count_trn.end()) <= T / 2);
}
