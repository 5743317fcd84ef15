// tests/ops/rms_norm_backward_test.cpp: the host backward of rms_norm (with its in-place
// residual add) against central differences of the op's own forward in double
// (tests/grad_check.hpp) over rows (0 included), odd widths, padded rows, with and without
// delta and the stream's incoming gradient; the storage-type instantiations against the double
// one; the double forward; in-place dresidual; bitwise repeatability; accumulation; validation.
//
// MOSS_GRAD_REPORT=1 in the environment prints the largest relative gradient error per input.
#include "moss/ops/rms_norm_backward.hpp"

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
#include <utility>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/rms_norm.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

/// The largest relative gradient error seen per input, printed at exit under MOSS_GRAD_REPORT.
struct Report {
  std::map<std::string, double> worst;
  ~Report() {
    if (!std::getenv("MOSS_GRAD_REPORT")) return;
    for (const auto& [name, err] : worst)
      std::printf("rms_norm_backward: d/d%s max relative error %.3g\n", name.c_str(), err);
  }
} report;

/// moss::test::check_gradient, and the error recorded for the report.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  moss::test::check_gradient(name, analytic, loss, x);
  const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
  report.worst[name] = std::max(report.worst[name], err);
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

/// One case: (rows, dim) tensors stored with row stride ld ≥ dim; the padding of dout and
/// dresidual_out is zero, so a loss summed over whole storage vectors sees only the views.
template <class Tdelta, class Tout>
struct Problem {
  using R = moss::rms_norm_compute_t<Tdelta, Tout>;
  index_t rows = 0, dim = 0, ld = 0;
  bool has_delta = false, has_dres_out = false, in_fp32 = true;
  R eps = R(1e-5);
  std::vector<R> residual;  // the stream before the forward
  std::vector<Tdelta> delta;
  std::vector<R> weight;
  std::vector<Tout> dout;
  std::vector<R> dres_out;

  static Problem random(index_t rows, index_t dim, index_t ld, bool has_delta, bool has_dres_out, double eps,
                        std::uint64_t seed) {
    Problem p;
    p.rows = rows, p.dim = dim, p.ld = ld, p.has_delta = has_delta, p.has_dres_out = has_dres_out;
    p.eps = static_cast<R>(eps);
    const auto n = static_cast<std::size_t>(rows * ld);
    auto pad_zero = [&](std::vector<double> v) {
      for (std::size_t i = 0; i < v.size(); ++i)
        if (static_cast<index_t>(i) % ld >= dim) v[i] = 0.0;
      return v;
    };
    p.residual = convert<R>(moss::test::randn_f64(n, seed, 1.5));
    p.delta = convert<Tdelta>(moss::test::randn_f64(n, seed + 1));
    p.weight = convert<R>(moss::test::randn_f64(static_cast<std::size_t>(dim), seed + 2, 0.3, 1.0));
    p.dout = convert<Tout>(pad_zero(moss::test::randn_f64(n, seed + 3)));
    p.dres_out = convert<R>(pad_zero(moss::test::randn_f64(n, seed + 4)));
    return p;
  }
  /// The same case with every tensor converted (double → storage rounds, storage → double is exact).
  template <class D, class O>
  Problem<D, O> as() const {
    using R2 = typename Problem<D, O>::R;
    Problem<D, O> p;
    p.rows = rows, p.dim = dim, p.ld = ld, p.has_delta = has_delta, p.has_dres_out = has_dres_out;
    p.in_fp32 = in_fp32;
    p.eps = static_cast<R2>(eps);
    p.residual = convert<R2>(residual), p.delta = convert<D>(delta), p.weight = convert<R2>(weight);
    p.dout = convert<O>(dout), p.dres_out = convert<R2>(dres_out);
    return p;
  }
  template <class T>
  TensorView<T, 2> view(std::vector<T>& v, const char* name) const {
    return TensorView<T, 2>(v.data(), {rows, dim}, {ld, 1}, name);
  }
  template <class T>
  ConstView<T, 2> view(const std::vector<T>& v, const char* name) const {
    return ConstView<T, 2>(v.data(), {rows, dim}, {ld, 1}, name);
  }

  /// Runs the forward: res becomes the stream after it (r + delta), out the normalised rows.
  void forward(std::vector<R>& res, std::vector<Tout>& out) const {
    res = residual;
    out.assign(residual.size(), Tout{});
    moss::RmsNormArgs<Tdelta, Tout> a;
    a.residual = view(res, "residual");
    if (has_delta) a.delta = view(delta, "delta");
    a.residual_in_fp32 = in_fp32;
    a.weight = ConstView<R, 1>(weight.data(), {dim}, "weight");
    a.eps = eps;
    a.out = view(out, "out");
    moss::rms_norm(moss::Host{}, a);
  }
  /// The stream after the forward.
  std::vector<R> stream_after() const {
    std::vector<R> res;
    std::vector<Tout> out;
    forward(res, out);
    return res;
  }

  /// Gradient outputs (an empty vector stays absent).
  struct Grads {
    std::vector<R> dresidual;
    std::vector<Tdelta> ddelta;
    std::vector<R> dweight;
  };
  Grads grads(double fill = 0.0) const {
    const auto n = static_cast<std::size_t>(rows * ld);
    return {convert<R>(std::vector<double>(n, fill)), convert<Tdelta>(std::vector<double>(n, fill)),
            convert<R>(std::vector<double>(static_cast<std::size_t>(dim), fill))};
  }
  /// Backward arguments reading `res_after` (the stream after the forward) and writing into g.
  moss::RmsNormBackwardArgs<Tdelta, Tout> backward_args(const std::vector<R>& res_after, Grads& g) const {
    moss::RmsNormBackwardArgs<Tdelta, Tout> a;
    a.residual = view(res_after, "residual");
    a.weight = ConstView<R, 1>(weight.data(), {dim}, "weight");
    a.eps = eps;
    a.dout = view(dout, "dout");
    if (has_dres_out) a.dresidual_out = view(dres_out, "dresidual_out");
    if (!g.dresidual.empty()) a.dresidual = view(g.dresidual, "dresidual");
    if (!g.ddelta.empty()) a.ddelta = view(g.ddelta, "ddelta");
    if (!g.dweight.empty()) a.dweight = TensorView<R, 1>(g.dweight.data(), {dim}, "dweight");
    return a;
  }
  Grads backward() const {
    const auto res = stream_after();
    Grads g = grads();
    moss::rms_norm_backward(moss::Host{}, backward_args(res, g));
    return g;
  }
};

using P64 = Problem<double, double>;

/// L = Σ out · dout + Σ r' · dresidual_out (r' the stream after the forward), in double.
double loss(const P64& p) {
  std::vector<double> res, out;
  p.forward(res, out);
  return moss::test::dot(out, p.dout) + (p.has_dres_out ? moss::test::dot(res, p.dres_out) : 0.0);
}

/// A (Tdelta, Tout) pair for TEMPLATE_TEST_CASE.
template <class D, class O>
struct Types {
  using Delta = D;
  using Out = O;
};

}  // namespace

TEST_CASE("rms_norm_backward matches finite differences in double", "[host][backward]") {
  std::uint64_t seed = 2000;
  for (index_t rows : {0, 1, 3}) {
    for (index_t dim : {1, 2, 5, 17}) {
      for (index_t pad : {0, 3}) {
        for (int options = 0; options < 4; ++options) {
          for (double eps : {1e-5, 0.3}) {
            // dim 1 with a tiny eps: out = ±weight, a gradient of ~eps that differences cannot resolve.
            if (dim == 1 && eps < 0.1) continue;
            const bool with_delta = (options & 1) != 0, with_dres_out = (options & 2) != 0;
            CAPTURE(rows, dim, pad, with_delta, with_dres_out, eps);
            auto p = P64::random(rows, dim, dim + pad, with_delta, with_dres_out, eps, seed += 10);
            const auto g = p.backward();
            const auto l = [&] { return loss(p); };
            check_grad("residual", g.dresidual, l, p.residual);
            check_grad("weight", g.dweight, l, p.weight);
            if (with_delta) check_grad("delta", g.ddelta, l, p.delta);
            REQUIRE(same_bits(g.ddelta, g.dresidual));  // the same gradient flows to both summands
          }
        }
      }
    }
  }
}

TEST_CASE("rms_norm forward in double", "[host][backward]") {
  const auto p32 = P64::random(6, 33, 33, true, false, 1e-5, 61).as<float, float>();
  std::vector<float> res32, out32;
  p32.forward(res32, out32);
  for (bool in_fp32 : {true, false}) {
    CAPTURE(in_fp32);
    auto p64 = p32.as<double, double>();
    p64.in_fp32 = in_fp32;
    std::vector<double> res64, out64;
    p64.forward(res64, out64);
    // The stream is the exact double sum (Tdelta is double: nothing to round to, either way).
    for (std::size_t i = 0; i < res64.size(); ++i) REQUIRE(res64[i] == p64.residual[i] + p64.delta[i]);
    CHECK(moss::test::rel_l2(out32, out64) <= 1e-6);
    CHECK(moss::test::rel_l2(out32, out64) > 0.0);  // float64 arithmetic, not float32
  }
  SECTION("rows 0") {
    auto p0 = P64::random(0, 4, 4, true, false, 1e-5, 62);
    std::vector<double> res, out;
    REQUIRE_NOTHROW(p0.forward(res, out));
    REQUIRE(out.empty());
  }
}

TEMPLATE_TEST_CASE("rms_norm_backward in storage types agrees with double", "[host][backward]", (Types<float, float>),
                   (Types<f16, f16>), (Types<bf16, bf16>), (Types<bf16, float>), (Types<f16, float>)) {
  using Tdelta = typename TestType::Delta;
  using Tout = typename TestType::Out;
  std::uint64_t seed = 3000;
  for (index_t dim : {1, 7, 100, 333}) {
    for (bool in_fp32 : {true, false}) {
      CAPTURE(dim, in_fp32);
      auto p = P64::random(9, dim, dim + 1, true, true, 1e-5, seed += 10).as<Tdelta, Tout>();
      p.in_fp32 = in_fp32;
      const auto res = p.stream_after();  // rounded to Tdelta when !in_fp32
      auto lo = p.grads();
      moss::rms_norm_backward(moss::Host{}, p.backward_args(res, lo));
      // The same inputs (the float stream after the forward included), widened to double.
      const auto q = p.template as<double, double>();
      const auto res64 = convert<double>(res);
      auto hi = q.grads();
      moss::rms_norm_backward(moss::Host{}, q.backward_args(res64, hi));
      CHECK(moss::test::rel_l2(lo.dresidual, hi.dresidual) <= 1e-5);
      CHECK(moss::test::rel_l2(lo.dweight, hi.dweight) <= 1e-5);
      CHECK(moss::test::rel_l2(lo.ddelta, hi.ddelta) <=
            (std::is_same_v<Tdelta, float> ? 1e-5 : moss::test::op_tolerance<Tdelta>()));
    }
  }
}

TEST_CASE("rms_norm_backward: dresidual in place over dresidual_out", "[host][backward]") {
  const auto p = P64::random(5, 40, 44, true, true, 1e-5, 71).as<float, bf16>();
  const auto res = p.stream_after();
  auto separate = p.grads();
  moss::rms_norm_backward(moss::Host{}, p.backward_args(res, separate));

  auto in_place = p.grads();
  std::vector<float> stream_grad = p.dres_out;
  auto a = p.backward_args(res, in_place);
  a.dresidual_out = p.view(std::as_const(stream_grad), "dresidual_out");
  a.dresidual = p.view(stream_grad, "dresidual");
  moss::rms_norm_backward(moss::Host{}, a);
  CHECK(same_bits(stream_grad, separate.dresidual));
  CHECK(same_bits(in_place.ddelta, separate.ddelta));
  CHECK(same_bits(in_place.dweight, separate.dweight));
  // And the gradient really includes dresidual_out: without it the result differs.
  auto without = p;
  without.has_dres_out = false;
  CHECK_FALSE(same_bits(without.backward().dresidual, separate.dresidual));
}

TEST_CASE("rms_norm_backward is bitwise repeatable and writes only its views", "[host][backward]") {
  const auto p = P64::random(7, 129, 131, true, true, 1e-5, 81).as<bf16, bf16>();
  const auto res = p.stream_after();
  auto first = p.grads(std::numeric_limits<double>::quiet_NaN());
  moss::rms_norm_backward(moss::Host{}, p.backward_args(res, first));
  auto second = p.grads(7.0);
  moss::rms_norm_backward(moss::Host{}, p.backward_args(res, second));
  CHECK(same_bits(first.dweight, second.dweight));
  for (index_t r = 0; r < p.rows; ++r)
    for (index_t j = 0; j < p.ld; ++j) {
      const auto i = static_cast<std::size_t>(r * p.ld + j);
      if (j < p.dim) {
        REQUIRE(std::memcmp(&first.dresidual[i], &second.dresidual[i], sizeof(float)) == 0);
        REQUIRE(std::memcmp(&first.ddelta[i], &second.ddelta[i], sizeof(bf16)) == 0);
        REQUIRE(!std::isnan(first.dresidual[i]));
      } else {  // padding between rows keeps what each buffer held
        REQUIRE(std::isnan(first.dresidual[i]));
        REQUIRE(second.dresidual[i] == 7.0f);
        REQUIRE(std::isnan(moss::to_float(first.ddelta[i])));
      }
    }
}

TEST_CASE("rms_norm_backward: accumulate, partial requests, rows 0", "[host][backward]") {
  const auto p = P64::random(4, 24, 24, false, true, 1e-5, 91).as<float, float>();
  const auto res = p.stream_after();
  const auto full = p.backward();

  SECTION("accumulate adds into dweight only") {
    auto g = p.grads(3.0);
    const auto prior = moss::test::randn(g.dweight.size(), 5);
    g.dweight = prior;
    auto a = p.backward_args(res, g);
    a.accumulate = true;
    moss::rms_norm_backward(moss::Host{}, a);
    for (std::size_t i = 0; i < prior.size(); ++i) REQUIRE(g.dweight[i] == prior[i] + full.dweight[i]);
    CHECK(same_bits(g.dresidual, full.dresidual));
  }
  SECTION("each gradient alone equals the full call's") {
    for (int only = 0; only < 3; ++only) {
      CAPTURE(only);
      auto g = p.grads();
      if (only != 0) g.dresidual.clear();
      if (only != 1) g.ddelta.clear();
      if (only != 2) g.dweight.clear();
      moss::rms_norm_backward(moss::Host{}, p.backward_args(res, g));
      CHECK(same_bits(g.dresidual, only == 0 ? full.dresidual : std::vector<float>{}));
      CHECK(same_bits(g.ddelta, only == 1 ? full.ddelta : std::vector<float>{}));
      CHECK(same_bits(g.dweight, only == 2 ? full.dweight : std::vector<float>{}));
    }
  }
  SECTION("rows 0: dweight is written as zeros, or left as it was when accumulating") {
    auto p0 = P64::random(0, 5, 5, true, true, 1e-5, 92).as<float, float>();
    std::vector<float> empty;
    auto g = p0.grads(2.0);
    moss::rms_norm_backward(moss::Host{}, p0.backward_args(empty, g));
    REQUIRE(g.dweight == std::vector<float>(5, 0.0f));
    g.dweight.assign(5, 2.0f);
    auto a = p0.backward_args(empty, g);
    a.accumulate = true;
    moss::rms_norm_backward(moss::Host{}, a);
    REQUIRE(g.dweight == std::vector<float>(5, 2.0f));
  }
}

TEST_CASE("rms_norm_backward validation names the tensor and both shapes", "[host][backward]") {
  const auto p = P64::random(3, 8, 8, true, true, 1e-5, 5).as<bf16, bf16>();
  const auto res = p.stream_after();
  auto g = p.grads();
  const moss::Host host;
  const auto good = p.backward_args(res, g);
  REQUIRE_NOTHROW(moss::rms_norm_backward(host, good));
  auto a = good;
  std::vector<float> other(64);

  SECTION("dout of another shape") {
    a.dout = ConstView<bf16, 2>(p.dout.data(), {2, 8}, "dout");
    REQUIRE_THROWS_AS(moss::rms_norm_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a),
                        ContainsSubstring("rms_norm_backward: dout is [2, 8] (rows, dim) but expected [3, 8]"));
  }
  SECTION("dweight, dresidual_out, ddelta of the wrong shape") {
    a.dweight = TensorView<float, 1>(other.data(), {7}, "dweight");
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("dweight is [7] (dim) but expected [8]"));
    a = good;
    a.dresidual_out = ConstView<float, 2>(other.data(), {3, 9}, "dresidual_out");
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a),
                        ContainsSubstring("dresidual_out is [3, 9] (rows, dim) but expected [3, 8]"));
    a = good;
    std::vector<bf16> wide(64);
    a.ddelta = TensorView<bf16, 2>(wide.data(), {3, 8}, {8, 2}, "ddelta");
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("ddelta needs unit stride"));
  }
  SECTION("dim 0 and a bad eps") {
    a.residual = ConstView<float, 2>(res.data(), {3, 0}, "residual");
    REQUIRE_THROWS_AS(moss::rms_norm_backward(host, a), moss::config_error);
    a = good;
    a.eps = -1.0f;
    REQUIRE_THROWS_AS(moss::rms_norm_backward(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("eps is -1 but must be finite"));
  }
  SECTION("outputs that overlap an input or each other") {
    a.dresidual = TensorView<float, 2>(const_cast<float*>(res.data()), {3, 8}, "dresidual");
    REQUIRE_THROWS_AS(moss::rms_norm_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("dresidual [3, 8] overlaps residual"));
    a = good;
    // Shifted by one element from dresidual_out: neither the same view nor disjoint.
    std::vector<float> stream(p.dres_out.size() + 1);
    a.dresidual_out = ConstView<float, 2>(stream.data(), {3, 8}, "dresidual_out");
    a.dresidual = TensorView<float, 2>(stream.data() + 1, {3, 8}, "dresidual");
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("dresidual [3, 8] overlaps dresidual_out"));
    a.dresidual = TensorView<float, 2>(stream.data(), {3, 8}, "dresidual");  // exactly the same view: in place
    REQUIRE_NOTHROW(moss::rms_norm_backward(host, a));
    a.dweight = TensorView<float, 1>(stream.data() + 8, {8}, "dweight");
    REQUIRE_THROWS_WITH(moss::rms_norm_backward(host, a), ContainsSubstring("dweight [8] overlaps dresidual_out"));
  }
}
