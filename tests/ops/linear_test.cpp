// tests/ops/linear_test.cpp: `linear` on the host against hand-computed values, a float64 loop
// written here, invariants, and every validation error.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstring>
#include <vector>

#include "moss/ops/linear.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

/// A (T, Tout) pair for TEMPLATE_TEST_CASE.
template <class T, class Tout>
struct Types {
  using In = T;
  using Out = Tout;
};

/// y = x · Wᵀ + bias in float64 from the stored (rounded) inputs, written independently of the
/// op's math.hpp: a plain triple loop.
template <class T>
std::vector<double> reference(const std::vector<T>& x, const std::vector<T>& w, const std::vector<T>* bias,
                              index_t rows, index_t in, index_t out) {
  std::vector<double> y(static_cast<std::size_t>(rows * out));
  for (index_t r = 0; r < rows; ++r) {
    for (index_t o = 0; o < out; ++o) {
      double s = bias ? static_cast<double>(moss::to_float((*bias)[o])) : 0.0;
      for (index_t k = 0; k < in; ++k) {
        s += static_cast<double>(moss::to_float(x[r * in + k])) * static_cast<double>(moss::to_float(w[o * in + k]));
      }
      y[r * out + o] = s;
    }
  }
  return y;
}

/// Random inputs of one case, already rounded to T.
template <class T>
struct Case {
  index_t rows, in, out;
  std::vector<T> x, w, bias;
  Case(index_t rows_, index_t in_, index_t out_, std::uint64_t seed)
      : rows(rows_),
        in(in_),
        out(out_),
        x(moss::test::to_storage<T>(moss::test::randn(rows_ * in_, seed))),
        w(moss::test::to_storage<T>(moss::test::randn(out_ * in_, seed + 1, 0.1f))),
        bias(moss::test::to_storage<T>(moss::test::randn(out_, seed + 2))) {}
  template <class Tout>
  moss::LinearArgs<T, Tout> args(std::vector<Tout>& y, bool with_bias) const {
    moss::LinearArgs<T, Tout> a;
    a.x = ConstView<T, 2>(x.data(), {rows, in}, "x");
    a.weight = ConstView<T, 2>(w.data(), {out, in}, "weight");
    if (with_bias) a.bias = ConstView<T, 1>(bias.data(), {out}, "bias");
    a.y = TensorView<Tout, 2>(y.data(), {rows, out}, "y");
    return a;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("linear: hand-computed 2x3 case", "[host]", (Types<float, float>), (Types<f16, f16>),
                   (Types<bf16, bf16>), (Types<f16, float>), (Types<bf16, float>)) {
  using T = typename TestType::In;
  using Tout = typename TestType::Out;
  // Every input and output is exact in f16 and bf16.
  const auto x = moss::test::to_storage<T>({1, 2, 3, 4, 5, 6});            // (2, 3)
  const auto w = moss::test::to_storage<T>({1, 0, -1, 0.5f, 0.5f, 0.5f});  // (2, 3)
  const auto b = moss::test::to_storage<T>({1, -2});                       // (2)
  std::vector<Tout> y(4, moss::from_float<Tout>(99.0f));
  moss::LinearArgs<T, Tout> a;
  a.x = ConstView<T, 2>(x.data(), {2, 3}, "x");
  a.weight = ConstView<T, 2>(w.data(), {2, 3}, "weight");
  a.y = TensorView<Tout, 2>(y.data(), {2, 2}, "y");

  moss::linear(moss::Host{}, a);
  CHECK(moss::to_float(y[0]) == -2.0f);  // 1 - 3
  CHECK(moss::to_float(y[1]) == 3.0f);   // 0.5 + 1 + 1.5
  CHECK(moss::to_float(y[2]) == -2.0f);  // 4 - 6
  CHECK(moss::to_float(y[3]) == 7.5f);   // 2 + 2.5 + 3

  a.bias = ConstView<T, 1>(b.data(), {2}, "bias");
  moss::linear(moss::Host{}, a);
  CHECK(moss::to_float(y[0]) == -1.0f);
  CHECK(moss::to_float(y[1]) == 1.0f);
  CHECK(moss::to_float(y[2]) == -1.0f);
  CHECK(moss::to_float(y[3]) == 5.5f);
}

TEMPLATE_TEST_CASE("linear matches a float64 loop", "[host]", (Types<float, float>), (Types<f16, f16>),
                   (Types<bf16, bf16>), (Types<f16, float>), (Types<bf16, float>)) {
  using T = typename TestType::In;
  using Tout = typename TestType::Out;
  // Shapes cross the host's blocking: rows past one row block (16), out past one weight tile and
  // not a multiple of the out group (4), in not a multiple of the 8 lanes.
  struct Shape {
    index_t rows, in, out;
  };
  const Shape shapes[] = {{1, 1, 1}, {5, 7, 3}, {17, 64, 9}, {37, 1000, 150}, {3, 2048, 5}};
  std::uint64_t seed = 100;
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      CAPTURE(s.rows, s.in, s.out, with_bias);
      const Case<T> c(s.rows, s.in, s.out, seed += 10);
      std::vector<Tout> y(static_cast<std::size_t>(s.rows * s.out), moss::from_float<Tout>(NAN));
      moss::linear(moss::Host{}, c.template args<Tout>(y, with_bias));
      const auto ref = reference(c.x, c.w, with_bias ? &c.bias : nullptr, s.rows, s.in, s.out);
      const double err = moss::test::rel_l2(y, ref);
      // float32 accumulation: far inside the f32 contract; 16-bit outputs: one rounding.
      CHECK(err <= (std::is_same_v<Tout, float> ? 1e-6 : moss::test::op_tolerance<Tout>()));
    }
  }
}

TEMPLATE_TEST_CASE("linear: invariants", "[host]", float, f16, bf16) {
  using T = TestType;
  const Case<T> c(40, 33, 21, 7);
  std::vector<float> full(40 * 21), no_bias(40 * 21);
  moss::linear(moss::Host{}, c.template args<float>(full, true));
  moss::linear(moss::Host{}, c.template args<float>(no_bias, false));

  SECTION("with a float output the bias is one float add after the dot product") {
    for (index_t r = 0; r < 40; ++r) {
      for (index_t o = 0; o < 21; ++o) {
        REQUIRE(full[r * 21 + o] == no_bias[r * 21 + o] + moss::to_float(c.bias[o]));
      }
    }
  }
  SECTION("each row depends on its own input only: a row subset gives the same bits") {
    std::vector<float> part(20 * 21);
    auto a = c.template args<float>(part, true);
    a.x = ConstView<T, 2>(c.x.data() + 13 * 33, {20, 33}, "x");
    a.y = TensorView<float, 2>(part.data(), {20, 21}, "y");
    moss::linear(moss::Host{}, a);
    REQUIRE(std::memcmp(part.data(), full.data() + 13 * 21, part.size() * sizeof(float)) == 0);
  }
}

TEMPLATE_TEST_CASE("linear: strided x and y are column slices of wider buffers", "[host]", float, bf16) {
  using T = TestType;
  const index_t rows = 19, in = 11, out = 6;
  const Case<T> c(rows, in, out, 31);
  // x lives in columns [3, 14) of a (rows, 20) buffer, y in columns [5, 11) of a (rows, 16) one.
  std::vector<T> xwide(rows * 20, moss::from_float<T>(1e4f));
  for (index_t r = 0; r < rows; ++r) {
    for (index_t k = 0; k < in; ++k) xwide[r * 20 + 3 + k] = c.x[r * in + k];
  }
  const float sentinel = 12288.0f;  // exact in every storage type
  std::vector<T> ywide(rows * 16, moss::from_float<T>(sentinel));
  std::vector<T> dense(rows * out);
  moss::linear(moss::Host{}, c.template args<T>(dense, true));

  auto a = c.template args<T>(dense, true);
  a.x = ConstView<T, 2>(xwide.data() + 3, {rows, in}, {20, 1}, "x");
  a.y = TensorView<T, 2>(ywide.data() + 5, {rows, out}, {16, 1}, "y");
  moss::linear(moss::Host{}, a);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < 16; ++j) {
      const float v = moss::to_float(ywide[r * 16 + j]);
      if (j >= 5 && j < 5 + out) {
        REQUIRE(v == moss::to_float(dense[r * out + j - 5]));
      } else {
        REQUIRE(v == sentinel);
      }
    }
  }
}

TEST_CASE("linear: zero rows write nothing", "[host]") {
  const Case<float> c(1, 4, 3, 5);
  std::vector<float> y(3, 42.0f);
  auto a = c.args<float>(y, true);
  a.x = ConstView<float, 2>(c.x.data(), {0, 4}, "x");
  a.y = TensorView<float, 2>(y.data(), {0, 3}, "y");
  REQUIRE_NOTHROW(moss::linear(moss::Host{}, a));
  REQUIRE(y == std::vector<float>{42.0f, 42.0f, 42.0f});
}

TEST_CASE("linear: every validation error", "[host]") {
  const Case<bf16> c(4, 6, 5, 9);
  std::vector<bf16> y(4 * 5);
  std::vector<bf16> wide(4 * 12);
  const moss::Host host;
  const auto good = [&] { return c.args<bf16>(y, true); };
  REQUIRE_NOTHROW(moss::linear(host, good()));

  SECTION("in = 0") {
    auto a = good();
    a.x = ConstView<bf16, 2>(c.x.data(), {4, 0}, "x");
    a.weight = ConstView<bf16, 2>(c.w.data(), {5, 0}, "weight");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("linear: x is [4, 0] (rows, in)"));
  }
  SECTION("out = 0") {
    auto a = good();
    a.weight = ConstView<bf16, 2>(c.w.data(), {0, 6}, "weight");
    a.y = TensorView<bf16, 2>(y.data(), {4, 0}, "y");
    a.bias = {};
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("weight is [0, 6] (out, in)"));
  }
  SECTION("weight's in differs from x's") {
    auto a = good();
    a.weight = ConstView<bf16, 2>(c.w.data(), {5, 5}, "weight");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("weight is [5, 5] (out, in) but expected [5, 6]"));
  }
  SECTION("y has the wrong shape") {
    auto a = good();
    a.y = TensorView<bf16, 2>(y.data(), {5, 4}, "y");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("y is [5, 4] (rows, out) but expected [4, 5]"));
  }
  SECTION("bias has the wrong length") {
    auto a = good();
    a.bias = ConstView<bf16, 1>(c.bias.data(), {4}, "bias");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("bias is [4] (out) but expected [5]"));
  }
  SECTION("bias is not contiguous") {
    auto a = good();
    a.bias = ConstView<bf16, 1>(c.w.data(), {5}, {2}, "bias");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("bias [5] must be contiguous"));
  }
  SECTION("x without unit inner stride") {
    auto a = good();
    a.x = ConstView<bf16, 2>(wide.data(), {4, 6}, {12, 2}, "x");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("x needs unit stride in its last dimension"));
  }
  SECTION("y without unit inner stride") {
    auto a = good();
    a.y = TensorView<bf16, 2>(wide.data(), {4, 5}, {12, 2}, "y");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("y needs unit stride in its last dimension"));
  }
  SECTION("x rows overlap") {
    auto a = good();
    a.x = ConstView<bf16, 2>(wide.data(), {4, 6}, {5, 1}, "x");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("x has row stride 5 but its rows are 6 wide"));
  }
  SECTION("y rows overlap") {
    auto a = good();
    a.y = TensorView<bf16, 2>(wide.data(), {4, 5}, {3, 1}, "y");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("y has row stride 3 but its rows are 5 wide"));
  }
  SECTION("weight is not contiguous") {
    auto a = good();
    a.weight = ConstView<bf16, 2>(wide.data(), {5, 6}, {7, 1}, "weight");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("weight [5, 6] must be contiguous"));
  }
  SECTION("missing data") {
    auto a = good();
    a.x.data = nullptr;
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("x [4, 6] has no data"));
  }
  SECTION("negative stride") {
    auto a = good();
    a.y = TensorView<bf16, 2>(y.data() + 15, {4, 5}, {-5, 1}, "y");
    REQUIRE_THROWS_AS(moss::linear(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::linear(host, a), ContainsSubstring("y has negative stride"));
  }
}
