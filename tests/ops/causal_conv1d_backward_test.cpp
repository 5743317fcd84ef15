// tests/ops/causal_conv1d_backward_test.cpp: the host backward of causal_conv1d against central
// differences of the op's own forward in double (tests/grad_check.hpp) over widths, lengths
// (0, 1, ragged), batches (0 included), both layouts, with and without SiLU, bias, initial state
// and the gradient of the final state; the float (and f16, bf16) instantiation against the double
// one; bitwise repeatability; accumulation; partial requests; validation messages.
//
// MOSS_GRAD_REPORT=1 in the environment prints the largest relative gradient error per input.
#include "moss/ops/causal_conv1d_backward.hpp"

#include <algorithm>
#include <array>
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
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::Extents;
using moss::index_t;
using moss::TensorView;

/// The largest relative gradient error seen per input, printed at exit under MOSS_GRAD_REPORT.
struct Report {
  std::map<std::string, double> worst;
  ~Report() {
    if (!std::getenv("MOSS_GRAD_REPORT")) return;
    for (const auto& [name, err] : worst)
      std::printf("causal_conv1d_backward: d/d%s max relative error %.3g\n", name.c_str(), err);
  }
} report;

/// moss::test::check_gradient, and the error recorded for the report.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  moss::test::check_gradient(name, analytic, loss, x);
  const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
  report.worst[name] = std::max(report.worst[name], err);
}

/// `v` (double) as T, rounded once.
template <class T>
std::vector<T> narrow(const std::vector<double>& v) {
  std::vector<T> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, double>) {
      r[i] = v[i];
    } else {
      r[i] = moss::from_float<T>(static_cast<float>(v[i]));
    }
  }
  return r;
}

/// `v` widened to double, exactly.
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = moss::test::as_double(v[i]);
  return r;
}

/// The shape and options of one case.
struct Shape {
  index_t batch, dim, seqlen, width;
  bool silu, bias, init, dfinal;
  bool channel_last;  // x, out, dout, dx stored (batch, L, dim·pitch) instead of (batch, dim, L)
  index_t pitch;      // channel-last rows are pitch · dim wide (the x half of in_proj has pitch 2)
};

/// Inputs of one case in T, in their own storage; activations (x, out, dout, dx) share one
/// layout, so their storage vectors pair element by element (padding included).
template <class T>
struct Problem {
  using R = moss::compute_t<T>;
  Shape s;
  Extents<3> act_stride{};
  std::size_t act_size = 0, state_size = 0;
  std::vector<T> x, weight, bias, init, dout, dfinal;

  explicit Problem(const Shape& shape) : s(shape) {
    if (s.channel_last) {
      act_stride = {s.seqlen * s.dim * s.pitch, 1, s.dim * s.pitch};
      act_size = static_cast<std::size_t>(s.batch * s.seqlen * s.dim * s.pitch);
    } else {
      act_stride = {s.dim * s.seqlen, s.seqlen, 1};
      act_size = static_cast<std::size_t>(s.batch * s.dim * s.seqlen);
    }
    state_size = static_cast<std::size_t>(s.batch * s.dim * (s.width - 1));
  }
  /// Random inputs from `seed` (weights ~ U-like scale W^-1/2, as the model initialises them).
  static Problem random(const Shape& shape, std::uint64_t seed) {
    Problem p(shape);
    p.x = narrow<T>(moss::test::randn_f64(p.act_size, seed));
    p.weight =
        narrow<T>(moss::test::randn_f64(shape.dim * shape.width, seed + 1, 1.0 / std::sqrt(double(shape.width))));
    p.bias = narrow<T>(moss::test::randn_f64(shape.dim, seed + 2, 0.5));
    p.init = narrow<T>(moss::test::randn_f64(p.state_size, seed + 3));
    p.dout = narrow<T>(moss::test::randn_f64(p.act_size, seed + 4));
    p.dfinal = narrow<T>(moss::test::randn_f64(p.state_size, seed + 5));
    return p;
  }
  /// The same problem with every input rounded to U (or widened to double).
  template <class U>
  Problem<U> as() const {
    Problem<U> p(s);
    const auto conv = [](const std::vector<T>& v) { return narrow<U>(widen(v)); };
    p.x = conv(x), p.weight = conv(weight), p.bias = conv(bias), p.init = conv(init), p.dout = conv(dout);
    p.dfinal = conv(dfinal);
    return p;
  }
  Extents<3> act_shape() const { return {s.batch, s.dim, s.seqlen}; }
  Extents<3> state_shape() const { return {s.batch, s.dim, s.width - 1}; }

  /// Runs the forward pass into out (act_size) and final (state_size).
  void forward(std::vector<T>& out, std::vector<T>& final) const {
    moss::CausalConv1dArgs<T> a;
    a.x = ConstView<T, 3>(x.data(), act_shape(), act_stride, "x");
    a.weight = ConstView<T, 2>(weight.data(), {s.dim, s.width}, "weight");
    if (s.bias) a.bias = ConstView<T, 1>(bias.data(), {s.dim}, "bias");
    a.silu = s.silu;
    if (s.init) a.initial_state = ConstView<T, 3>(init.data(), state_shape(), "initial_state");
    a.out = TensorView<T, 3>(out.data(), act_shape(), act_stride, "out");
    a.final_state = TensorView<T, 3>(final.data(), state_shape(), "final_state");
    moss::causal_conv1d(moss::Host{}, a);
  }

  /// Gradient outputs of one backward call (absent when the vector is empty).
  struct Grads {
    std::vector<T> dx, dinit;
    std::vector<R> dweight, dbias;
  };
  /// Zero-filled (or `fill`-filled) outputs for every gradient.
  Grads grads(R fill = R(0)) const {
    Grads g;
    g.dx.assign(act_size, narrow<T>(std::vector<double>{double(fill)})[0]);
    g.dinit.assign(state_size, narrow<T>(std::vector<double>{double(fill)})[0]);
    g.dweight.assign(static_cast<std::size_t>(s.dim * s.width), fill);
    g.dbias.assign(static_cast<std::size_t>(s.dim), fill);
    return g;
  }
  /// The backward arguments writing into `g` (its empty vectors stay absent).
  moss::CausalConv1dBackwardArgs<T> backward_args(Grads& g) const {
    moss::CausalConv1dBackwardArgs<T> a;
    a.x = ConstView<T, 3>(x.data(), act_shape(), act_stride, "x");
    a.weight = ConstView<T, 2>(weight.data(), {s.dim, s.width}, "weight");
    if (s.bias) a.bias = ConstView<T, 1>(bias.data(), {s.dim}, "bias");
    a.silu = s.silu;
    if (s.init) a.initial_state = ConstView<T, 3>(init.data(), state_shape(), "initial_state");
    a.dout = ConstView<T, 3>(dout.data(), act_shape(), act_stride, "dout");
    if (s.dfinal) a.dfinal_state = ConstView<T, 3>(dfinal.data(), state_shape(), "dfinal_state");
    if (!g.dx.empty()) a.dx = TensorView<T, 3>(g.dx.data(), act_shape(), act_stride, "dx");
    if (!g.dweight.empty()) a.dweight = TensorView<R, 2>(g.dweight.data(), {s.dim, s.width}, "dweight");
    if (!g.dbias.empty()) a.dbias = TensorView<R, 1>(g.dbias.data(), {s.dim}, "dbias");
    if (!g.dinit.empty()) a.dinitial_state = TensorView<T, 3>(g.dinit.data(), state_shape(), "dinitial_state");
    return a;
  }
  Grads backward() const {
    Grads g = grads();
    moss::causal_conv1d_backward(moss::Host{}, backward_args(g));
    return g;
  }
};

/// L = Σ out · dout + Σ final_state · dfinal_state (when the case has dfinal), in double.
double loss(const Problem<double>& p) {
  std::vector<double> out(p.act_size, 0.0), final(p.state_size, 0.0);
  p.forward(out, final);
  return moss::test::dot(out, p.dout) + (p.s.dfinal ? moss::test::dot(final, p.dfinal) : 0.0);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE("causal_conv1d_backward matches finite differences in double", "[host][backward]") {
  std::uint64_t seed = 1000;
  const std::vector<std::array<index_t, 3>> sizes = {{1, 1, 1}, {2, 3, 1}, {1, 2, 2}, {2, 3, 5},
                                                     {1, 1, 7}, {3, 2, 0}, {0, 2, 3}};
  for (index_t width : {1, 2, 3, 4, 5}) {
    for (const auto& [batch, dim, seqlen] : sizes) {
      for (int options = 0; options < 16; ++options) {
        for (bool channel_last : {false, true}) {
          Shape s{batch, dim, seqlen, width, false, false, false, false, channel_last, channel_last ? 2 : 1};
          s.silu = (options & 1) != 0, s.bias = (options & 2) != 0, s.init = (options & 4) != 0;
          s.dfinal = (options & 8) != 0;
          CAPTURE(width, batch, dim, seqlen, s.silu, s.bias, s.init, s.dfinal, channel_last);
          auto p = Problem<double>::random(s, seed += 10);
          const auto g = p.backward();
          const auto l = [&] { return loss(p); };
          check_grad("x", g.dx, l, p.x);
          check_grad("weight", g.dweight, l, p.weight);
          if (s.bias) check_grad("bias", g.dbias, l, p.bias);
          if (s.init) check_grad("initial_state", g.dinit, l, p.init);
        }
      }
    }
  }
}

TEST_CASE("causal_conv1d_backward: gradients of an absent bias or initial state are those of zeros",
          "[host][backward]") {
  for (bool silu : {false, true}) {
    CAPTURE(silu);
    auto without = Problem<double>::random({2, 3, 6, 4, silu, false, false, true, false, 1}, 77);
    auto with = without;
    with.s.bias = with.s.init = true;
    std::fill(with.bias.begin(), with.bias.end(), 0.0);
    std::fill(with.init.begin(), with.init.end(), 0.0);
    const auto a = without.backward(), b = with.backward();
    REQUIRE(same_bits(a.dbias, b.dbias));
    REQUIRE(same_bits(a.dinit, b.dinit));
    REQUIRE(same_bits(a.dx, b.dx));
    REQUIRE(same_bits(a.dweight, b.dweight));
    // And the zero state's gradient is the finite-difference one.
    const auto l = [&] { return loss(with); };
    check_grad("initial_state", a.dinit, l, with.init);
    check_grad("bias", a.dbias, l, with.bias);
  }
}

TEMPLATE_TEST_CASE("causal_conv1d_backward in storage types agrees with double", "[host][backward]", float, moss::f16,
                   moss::bf16) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : moss::test::op_tolerance<T>();
  std::uint64_t seed = 5000;
  for (bool silu : {false, true}) {
    for (bool channel_last : {false, true}) {
      for (index_t width : {2, 4}) {
        CAPTURE(silu, channel_last, width);
        const Shape s{3, 16, 37, width, silu, true, true, true, channel_last, channel_last ? 2 : 1};
        const auto p = Problem<double>::random(s, seed += 10).as<T>();
        const auto lo = p.backward();
        const auto hi = p.template as<double>().backward();  // the same rounded inputs, in double
        CHECK(moss::test::rel_l2(lo.dx, hi.dx) <= tol);
        CHECK(moss::test::rel_l2(lo.dweight, hi.dweight) <= tol);
        CHECK(moss::test::rel_l2(lo.dbias, hi.dbias) <= tol);
        CHECK(moss::test::rel_l2(lo.dinit, hi.dinit) <= tol);
        if constexpr (std::is_same_v<T, float>) {
          // float32 sums of a few dozen terms: far inside the contract.
          CHECK(moss::test::rel_l2(lo.dweight, hi.dweight) <= 1e-6);
          CHECK(moss::test::rel_l2(lo.dx, hi.dx) <= 1e-6);
        }
      }
    }
  }
}

TEST_CASE("causal_conv1d forward in double agrees with float and with the step op", "[host][backward]") {
  const Shape s{2, 5, 9, 4, true, true, true, false, true, 1};
  const auto p = Problem<double>::random(s, 91).as<float>();
  std::vector<float> out32(p.act_size), fin32(p.state_size);
  p.forward(out32, fin32);
  const auto q = p.as<double>();
  std::vector<double> out64(q.act_size), fin64(q.state_size);
  q.forward(out64, fin64);
  CHECK(moss::test::rel_l2(out32, out64) <= 1e-6);
  CHECK(moss::test::rel_l2(out64, out32) > 0.0);  // the double path really computes in double
  REQUIRE(same_bits(widen(fin32), fin64));        // states are raw inputs, copied exactly

  // The double step, token by token from the initial state, gives the full op's outputs.
  std::vector<double> state = q.init, x_t(static_cast<std::size_t>(s.batch * s.dim)), out_t(x_t.size());
  for (index_t t = 0; t < s.seqlen; ++t) {
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t d = 0; d < s.dim; ++d)
        x_t[b * s.dim + d] = q.x[b * q.act_stride[0] + d * q.act_stride[1] + t * q.act_stride[2]];
    moss::CausalConv1dStepArgs<double> a;
    a.state = TensorView<double, 3>(state.data(), q.state_shape(), "state");
    a.x = ConstView<double, 2>(x_t.data(), {s.batch, s.dim}, "x");
    a.weight = ConstView<double, 2>(q.weight.data(), {s.dim, s.width}, "weight");
    a.bias = ConstView<double, 1>(q.bias.data(), {s.dim}, "bias");
    a.silu = true;
    a.out = TensorView<double, 2>(out_t.data(), {s.batch, s.dim}, "out");
    moss::causal_conv1d_step(moss::Host{}, a);
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t d = 0; d < s.dim; ++d)
        REQUIRE(out_t[b * s.dim + d] == out64[b * q.act_stride[0] + d * q.act_stride[1] + t * q.act_stride[2]]);
  }
}

TEST_CASE("causal_conv1d_backward is bitwise repeatable and overwrites its outputs", "[host][backward]") {
  for (bool channel_last : {false, true}) {
    CAPTURE(channel_last);
    const Shape s{4, 24, 50, 4, true, true, true, true, channel_last, channel_last ? 2 : 1};
    const auto p = Problem<double>::random(s, 4242).as<float>();
    auto first = p.grads(std::numeric_limits<float>::quiet_NaN());
    moss::causal_conv1d_backward(moss::Host{}, p.backward_args(first));
    auto second = p.grads(123.0f);
    moss::causal_conv1d_backward(moss::Host{}, p.backward_args(second));
    CHECK(same_bits(first.dweight, second.dweight));
    CHECK(same_bits(first.dbias, second.dbias));
    CHECK(same_bits(first.dinit, second.dinit));
    // dx: equal inside the view; the padding of a pitch-2 layout keeps what each buffer held.
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t d = 0; d < s.dim; ++d)
        for (index_t t = 0; t < s.seqlen; ++t) {
          const index_t o = b * p.act_stride[0] + d * p.act_stride[1] + t * p.act_stride[2];
          REQUIRE(std::memcmp(&first.dx[o], &second.dx[o], sizeof(float)) == 0);
          REQUIRE(!std::isnan(first.dx[o]));
        }
    if (channel_last) {
      int untouched = 0;
      for (std::size_t i = 0; i < first.dx.size(); ++i) untouched += std::isnan(first.dx[i]) ? 1 : 0;
      CHECK(untouched == static_cast<int>(first.dx.size() / 2));  // the padding half
    }
  }
}

TEST_CASE("causal_conv1d_backward: accumulate and partial requests", "[host][backward]") {
  const Shape s{2, 7, 11, 3, true, true, true, true, false, 1};
  const auto p = Problem<double>::random(s, 808).as<float>();
  const auto full = p.backward();

  SECTION("accumulate adds into dweight and dbias, and overwrites dx") {
    auto g = p.grads(0.0f);
    const auto prior_w = moss::test::randn(g.dweight.size(), 9), prior_b = moss::test::randn(g.dbias.size(), 10);
    g.dweight = prior_w;
    g.dbias = prior_b;
    std::fill(g.dx.begin(), g.dx.end(), 5.0f);
    auto a = p.backward_args(g);
    a.accumulate = true;
    moss::causal_conv1d_backward(moss::Host{}, a);
    for (std::size_t i = 0; i < g.dweight.size(); ++i) REQUIRE(g.dweight[i] == prior_w[i] + full.dweight[i]);
    for (std::size_t i = 0; i < g.dbias.size(); ++i) REQUIRE(g.dbias[i] == prior_b[i] + full.dbias[i]);
    CHECK(same_bits(g.dx, full.dx));
  }
  SECTION("each gradient alone equals the full call's") {
    for (int only = 0; only < 4; ++only) {
      CAPTURE(only);
      auto g = p.grads(0.0f);
      if (only != 0) g.dx.clear();
      if (only != 1) g.dweight.clear();
      if (only != 2) g.dbias.clear();
      if (only != 3) g.dinit.clear();
      moss::causal_conv1d_backward(moss::Host{}, p.backward_args(g));
      CHECK(same_bits(g.dx, only == 0 ? full.dx : std::vector<float>{}));
      CHECK(same_bits(g.dweight, only == 1 ? full.dweight : std::vector<float>{}));
      CHECK(same_bits(g.dbias, only == 2 ? full.dbias : std::vector<float>{}));
      CHECK(same_bits(g.dinit, only == 3 ? full.dinit : std::vector<float>{}));
    }
  }
  SECTION("nothing requested writes nothing and does not throw") {
    auto g = p.grads(0.0f);
    g = {};
    REQUIRE_NOTHROW(moss::causal_conv1d_backward(moss::Host{}, p.backward_args(g)));
  }
}

TEST_CASE("causal_conv1d_backward validation names the tensor and both shapes", "[host][backward]") {
  const Shape s{2, 3, 5, 4, true, true, true, true, false, 1};
  const auto p = Problem<double>::random(s, 31).as<float>();
  auto g = p.grads();
  const moss::Host host;
  const auto good = p.backward_args(g);
  REQUIRE_NOTHROW(moss::causal_conv1d_backward(host, good));
  auto a = good;
  std::vector<float> other(200);

  SECTION("dout of another length") {
    a.dout = ConstView<float, 3>(p.dout.data(), {2, 3, 4}, "dout");
    REQUIRE_THROWS_AS(moss::causal_conv1d_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("causal_conv1d_backward: dout is [2, 3, 4] (batch, dim, L) but expected "
                                          "[2, 3, 5]"));
  }
  SECTION("an unnamed view takes its field's name") {
    a.dout = ConstView<float, 3>(p.dout.data(), {2, 3, 4});
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a), ContainsSubstring("dout is [2, 3, 4]"));
  }
  SECTION("missing dout") {
    a.dout = {};
    REQUIRE_THROWS_AS(moss::causal_conv1d_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a), ContainsSubstring("dout is [0, 0, 0]"));
  }
  SECTION("dweight of the wrong width") {
    a.dweight = TensorView<float, 2>(other.data(), {3, 3}, "dweight");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("dweight is [3, 3] (dim, W) but expected [3, 4]"));
  }
  SECTION("dbias, dx, dfinal_state, dinitial_state of the wrong shape") {
    a.dbias = TensorView<float, 1>(other.data(), {4}, "dbias");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("dbias is [4] (dim) but expected [3]"));
    a = good;
    a.dx = TensorView<float, 3>(other.data(), {1, 3, 5}, "dx");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("dx is [1, 3, 5] (batch, dim, L) but expected [2, 3, 5]"));
    a = good;
    a.dfinal_state = ConstView<float, 3>(other.data(), {2, 3, 4}, "dfinal_state");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("dfinal_state is [2, 3, 4] (batch, dim, W-1) but expected [2, 3, 3]"));
    a = good;
    a.dinitial_state = TensorView<float, 3>(other.data(), {2, 2, 3}, "dinitial_state");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a),
                        ContainsSubstring("dinitial_state is [2, 2, 3] (batch, dim, W-1) but expected [2, 3, 3]"));
  }
  SECTION("an output that overlaps an input or another output") {
    a.dx = TensorView<float, 3>(const_cast<float*>(p.dout.data()), {2, 3, 5}, "dx");
    REQUIRE_THROWS_AS(moss::causal_conv1d_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a), ContainsSubstring("dx [2, 3, 5] overlaps dout"));
    a = good;
    a.dbias = TensorView<float, 1>(g.dweight.data() + 2, {3}, "dbias");
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a), ContainsSubstring("dweight [3, 4] overlaps dbias"));
  }
  SECTION("an output with repeated elements") {
    a.dx = TensorView<float, 3>(other.data(), {2, 3, 5}, {15, 0, 1}, "dx");
    REQUIRE_THROWS_AS(moss::causal_conv1d_backward(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::causal_conv1d_backward(host, a), ContainsSubstring("dx [2, 3, 5] with strides"));
  }
}
