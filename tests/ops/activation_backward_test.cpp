// tests/ops/activation_backward_test.cpp: the host backward of `activation` (Relu, exact-erf
// Gelu, Silu and an activation of the test's own; plain and gated) against central differences
// of the op's own forward in double (tests/grad_check.hpp) over rows (0 included), odd widths and
// padded rows; derivatives at special values; the storage-type instantiations against the
// double one; the double forward; in-place use; bitwise repeatability; validation.
//
// MOSS_GRAD_REPORT=1 in the environment prints the largest relative gradient error per input.
#include "moss/ops/activation_backward.hpp"

#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/activation.hpp"
#include "moss_test.hpp"

/// An activation of the test's own, x³ / 3 + x, made differentiable by specialising
/// moss::ActivationGrad (the extension point of moss/ops/activation/math.hpp).
struct CubicTest {
  static constexpr std::string_view name = "cubic_test";
  static float apply(float x) { return x * x * x / 3.0f + x; }
};
template <>
struct moss::ActivationGrad<CubicTest> {
  static double value(double x) { return x * x * x / 3.0 + x; }
  static float derivative(float x) { return x * x + 1.0f; }
  static double derivative(double x) { return x * x + 1.0; }
};

/// An activation without ActivationGrad: fine for the float forward, not differentiable.
struct NoGradTest {
  static constexpr std::string_view name = "no_grad_test";
  static float apply(float x) { return x; }
};

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

static_assert(moss::DifferentiableActivation<moss::Relu> && moss::DifferentiableActivation<moss::Gelu> &&
              moss::DifferentiableActivation<moss::Silu> && moss::DifferentiableActivation<CubicTest>);
static_assert(moss::Activation<NoGradTest> && !moss::DifferentiableActivation<NoGradTest>);

/// The largest relative gradient error seen per input, printed at exit under MOSS_GRAD_REPORT.
struct Report {
  std::map<std::string, double> worst;
  ~Report() {
    if (!std::getenv("MOSS_GRAD_REPORT")) return;
    for (const auto& [name, err] : worst)
      std::printf("activation_backward: d/d%s max relative error %.3g\n", name.c_str(), err);
  }
} report;

/// moss::test::check_gradient, and the error recorded for the report under `key`.
template <class Loss>
void check_grad(const std::string& name, const std::string& key, const std::vector<double>& analytic, Loss&& loss,
                std::vector<double>& x) {
  moss::test::check_gradient(name, analytic, loss, x);
  const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
  report.worst[key] = std::max(report.worst[key], err);
}

/// `v` as T (double stays exact, the storage types round once).
template <class T, class V>
std::vector<T> convert(const std::vector<V>& v) {
  std::vector<T> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double x = moss::test::as_double(v[i]);
    if constexpr (std::is_same_v<T, double>) {
      r[i] = x;
    } else {
      r[i] = moss::from_float<T>(static_cast<float>(x));
    }
  }
  return r;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// One case: (rows, cols) tensors with row stride ld ≥ cols; dout's padding is zero, so a loss
/// summed over whole storage vectors sees only the views.
template <class T>
struct Problem {
  index_t rows = 0, cols = 0, ld = 0;
  bool gated = false;
  std::vector<T> x, up, dout;

  static Problem random(index_t rows, index_t cols, index_t ld, bool gated, std::uint64_t seed) {
    Problem p;
    p.rows = rows, p.cols = cols, p.ld = ld, p.gated = gated;
    const auto n = static_cast<std::size_t>(rows * ld);
    auto d = moss::test::randn_f64(n, seed + 2);
    for (std::size_t i = 0; i < n; ++i)
      if (static_cast<index_t>(i) % ld >= cols) d[i] = 0.0;
    p.x = convert<T>(moss::test::randn_f64(n, seed, 1.5));
    p.up = convert<T>(moss::test::randn_f64(n, seed + 1));
    p.dout = convert<T>(d);
    return p;
  }
  template <class U>
  Problem<U> as() const {
    Problem<U> p;
    p.rows = rows, p.cols = cols, p.ld = ld, p.gated = gated;
    p.x = convert<U>(x), p.up = convert<U>(up), p.dout = convert<U>(dout);
    return p;
  }
  template <class V>
  TensorView<V, 2> view(std::vector<V>& v, const char* name) const {
    return TensorView<V, 2>(v.data(), {rows, cols}, {ld, 1}, name);
  }
  ConstView<T, 2> cview(const std::vector<T>& v, const char* name) const {
    return ConstView<T, 2>(v.data(), {rows, cols}, {ld, 1}, name);
  }

  template <class Act>
  std::vector<T> forward() const {
    std::vector<T> out(x.size(), T{});
    moss::ActivationArgs<T> a;
    a.x = cview(x, "x");
    if (gated) a.up = cview(up, "up");
    a.out = view(out, "out");
    moss::activation<Act>(moss::Host{}, a);
    return out;
  }
  struct Grads {
    std::vector<T> dx, dup;
  };
  Grads grads(double fill = 0.0) const {
    return {convert<T>(std::vector<double>(x.size(), fill)),
            convert<T>(std::vector<double>(gated ? x.size() : 0, fill))};
  }
  moss::ActivationBackwardArgs<T> backward_args(Grads& g) const {
    moss::ActivationBackwardArgs<T> a;
    a.x = cview(x, "x");
    if (gated) a.up = cview(up, "up");
    a.dout = cview(dout, "dout");
    if (!g.dx.empty()) a.dx = view(g.dx, "dx");
    if (!g.dup.empty()) a.dup = view(g.dup, "dup");
    return a;
  }
  template <class Act>
  Grads backward() const {
    Grads g = grads();
    moss::activation_backward<Act>(moss::Host{}, backward_args(g));
    return g;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("activation_backward matches finite differences in double", "[host][backward]", moss::Relu,
                   moss::Gelu, moss::Silu, CubicTest) {
  using Act = TestType;
  const std::string act(Act::name);
  std::uint64_t seed = 100;
  for (const auto& [rows, cols] : std::vector<std::pair<index_t, index_t>>{{0, 3}, {1, 1}, {3, 5}, {2, 17}, {4, 2}}) {
    for (index_t pad : {0, 3}) {
      for (bool gated : {false, true}) {
        CAPTURE(act, rows, cols, pad, gated);
        auto p = Problem<double>::random(rows, cols, cols + pad, gated, seed += 10);
        const auto g = p.template backward<Act>();
        const auto loss = [&] { return moss::test::dot(p.template forward<Act>(), p.dout); };
        check_grad("x", act + " x", g.dx, loss, p.x);
        if (gated) check_grad("up", act + " up", g.dup, loss, p.up);
      }
    }
  }
}

TEST_CASE("activation derivatives at special values", "[host][backward]") {
  using moss::ActivationGrad;
  constexpr float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(ActivationGrad<moss::Relu>::derivative(0.0f) == 0.0f);  // PyTorch's choice at the kink
  CHECK(ActivationGrad<moss::Relu>::derivative(2.5f) == 1.0f);
  CHECK(ActivationGrad<moss::Relu>::derivative(-2.5) == 0.0);
  CHECK(ActivationGrad<moss::Gelu>::derivative(0.0f) == 0.5f);
  CHECK(ActivationGrad<moss::Silu>::derivative(0.0f) == 0.5f);
  CHECK(std::abs(ActivationGrad<moss::Gelu>::derivative(1.0) - 1.0833154705876864) < 1e-15);
  CHECK(std::abs(ActivationGrad<moss::Silu>::derivative(1.0) - 0.9276705118714869) < 1e-15);
  for (float x : {inf, -inf, 100.0f, -100.0f}) {
    CAPTURE(x);
    const float limit = x > 0 ? 1.0f : 0.0f;
    CHECK(ActivationGrad<moss::Relu>::derivative(x) == limit);
    CHECK(std::abs(ActivationGrad<moss::Gelu>::derivative(x) - limit) < 1e-6f);
    CHECK(std::abs(ActivationGrad<moss::Silu>::derivative(x) - limit) < 1e-6f);
    CHECK(std::abs(ActivationGrad<moss::Gelu>::derivative(static_cast<double>(x)) - limit) < 1e-12);
    CHECK(std::abs(ActivationGrad<moss::Silu>::derivative(static_cast<double>(x)) - limit) < 1e-12);
  }
  CHECK(std::isnan(ActivationGrad<moss::Relu>::derivative(nan)));
  CHECK(std::isnan(ActivationGrad<moss::Gelu>::derivative(nan)));
  CHECK(std::isnan(ActivationGrad<moss::Silu>::derivative(nan)));

  // Through the op: NaN in x reaches dx and dup; act' is finite at ±inf, so dx is 0 there where
  // dout is 0 or the limit is 0 (no 0 · inf).
  std::vector<float> x = {nan, inf, -inf, 0.0f}, up = {1, 1, 1, 1}, dout = {1, 0, 1, 1}, dx(4), dup(4);
  moss::ActivationBackwardArgs<float> a;
  a.x = ConstView<float, 2>(x.data(), {1, 4}, "x");
  a.up = ConstView<float, 2>(up.data(), {1, 4}, "up");
  a.dout = ConstView<float, 2>(dout.data(), {1, 4}, "dout");
  a.dx = TensorView<float, 2>(dx.data(), {1, 4}, "dx");
  a.dup = TensorView<float, 2>(dup.data(), {1, 4}, "dup");
  moss::activation_backward<moss::Silu>(moss::Host{}, a);
  CHECK(std::isnan(dx[0]));
  CHECK(std::isnan(dup[0]));
  CHECK(dx[1] == 0.0f);
  CHECK(dx[2] == 0.0f);
  CHECK(dx[3] == 0.5f);
  CHECK(dup[3] == 0.0f);
}

TEMPLATE_TEST_CASE("activation_backward in storage types agrees with double", "[host][backward]", float, f16, bf16) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>();
  const auto run = [&]<class Act>() {
    for (bool gated : {false, true}) {
      CAPTURE(std::string(Act::name), gated);
      const auto p = Problem<double>::random(13, 77, 80, gated, 400).as<T>();
      const auto lo = p.template backward<Act>();
      const auto hi = p.template as<double>().template backward<Act>();  // the same rounded inputs
      CHECK(moss::test::rel_l2(lo.dx, hi.dx) <= tol);
      CHECK(moss::test::rel_l2(lo.dup, hi.dup) <= tol);
    }
  };
  run.template operator()<moss::Relu>();
  run.template operator()<moss::Gelu>();
  run.template operator()<moss::Silu>();
}

TEST_CASE("activation forward in double", "[host][backward]") {
  const auto p32 = Problem<double>::random(5, 31, 31, true, 500).as<float>();
  const auto p64 = p32.as<double>();
  const auto check = [&]<class Act>(bool exact) {
    CAPTURE(std::string(Act::name));
    const auto out32 = p32.template forward<Act>();
    const auto out64 = p64.template forward<Act>();
    CHECK(moss::test::rel_l2(out32, out64) <= 1e-6);
    if (exact) {
      CHECK(moss::test::rel_l2(out32, out64) == 0.0);
    } else {
      CHECK(moss::test::rel_l2(out32, out64) > 0.0);  // float64 arithmetic, not float32
    }
  };
  check.template operator()<moss::Relu>(false);  // the gating product rounds in float32
  check.template operator()<moss::Gelu>(false);
  check.template operator()<moss::Silu>(false);
  SECTION("rows 0") {
    const auto p0 = Problem<double>::random(0, 4, 4, true, 501);
    REQUIRE(p0.forward<moss::Gelu>().empty());
  }
}

TEST_CASE("activation_backward in place: dx over dout or x, dup over up", "[host][backward]") {
  const auto p = Problem<double>::random(6, 40, 40, true, 600).as<bf16>();
  const auto ref = p.backward<moss::Gelu>();

  Problem<bf16>::Grads none;
  auto q = p;  // dx written over dout, dup over up
  auto a = q.backward_args(none);
  a.x = q.cview(q.x, "x");
  a.up = q.cview(q.up, "up");
  a.dout = q.cview(q.dout, "dout");
  a.dx = q.view(q.dout, "dx");
  a.dup = q.view(q.up, "dup");
  moss::activation_backward<moss::Gelu>(moss::Host{}, a);
  CHECK(same_bits(q.dout, ref.dx));
  CHECK(same_bits(q.up, ref.dup));

  auto r = p;  // dx written over x
  auto b = r.backward_args(none);
  b.x = r.cview(r.x, "x");
  b.up = r.cview(r.up, "up");
  b.dx = r.view(r.x, "dx");
  moss::activation_backward<moss::Gelu>(moss::Host{}, b);
  CHECK(same_bits(r.x, ref.dx));
}

TEST_CASE("activation_backward is bitwise repeatable and writes only its views", "[host][backward]") {
  const auto p = Problem<double>::random(5, 33, 37, true, 700).as<float>();
  auto first = p.grads(std::numeric_limits<double>::quiet_NaN());
  moss::activation_backward<moss::Silu>(moss::Host{}, p.backward_args(first));
  auto second = p.grads(9.0);
  moss::activation_backward<moss::Silu>(moss::Host{}, p.backward_args(second));
  for (index_t r = 0; r < p.rows; ++r)
    for (index_t j = 0; j < p.ld; ++j) {
      const auto i = static_cast<std::size_t>(r * p.ld + j);
      if (j < p.cols) {
        REQUIRE(std::memcmp(&first.dx[i], &second.dx[i], sizeof(float)) == 0);
        REQUIRE(std::memcmp(&first.dup[i], &second.dup[i], sizeof(float)) == 0);
        REQUIRE(!std::isnan(first.dx[i]));
      } else {
        REQUIRE(std::isnan(first.dx[i]));
        REQUIRE(second.dup[i] == 9.0f);
      }
    }
  SECTION("each gradient alone equals the full call's") {
    auto only_dx = p.grads();
    only_dx.dup.clear();
    moss::activation_backward<moss::Silu>(moss::Host{}, p.backward_args(only_dx));
    auto only_dup = p.grads();
    only_dup.dx.clear();
    moss::activation_backward<moss::Silu>(moss::Host{}, p.backward_args(only_dup));
    const auto full = p.backward<moss::Silu>();
    CHECK(same_bits(only_dx.dx, full.dx));
    CHECK(same_bits(only_dup.dup, full.dup));
  }
  SECTION("rows 0") {
    const auto p0 = Problem<double>::random(0, 6, 6, true, 701).as<float>();
    REQUIRE_NOTHROW(p0.backward<moss::Relu>());
  }
}

TEST_CASE("activation_backward validation names the tensor and both shapes", "[host][backward]") {
  const auto p = Problem<double>::random(3, 8, 8, true, 800).as<bf16>();
  auto g = p.grads();
  const moss::Host host;
  const auto good = p.backward_args(g);
  REQUIRE_NOTHROW(moss::activation_backward<moss::Relu>(host, good));
  auto a = good;
  std::vector<bf16> other(64);

  SECTION("dout of another shape") {
    a.dout = ConstView<bf16, 2>(p.dout.data(), {3, 7}, "dout");
    REQUIRE_THROWS_AS(moss::activation_backward<moss::Relu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a),
                        ContainsSubstring("activation_backward: dout is [3, 7] (rows, cols) but expected [3, 8]"));
  }
  SECTION("dx, dup, up of another shape or layout") {
    a.dx = TensorView<bf16, 2>(other.data(), {2, 8}, "dx");
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a),
                        ContainsSubstring("dx is [2, 8] (rows, cols) but expected [3, 8]"));
    a = good;
    a.dup = TensorView<bf16, 2>(other.data(), {3, 8}, {4, 1}, "dup");
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a),
                        ContainsSubstring("dup has row stride 4 but its rows are 8 wide"));
    a = good;
    a.up = ConstView<bf16, 2>(other.data(), {3, 8}, {16, 2}, "up");
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a), ContainsSubstring("up needs unit stride"));
  }
  SECTION("dup without up") {
    a.up = {};
    REQUIRE_THROWS_AS(moss::activation_backward<moss::Relu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a),
                        ContainsSubstring("dup [3, 8] is the gradient of up, but the activation is not gated"));
  }
  SECTION("partial overlaps") {
    std::vector<bf16> buf(40);
    a.dout = ConstView<bf16, 2>(buf.data(), {3, 8}, "dout");
    a.dx = TensorView<bf16, 2>(buf.data() + 8, {3, 8}, "dx");
    REQUIRE_THROWS_AS(moss::activation_backward<moss::Relu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a), ContainsSubstring("dx [3, 8] overlaps dout"));
    a.dx = TensorView<bf16, 2>(buf.data(), {3, 8}, "dx");  // exactly dout: in place
    REQUIRE_NOTHROW(moss::activation_backward<moss::Relu>(host, a));
    a.dup = TensorView<bf16, 2>(buf.data(), {3, 8}, "dup");  // dx and dup both over dout
    REQUIRE_THROWS_WITH(moss::activation_backward<moss::Relu>(host, a), ContainsSubstring("dx [3, 8] overlaps dup"));
  }
}
