// tests/ops/grouped_linear_test.cpp: `grouped_linear` on the host against a hand-computed case
// and a float64 loop per expert (empty experts, one expert taking every row, rows past
// offsets[X], strided rows, host offsets), the offset checks and every validation error; and
// the ops chained into one MoE forward against a float64 loop.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router/math.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;
using I32 = std::vector<std::int32_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// One grouped problem with inputs rounded to T: x (rows, in) with row stride `xs`, weight
/// (X, out, in), bias (X, out).
template <class T>
struct Problem {
  index_t rows, in, out, X, xs;
  std::vector<T> x, w, bias;
  Problem(index_t rows_, index_t in_, index_t out_, index_t X_, std::uint64_t seed, index_t x_stride = 0)
      : rows(rows_), in(in_), out(out_), X(X_), xs(x_stride ? x_stride : in_) {
    x = moss::test::to_storage<T>(moss::test::randn(rows * xs, seed));
    w = moss::test::to_storage<T>(moss::test::randn(X * out * in, seed + 1, 1.0f / std::sqrt(static_cast<float>(in))));
    bias = moss::test::to_storage<T>(moss::test::randn(X * out, seed + 2, 0.5f));
  }

  /// Arguments writing y (rows, out) with row stride `ys`.
  moss::GroupedLinearArgs<T> args(const I32& offsets, T* y, index_t ys, bool with_bias) const {
    moss::GroupedLinearArgs<T> a;
    a.x = ConstView<T, 2>(x.data(), {rows, in}, {xs, 1}, "x");
    a.weight = ConstView<T, 3>(w.data(), {X, out, in}, "weight");
    if (with_bias) a.bias = ConstView<T, 2>(bias.data(), {X, out}, "bias");
    a.offsets = ConstView<std::int32_t, 1>(offsets.data(), {X + 1}, "offsets");
    a.y = TensorView<T, 2>(y, {rows, out}, {ys, 1}, "y");
    return a;
  }

  /// y[r] = W_e x[r] (+ b_e) in float64 for offsets[e] ≤ r < offsets[e+1]; rows past offsets[X]
  /// are NaN (not computed).
  std::vector<double> reference(const I32& offsets, bool with_bias) const {
    std::vector<double> y(static_cast<std::size_t>(rows * out), std::nan(""));
    for (index_t e = 0; e < X; ++e)
      for (index_t r = offsets[e]; r < offsets[e + 1]; ++r)
        for (index_t o = 0; o < out; ++o) {
          double s = with_bias ? static_cast<double>(moss::to_float(bias[e * out + o])) : 0.0;
          for (index_t k = 0; k < in; ++k)
            s += static_cast<double>(moss::to_float(x[r * xs + k])) * moss::to_float(w[(e * out + o) * in + k]);
          y[r * out + o] = s;
        }
    return y;
  }
};

/// Random non-decreasing offsets from 0 with some empty experts, ending at `end`.
I32 random_offsets(index_t X, index_t end, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<index_t> cuts(static_cast<std::size_t>(X - 1));
  for (auto& c : cuts) c = std::uniform_int_distribution<index_t>(0, end)(rng);
  std::sort(cuts.begin(), cuts.end());
  I32 off{0};
  for (index_t c : cuts) off.push_back(static_cast<std::int32_t>(c));
  off.push_back(static_cast<std::int32_t>(end));
  // Make experts 1 and X − 2 empty where there are enough experts.
  if (X >= 4) {
    off[2] = off[1];
    off[X - 1] = off[X - 2];
  }
  return off;
}

}  // namespace

TEMPLATE_TEST_CASE("grouped_linear: hand-computed two-expert case", "[host][ops][grouped_linear]", float, f16, bf16) {
  using T = TestType;
  // x (3, 2); expert 0 (identity, bias (1, −1)) takes row 0, expert 1 ([[0, 2], [1, 1]], bias
  // (0.5, 0)) rows 1 and 2. Every value is exact in every storage type.
  const auto x = moss::test::to_storage<T>({1, 2, 3, -4, 0.5f, 0.25f});
  const auto w = moss::test::to_storage<T>({1, 0, 0, 1, 0, 2, 1, 1});
  const auto b = moss::test::to_storage<T>({1, -1, 0.5f, 0});
  const I32 off{0, 1, 3};
  std::vector<T> y(6, moss::from_float<T>(kNaN));
  moss::GroupedLinearArgs<T> a;
  a.x = ConstView<T, 2>(x.data(), {3, 2}, "x");
  a.weight = ConstView<T, 3>(w.data(), {2, 2, 2}, "weight");
  a.offsets = ConstView<std::int32_t, 1>(off.data(), {3}, "offsets");
  a.y = TensorView<T, 2>(y.data(), {3, 2}, "y");
  moss::grouped_linear(moss::Host{}, a);
  const std::vector<float> want{1, 2, -8, -1, 0.5f, 0.75f};
  for (int i = 0; i < 6; ++i) CHECK(moss::to_float(y[i]) == want[i]);
  a.bias = ConstView<T, 2>(b.data(), {2, 2}, "bias");
  moss::grouped_linear(moss::Host{}, a);
  const std::vector<float> want_b{2, 1, -7.5f, -1, 1.0f, 0.75f};
  for (int i = 0; i < 6; ++i) CHECK(moss::to_float(y[i]) == want_b[i]);
}

TEMPLATE_TEST_CASE("grouped_linear matches a float64 loop per expert", "[host][ops][grouped_linear]", float, f16,
                   bf16) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>();
  struct Shape {
    index_t rows, in, out, X;
  };
  const Shape shapes[] = {{1, 1, 1, 1}, {9, 7, 5, 3}, {40, 33, 21, 6}, {70, 128, 48, 8}, {25, 300, 17, 5}};
  std::uint64_t seed = 2000;
  for (const Shape& s : shapes) {
    const Problem<T> pb(s.rows, s.in, s.out, s.X, seed += 10);
    // Offset patterns: random with empty experts and rows left over, every row on one expert
    // (the last, then the first), and every row covered.
    std::vector<I32> patterns{random_offsets(s.X, s.rows - s.rows / 4, seed + 5),
                              random_offsets(s.X, s.rows, seed + 6)};
    I32 last(static_cast<std::size_t>(s.X + 1), 0),
        first(static_cast<std::size_t>(s.X + 1), static_cast<std::int32_t>(s.rows));
    last[s.X] = static_cast<std::int32_t>(s.rows);
    first[0] = 0;
    patterns.push_back(last);
    patterns.push_back(first);
    for (const I32& off : patterns) {
      for (bool with_bias : {false, true}) {
        CAPTURE(s.rows, s.in, s.out, s.X, off, with_bias);
        std::vector<T> y(static_cast<std::size_t>(s.rows * s.out), moss::from_float<T>(kNaN));
        moss::grouped_linear(moss::Host{}, pb.args(off, y.data(), s.out, with_bias));
        const auto ref = pb.reference(off, with_bias);
        for (index_t e = 0; e < s.X; ++e) {
          if (off[e + 1] == off[e]) continue;
          std::vector<T> got(y.begin() + off[e] * s.out, y.begin() + off[e + 1] * s.out);
          std::vector<double> want(ref.begin() + off[e] * s.out, ref.begin() + off[e + 1] * s.out);
          CAPTURE(e);
          CHECK(moss::test::rel_l2(got, want) <= tol);
        }
        // Rows at or past offsets[X] are not written.
        for (index_t i = off[s.X] * s.out; i < s.rows * s.out; ++i) REQUIRE(std::isnan(moss::to_float(y[i])));
      }
    }
  }
}

TEST_CASE("grouped_linear: each expert uses its own weight and bias", "[host][ops][grouped_linear]") {
  // Swapping two experts' weights changes exactly their segments.
  const Problem<float> pb(12, 6, 4, 3, 2101);
  const I32 off{0, 5, 5, 12};  // expert 1 empty
  std::vector<float> y(12 * 4), y2(12 * 4);
  moss::grouped_linear(moss::Host{}, pb.args(off, y.data(), 4, true));
  Problem<float> swapped = pb;
  std::copy(pb.w.begin(), pb.w.begin() + 24, swapped.w.begin() + 48);
  std::copy(pb.w.begin() + 48, pb.w.end(), swapped.w.begin());
  std::copy(pb.bias.begin(), pb.bias.begin() + 4, swapped.bias.begin() + 8);
  std::copy(pb.bias.begin() + 8, pb.bias.end(), swapped.bias.begin());
  const I32 off2{0, 7, 7, 12};  // rows 0..6 now on the old expert 2, 7..11 on the old expert 0
  moss::grouped_linear(moss::Host{}, swapped.args(off2, y2.data(), 4, true));
  const auto ref = pb.reference(I32{0, 0, 0, 12}, true);     // every row through expert 2
  const auto ref0 = pb.reference(I32{0, 12, 12, 12}, true);  // every row through expert 0
  std::vector<float> got_a(y2.begin(), y2.begin() + 28), got_b(y2.begin() + 28, y2.end());
  CHECK(moss::test::rel_l2(got_a, std::vector<double>(ref.begin(), ref.begin() + 28)) <= 1e-6);
  CHECK(moss::test::rel_l2(got_b, std::vector<double>(ref0.begin() + 28, ref0.end())) <= 1e-6);
  std::vector<float> first(y.begin(), y.begin() + 20);
  CHECK(moss::test::rel_l2(first, std::vector<double>(ref0.begin(), ref0.begin() + 20)) <= 1e-6);
}

TEMPLATE_TEST_CASE("grouped_linear: host_offsets given or not give the same bits", "[host][ops][grouped_linear]", float,
                   bf16) {
  using T = TestType;
  const Problem<T> pb(31, 19, 13, 5, 2201);
  const I32 off = random_offsets(5, 27, 2202);
  std::vector<T> a(31 * 13, moss::from_float<T>(kNaN)), b(a.size(), moss::from_float<T>(kNaN));
  moss::grouped_linear(moss::Host{}, pb.args(off, a.data(), 13, true));
  const I32 host_copy = off;
  auto args = pb.args(off, b.data(), 13, true);
  args.host_offsets = host_copy.data();
  moss::grouped_linear(moss::Host{}, args);
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(same_bits(a[i], b[i]));
}

TEMPLATE_TEST_CASE("grouped_linear: strided x and y, gaps untouched", "[host][ops][grouped_linear]", float, f16) {
  using T = TestType;
  const index_t rows = 23, in = 10, out = 7, X = 4, xs = in + 6, ys = out + 3;
  const Problem<T> strided(rows, in, out, X, 2301, xs);
  const I32 off{0, 6, 6, 15, 20};
  std::vector<T> wide(static_cast<std::size_t>(rows * ys), moss::from_float<T>(kNaN));
  moss::grouped_linear(moss::Host{}, strided.args(off, wide.data(), ys, true));
  const auto ref = strided.reference(off, true);
  std::vector<T> got;
  std::vector<double> want;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < ys; ++c) {
      const T v = wide[r * ys + c];
      if (c < out && r < off[X]) {
        got.push_back(v);
        want.push_back(ref[r * out + c]);
      } else {
        CAPTURE(r, c);
        REQUIRE(std::isnan(moss::to_float(v)));
      }
    }
  CHECK(moss::test::rel_l2(got, want) <= (std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>()));
}

TEST_CASE("grouped_linear: each row's expert by the offsets, and resident offsets zero the rows past them",
          "[host][ops][grouped_linear]") {
  // Offsets {0, 2, 2, 5, 6}: rows 0-1 expert 0, expert 1 empty, rows 2-4 expert 2, row 5 expert 3.
  const I32 off{0, 2, 2, 5, 6};
  const std::vector<int> want{0, 0, 2, 2, 2, 3, -1, -1};
  for (std::int64_t r = 0; r < 8; ++r) {
    CAPTURE(r);
    CHECK(moss::detail::expert_of_row(off.data(), 4, r) == want[static_cast<std::size_t>(r)]);
  }
  const I32 all_empty{0, 0, 0};
  CHECK(moss::detail::expert_of_row(all_empty.data(), 2, 0) == -1);
  const I32 last_only{0, 0, 0, 3};
  CHECK(moss::detail::expert_of_row(last_only.data(), 3, 2) == 2);

  // Resident offsets: the kept rows as always, the 2 rows past offsets[X] zero, the gaps untouched.
  const index_t rows = 8, in = 5, out = 3, ys = out + 2;
  const Problem<float> pb(rows, in, out, 4, 2411);
  std::vector<float> y(static_cast<std::size_t>(rows * ys), kNaN), plain = y;
  auto a = pb.args(off, y.data(), ys, true);
  a.resident_offsets = true;
  moss::grouped_linear(moss::Host{}, a);
  moss::grouped_linear(moss::Host{}, pb.args(off, plain.data(), ys, true));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < ys; ++c) {
      CAPTURE(r, c);
      const float v = y[static_cast<std::size_t>(r * ys + c)];
      if (c >= out)
        CHECK(std::isnan(v));
      else if (r >= off[4])
        CHECK(v == 0.0f);
      else
        CHECK(v == plain[static_cast<std::size_t>(r * ys + c)]);
    }
}

TEST_CASE("grouped_linear: zero rows, all experts empty", "[host][ops][grouped_linear]") {
  const Problem<float> pb(4, 3, 2, 3, 2401);
  std::vector<float> y(8, 42.0f);
  const I32 none{0, 0, 0, 0};
  REQUIRE_NOTHROW(moss::grouped_linear(moss::Host{}, pb.args(none, y.data(), 2, true)));
  CHECK(y == std::vector<float>(8, 42.0f));
  auto a = pb.args(none, y.data(), 2, true);
  a.x.shape = {0, 3};
  a.y.shape = {0, 2};
  REQUIRE_NOTHROW(moss::grouped_linear(moss::Host{}, a));
}

TEST_CASE("grouped_linear: bad offsets are shape errors", "[host][ops][grouped_linear][errors]") {
  const Problem<float> pb(10, 4, 3, 3, 2501);
  std::vector<float> y(30);
  const moss::Host host;
  REQUIRE_NOTHROW(moss::grouped_linear(host, pb.args(I32{0, 4, 4, 10}, y.data(), 3, false)));
  SECTION("decreasing") {
    const I32 off{0, 6, 4, 10};
    REQUIRE_THROWS_AS(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)),
                        ContainsSubstring("grouped_linear: offsets[2] = 4 is below offsets[1] = 6"));
  }
  SECTION("offsets[0] is not 0") {
    const I32 off{1, 4, 4, 10};
    REQUIRE_THROWS_AS(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)),
                        ContainsSubstring("offsets[0] is 1, expected 0"));
  }
  SECTION("offsets[X] past the rows") {
    const I32 off{0, 4, 4, 11};
    REQUIRE_THROWS_AS(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, pb.args(off, y.data(), 3, false)),
                        ContainsSubstring("offsets[3] = 11 exceeds the 10 rows of x"));
  }
  SECTION("bad host_offsets are checked too") {
    const I32 good{0, 4, 4, 10}, bad{0, 4, 3, 10};
    auto a = pb.args(good, y.data(), 3, false);
    a.host_offsets = bad.data();
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("offsets[2] = 3 is below offsets[1] = 4"));
  }
}

TEST_CASE("grouped_linear: every validation error", "[host][ops][grouped_linear][errors]") {
  const Problem<bf16> pb(6, 5, 4, 3, 2601, 5);
  std::vector<bf16> y(6 * 10), wide(6 * 10);
  const I32 off{0, 2, 4, 6};
  const moss::Host host;
  const auto good = [&] { return pb.args(off, y.data(), 4, true); };
  REQUIRE_NOTHROW(moss::grouped_linear(host, good()));

  SECTION("weight's in differs from x's") {
    auto a = good();
    a.weight = ConstView<bf16, 3>(pb.w.data(), {3, 4, 4}, "weight");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(
        moss::grouped_linear(host, a),
        ContainsSubstring("grouped_linear: weight is [3, 4, 4] (experts, out, in) but expected [3, 4, 5]"));
  }
  SECTION("offsets of the wrong length") {
    auto a = good();
    a.offsets = ConstView<std::int32_t, 1>(off.data(), {3}, "offsets");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a),
                        ContainsSubstring("offsets is [3] (experts + 1) but expected [4]"));
  }
  SECTION("y of the wrong shape") {
    auto a = good();
    a.y = TensorView<bf16, 2>(y.data(), {6, 3}, "y");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a),
                        ContainsSubstring("y is [6, 3] (rows, out) but expected [6, 4]"));
  }
  SECTION("bias of the wrong shape, or not contiguous") {
    auto a = good();
    a.bias = ConstView<bf16, 2>(pb.bias.data(), {2, 4}, "bias");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a),
                        ContainsSubstring("bias is [2, 4] (experts, out) but expected [3, 4]"));
    a.bias = ConstView<bf16, 2>(pb.w.data(), {3, 4}, {8, 1}, "bias");
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("bias [3, 4] must be contiguous"));
  }
  SECTION("an empty extent") {
    auto a = good();
    a.weight = ConstView<bf16, 3>(pb.w.data(), {3, 0, 5}, "weight");
    a.y = TensorView<bf16, 2>(y.data(), {6, 0}, "y");
    a.bias = {};
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("weight is [3, 0, 5] (experts, out, in)"));
  }
  SECTION("weight not contiguous") {
    auto a = good();
    a.weight = ConstView<bf16, 3>(pb.w.data(), {3, 4, 5}, {20, 5, 2}, "weight");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("weight [3, 4, 5] must be contiguous"));
  }
  SECTION("x or y rows overlapping, or without unit inner stride") {
    auto a = good();
    a.x = ConstView<bf16, 2>(pb.x.data(), {6, 5}, {4, 1}, "x");
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("x has row stride 4 but its rows are 5 wide"));
    a = good();
    a.y = TensorView<bf16, 2>(wide.data(), {6, 4}, {3, 1}, "y");
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("y has row stride 3 but its rows are 4 wide"));
    a = good();
    a.y = TensorView<bf16, 2>(wide.data(), {6, 4}, {10, 2}, "y");
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("y needs unit stride in its last dimension"));
  }
  SECTION("missing data") {
    auto a = good();
    a.offsets.data = nullptr;
    REQUIRE_THROWS_AS(moss::grouped_linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::grouped_linear(host, a), ContainsSubstring("offsets [4] has no data"));
  }
}

TEMPLATE_TEST_CASE("route → plan → gather → grouped_linear → combine equals a float64 MoE loop",
                   "[host][ops][grouped_linear]", float, bf16) {
  using T = TestType;
  // y_t = Σ_s g_s · (W_{e_s} x_t + b_{e_s}) over the kept slots (docs/math.md §2.6), top-2 with
  // renormalisation, with and without capacity.
  const index_t tokens = 48, D = 24, out = 16, X = 6;
  const auto xf = moss::test::randn(tokens * D, 2701);
  const auto x = moss::test::to_storage<T>(xf);
  const auto wr = moss::test::randn(X * D, 2702, 0.5f);
  const Problem<T> experts(tokens * 2, D, out, X, 2703);  // only its weight and bias are used
  std::vector<float> logits(tokens * X), gate(tokens * 2);
  I32 expert(tokens * 2);
  moss::RouteArgs<T, moss::TopK<2>> ra;
  ra.router.renormalize = true;
  ra.x = ConstView<T, 2>(x.data(), {tokens, D}, "x");
  ra.weight = ConstView<float, 2>(wr.data(), {X, D}, "router.weight");
  ra.logits = TensorView<float, 2>(logits.data(), {tokens, X}, "logits");
  ra.expert = TensorView<std::int32_t, 2>(expert.data(), {tokens, 2}, "expert");
  ra.gate = TensorView<float, 2>(gate.data(), {tokens, 2}, "gate");
  moss::route(moss::Host{}, ra);

  for (double cf : {0.0, 1.0}) {
    CAPTURE(cf);
    const moss::Host host;
    const index_t C = moss::detail::route::expert_capacity(cf, tokens, 2, X);
    moss::PermutePlan plan =
        moss::make_permute_plan(host, ConstView<std::int32_t, 2>(expert.data(), {tokens, 2}, "expert"), X, C);
    const auto& host_off = moss::read_offsets(host, plan);
    REQUIRE(host_off.size() == static_cast<std::size_t>(X + 1));
    if (cf > 0) REQUIRE(host_off[X] < tokens * 2);  // capacity 1.0 with a skewed router drops pairs
    std::vector<T> permuted(tokens * 2 * D, moss::from_float<T>(kNaN)), ye(tokens * 2 * out, moss::from_float<T>(kNaN));
    moss::GatherRowsArgs<T> ga;
    ga.x = ra.x;
    ga.row_pair = plan.row_pair_view();
    ga.offsets = plan.offsets_view();
    ga.k = 2;
    ga.out = TensorView<T, 2>(permuted.data(), {tokens * 2, D}, "permuted");
    moss::gather_rows(host, ga);
    moss::GroupedLinearArgs<T> gl;
    gl.x = ga.out;
    gl.weight = ConstView<T, 3>(experts.w.data(), {X, out, D}, "experts.weight");
    gl.bias = ConstView<T, 2>(experts.bias.data(), {X, out}, "experts.bias");
    gl.offsets = plan.offsets_view();
    gl.host_offsets = host_off.data();
    gl.y = TensorView<T, 2>(ye.data(), {tokens * 2, out}, "expert_out");
    moss::grouped_linear(host, gl);
    std::vector<T> y(tokens * out, moss::from_float<T>(kNaN));
    moss::CombineRowsArgs<T> ca;
    ca.y = gl.y;
    ca.pair_row = plan.pair_row_view();
    ca.gate = ra.gate;
    ca.weight_begin = 0;
    ca.weight_end = out;
    ca.out = TensorView<T, 2>(y.data(), {tokens, out}, "y");
    moss::combine_rows(host, ca);

    const I32 pair_row(plan.pair_row.data(), plan.pair_row.data() + tokens * 2);
    std::vector<double> ref(tokens * out, 0.0);
    for (index_t t = 0; t < tokens; ++t)
      for (index_t s = 0; s < 2; ++s) {
        if (pair_row[t * 2 + s] < 0) continue;
        const index_t e = expert[t * 2 + s];
        for (index_t o = 0; o < out; ++o) {
          double v = moss::to_float(experts.bias[e * out + o]);
          for (index_t k = 0; k < D; ++k)
            v += static_cast<double>(moss::to_float(x[t * D + k])) * moss::to_float(experts.w[(e * out + o) * D + k]);
          ref[t * out + o] += static_cast<double>(gate[t * 2 + s]) * v;
        }
      }
    // Two roundings to T on the way (expert outputs, then the combine): twice the op tolerance.
    CHECK(moss::test::rel_l2(y, ref) <= (std::is_same_v<T, float> ? 1e-6 : 2 * moss::test::op_tolerance<T>()));
  }
}
