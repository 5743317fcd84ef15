// tests/ops/grouped_linear_backward_test.cpp: `grouped_linear_backward` on the host: float64
// central differences of `grouped_linear` run in double over ragged segments, empty experts,
// unused trailing rows and zero rows; the float instantiation against the double one; bitwise
// repeatability; accumulation; absent outputs; and validation errors naming the tensor.
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
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear_backward.hpp"
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
    std::printf("grad-error grouped_linear_backward %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

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

/// One case: `rows` rows of x (row stride in + pad), X experts whose segments are `seg`
/// (lengths; their sum may be below rows), in and out features.
struct Case {
  index_t rows, in, out, X, ldx;
  std::vector<std::int32_t> offsets;
  std::vector<double> x, w, b, dy;
  Case(index_t rows_, index_t in_, index_t out_, const std::vector<std::int32_t>& seg, std::uint64_t seed,
       index_t pad = 0)
      : rows(rows_), in(in_), out(out_), X(static_cast<index_t>(seg.size())), ldx(in_ + pad) {
    offsets.assign(1, 0);
    for (auto n : seg) offsets.push_back(offsets.back() + n);
    x = moss::test::randn_f64(static_cast<std::size_t>(rows * ldx), seed);
    w = moss::test::randn_f64(static_cast<std::size_t>(X * out * in), seed + 1, 0.5);
    b = moss::test::randn_f64(static_cast<std::size_t>(X * out), seed + 2);
    dy = moss::test::randn_f64(static_cast<std::size_t>(rows * out), seed + 3);
  }
  ConstView<std::int32_t, 1> offsets_view() const { return {offsets.data(), {X + 1}, "offsets"}; }

  /// L = Σ y ⊙ dy over the rows the forward writes, y = grouped_linear(x, w, b) in double.
  double loss() const {
    std::vector<double> y(static_cast<std::size_t>(rows * out), 0.0);
    moss::GroupedLinearArgs<double> a;
    a.x = ConstView<double, 2>(x.data(), {rows, in}, {ldx, 1}, "x");
    a.weight = ConstView<double, 3>(w.data(), {X, out, in}, "weight");
    a.bias = ConstView<double, 2>(b.data(), {X, out}, "bias");
    a.offsets = offsets_view();
    a.y = TensorView<double, 2>(y.data(), {rows, out}, "y");
    moss::grouped_linear(moss::Host{}, a);
    double s = 0;
    for (index_t i = 0; i < offsets[X] * out; ++i) s += y[i] * dy[i];
    return s;
  }
};

/// The gradients of one case.
template <class T>
struct Grads {
  std::vector<T> dx;
  std::vector<moss::compute_t<T>> dw, db;
};

/// grouped_linear_backward<T> on the case's inputs rounded to T; dx starts at 9 so that a row
/// left unwritten shows.
template <class T>
Grads<T> backward(const Case& c, bool accumulate = false, Grads<T> g = {}) {
  using C = moss::compute_t<T>;
  const std::vector<T> x = round_to<T>(c.x), w = round_to<T>(c.w), dy = round_to<T>(c.dy);
  if (g.dx.empty()) g.dx = round_to<T>(std::vector<double>(x.size(), 9.0));
  if (g.dw.empty()) g.dw.assign(w.size(), C(9));
  if (g.db.empty()) g.db.assign(static_cast<std::size_t>(c.X * c.out), C(9));
  moss::GroupedLinearBackwardArgs<T> a;
  a.dy = ConstView<T, 2>(dy.data(), {c.rows, c.out}, "dy");
  a.x = ConstView<T, 2>(x.data(), {c.rows, c.in}, {c.ldx, 1}, "x");
  a.weight = ConstView<T, 3>(w.data(), {c.X, c.out, c.in}, "weight");
  a.offsets = c.offsets_view();
  a.dx = TensorView<T, 2>(g.dx.data(), {c.rows, c.in}, {c.ldx, 1}, "dx");
  a.dweight = TensorView<C, 3>(g.dw.data(), {c.X, c.out, c.in}, "dweight");
  a.dbias = TensorView<C, 2>(g.db.data(), {c.X, c.out}, "dbias");
  a.accumulate = accumulate;
  moss::grouped_linear_backward(moss::Host{}, a);
  return g;
}

/// Ragged segments, empty experts (first, middle, last), rows past the last segment, one
/// expert, zero rows.
std::vector<Case> cases() {
  std::vector<Case> v;
  v.emplace_back(7, 3, 4, std::vector<std::int32_t>{2, 0, 5}, 10);
  v.emplace_back(9, 5, 2, std::vector<std::int32_t>{0, 3, 1, 0, 4}, 20, 2);
  v.emplace_back(6, 2, 3, std::vector<std::int32_t>{1, 2, 0}, 30);  // rows 3..5 past the segments
  v.emplace_back(4, 4, 4, std::vector<std::int32_t>{4}, 40);
  v.emplace_back(0, 3, 2, std::vector<std::int32_t>{0, 0}, 50);
  v.emplace_back(5, 1, 1, std::vector<std::int32_t>{0, 0, 0}, 60);  // every expert empty
  return v;
}

}  // namespace

TEST_CASE("grouped_linear_backward matches finite differences of grouped_linear in double",
          "[grouped_linear_backward]") {
  auto all = cases();
  for (std::size_t ci = 0; ci < all.size(); ++ci) {
    Case& c = all[ci];
    CAPTURE(ci, c.rows, c.in, c.out, c.X);
    const Grads<double> g = backward<double>(c);
    // dx in the (rows, ldx) layout: compare the (rows, in) elements, padding stays at 9.
    std::vector<double> dx;
    for (index_t r = 0; r < c.rows; ++r)
      for (index_t k = 0; k < c.ldx; ++k) {
        if (k < c.in) {
          dx.push_back(g.dx[r * c.ldx + k]);
        } else {
          CHECK(g.dx[r * c.ldx + k] == 9.0);
        }
      }
    std::vector<double> xs(dx.size());
    auto loss_x = [&] {
      for (index_t r = 0; r < c.rows; ++r)
        for (index_t k = 0; k < c.in; ++k) c.x[r * c.ldx + k] = xs[r * c.in + k];
      return c.loss();
    };
    for (index_t r = 0; r < c.rows; ++r)
      for (index_t k = 0; k < c.in; ++k) xs[r * c.in + k] = c.x[r * c.ldx + k];
    check_grad("x", dx, loss_x, xs);
    loss_x();  // copies the restored xs back into c.x (the last call left one element perturbed)
    check_grad(
        "weight", g.dw, [&] { return c.loss(); }, c.w);
    check_grad(
        "bias", g.db, [&] { return c.loss(); }, c.b);
    // Rows past the segments and empty experts get exactly 0.
    for (index_t r = c.offsets[c.X]; r < c.rows; ++r)
      for (index_t k = 0; k < c.in; ++k) CHECK(g.dx[r * c.ldx + k] == 0.0);
    for (index_t e = 0; e < c.X; ++e)
      if (c.offsets[e + 1] == c.offsets[e]) {
        for (index_t i = 0; i < c.out * c.in; ++i) CHECK(g.dw[e * c.out * c.in + i] == 0.0);
        for (index_t o = 0; o < c.out; ++o) CHECK(g.db[e * c.out + o] == 0.0);
      }
  }
}

TEST_CASE("grouped_linear_backward: float agrees with double, bitwise repeatable", "[grouped_linear_backward]") {
  for (Case c : cases()) {
    for (auto* v : {&c.x, &c.w, &c.dy})
      for (auto& e : *v) e = static_cast<float>(e);
    const auto d = backward<double>(c);
    const auto f = backward<float>(c), f2 = backward<float>(c);
    const auto h = backward<moss::bf16>(c);
    auto close = [](const auto& a, const std::vector<double>& b, double tol) {
      double scale = 1e-30, worst = 0;
      for (std::size_t i = 0; i < b.size(); ++i) {
        scale = std::max(scale, std::abs(b[i]));
        worst = std::max(worst, std::abs(moss::test::as_double(a[i]) - b[i]));
      }
      return worst <= tol * scale;
    };
    CHECK(close(f.dx, d.dx, 1e-6));
    CHECK(close(f.dw, d.dw, 1e-6));
    CHECK(close(f.db, d.db, 1e-6));
    CHECK(close(h.dx, d.dx, 3e-2));
    CHECK(close(h.dw, d.dw, 3e-2));
    CHECK(f.dx.size() == f2.dx.size());
    CHECK((f.dx.empty() || std::memcmp(f.dx.data(), f2.dx.data(), f.dx.size() * sizeof(float)) == 0));
    CHECK(f.dw.size() == f2.dw.size());
    CHECK((f.dw.empty() || std::memcmp(f.dw.data(), f2.dw.data(), f.dw.size() * sizeof(float)) == 0));
    CHECK(f.db.size() == f2.db.size());
    CHECK((f.db.empty() || std::memcmp(f.db.data(), f2.db.data(), f.db.size() * sizeof(float)) == 0));
  }
}

TEST_CASE("grouped_linear_backward accumulates into dweight and dbias", "[grouped_linear_backward]") {
  const Case c(7, 3, 4, std::vector<std::int32_t>{2, 0, 5}, 70);
  const auto fresh = backward<double>(c);
  Grads<double> start;
  start.dw = moss::test::randn_f64(fresh.dw.size(), 1);
  start.db = moss::test::randn_f64(fresh.db.size(), 2);
  const auto acc = backward<double>(c, true, start);
  for (std::size_t i = 0; i < fresh.dw.size(); ++i) CHECK(acc.dw[i] == start.dw[i] + fresh.dw[i]);
  for (std::size_t i = 0; i < fresh.db.size(); ++i) CHECK(acc.db[i] == start.db[i] + fresh.db[i]);
  // The empty expert 1 keeps its values.
  for (index_t o = 0; o < c.out; ++o) CHECK(acc.db[c.out + o] == start.db[c.out + o]);
}

TEST_CASE("grouped_linear in double agrees with float, absent outputs are skipped", "[grouped_linear_backward]") {
  Case c(7, 3, 4, std::vector<std::int32_t>{2, 0, 5}, 80);
  for (auto* v : {&c.x, &c.w, &c.b})
    for (auto& e : *v) e = static_cast<float>(e);
  std::vector<float> xf(c.x.begin(), c.x.end()), wf(c.w.begin(), c.w.end()), bf(c.b.begin(), c.b.end());
  std::vector<float> yf(static_cast<std::size_t>(c.rows * c.out));
  std::vector<double> yd(yf.size());
  moss::GroupedLinearArgs<float> af{ConstView<float, 2>(xf.data(), {c.rows, c.in}, "x"),
                                    ConstView<float, 3>(wf.data(), {c.X, c.out, c.in}, "weight"),
                                    ConstView<float, 2>(bf.data(), {c.X, c.out}, "bias"),
                                    c.offsets_view(),
                                    nullptr,
                                    TensorView<float, 2>(yf.data(), {c.rows, c.out}, "y")};
  moss::GroupedLinearArgs<double> ad{ConstView<double, 2>(c.x.data(), {c.rows, c.in}, "x"),
                                     ConstView<double, 3>(c.w.data(), {c.X, c.out, c.in}, "weight"),
                                     ConstView<double, 2>(c.b.data(), {c.X, c.out}, "bias"),
                                     c.offsets_view(),
                                     nullptr,
                                     TensorView<double, 2>(yd.data(), {c.rows, c.out}, "y")};
  moss::grouped_linear(moss::Host{}, af);
  moss::grouped_linear(moss::Host{}, ad);
  for (std::size_t i = 0; i < yd.size(); ++i) CHECK(std::abs(yf[i] - yd[i]) <= 1e-5 * (1 + std::abs(yd[i])));

  // Only dbias wanted.
  std::vector<double> db(static_cast<std::size_t>(c.X * c.out), 3.0);
  moss::GroupedLinearBackwardArgs<double> a;
  a.dy = ConstView<double, 2>(c.dy.data(), {c.rows, c.out}, "dy");
  a.x = ConstView<double, 2>(c.x.data(), {c.rows, c.in}, "x");
  a.weight = ConstView<double, 3>(c.w.data(), {c.X, c.out, c.in}, "weight");
  a.offsets = c.offsets_view();
  a.dbias = TensorView<double, 2>(db.data(), {c.X, c.out}, "dbias");
  moss::grouped_linear_backward(moss::Host{}, a);
  const auto full = backward<double>(c);
  CHECK(db == full.db);
}

TEST_CASE("grouped_linear_backward validation names the tensor", "[grouped_linear_backward]") {
  const Case c(7, 3, 4, std::vector<std::int32_t>{2, 0, 5}, 90);
  std::vector<double> dx(static_cast<std::size_t>(c.rows * c.in)), dw(c.w.size()), db(c.b.size());
  moss::GroupedLinearBackwardArgs<double> a;
  a.dy = ConstView<double, 2>(c.dy.data(), {c.rows, c.out}, "dy");
  a.x = ConstView<double, 2>(c.x.data(), {c.rows, c.in}, "x");
  a.weight = ConstView<double, 3>(c.w.data(), {c.X, c.out, c.in}, "weight");
  a.offsets = c.offsets_view();
  a.dx = TensorView<double, 2>(dx.data(), {c.rows, c.in}, "dx");
  a.dweight = TensorView<double, 3>(dw.data(), {c.X, c.out, c.in}, "dweight");
  a.dbias = TensorView<double, 2>(db.data(), {c.X, c.out}, "dbias");
  REQUIRE_NOTHROW(moss::grouped_linear_backward(moss::Host{}, a));
  auto bad = a;
  bad.dweight = TensorView<double, 3>(dw.data(), {c.X, c.in, c.out}, "dweight");
  REQUIRE_THROWS_WITH(moss::grouped_linear_backward(moss::Host{}, bad),
                      ContainsSubstring("dweight") && ContainsSubstring("[3, 4, 3]"));
  bad = a;
  bad.dbias = TensorView<double, 2>(db.data(), {c.X, c.out - 1}, "dbias");
  REQUIRE_THROWS_WITH(moss::grouped_linear_backward(moss::Host{}, bad), ContainsSubstring("dbias"));
  bad = a;
  bad.dx = TensorView<double, 2>(dx.data(), {c.rows - 1, c.in}, "dx");
  REQUIRE_THROWS_WITH(moss::grouped_linear_backward(moss::Host{}, bad), ContainsSubstring("dx"));
  bad = a;
  bad.dy = ConstView<double, 2>(c.dy.data(), {c.rows, c.out - 1}, "dy");
  REQUIRE_THROWS_AS(moss::grouped_linear_backward(moss::Host{}, bad), moss::shape_error);
  std::vector<std::int32_t> off = c.offsets;
  off[3] = 8;  // past the 7 rows
  bad = a;
  bad.offsets = ConstView<std::int32_t, 1>(off.data(), {c.X + 1}, "offsets");
  REQUIRE_THROWS_WITH(moss::grouped_linear_backward(moss::Host{}, bad), ContainsSubstring("exceeds the 7 rows"));
  off = c.offsets;
  off[1] = 3;
  off[2] = 1;
  bad.offsets = ConstView<std::int32_t, 1>(off.data(), {c.X + 1}, "offsets");
  REQUIRE_THROWS_WITH(moss::grouped_linear_backward(moss::Host{}, bad), ContainsSubstring("non-decreasing"));
}
