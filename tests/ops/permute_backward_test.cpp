// tests/ops/permute_backward_test.cpp: `gather_rows_backward` and `combine_rows_backward` on the
// host: float64 central differences of `gather_rows` / `combine_rows` run in double over plans
// with K = 1 and 2, capacity drops, empty experts and zero tokens; the float instantiation
// against the double one; bitwise repeatability; the double forward against the float one; and
// validation errors naming the tensor.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute_backward.hpp"
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
    std::printf("grad-error permute_backward %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

/// One routing case: T tokens, K slots, X experts, capacity C (0: dropless), row width D, weighted
/// columns [wb, we); the experts are drawn from [0, used) so experts ≥ used stay empty.
struct Plan {
  index_t tokens, k, experts, capacity;
  std::vector<std::int32_t> expert, pair_row, row_pair, offsets, counts;
  Plan(index_t tokens_, index_t k_, index_t experts_, index_t capacity_, index_t used, std::uint64_t seed)
      : tokens(tokens_), k(k_), experts(experts_), capacity(capacity_) {
    std::mt19937_64 rng(seed);
    expert.resize(static_cast<std::size_t>(tokens * k));
    for (index_t t = 0; t < tokens; ++t) {
      // K distinct experts per token, from [0, used).
      std::vector<std::int32_t> pool;
      for (index_t e = 0; e < used; ++e) pool.push_back(static_cast<std::int32_t>(e));
      std::shuffle(pool.begin(), pool.end(), rng);
      for (index_t s = 0; s < k; ++s) expert[t * k + s] = pool[s];
    }
    pair_row.assign(static_cast<std::size_t>(tokens * k), 0);
    row_pair.assign(static_cast<std::size_t>(tokens * k), 0);
    offsets.assign(static_cast<std::size_t>(experts + 1), 0);
    counts.assign(static_cast<std::size_t>(experts), 0);
    moss::permute_plan(moss::Host{},
                       moss::PermutePlanArgs{ConstView<std::int32_t, 2>(expert.data(), {tokens, k}, "expert"),
                                             experts,
                                             capacity,
                                             TensorView<std::int32_t, 1>(pair_row.data(), {tokens * k}, "pair_row"),
                                             TensorView<std::int32_t, 1>(row_pair.data(), {tokens * k}, "row_pair"),
                                             TensorView<std::int32_t, 1>(offsets.data(), {experts + 1}, "offsets"),
                                             TensorView<std::int32_t, 1>(counts.data(), {experts}, "counts"),
                                             {}});
  }
  index_t rows() const { return tokens * k; }
  index_t kept() const { return offsets[experts]; }
  index_t dropped() const {
    index_t n = 0;
    for (auto r : pair_row) n += r < 0;
    return n;
  }
  ConstView<std::int32_t, 2> pair_row_view() const { return {pair_row.data(), {tokens, k}, "pair_row"}; }
  ConstView<std::int32_t, 1> row_pair_view() const { return {row_pair.data(), {tokens * k}, "row_pair"}; }
  ConstView<std::int32_t, 1> offsets_view() const { return {offsets.data(), {experts + 1}, "offsets"}; }
};

struct Shape {
  index_t tokens, k, experts, capacity, used, d, wb, we;
};

/// Small shapes: K = 1 and 2, capacity drops, empty experts, a ragged D, zero tokens, a
/// fully weighted, a partly weighted and an unweighted column range.
const std::vector<Shape> kShapes = {
    {5, 1, 3, 0, 3, 4, 0, 4}, {7, 2, 4, 0, 4, 3, 0, 3}, {9, 2, 4, 3, 4, 5, 1, 4},
    {8, 1, 5, 2, 3, 2, 0, 2}, {6, 2, 6, 0, 3, 3, 0, 1}, {4, 1, 2, 1, 2, 3, 0, 0},
    {0, 2, 3, 0, 3, 4, 0, 0}, {1, 2, 2, 1, 2, 1, 0, 1}, {10, 2, 8, 2, 5, 3, 2, 3},
};

/// `v` rounded to U (double stays double).
template <class U>
std::vector<U> round_to(const std::vector<double>& v) {
  std::vector<U> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<U, double>) {
      r[i] = v[i];
    } else {
      r[i] = moss::from_float<U>(static_cast<float>(v[i]));
    }
  }
  return r;
}

/// gather_rows_backward<T> of dout (rows, d) over the plan.
template <class T>
std::vector<T> gather_bwd(const Plan& p, index_t d, const std::vector<double>& dout) {
  const std::vector<T> g = round_to<T>(dout);
  std::vector<T> dx(static_cast<std::size_t>(p.tokens * d), T{});
  moss::GatherRowsBackwardArgs<T> a;
  a.dout = ConstView<T, 2>(g.data(), {p.rows(), d}, "dout");
  a.pair_row = p.pair_row_view();
  a.dx = TensorView<T, 2>(dx.data(), {p.tokens, d}, "dx");
  moss::gather_rows_backward(moss::Host{}, a);
  return dx;
}

/// combine_rows_backward<T> of dout (tokens, d): dy (rows, d) and dgate (tokens, K).
template <class T>
std::pair<std::vector<T>, std::vector<moss::compute_t<T>>> combine_bwd(const Plan& p, const Shape& s,
                                                                       const std::vector<double>& dout,
                                                                       const std::vector<double>& y,
                                                                       const std::vector<double>& gate) {
  using C = moss::compute_t<T>;
  const std::vector<T> g = round_to<T>(dout), yy = round_to<T>(y);
  const std::vector<C> gg = round_to<C>(gate);
  std::vector<T> dy(static_cast<std::size_t>(p.rows() * s.d), moss::narrow<T>(7.0f));
  std::vector<C> dgate(static_cast<std::size_t>(p.rows()), C(7));
  moss::CombineRowsBackwardArgs<T> a;
  a.dout = ConstView<T, 2>(g.data(), {p.tokens, s.d}, "dout");
  a.y = ConstView<T, 2>(yy.data(), {p.rows(), s.d}, "y");
  a.pair_row = p.pair_row_view();
  a.gate = ConstView<C, 2>(gg.data(), {p.tokens, p.k}, "gate");
  a.weight_begin = s.wb;
  a.weight_end = s.we;
  a.dy = TensorView<T, 2>(dy.data(), {p.rows(), s.d}, "dy");
  a.dgate = TensorView<C, 2>(dgate.data(), {p.tokens, p.k}, "dgate");
  moss::combine_rows_backward(moss::Host{}, a);
  return {dy, dgate};
}

}  // namespace

TEST_CASE("gather_rows_backward matches finite differences of gather_rows in double", "[permute_backward]") {
  for (std::size_t ci = 0; ci < kShapes.size(); ++ci) {
    const Shape s = kShapes[ci];
    CAPTURE(ci, s.tokens, s.k, s.experts, s.capacity, s.d);
    const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 100 + ci);
    std::vector<double> x = moss::test::randn_f64(static_cast<std::size_t>(s.tokens * s.d), 200 + ci);
    const std::vector<double> w = moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 300 + ci);
    auto loss = [&] {
      std::vector<double> out(static_cast<std::size_t>(p.rows() * s.d), 0.0);
      moss::GatherRowsArgs<double> a;
      a.x = ConstView<double, 2>(x.data(), {s.tokens, s.d}, "x");
      a.row_pair = p.row_pair_view();
      a.offsets = p.offsets_view();
      a.k = s.k;
      a.out = TensorView<double, 2>(out.data(), {p.rows(), s.d}, "out");
      moss::gather_rows(moss::Host{}, a);
      double l = 0;
      for (index_t i = 0; i < p.kept() * s.d; ++i) l += out[i] * w[i];  // rows past the kept ones are not written
      return l;
    };
    const std::vector<double> dx = gather_bwd<double>(p, s.d, w);
    check_grad(
        "x", dx, [&] { return loss(); }, x);
    // A token whose every slot was dropped gets exactly 0.
    for (index_t t = 0; t < s.tokens; ++t) {
      bool any = false;
      for (index_t k = 0; k < s.k; ++k) any |= p.pair_row[t * s.k + k] >= 0;
      if (!any)
        for (index_t c = 0; c < s.d; ++c) CHECK(dx[t * s.d + c] == 0.0);
    }
  }
}

TEST_CASE("combine_rows_backward matches finite differences of combine_rows in double", "[permute_backward]") {
  for (std::size_t ci = 0; ci < kShapes.size(); ++ci) {
    const Shape s = kShapes[ci];
    CAPTURE(ci, s.tokens, s.k, s.experts, s.capacity, s.d, s.wb, s.we);
    const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 400 + ci);
    std::vector<double> y = moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 500 + ci);
    std::vector<double> gate = moss::test::randn_f64(static_cast<std::size_t>(p.rows()), 600 + ci);
    const std::vector<double> w = moss::test::randn_f64(static_cast<std::size_t>(s.tokens * s.d), 700 + ci);
    auto loss = [&] {
      std::vector<double> out(static_cast<std::size_t>(s.tokens * s.d), 0.0);
      moss::CombineRowsArgs<double> a;
      a.y = ConstView<double, 2>(y.data(), {p.rows(), s.d}, "y");
      a.pair_row = p.pair_row_view();
      a.gate = ConstView<double, 2>(gate.data(), {s.tokens, s.k}, "gate");
      a.weight_begin = s.wb;
      a.weight_end = s.we;
      a.out = TensorView<double, 2>(out.data(), {s.tokens, s.d}, "out");
      moss::combine_rows(moss::Host{}, a);
      return moss::test::dot(out, w);
    };
    const auto [dy, dgate] = combine_bwd<double>(p, s, w, y, gate);
    check_grad("y", dy, loss, y);
    check_grad("gate", dgate, loss, gate);
    // Dropped slots: dgate = 0 exactly; rows no kept pair owns: dy = 0 exactly.
    for (index_t i = 0; i < p.rows(); ++i)
      if (p.pair_row[i] < 0) CHECK(dgate[i] == 0.0);
    for (index_t r = p.kept(); r < p.rows(); ++r)
      for (index_t c = 0; c < s.d; ++c) CHECK(dy[r * s.d + c] == 0.0);
  }
}

TEST_CASE("the plans of the gradient cases cover drops, empty experts and zero tokens", "[permute_backward]") {
  // Guards the cases above: if a shape stopped producing what it is there for, the gradient
  // checks would silently lose coverage.
  index_t drops = 0, empty_experts = 0, zero_tokens = 0, k2 = 0;
  for (std::size_t ci = 0; ci < kShapes.size(); ++ci) {
    const Shape s = kShapes[ci];
    const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 100 + ci);
    drops += p.dropped();
    for (index_t e = 0; e < s.experts; ++e) empty_experts += p.offsets[e + 1] == p.offsets[e];
    zero_tokens += s.tokens == 0;
    k2 += s.k == 2;
  }
  CHECK(drops > 0);
  CHECK(empty_experts > 0);
  CHECK(zero_tokens == 1);
  CHECK(k2 > 0);
}

TEST_CASE("permute backward: float agrees with double, bf16 and f16 to their precision", "[permute_backward]") {
  for (std::size_t ci = 0; ci < kShapes.size(); ++ci) {
    const Shape s = kShapes[ci];
    CAPTURE(ci);
    const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 100 + ci);
    // Inputs exactly representable in float, so the only difference is the arithmetic.
    auto f = [](std::vector<double> v) {
      for (auto& x : v) x = static_cast<float>(x);
      return v;
    };
    const std::vector<double> gout = f(moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 800 + ci));
    const std::vector<double> cout_ = f(moss::test::randn_f64(static_cast<std::size_t>(s.tokens * s.d), 900 + ci));
    const std::vector<double> y = f(moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 1000 + ci));
    const std::vector<double> gate = f(moss::test::randn_f64(static_cast<std::size_t>(p.rows()), 1100 + ci));
    const auto dxd = gather_bwd<double>(p, s.d, gout);
    const auto dxf = gather_bwd<float>(p, s.d, gout);
    const auto dxb = gather_bwd<moss::bf16>(p, s.d, gout);
    const auto [dyd, dgd] = combine_bwd<double>(p, s, cout_, y, gate);
    const auto [dyf, dgf] = combine_bwd<float>(p, s, cout_, y, gate);
    const auto [dyh, dgh] = combine_bwd<moss::f16>(p, s, cout_, y, gate);
    for (std::size_t i = 0; i < dxd.size(); ++i) {
      CHECK(std::abs(dxf[i] - dxd[i]) <= 1e-6 * (1 + std::abs(dxd[i])));
      CHECK(std::abs(moss::test::as_double(dxb[i]) - dxd[i]) <= 2e-2 * (1 + std::abs(dxd[i])));
    }
    for (std::size_t i = 0; i < dyd.size(); ++i) {
      CHECK(std::abs(dyf[i] - dyd[i]) <= 1e-6 * (1 + std::abs(dyd[i])));
      CHECK(std::abs(moss::test::as_double(dyh[i]) - dyd[i]) <= 2e-2 * (1 + std::abs(dyd[i])));
    }
    for (std::size_t i = 0; i < dgd.size(); ++i) {
      CHECK(std::abs(dgf[i] - dgd[i]) <= 1e-5 * (1 + std::abs(dgd[i])));
      CHECK(std::abs(dgh[i] - dgd[i]) <= 2e-2 * (1 + std::abs(dgd[i])));
    }
  }
}

TEST_CASE("permute backward is bitwise repeatable", "[permute_backward]") {
  const Shape s = kShapes[2];
  const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 7);
  const auto gout = moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 1);
  const auto cout_ = moss::test::randn_f64(static_cast<std::size_t>(s.tokens * s.d), 2);
  const auto y = moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 3);
  const auto gate = moss::test::randn_f64(static_cast<std::size_t>(p.rows()), 4);
  const auto a = gather_bwd<float>(p, s.d, gout), b = gather_bwd<float>(p, s.d, gout);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  const auto [dy1, dg1] = combine_bwd<float>(p, s, cout_, y, gate);
  const auto [dy2, dg2] = combine_bwd<float>(p, s, cout_, y, gate);
  CHECK(std::memcmp(dy1.data(), dy2.data(), dy1.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(dg1.data(), dg2.data(), dg1.size() * sizeof(float)) == 0);
}

TEST_CASE("combine_rows in double agrees with the float forward, absent outputs are skipped", "[permute_backward]") {
  const Shape s = kShapes[2];
  const Plan p(s.tokens, s.k, s.experts, s.capacity, s.used, 9);
  std::vector<double> y = moss::test::randn_f64(static_cast<std::size_t>(p.rows() * s.d), 5);
  std::vector<double> gate = moss::test::randn_f64(static_cast<std::size_t>(p.rows()), 6);
  for (auto& v : y) v = static_cast<float>(v);
  for (auto& v : gate) v = static_cast<float>(v);
  std::vector<float> yf(y.begin(), y.end()), gf(gate.begin(), gate.end());
  std::vector<double> outd(static_cast<std::size_t>(s.tokens * s.d));
  std::vector<float> outf(outd.size());
  moss::CombineRowsArgs<double> ad{ConstView<double, 2>(y.data(), {p.rows(), s.d}, "y"),
                                   p.pair_row_view(),
                                   ConstView<double, 2>(gate.data(), {s.tokens, s.k}, "gate"),
                                   s.wb,
                                   s.we,
                                   TensorView<double, 2>(outd.data(), {s.tokens, s.d}, "out")};
  moss::CombineRowsArgs<float> af{ConstView<float, 2>(yf.data(), {p.rows(), s.d}, "y"),
                                  p.pair_row_view(),
                                  ConstView<float, 2>(gf.data(), {s.tokens, s.k}, "gate"),
                                  s.wb,
                                  s.we,
                                  TensorView<float, 2>(outf.data(), {s.tokens, s.d}, "out")};
  moss::combine_rows(moss::Host{}, ad);
  moss::combine_rows(moss::Host{}, af);
  for (std::size_t i = 0; i < outd.size(); ++i) CHECK(std::abs(outf[i] - outd[i]) <= 1e-6 * (1 + std::abs(outd[i])));

  // Only dgate wanted: dy stays untouched.
  std::vector<double> dout = moss::test::randn_f64(outd.size(), 8), dgate(static_cast<std::size_t>(p.rows()), 5.0);
  moss::CombineRowsBackwardArgs<double> b;
  b.dout = ConstView<double, 2>(dout.data(), {s.tokens, s.d}, "dout");
  b.y = ConstView<double, 2>(y.data(), {p.rows(), s.d}, "y");
  b.pair_row = p.pair_row_view();
  b.gate = ConstView<double, 2>(gate.data(), {s.tokens, s.k}, "gate");
  b.weight_begin = s.wb;
  b.weight_end = s.we;
  b.dgate = TensorView<double, 2>(dgate.data(), {s.tokens, s.k}, "dgate");
  moss::combine_rows_backward(moss::Host{}, b);
  const auto [dy, dg] = combine_bwd<double>(p, s, dout, y, gate);
  CHECK(std::memcmp(dg.data(), dgate.data(), dg.size() * sizeof(double)) == 0);
}

TEST_CASE("permute backward validation names the tensor", "[permute_backward]") {
  const Plan p(4, 2, 3, 0, 3, 11);
  const index_t d = 3;
  std::vector<double> buf(static_cast<std::size_t>(64), 0.0);
  moss::GatherRowsBackwardArgs<double> g;
  g.dout = ConstView<double, 2>(buf.data(), {8, d}, "dout");
  g.pair_row = p.pair_row_view();
  g.dx = TensorView<double, 2>(buf.data(), {4, d}, "dx");
  REQUIRE_NOTHROW(moss::gather_rows_backward(moss::Host{}, g));
  auto bad = g;
  bad.dx = TensorView<double, 2>(buf.data(), {5, d}, "dx");
  REQUIRE_THROWS_WITH(moss::gather_rows_backward(moss::Host{}, bad),
                      ContainsSubstring("dx") && ContainsSubstring("[4, 3]"));
  bad = g;
  bad.dout = ConstView<double, 2>(buf.data(), {7, d}, "dout");
  REQUIRE_THROWS_AS(moss::gather_rows_backward(moss::Host{}, bad), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::gather_rows_backward(moss::Host{}, bad), ContainsSubstring("dout"));
  std::vector<std::int32_t> broken = p.pair_row;
  broken[3] = 8;
  bad = g;
  bad.pair_row = ConstView<std::int32_t, 2>(broken.data(), {4, 2}, "pair_row");
  REQUIRE_THROWS_WITH(moss::gather_rows_backward(moss::Host{}, bad), ContainsSubstring("pair_row[1, 1] = 8"));

  std::vector<double> gate(8, 1.0), dg(8, 0.0);
  moss::CombineRowsBackwardArgs<double> c;
  c.dout = ConstView<double, 2>(buf.data(), {4, d}, "dout");
  c.y = ConstView<double, 2>(buf.data(), {8, d}, "y");
  c.pair_row = p.pair_row_view();
  c.gate = ConstView<double, 2>(gate.data(), {4, 2}, "gate");
  c.weight_end = d;
  c.dgate = TensorView<double, 2>(dg.data(), {4, 2}, "dgate");
  REQUIRE_NOTHROW(moss::combine_rows_backward(moss::Host{}, c));
  auto badc = c;
  badc.dgate = TensorView<double, 2>(dg.data(), {4, 1}, "dgate");
  REQUIRE_THROWS_WITH(moss::combine_rows_backward(moss::Host{}, badc), ContainsSubstring("dgate"));
  badc = c;
  badc.y = {};
  REQUIRE_THROWS_WITH(moss::combine_rows_backward(moss::Host{}, badc), ContainsSubstring("dgate is wanted"));
  badc = c;
  badc.gate = {};
  REQUIRE_THROWS_AS(moss::combine_rows_backward(moss::Host{}, badc), moss::config_error);
  badc = c;
  badc.weight_end = d + 1;
  REQUIRE_THROWS_WITH(moss::combine_rows_backward(moss::Host{}, badc), ContainsSubstring("weighted columns"));
  badc = c;
  badc.dy = TensorView<double, 2>(buf.data(), {8, d + 1}, "dy");
  REQUIRE_THROWS_WITH(moss::combine_rows_backward(moss::Host{}, badc), ContainsSubstring("dy"));
}
