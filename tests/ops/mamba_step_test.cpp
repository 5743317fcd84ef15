// tests/ops/mamba_step_test.cpp: `mamba_step` on the host (the mixer core's decode step, op by
// op) against an independent float64 loop of docs/math.md §1's decode step over several steps,
// the caches' updates, and every validation error naming its tensor.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moss/ops/mamba_step.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// One problem's tensors on the host (T-typed where the op takes T), the float64 reference's
/// copies of the same values, and the op's Args over them.
template <class T>
struct StepProblem {
  index_t batch, ED, N, R, W;
  bool bias;
  std::vector<T> xz, conv_state, conv_weight, conv_bias, x_proj, dt_proj, out;
  std::vector<float> dt_bias, A, D, ssm_state;

  StepProblem(index_t b, index_t ed, index_t n, index_t r, index_t w, bool with_bias, std::uint64_t seed)
      : batch(b), ED(ed), N(n), R(r), W(w), bias(with_bias) {
    using moss::test::randn;
    using moss::test::to_storage;
    using moss::test::uniform;
    const auto sz = [](index_t x) { return static_cast<std::size_t>(x); };
    conv_state = to_storage<T>(randn(sz(b * ed * (w - 1)), seed));
    conv_weight = to_storage<T>(randn(sz(ed * w), seed + 1, 0.5f));
    conv_bias = to_storage<T>(randn(sz(ed), seed + 2, 0.5f));
    x_proj = to_storage<T>(randn(sz((r + 2 * n) * ed), seed + 3, 1.0f / std::sqrt(float(ed))));
    dt_proj = to_storage<T>(randn(sz(ed * r), seed + 4, 1.0f / std::sqrt(float(r))));
    dt_bias = uniform(sz(ed), seed + 5, -4.0f, -2.0f);
    A = uniform(sz(ed * n), seed + 6, -4.0f, -0.5f);
    D = randn(sz(ed), seed + 7);
    ssm_state = randn(sz(b * ed * n), seed + 8);
    out.assign(sz(b * ed), moss::from_float<T>(std::nanf("")));
  }

  /// New in_proj outputs for the next step.
  void next_input(std::uint64_t seed) {
    xz = moss::test::to_storage<T>(moss::test::randn(std::size_t(batch * 2 * ED), seed));
  }

  moss::MambaStepArgs<T> args() {
    moss::MambaStepArgs<T> a;
    a.xz = ConstView<T, 2>(xz.data(), {batch, 2 * ED}, "xz");
    a.conv_state = TensorView<T, 3>(conv_state.data(), {batch, ED, W - 1}, "conv_state");
    a.conv_weight = ConstView<T, 2>(conv_weight.data(), {ED, W}, "conv_weight");
    if (bias) a.conv_bias = ConstView<T, 1>(conv_bias.data(), {ED}, "conv_bias");
    a.x_proj = ConstView<T, 2>(x_proj.data(), {R + 2 * N, ED}, "x_proj");
    a.dt_proj = ConstView<T, 2>(dt_proj.data(), {ED, R}, "dt_proj");
    a.dt_bias = ConstView<float, 1>(dt_bias.data(), {ED}, "dt_bias");
    a.A = ConstView<float, 2>(A.data(), {ED, N}, "A");
    a.D = ConstView<float, 1>(D.data(), {ED}, "D");
    a.ssm_state = TensorView<float, 3>(ssm_state.data(), {batch, ED, N}, "ssm_state");
    a.out = TensorView<T, 2>(out.data(), {batch, ED}, "out");
    return a;
  }
};

double silu64(double x) { return x / (1.0 + std::exp(-x)); }

/// The decode step in float64 from the problem's current values (written independently of the
/// library; intermediates not rounded to T): out, and the new conv and SSM states.
template <class T>
void reference_step(const StepProblem<T>& p, std::vector<double>& out, std::vector<double>& conv,
                    std::vector<double>& ssm) {
  const auto f = [](T x) { return static_cast<double>(moss::to_float(x)); };
  const index_t ED = p.ED, N = p.N, R = p.R, W = p.W, XP = R + 2 * N;
  out.assign(std::size_t(p.batch * ED), 0.0);
  conv.assign(std::size_t(p.batch * ED * (W - 1)), 0.0);
  ssm.assign(std::size_t(p.batch * ED * N), 0.0);
  for (index_t b = 0; b < p.batch; ++b) {
    std::vector<double> v(static_cast<std::size_t>(ED)), x_dbl(static_cast<std::size_t>(XP), 0.0);
    for (index_t d = 0; d < ED; ++d) {
      double acc = p.bias ? f(p.conv_bias[d]) : 0.0;
      for (index_t k = 0; k < W; ++k) {
        const double in = k + 1 < W ? f(p.conv_state[(b * ED + d) * (W - 1) + k]) : f(p.xz[b * 2 * ED + d]);
        acc += f(p.conv_weight[d * W + k]) * in;
        if (k >= 1) conv[std::size_t((b * ED + d) * (W - 1) + k - 1)] = in;
      }
      v[d] = silu64(acc);
    }
    for (index_t j = 0; j < XP; ++j)
      for (index_t d = 0; d < ED; ++d) x_dbl[j] += f(p.x_proj[j * ED + d]) * v[d];
    for (index_t d = 0; d < ED; ++d) {
      double delta = p.dt_bias[d];
      for (index_t r = 0; r < R; ++r) delta += f(p.dt_proj[d * R + r]) * x_dbl[r];
      const double dt = std::log1p(std::exp(delta));
      double y = 0.0;
      for (index_t n = 0; n < N; ++n) {
        const double h = std::exp(dt * p.A[d * N + n]) * p.ssm_state[(b * ED + d) * N + n] + dt * x_dbl[R + n] * v[d];
        ssm[std::size_t((b * ED + d) * N + n)] = h;
        y += x_dbl[R + N + n] * h;
      }
      y += p.D[d] * v[d];
      out[std::size_t(b * ED + d)] = y * silu64(f(p.xz[b * 2 * ED + ED + d]));
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("mamba_step: the host step equals a float64 loop over several steps", "[host][ops]", float,
                   moss::bf16) {
  using T = TestType;
  // The float64 loop rounds nothing; the op rounds v, x_dbl and delta to T, so T's precision sets
  // the tolerance (bf16: 2⁻⁸ relative per rounding, a few of them in a row).
  const double tol = std::is_same_v<T, float> ? 1e-5 : 3e-2;
  struct Shape {
    index_t batch, ED, N, R, W;
    bool bias;
  };
  std::uint64_t seed = 60;
  for (const Shape& s : {Shape{1, 1, 1, 1, 2, true}, Shape{2, 37, 16, 3, 4, true}, Shape{3, 64, 5, 8, 3, false},
                         Shape{1, 96, 16, 6, 4, true}}) {
    CAPTURE(s.batch, s.ED, s.N, s.R, s.W, s.bias);
    StepProblem<T> p(s.batch, s.ED, s.N, s.R, s.W, s.bias, seed += 10);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      p.next_input(seed + 100 + step);
      std::vector<double> out, conv, ssm;
      reference_step(p, out, conv, ssm);
      moss::mamba_step(moss::Host{}, p.args());
      CHECK(moss::test::rel_l2(p.out, out) <= tol);
      CHECK(moss::test::rel_l2(p.ssm_state, ssm) <= tol);
      CHECK(moss::test::rel_l2(p.conv_state, conv) == 0.0);  // the inputs, shifted: exact
    }
  }
}

TEST_CASE("mamba_step: every bad tensor is named with its shape and the expected one", "[host][ops]") {
  StepProblem<float> p(2, 8, 4, 2, 4, true, 7);
  p.next_input(8);
  const auto fails = [&](moss::MambaStepArgs<float> a, const char* what) {
    REQUIRE_THROWS_WITH(moss::mamba_step(moss::Host{}, a), ContainsSubstring(what));
  };
  auto a = p.args();
  a.xz = ConstView<float, 2>(p.xz.data(), {2, 15}, "xz");
  fails(a, "xz");
  a = p.args();
  a.conv_state = TensorView<float, 3>(p.conv_state.data(), {2, 8, 2}, "conv_state");
  fails(a, "(batch, ED, W − 1)");
  a = p.args();
  a.x_proj = ConstView<float, 2>(p.x_proj.data(), {9, 8}, "x_proj");
  fails(a, "(R + 2N, ED)");
  a = p.args();
  a.dt_proj = ConstView<float, 2>(p.dt_proj.data(), {7, 2}, "dt_proj");
  fails(a, "dt_proj");
  a = p.args();
  a.ssm_state = TensorView<float, 3>(p.ssm_state.data(), {2, 8, 3}, "ssm_state");
  fails(a, "ssm_state");
  a = p.args();
  a.out = TensorView<float, 2>(p.out.data(), {1, 8}, "out");
  fails(a, "out");
  a = p.args();
  a.conv_weight = ConstView<float, 2>(p.conv_weight.data(), {8, 1}, "conv_weight");
  fails(a, "the conv width W must be at least 2");
  a = p.args();
  a.D = ConstView<float, 1>(nullptr, {8}, "D");
  REQUIRE_THROWS(moss::mamba_step(moss::Host{}, a));
  a = p.args();
  a.dt_bias = ConstView<float, 1>(p.dt_bias.data(), {8}, {2}, "dt_bias");  // strided: refused, not misread
  REQUIRE_THROWS_WITH(moss::mamba_step(moss::Host{}, a), ContainsSubstring("dt_bias"));
}
