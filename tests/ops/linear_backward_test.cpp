// tests/ops/linear_backward_test.cpp: `linear_backward` on the host: float64 central differences
// of `linear` run in double, the float instantiation against the double one, the fixed summation
// order (bitwise against sequential loops), accumulation, optional outputs, strided views, the
// double forward, and every validation error.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/linear_backward.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// `check_gradient`, also printing the measured error when MOSS_PRINT_GRAD_ERRORS is set.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  if (std::getenv("MOSS_PRINT_GRAD_ERRORS")) {
    const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
    std::printf("grad-error linear_backward %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

/// max |a − b| / max |b| (b the reference; 1e-30 floor).
template <class A>
double max_err(const std::vector<A>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0, scale = 1e-30;
  for (std::size_t i = 0; i < b.size(); ++i) {
    scale = std::max(scale, std::abs(b[i]));
    worst = std::max(worst, std::abs(moss::test::as_double(a[i]) - b[i]));
  }
  return worst / scale;
}

/// Inputs of one case in double: x (rows, in) as a column slice of rows of width `ldx`, weight
/// (out, in), bias (out), dy (rows, out) with row stride `ldy`.
struct Case {
  index_t rows, in, out, ldx, ldy;
  std::vector<double> x, w, b, dy;
  Case(index_t rows_, index_t in_, index_t out_, std::uint64_t seed, index_t pad = 0)
      : rows(rows_),
        in(in_),
        out(out_),
        ldx(in_ + pad),
        ldy(out_ + pad),
        x(moss::test::randn_f64(rows_ * (in_ + pad), seed)),
        w(moss::test::randn_f64(out_ * in_, seed + 1, 0.5)),
        b(moss::test::randn_f64(out_, seed + 2)),
        dy(moss::test::randn_f64(rows_ * (out_ + pad), seed + 3)) {}

  /// L = Σ y ⊙ dy over the (rows, out) elements of y = linear(x, w, b) in double.
  double loss(bool with_bias) const {
    std::vector<double> y(static_cast<std::size_t>(rows * ldy), 0.0);
    moss::LinearArgs<double> a;
    a.x = ConstView<double, 2>(x.data(), {rows, in}, {ldx, 1}, "x");
    a.weight = ConstView<double, 2>(w.data(), {out, in}, "weight");
    if (with_bias) a.bias = ConstView<double, 1>(b.data(), {out}, "bias");
    a.y = TensorView<double, 2>(y.data(), {rows, out}, {ldy, 1}, "y");
    moss::linear(moss::Host{}, a);
    double s = 0;
    for (index_t r = 0; r < rows; ++r)
      for (index_t o = 0; o < out; ++o) s += y[r * ldy + o] * dy[r * ldy + o];
    return s;
  }
};

/// The gradients of one case (dx with row stride ldx; padding left at 0).
template <class T, class Tout = T>
struct Grads {
  std::vector<T> dx;
  std::vector<moss::compute_t<T>> dw, db;
};

/// Runs linear_backward<T, Tout> on the case's inputs rounded to T (dy to Tout).
template <class T, class Tout = T>
Grads<T, Tout> backward(const Case& c, bool accumulate = false, Grads<T, Tout> g = {}) {
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
  const std::vector<T> x = round(c.x, T{}), w = round(c.w, T{});
  const std::vector<Tout> dy = round(c.dy, Tout{});
  if (g.dx.empty()) g.dx.assign(x.size(), T{});
  if (g.dw.empty()) g.dw.assign(w.size(), C(0));
  if (g.db.empty()) g.db.assign(static_cast<std::size_t>(c.out), C(0));
  moss::LinearBackwardArgs<T, Tout> a;
  a.dy = ConstView<Tout, 2>(dy.data(), {c.rows, c.out}, {c.ldy, 1}, "dy");
  a.x = ConstView<T, 2>(x.data(), {c.rows, c.in}, {c.ldx, 1}, "x");
  a.weight = ConstView<T, 2>(w.data(), {c.out, c.in}, "weight");
  a.dx = TensorView<T, 2>(g.dx.data(), {c.rows, c.in}, {c.ldx, 1}, "dx");
  a.dweight = TensorView<C, 2>(g.dw.data(), {c.out, c.in}, "dweight");
  a.dbias = TensorView<C, 1>(g.db.data(), {c.out}, "dbias");
  a.accumulate = accumulate;
  moss::linear_backward(moss::Host{}, a);
  return g;
}

/// Buffers of valid float arguments, rows 4, in 6, out 5, for the validation tests.
struct Bufs {
  std::vector<float> dy = std::vector<float>(4 * 5), x = std::vector<float>(4 * 6), w = std::vector<float>(5 * 6),
                     dx = std::vector<float>(4 * 6), dw = std::vector<float>(5 * 6), db = std::vector<float>(5);
  /// Views over the buffers, named as the messages expect.
  moss::LinearBackwardArgs<float> args() {
    moss::LinearBackwardArgs<float> a;
    a.dy = ConstView<float, 2>(dy.data(), {4, 5}, "dy");
    a.x = ConstView<float, 2>(x.data(), {4, 6}, "x");
    a.weight = ConstView<float, 2>(w.data(), {5, 6}, "weight");
    a.dx = TensorView<float, 2>(dx.data(), {4, 6}, "dx");
    a.dweight = TensorView<float, 2>(dw.data(), {5, 6}, "dweight");
    a.dbias = TensorView<float, 1>(db.data(), {5}, "dbias");
    return a;
  }
};

}  // namespace

TEST_CASE("linear forward in double matches a float64 loop", "[host]") {
  const Case c(7, 13, 5, 11);
  std::vector<double> y(7 * 5);
  moss::LinearArgs<double> a;
  a.x = ConstView<double, 2>(c.x.data(), {7, 13}, "x");
  a.weight = ConstView<double, 2>(c.w.data(), {5, 13}, "weight");
  a.bias = ConstView<double, 1>(c.b.data(), {5}, "bias");
  a.y = TensorView<double, 2>(y.data(), {7, 5}, "y");
  moss::linear(moss::Host{}, a);
  double worst = 0;
  for (index_t r = 0; r < 7; ++r) {
    for (index_t o = 0; o < 5; ++o) {
      double s = c.b[o];
      for (index_t k = 0; k < 13; ++k) s += c.x[r * 13 + k] * c.w[o * 13 + k];
      worst = std::max(worst, std::abs(y[r * 5 + o] - s) / std::max(1.0, std::abs(s)));
    }
  }
  CHECK(worst < 1e-14);  // float32 arithmetic would leave ~1e-7
}

TEST_CASE("linear_backward matches central differences in double", "[host]") {
  struct Shape {
    index_t rows, in, out, pad;
  };
  // Degenerate (0 and 1 rows, width 1), odd sizes, more rows than one block (32), strided views.
  const Shape shapes[] = {{0, 3, 2, 0},  {1, 1, 1, 0},   {1, 5, 3, 0},  {3, 7, 5, 0},
                          {9, 4, 11, 2}, {17, 13, 6, 0}, {35, 9, 10, 3}};
  std::uint64_t seed = 100;
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      Case c(s.rows, s.in, s.out, seed += 10, s.pad);
      std::string tag = "[";  // appended piecewise: GCC 12 warns (-Wrestrict) on "[" + std::string
      for (index_t v : {s.rows, s.in, s.out, s.pad}) tag += std::to_string(v) + ",";
      tag += with_bias ? "bias]" : "]";
      INFO("shape " << tag);
      const Grads<double> g = backward<double>(c);
      // Padding of the strided x is not read: its numeric gradient is 0, as is dx's padding.
      auto loss = [&] { return c.loss(with_bias); };
      check_grad("x" + tag, g.dx, loss, c.x);
      check_grad("weight" + tag, g.dw, loss, c.w);
      if (with_bias) check_grad("bias" + tag, g.db, loss, c.b);
    }
  }
}

TEST_CASE("linear_backward: the float instantiation agrees with the double one", "[host]") {
  Case c(37, 21, 19, 7, 1);
  // The double reference runs on the float-rounded inputs.
  for (auto* v : {&c.x, &c.w, &c.dy})
    for (double& e : *v) e = static_cast<float>(e);
  const Grads<double> ref = backward<double>(c);
  const Grads<float> f = backward<float>(c);
  CHECK(max_err(f.dx, ref.dx) < 1e-5);
  CHECK(max_err(f.dw, ref.dw) < 1e-5);
  CHECK(max_err(f.db, ref.db) < 1e-5);

  // bf16 weights and input with a float dy (the LM head's Tout = float): dW and db are float,
  // dx is rounded once to bf16.
  for (auto* v : {&c.x, &c.w})
    for (double& e : *v) e = moss::to_float(moss::from_float<bf16>(static_cast<float>(e)));
  const Grads<double> ref16 = backward<double>(c);
  const Grads<bf16, float> h = backward<bf16, float>(c);
  CHECK(max_err(h.dx, ref16.dx) < 8e-3);
  CHECK(max_err(h.dw, ref16.dw) < 1e-5);
  CHECK(max_err(h.db, ref16.db) < 1e-5);
}

TEST_CASE("linear_backward sums in the documented order (bitwise) and repeats bitwise", "[host]") {
  const Case c(45, 17, 9, 3);
  const Grads<float> g = backward<float>(c);
  const index_t rows = c.rows, in = c.in, out = c.out;
  std::vector<float> x(c.x.begin(), c.x.end()), w(c.w.begin(), c.w.end()), dy(c.dy.begin(), c.dy.end());
  // dW[o, k] and db[o] over rows ascending; dX[r, k] over o ascending, each from zero.
  std::vector<float> dw(out * in, 0.0f), db(out, 0.0f), dx(rows * in, 0.0f);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t o = 0; o < out; ++o) {
      const float gro = dy[r * out + o];
      db[o] += gro;
      for (index_t k = 0; k < in; ++k) dw[o * in + k] += gro * x[r * in + k];
      for (index_t k = 0; k < in; ++k) dx[r * in + k] += gro * w[o * in + k];
    }
  }
  CHECK(std::memcmp(g.dw.data(), dw.data(), dw.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(g.db.data(), db.data(), db.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(g.dx.data(), dx.data(), dx.size() * sizeof(float)) == 0);

  const Grads<float> again = backward<float>(c);
  CHECK(std::memcmp(g.dw.data(), again.dw.data(), dw.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(g.db.data(), again.db.data(), db.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(g.dx.data(), again.dx.data(), dx.size() * sizeof(float)) == 0);
}

TEST_CASE("linear_backward: accumulate adds into dweight and dbias, dx is written", "[host]") {
  const Case c(6, 5, 4, 21);
  const Grads<float> fresh = backward<float>(c);
  Grads<float> old;
  old.dx.assign(fresh.dx.size(), 123.0f);
  for (float v : moss::test::randn(fresh.dw.size(), 3)) old.dw.push_back(v);
  for (float v : moss::test::randn(fresh.db.size(), 4)) old.db.push_back(v);
  const Grads<float> acc = backward<float>(c, true, old);
  for (std::size_t i = 0; i < fresh.dw.size(); ++i) REQUIRE(acc.dw[i] == old.dw[i] + fresh.dw[i]);
  for (std::size_t i = 0; i < fresh.db.size(); ++i) REQUIRE(acc.db[i] == old.db[i] + fresh.db[i]);
  CHECK(acc.dx == fresh.dx);

  // Without accumulate, whatever the outputs held is overwritten; zero rows give zero.
  const Case none(0, 5, 4, 22);
  Grads<float> stale;
  stale.dw.assign(20, NAN);
  stale.db.assign(4, NAN);
  const Grads<float> z = backward<float>(none, false, stale);
  CHECK(z.dw == std::vector<float>(20, 0.0f));
  CHECK(z.db == std::vector<float>(4, 0.0f));
  const Grads<float> kept = backward<float>(none, true, old);
  CHECK(kept.dw == old.dw);
  CHECK(kept.db == old.db);
}

TEST_CASE("linear_backward: absent outputs are not computed, the others are unchanged", "[host]") {
  const Case c(10, 7, 6, 31);
  const Grads<float> all = backward<float>(c);
  std::vector<float> x(c.x.begin(), c.x.end()), w(c.w.begin(), c.w.end()), dy(c.dy.begin(), c.dy.end());
  for (int which = 0; which < 3; ++which) {
    std::vector<float> out(which == 0 ? x.size() : which == 1 ? w.size() : 6, NAN);
    moss::LinearBackwardArgs<float> a;
    a.dy = ConstView<float, 2>(dy.data(), {10, 6}, "dy");
    a.x = ConstView<float, 2>(x.data(), {10, 7}, "x");
    a.weight = ConstView<float, 2>(w.data(), {6, 7}, "weight");
    if (which == 0) a.dx = TensorView<float, 2>(out.data(), {10, 7}, "dx");
    if (which == 1) a.dweight = TensorView<float, 2>(out.data(), {6, 7}, "dweight");
    if (which == 2) a.dbias = TensorView<float, 1>(out.data(), {6}, "dbias");
    moss::linear_backward(moss::Host{}, a);
    CHECK(out == (which == 0 ? all.dx : which == 1 ? all.dw : all.db));
  }
  // Nothing asked: a no-op.
  moss::LinearBackwardArgs<float> a;
  a.dy = ConstView<float, 2>(dy.data(), {10, 6}, "dy");
  a.x = ConstView<float, 2>(x.data(), {10, 7}, "x");
  a.weight = ConstView<float, 2>(w.data(), {6, 7}, "weight");
  REQUIRE_NOTHROW(moss::linear_backward(moss::Host{}, a));
}

TEST_CASE("linear_backward: every validation error names the tensor", "[host]") {
  const moss::Host host;
  auto expect = [&](moss::LinearBackwardArgs<float> a, const std::string& text, bool config = false) {
    if (config) {
      REQUIRE_THROWS_AS(moss::linear_backward(host, a), moss::config_error);
    } else {
      REQUIRE_THROWS_AS(moss::linear_backward(host, a), moss::shape_error);
    }
    REQUIRE_THROWS_WITH(moss::linear_backward(host, a), ContainsSubstring(text));
  };
  Bufs b;
  REQUIRE_NOTHROW(moss::linear_backward(host, b.args()));
  {
    auto a = b.args();
    a.x.shape = {4, 0};
    a.weight.shape = {5, 0};
    expect(a, "linear_backward: x is [4, 0] (rows, in) but in must be at least 1", true);
  }
  {
    auto a = b.args();
    a.weight.shape = {0, 6};
    expect(a, "linear_backward: weight is [0, 6] (out, in) but out must be at least 1", true);
  }
  {
    auto a = b.args();
    a.weight = ConstView<float, 2>(b.w.data(), {5, 5}, "weight");
    expect(a, "weight is [5, 5] (out, in) but expected [5, 6]");
  }
  {
    auto a = b.args();
    a.dy = ConstView<float, 2>(b.dy.data(), {5, 4}, "dy");
    expect(a, "linear_backward: dy is [5, 4] (rows, out) but expected [4, 5]");
  }
  {
    auto a = b.args();
    a.dx = TensorView<float, 2>(b.dx.data(), {4, 5}, "dx");
    expect(a, "linear_backward: dx is [4, 5] (rows, in) but expected [4, 6]");
  }
  {
    auto a = b.args();
    a.dweight = TensorView<float, 2>(b.dw.data(), {6, 5}, "dweight");
    expect(a, "linear_backward: dweight is [6, 5] (out, in) but expected [5, 6]");
  }
  {
    auto a = b.args();
    a.dbias = TensorView<float, 1>(b.db.data(), {4}, "dbias");
    expect(a, "linear_backward: dbias is [4] (out) but expected [5]");
  }
  {
    auto a = b.args();
    a.dweight = TensorView<float, 2>(b.dw.data(), {5, 6}, {7, 1}, "dweight");
    expect(a, "linear_backward: dweight [5, 6] must be contiguous");
  }
  {
    auto a = b.args();
    a.dbias = TensorView<float, 1>(b.db.data(), {5}, {2}, "dbias");
    expect(a, "linear_backward: dbias [5] must be contiguous");
  }
  {
    auto a = b.args();
    a.weight = ConstView<float, 2>(b.w.data(), {5, 6}, {6, 2}, "weight");
    expect(a, "linear_backward: weight [5, 6] must be contiguous");
  }
  {
    auto a = b.args();
    a.dy = ConstView<float, 2>(b.dy.data(), {4, 5}, {5, 2}, "dy");
    expect(a, "linear_backward: dy needs unit stride in its last dimension");
  }
  {
    auto a = b.args();
    a.x = ConstView<float, 2>(b.x.data(), {4, 6}, {6, 2}, "x");
    expect(a, "linear_backward: x needs unit stride in its last dimension");
  }
  {
    auto a = b.args();
    a.dx = TensorView<float, 2>(b.dx.data(), {4, 6}, {6, 2}, "dx");
    expect(a, "linear_backward: dx needs unit stride in its last dimension");
  }
  {
    auto a = b.args();
    a.dy = ConstView<float, 2>(b.dy.data(), {4, 5}, {4, 1}, "dy");
    expect(a, "linear_backward: dy has row stride 4 but its rows are 5 wide");
  }
  {
    auto a = b.args();
    a.x = ConstView<float, 2>(b.x.data(), {4, 6}, {5, 1}, "x");
    expect(a, "linear_backward: x has row stride 5 but its rows are 6 wide");
  }
  {
    auto a = b.args();
    a.dx = TensorView<float, 2>(b.dx.data(), {4, 6}, {3, 1}, "dx");
    expect(a, "linear_backward: dx has row stride 3 but its rows are 6 wide");
  }
  {
    auto a = b.args();
    a.dy.data = nullptr;
    expect(a, "linear_backward: dy [4, 5] has no data");
  }
  {
    auto a = b.args();
    a.dx.stride = {-6, 1};
    expect(a, "linear_backward: dx has negative stride");
  }
}
