// tests/ops/rms_norm_test.cpp: `rms_norm` on the host against hand-computed values, a float64
// loop written here, the residual-stream rounding rule, and every validation error.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "moss/ops/rms_norm.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

/// A (Tdelta, Tout) pair for TEMPLATE_TEST_CASE.
template <class Tdelta, class Tout>
struct Types {
  using Delta = Tdelta;
  using Out = Tout;
};

/// Random inputs of one case; delta already rounded to Tdelta.
template <class Tdelta>
struct Case {
  index_t rows, dim;
  std::vector<float> residual, weight;
  std::vector<Tdelta> delta;
  Case(index_t rows_, index_t dim_, std::uint64_t seed)
      : rows(rows_),
        dim(dim_),
        residual(moss::test::randn(rows_ * dim_, seed, 2.0f)),
        weight(moss::test::uniform(dim_, seed + 1, 0.5f, 1.5f)),
        delta(moss::test::to_storage<Tdelta>(moss::test::randn(rows_ * dim_, seed + 2))) {}
  template <class Tout>
  moss::RmsNormArgs<Tdelta, Tout> args(std::vector<float>& res, std::vector<Tout>& out, bool with_delta,
                                       bool in_fp32) const {
    moss::RmsNormArgs<Tdelta, Tout> a;
    a.residual = TensorView<float, 2>(res.data(), {rows, dim}, "residual");
    if (with_delta) a.delta = ConstView<Tdelta, 2>(delta.data(), {rows, dim}, "delta");
    a.residual_in_fp32 = in_fp32;
    a.weight = ConstView<float, 1>(weight.data(), {dim}, "weight");
    a.eps = 1e-5f;
    a.out = TensorView<Tout, 2>(out.data(), {rows, dim}, "out");
    return a;
  }
};

}  // namespace

TEST_CASE("rms_norm: hand-computed 2x2 case", "[host]") {
  std::vector<float> residual = {1, 2, 1, -1};  // (2, 2)
  const std::vector<float> delta = {2, 2, 0, 0};
  const std::vector<float> weight = {1, 2};
  std::vector<float> out(4, NAN);
  moss::RmsNormArgs<float, float> a;
  a.residual = TensorView<float, 2>(residual.data(), {2, 2}, "residual");
  a.delta = ConstView<float, 2>(delta.data(), {2, 2}, "delta");
  a.weight = ConstView<float, 1>(weight.data(), {2}, "weight");
  a.eps = 0.0f;
  a.out = TensorView<float, 2>(out.data(), {2, 2}, "out");
  moss::rms_norm(moss::Host{}, a);
  // Row 0: residual becomes (3, 4), mean square 12.5; row 1: (1, -1), mean square 1.
  REQUIRE(residual == std::vector<float>{3, 4, 1, -1});
  const double s0 = 1.0 / std::sqrt(12.5);
  CHECK(std::abs(out[0] - 3 * s0) < 1e-6);
  CHECK(std::abs(out[1] - 8 * s0) < 1e-6);
  CHECK(out[2] == 1.0f);
  CHECK(out[3] == -2.0f);
}

TEMPLATE_TEST_CASE("rms_norm matches a float64 loop", "[host]", (Types<float, float>), (Types<f16, f16>),
                   (Types<bf16, bf16>), (Types<bf16, float>), (Types<f16, float>)) {
  using Tdelta = typename TestType::Delta;
  using Tout = typename TestType::Out;
  std::uint64_t seed = 300;
  for (index_t dim : {1, 7, 100, 777}) {
    for (bool with_delta : {false, true}) {
      for (bool in_fp32 : {true, false}) {
        CAPTURE(dim, with_delta, in_fp32);
        const Case<Tdelta> c(9, dim, seed += 10);
        std::vector<float> res = c.residual;
        std::vector<Tout> out(static_cast<std::size_t>(9 * dim), moss::from_float<Tout>(NAN));
        const auto a = c.template args<Tout>(res, out, with_delta, in_fp32);
        moss::rms_norm(moss::Host{}, a);

        std::vector<double> ref(out.size()), ref_res(out.size());
        for (index_t r = 0; r < 9; ++r) {
          double ss = 0;
          for (index_t i = 0; i < dim; ++i) {
            double v = c.residual[r * dim + i];
            if (with_delta) {
              v += moss::to_float(c.delta[r * dim + i]);
              // The stream is stored in Tdelta when not kept in float32.
              if (!in_fp32) v = moss::to_float(moss::from_float<Tdelta>(static_cast<float>(v)));
            }
            ref_res[r * dim + i] = v;
            ss += v * v;
          }
          const double scale = 1.0 / std::sqrt(ss / double(dim) + double(a.eps));
          for (index_t i = 0; i < dim; ++i) ref[r * dim + i] = ref_res[r * dim + i] * scale * c.weight[i];
        }
        CHECK(moss::test::rel_l2(res, ref_res) <= 1e-7);
        CHECK(moss::test::rel_l2(out, ref) <= (std::is_same_v<Tout, float> ? 1e-6 : moss::test::op_tolerance<Tout>()));
      }
    }
  }
}

TEMPLATE_TEST_CASE("rms_norm: the stored residual stream", "[host]", float, f16, bf16) {
  using Tdelta = TestType;
  const Case<Tdelta> c(6, 50, 17);
  std::vector<float> out(6 * 50);

  SECTION("residual_in_fp32: the float32 sum") {
    std::vector<float> res = c.residual;
    moss::rms_norm(moss::Host{}, c.template args<float>(res, out, true, true));
    for (std::size_t i = 0; i < res.size(); ++i) REQUIRE(res[i] == c.residual[i] + moss::to_float(c.delta[i]));
  }
  SECTION("not residual_in_fp32: the sum rounded once to Tdelta") {
    std::vector<float> res = c.residual;
    moss::rms_norm(moss::Host{}, c.template args<float>(res, out, true, false));
    for (std::size_t i = 0; i < res.size(); ++i) {
      const float sum = c.residual[i] + moss::to_float(c.delta[i]);
      REQUIRE(res[i] == moss::to_float(moss::from_float<Tdelta>(sum)));
    }
  }
  SECTION("without delta the residual is only read") {
    for (bool in_fp32 : {true, false}) {
      std::vector<float> res = c.residual;
      moss::rms_norm(moss::Host{}, c.template args<float>(res, out, false, in_fp32));
      REQUIRE(std::memcmp(res.data(), c.residual.data(), res.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("rms_norm: unit weight and eps 0 give rows of mean square 1", "[host]") {
  Case<float> c(5, 64, 23);
  c.weight.assign(64, 1.0f);
  std::vector<float> res = c.residual, out(5 * 64);
  auto a = c.args<float>(res, out, true, true);
  a.eps = 0.0f;
  moss::rms_norm(moss::Host{}, a);
  for (index_t r = 0; r < 5; ++r) {
    double ms = 0;
    for (index_t i = 0; i < 64; ++i) ms += double(out[r * 64 + i]) * out[r * 64 + i];
    REQUIRE(std::abs(ms / 64 - 1.0) < 1e-6);
  }
}

TEST_CASE("rms_norm: strided rows leave the other columns untouched", "[host]") {
  const index_t rows = 4, dim = 10;
  const Case<bf16> c(rows, dim, 41);
  // residual in columns [2, 12) of a (rows, 15) buffer, out in columns [1, 11) of (rows, 13).
  const float sentinel = 4096.0f;
  std::vector<float> res_wide(rows * 15, sentinel);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t i = 0; i < dim; ++i) res_wide[r * 15 + 2 + i] = c.residual[r * dim + i];
  }
  std::vector<bf16> out_wide(rows * 13, moss::from_float<bf16>(sentinel));
  std::vector<float> res = c.residual;
  std::vector<bf16> dense(rows * dim);
  moss::rms_norm(moss::Host{}, c.args<bf16>(res, dense, true, true));

  auto a = c.args<bf16>(res, dense, true, true);
  a.residual = TensorView<float, 2>(res_wide.data() + 2, {rows, dim}, {15, 1}, "residual");
  a.out = TensorView<bf16, 2>(out_wide.data() + 1, {rows, dim}, {13, 1}, "out");
  moss::rms_norm(moss::Host{}, a);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < 15; ++j) {
      const bool in = j >= 2 && j < 2 + dim;
      REQUIRE(res_wide[r * 15 + j] == (in ? res[r * dim + j - 2] : sentinel));
    }
    for (index_t j = 0; j < 13; ++j) {
      const bool in = j >= 1 && j < 1 + dim;
      REQUIRE(moss::to_float(out_wide[r * 13 + j]) == (in ? moss::to_float(dense[r * dim + j - 1]) : sentinel));
    }
  }
}

TEST_CASE("rms_norm: every validation error", "[host]") {
  const Case<bf16> c(3, 8, 5);
  std::vector<float> res = c.residual;
  std::vector<bf16> out(3 * 8);
  std::vector<float> wide(3 * 20);
  const moss::Host host;
  const auto good = [&] { return c.args<bf16>(res, out, true, true); };
  REQUIRE_NOTHROW(moss::rms_norm(host, good()));

  SECTION("dim = 0") {
    auto a = good();
    a.residual = TensorView<float, 2>(res.data(), {3, 0}, "residual");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("rms_norm: residual is [3, 0] (rows, dim)"));
  }
  SECTION("negative or NaN eps") {
    auto a = good();
    a.eps = -1e-5f;
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("eps is -1e-05 but must be finite and >= 0"));
    a.eps = NAN;
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::config_error);
  }
  SECTION("weight has the wrong length") {
    auto a = good();
    a.weight = ConstView<float, 1>(c.weight.data(), {7}, "weight");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("weight is [7] (dim) but expected [8]"));
  }
  SECTION("weight is not contiguous") {
    auto a = good();
    a.weight = ConstView<float, 1>(wide.data(), {8}, {2}, "weight");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("weight [8] must be contiguous"));
  }
  SECTION("out has the wrong shape") {
    auto a = good();
    a.out = TensorView<bf16, 2>(out.data(), {2, 8}, "out");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("out is [2, 8] (rows, dim) but expected [3, 8]"));
  }
  SECTION("delta has the wrong shape") {
    auto a = good();
    a.delta = ConstView<bf16, 2>(c.delta.data(), {3, 4}, "delta");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("delta is [3, 4] (rows, dim) but expected [3, 8]"));
  }
  SECTION("residual without unit inner stride") {
    auto a = good();
    a.residual = TensorView<float, 2>(wide.data(), {3, 8}, {20, 2}, "residual");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("residual needs unit stride"));
  }
  SECTION("delta without unit inner stride") {
    auto a = good();
    a.delta = ConstView<bf16, 2>(c.delta.data(), {3, 8}, {1, 3}, "delta");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("delta needs unit stride"));
  }
  SECTION("out without unit inner stride") {
    auto a = good();
    std::vector<bf16> out_wide(3 * 20);
    a.out = TensorView<bf16, 2>(out_wide.data(), {3, 8}, {20, 2}, "out");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("out needs unit stride"));
  }
  SECTION("overlapping rows") {
    auto a = good();
    a.residual = TensorView<float, 2>(wide.data(), {3, 8}, {4, 1}, "residual");
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a),
                        ContainsSubstring("residual has row stride 4 but its rows are 8 wide"));
    a = good();
    a.out = TensorView<bf16, 2>(out.data(), {3, 8}, {0, 1}, "out");
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("out has row stride 0 but its rows are 8 wide"));
    a = good();
    a.delta = ConstView<bf16, 2>(c.delta.data(), {3, 8}, {7, 1}, "delta");
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("delta has row stride 7 but its rows are 8 wide"));
  }
  SECTION("missing data") {
    auto a = good();
    a.residual.data = nullptr;
    REQUIRE_THROWS_AS(moss::rms_norm(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm(host, a), ContainsSubstring("residual [3, 8] has no data"));
  }
}
