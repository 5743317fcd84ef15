// tests/ops/activation_test.cpp: `activation` on the host (Relu, exact-erf Gelu, Silu, plain and
// gated) against float64 formulas for every dtype, hand-computed values, in-place use, NaN
// propagation, strided rows, and every validation error.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "moss/ops/activation.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// The activations in float64, from their definitions.
double relu64(double x) { return x > 0 ? x : 0.0; }
double gelu64(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double silu64(double x) { return x / (1.0 + std::exp(-x)); }

template <class Act>
double act64(double x) {
  if constexpr (std::is_same_v<Act, moss::Relu>)
    return relu64(x);
  else if constexpr (std::is_same_v<Act, moss::Gelu>)
    return gelu64(x);
  else
    return silu64(x);
}

/// An (activation, storage type) pair for TEMPLATE_TEST_CASE.
template <class A, class T>
struct Combo {
  using Act = A;
  using Type = T;
};

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// Runs `activation<Act>` over x (rows, cols) with row stride xs, optional up (row stride us),
/// into out (row stride os).
template <class Act, class T>
void run(const T* x, index_t xs, const T* up, index_t us, T* out, index_t os, index_t rows, index_t cols) {
  moss::ActivationArgs<T> a;
  a.x = ConstView<T, 2>(x, {rows, cols}, {xs, 1}, "x");
  if (up) a.up = ConstView<T, 2>(up, {rows, cols}, {us, 1}, "up");
  a.out = TensorView<T, 2>(out, {rows, cols}, {os, 1}, "out");
  moss::activation<Act>(moss::Host{}, a);
}

}  // namespace

TEST_CASE("activation: hand-computed values", "[host][ops][activation]") {
  const std::vector<float> x{-2.0f, -0.5f, 0.0f, 0.5f, 1.0f, 3.0f};
  std::vector<float> out(6);
  run<moss::Relu>(x.data(), 6, static_cast<const float*>(nullptr), 0, out.data(), 6, 1, 6);
  CHECK(out == std::vector<float>{0.0f, 0.0f, 0.0f, 0.5f, 1.0f, 3.0f});
  // Gelu(1) = Φ(1) = 0.841344746..., Gelu(−0.5) = −0.5·Φ(−0.5) = −0.154268..., Gelu(3) = 2.995950...
  run<moss::Gelu>(x.data(), 6, static_cast<const float*>(nullptr), 0, out.data(), 6, 1, 6);
  CHECK(std::fabs(out[4] - 0.8413447460685429f) <= 1e-6f);
  CHECK(std::fabs(out[1] - -0.15426876936299344f) <= 1e-6f);
  CHECK(std::fabs(out[5] - 2.9959502f) <= 1e-6f);
  CHECK(out[2] == 0.0f);
  // Silu(1) = 1 / (1 + e^-1) = 0.7310585786..., Silu(−2) = −2 / (1 + e²) = −0.2384058440...
  run<moss::Silu>(x.data(), 6, static_cast<const float*>(nullptr), 0, out.data(), 6, 1, 6);
  CHECK(std::fabs(out[4] - 0.7310585786300049f) <= 1e-6f);
  CHECK(std::fabs(out[0] - -0.23840584404423515f) <= 1e-6f);
  CHECK(out[2] == 0.0f);
  // Gated: act(x) · up.
  const std::vector<float> up{3.0f, 2.0f, 5.0f, -4.0f, 0.5f, -1.0f};
  run<moss::Relu>(x.data(), 6, up.data(), 6, out.data(), 6, 1, 6);
  CHECK(out == std::vector<float>{0.0f, 0.0f, 0.0f, -2.0f, 0.5f, -3.0f});
}

TEMPLATE_TEST_CASE("activation matches float64 formulas", "[host][ops][activation]", (Combo<moss::Relu, float>),
                   (Combo<moss::Relu, f16>), (Combo<moss::Relu, bf16>), (Combo<moss::Gelu, float>),
                   (Combo<moss::Gelu, f16>), (Combo<moss::Gelu, bf16>), (Combo<moss::Silu, float>),
                   (Combo<moss::Silu, f16>), (Combo<moss::Silu, bf16>)) {
  using Act = typename TestType::Act;
  using T = typename TestType::Type;
  // One rounding to T; in float32 a few ulp of the erf / exp.
  const double tol = std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>();
  // Per element: within half an ulp of T of the reference, plus the float32 evaluation error
  // (x·Φ(x) for very negative x cancels: an absolute slack of a few float32 ulp of |x|).
  const double ulp = std::is_same_v<T, float> ? 0x1p-24 : std::is_same_v<T, f16> ? 0x1p-11 : 0x1p-8;
  // f16's subnormals have an absolute spacing of 2^-24.
  const double floor = std::is_same_v<T, f16> ? 0x1p-25 : 1e-40;
  const index_t rows = 17, cols = 45;
  std::uint64_t seed = 3000;
  for (float scale : {0.3f, 1.0f, 4.0f, 12.0f}) {
    CAPTURE(scale);
    const auto x = moss::test::to_storage<T>(moss::test::randn(rows * cols, seed += 3, scale));
    const auto up = moss::test::to_storage<T>(moss::test::randn(rows * cols, seed += 3));
    for (bool gated : {false, true}) {
      CAPTURE(gated);
      std::vector<T> out(x.size(), moss::from_float<T>(kNaN));
      run<Act>(x.data(), cols, gated ? up.data() : nullptr, cols, out.data(), cols, rows, cols);
      std::vector<double> ref(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        ref[i] = act64<Act>(moss::to_float(x[i]));
        if (gated) ref[i] *= moss::to_float(up[i]);
      }
      CHECK(moss::test::rel_l2(out, ref) <= tol);
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double xi = moss::to_float(x[i]), got = moss::to_float(out[i]);
        const double upi = gated ? std::fabs(moss::to_float(up[i])) : 1.0;
        CAPTURE(i, xi, got, ref[i]);
        REQUIRE(std::fabs(got - ref[i]) <= ulp * std::fabs(ref[i]) + 8 * 0x1p-24 * std::fabs(xi) * upi + floor);
      }
    }
  }
}

TEMPLATE_TEST_CASE("activation: NaN propagates, out-of-range values stay finite where the math is",
                   "[host][ops][activation]", moss::Relu, moss::Gelu, moss::Silu) {
  using Act = TestType;
  const std::vector<float> x{kNaN, 1.0f, -1.0f, 2.0f, 40.0f, -40.0f, 100.0f, -100.0f};
  const std::vector<float> up{1.0f, kNaN, 2.0f, 0.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  std::vector<float> out(8);
  run<Act>(x.data(), 8, static_cast<const float*>(nullptr), 0, out.data(), 8, 1, 8);
  CHECK(std::isnan(out[0]));
  for (int i = 1; i < 8; ++i) {
    CAPTURE(i, x[i], out[i]);
    CHECK(std::isfinite(out[i]));
    CHECK(std::fabs(out[i] - act64<Act>(x[i])) <= 1e-6 * std::fabs(act64<Act>(x[i])) + 1e-6);
  }
  run<Act>(x.data(), 8, up.data(), 8, out.data(), 8, 1, 8);
  CHECK(std::isnan(out[0]));  // act(NaN) · 1
  CHECK(std::isnan(out[1]));  // act(1) · NaN
  CHECK(out[3] == 0.0f);      // act(2) · 0
  // bf16 and f16 keep NaN too.
  const auto xb = moss::test::to_storage<bf16>(x);
  std::vector<bf16> ob(8);
  run<Act>(xb.data(), 8, static_cast<const bf16*>(nullptr), 0, ob.data(), 8, 1, 8);
  CHECK(std::isnan(moss::to_float(ob[0])));
  const auto xh = moss::test::to_storage<f16>(x);
  std::vector<f16> oh(8);
  run<Act>(xh.data(), 8, static_cast<const f16*>(nullptr), 0, oh.data(), 8, 1, 8);
  CHECK(std::isnan(moss::to_float(oh[0])));
  CHECK(std::isfinite(moss::to_float(oh[4])));
}

TEMPLATE_TEST_CASE("activation in place (out is x) equals the out-of-place result", "[host][ops][activation]",
                   (Combo<moss::Gelu, float>), (Combo<moss::Silu, bf16>), (Combo<moss::Relu, f16>)) {
  using Act = typename TestType::Act;
  using T = typename TestType::Type;
  const index_t rows = 9, cols = 31;
  const auto x = moss::test::to_storage<T>(moss::test::randn(rows * cols, 3101, 2.0f));
  const auto up = moss::test::to_storage<T>(moss::test::randn(rows * cols, 3102));
  for (bool gated : {false, true}) {
    CAPTURE(gated);
    std::vector<T> ref(x.size()), inplace = x;
    run<Act>(x.data(), cols, gated ? up.data() : nullptr, cols, ref.data(), cols, rows, cols);
    run<Act>(inplace.data(), cols, gated ? up.data() : nullptr, cols, inplace.data(), cols, rows, cols);
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(same_bits(inplace[i], ref[i]));
    // …and it really changed the data.
    std::size_t changed = 0;
    for (std::size_t i = 0; i < x.size(); ++i) changed += same_bits(inplace[i], x[i]) ? 0 : 1;
    CHECK(changed > x.size() / 4);
  }
  SECTION("gated in place into up") {
    std::vector<T> ref(x.size()), u = up;
    run<Act>(x.data(), cols, up.data(), cols, ref.data(), cols, rows, cols);
    run<Act>(x.data(), cols, u.data(), cols, u.data(), cols, rows, cols);
    for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(same_bits(u[i], ref[i]));
  }
}

TEMPLATE_TEST_CASE("activation: strided rows, gaps untouched", "[host][ops][activation]", float, bf16) {
  using T = TestType;
  const index_t rows = 11, cols = 14, xs = cols + 3, us = cols + 7, os = cols + 5;
  const auto x = moss::test::to_storage<T>(moss::test::randn(rows * xs, 3201, 2.0f));
  const auto up = moss::test::to_storage<T>(moss::test::randn(rows * us, 3202));
  std::vector<T> dense_x(rows * cols), dense_up(rows * cols);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      dense_x[r * cols + c] = x[r * xs + c];
      dense_up[r * cols + c] = up[r * us + c];
    }
  std::vector<T> dense(rows * cols);
  run<moss::Silu>(dense_x.data(), cols, dense_up.data(), cols, dense.data(), cols, rows, cols);
  std::vector<T> wide(rows * os, moss::from_float<T>(kNaN));
  run<moss::Silu>(x.data(), xs, up.data(), us, wide.data(), os, rows, cols);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < os; ++c) {
      CAPTURE(r, c);
      if (c < cols) {
        REQUIRE(same_bits(wide[r * os + c], dense[r * cols + c]));
      } else {
        REQUIRE(std::isnan(moss::to_float(wide[r * os + c])));
      }
    }
}

TEST_CASE("activation: zero rows write nothing", "[host][ops][activation]") {
  const std::vector<float> x{1.0f, 2.0f};
  std::vector<float> out{7.0f, 7.0f};
  REQUIRE_NOTHROW(run<moss::Gelu>(x.data(), 2, static_cast<const float*>(nullptr), 0, out.data(), 2, 0, 2));
  CHECK(out == std::vector<float>{7.0f, 7.0f});
}

TEST_CASE("activation: every validation error", "[host][ops][activation][errors]") {
  const index_t rows = 4, cols = 6;
  const auto x = moss::test::to_storage<f16>(moss::test::randn(rows * 12, 3301));
  const auto up = moss::test::to_storage<f16>(moss::test::randn(rows * 12, 3302));
  std::vector<f16> out(rows * 12);
  const moss::Host host;
  const auto good = [&] {
    moss::ActivationArgs<f16> a;
    a.x = ConstView<f16, 2>(x.data(), {rows, cols}, "x");
    a.up = ConstView<f16, 2>(up.data(), {rows, cols}, "up");
    a.out = TensorView<f16, 2>(out.data(), {rows, cols}, "out");
    return a;
  };
  REQUIRE_NOTHROW(moss::activation<moss::Silu>(host, good()));

  SECTION("out of the wrong shape") {
    auto a = good();
    a.out = TensorView<f16, 2>(out.data(), {rows, cols + 1}, "out");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("activation: out is [4, 7] (rows, cols) but expected [4, 6]"));
  }
  SECTION("up of the wrong shape") {
    auto a = good();
    a.up = ConstView<f16, 2>(up.data(), {rows - 1, cols}, "up");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("up is [3, 6] (rows, cols) but expected [4, 6]"));
  }
  SECTION("non-unit inner stride") {
    auto a = good();
    a.x = ConstView<f16, 2>(x.data(), {rows, cols}, {12, 2}, "x");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("x needs unit stride in its last dimension"));
    a = good();
    a.up = ConstView<f16, 2>(up.data(), {rows, cols}, {12, 2}, "up");
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("up needs unit stride in its last dimension"));
    a = good();
    a.out = TensorView<f16, 2>(out.data(), {rows, cols}, {12, 2}, "out");
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("out needs unit stride in its last dimension"));
  }
  SECTION("overlapping rows") {
    auto a = good();
    a.x = ConstView<f16, 2>(x.data(), {rows, cols}, {5, 1}, "x");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("x has row stride 5 but its rows are 6 wide"));
    a = good();
    a.up = ConstView<f16, 2>(up.data(), {rows, cols}, {2, 1}, "up");
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("up has row stride 2 but its rows are 6 wide"));
    a = good();
    a.out = TensorView<f16, 2>(out.data(), {rows, cols}, {4, 1}, "out");
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a),
                        ContainsSubstring("out has row stride 4 but its rows are 6 wide"));
  }
  SECTION("missing data, negative strides") {
    auto a = good();
    a.out.data = nullptr;
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a), ContainsSubstring("out [4, 6] has no data"));
    a = good();
    a.x = ConstView<f16, 2>(x.data() + 36, {rows, cols}, {-12, 1}, "x");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a), ContainsSubstring("x has negative stride"));
    a = good();
    a.up = ConstView<f16, 2>(up.data() + 36, {rows, cols}, {-12, 1}, "up");
    REQUIRE_THROWS_AS(moss::activation<moss::Silu>(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::activation<moss::Silu>(host, a), ContainsSubstring("up has negative stride"));
  }
}
