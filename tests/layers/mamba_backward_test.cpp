// tests/layers/mamba_backward_test.cpp: `Mamba::backward` (and `MambaCore::backward`) on the
// host. Every parameter's gradient and the input gradient against central differences of the
// float forward along random directions (the layer has no double instantiation; each op's
// backward is checked elementwise in double by its own test), for the loss L = <out, w>. Then
// the policies and flags: `recompute` gives the bits of `keep`, `accumulate` adds exactly, and
// a mismatched `saved` is a `shape_error`.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/layers/mamba.hpp"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Host;
using moss::index_t;
using moss::TensorView;

struct Shape {
  index_t batch, L, D, ED, N, W, R;
  bool bias, conv_bias;
};
// L 70 crosses the host scan backward's 64-step checkpoint; W 2 and 4; with and without biases.
constexpr Shape kShapes[] = {
    {2, 7, 6, 12, 4, 4, 2, true, true}, {1, 70, 5, 8, 3, 2, 1, false, true}, {3, 1, 4, 6, 2, 3, 3, false, false}};

// Central-difference step along a unit-RMS direction: float forwards resolve the loss to ~1e-7 of
// its size, so smaller steps drown the small dt and A gradients in rounding (measured: worst
// relative error 0.006 at 1e-2, 0.011 at 3e-3, 0.87 at 1e-4), larger ones add curvature.
constexpr double kStep = 1e-2;

moss::MambaDims dims_of(const Shape& s) {
  return {.d_model = s.D,
          .d_inner = s.ED,
          .d_state = s.N,
          .d_conv = s.W,
          .dt_rank = s.R,
          .use_bias = s.bias,
          .use_conv_bias = s.conv_bias};
}

/// Same bytes.
template <class T>
bool same_bits(const T* a, const T* b, index_t n) {
  return n == 0 || std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("Mamba backward: every gradient matches central differences of the forward", "[host][layers][backward]") {
  std::uint64_t seed = 500;
  for (const Shape& s : kShapes) {
    CAPTURE(s.batch, s.L, s.D, s.ED, s.N, s.W, s.R, s.bias, s.conv_bias);
    const moss::Mamba<float> mixer(dims_of(s));
    moss::Rng rng(seed++);
    auto p = mixer.init(Host{}, rng, 2);
    // Hugging Face's init makes B, C and dt tiny (x_proj and dt_proj draw ~0.02), so the scan's
    // parameters would have gradients below float's resolution of the loss: larger weights here
    // (and biases off zero), so that every gradient is well above the central difference's noise.
    const auto fill = [&](auto& t, float stddev, float mean = 0.0f) {
      if (t.present()) moss::test::fill_normal(t, seed++, stddev, mean);
    };
    fill(p.in_proj, 0.4f);
    fill(p.in_proj_bias, 0.1f);
    fill(p.conv_weight, 0.4f);
    fill(p.conv_bias, 0.1f);
    fill(p.x_proj, 0.4f);
    fill(p.dt_proj, 0.4f);
    fill(p.dt_bias, 0.3f, -1.0f);
    fill(p.A_log, 0.2f, 0.3f);
    fill(p.D, 0.3f, 1.0f);
    fill(p.out_proj, 0.4f);
    fill(p.out_proj_bias, 0.1f);
    for (index_t i = 0; i < p.A.numel(); ++i) p.A.data()[i] = -std::exp(p.A_log.data()[i]);  // A follows A_log
    const index_t n = s.batch * s.L * s.D;
    auto x = moss::test::randn(static_cast<std::size_t>(n), seed++);
    const auto w = moss::test::randn(static_cast<std::size_t>(n), seed++);
    std::vector<float> out(static_cast<std::size_t>(n)), dx(static_cast<std::size_t>(n));
    const ConstView<float, 3> xv(x.data(), {s.batch, s.L, s.D}, "x");
    const TensorView<float, 3> ov(out.data(), {s.batch, s.L, s.D}, "out");

    auto loss = [&] {
      // A follows A_log (derived at load time; the test perturbs A_log in place).
      for (index_t i = 0; i < p.A.numel(); ++i) p.A.data()[i] = -std::exp(p.A_log.data()[i]);
      mixer.forward(Host{}, p, xv, ov);
      double l = 0;
      for (index_t i = 0; i < n; ++i) l += static_cast<double>(out[i]) * w[i];
      return l;
    };
    moss::Mamba<float>::Saved saved;
    mixer.forward_train(Host{}, p, xv, ov, saved);
    auto g = mixer.make_grads(Host{}, p);
    mixer.backward(Host{}, p, xv, saved, ConstView<float, 3>(w.data(), {s.batch, s.L, s.D}, "dout"),
                   TensorView<float, 3>(dx.data(), {s.batch, s.L, s.D}, "dx"), g);

    // Params and Grads are visited in the same order with the same names.
    std::vector<std::pair<std::string, moss::Tensor<float, 1>*>> unused;
    std::vector<std::string> pnames, gnames;
    std::vector<float*> pdata, gdata;
    std::vector<index_t> sizes;
    moss::Mamba<float>::visit_params(p, [&](const std::string& name, auto& t) {
      pnames.push_back(name);
      pdata.push_back(t.data());
      sizes.push_back(t.numel());
    });
    moss::Mamba<float>::visit_params(g, [&](const std::string& name, auto& t) {
      gnames.push_back(name);
      gdata.push_back(t.data());
    });
    REQUIRE(pnames == gnames);
    CHECK(pnames.size() == (s.bias ? 11u : 9u) - (s.conv_bias ? 0u : 1u));
    for (std::size_t k = 0; k < pnames.size(); ++k) {
      CAPTURE(pnames[k]);
      moss::test::check_directional(pnames[k], gdata[k], pdata[k], static_cast<std::size_t>(sizes[k]), loss, seed++,
                                    kStep);
    }
    moss::test::check_directional("x", dx.data(), x.data(), x.size(), loss, seed++, kStep);
  }
}

TEST_CASE("Mamba backward: recompute gives the bits of keep, accumulate adds, saved must match",
          "[host][layers][backward]") {
  const Shape s = kShapes[0];
  const moss::Mamba<float> mixer(dims_of(s));
  moss::Rng rng(77);
  const auto p = mixer.init(Host{}, rng, 2);
  const index_t n = s.batch * s.L * s.D;
  const auto x = moss::test::randn(static_cast<std::size_t>(n), 78);
  const auto w = moss::test::randn(static_cast<std::size_t>(n), 79);
  std::vector<float> out(static_cast<std::size_t>(n));
  const ConstView<float, 3> xv(x.data(), {s.batch, s.L, s.D}, "x");
  const ConstView<float, 3> dv(w.data(), {s.batch, s.L, s.D}, "dout");
  const auto run = [&](moss::ActivationPolicy policy, int times, std::vector<float>& dx) {
    moss::Mamba<float>::Saved saved;
    mixer.forward_train(Host{}, p, xv, TensorView<float, 3>(out.data(), {s.batch, s.L, s.D}, "out"), saved, policy);
    CHECK((saved.core.v.data() != nullptr) == (policy == moss::ActivationPolicy::keep));
    auto g = mixer.make_grads(Host{}, p);
    dx.assign(static_cast<std::size_t>(n), 0.0f);
    for (int t = 0; t < times; ++t)
      mixer.backward(Host{}, p, xv, saved, dv, TensorView<float, 3>(dx.data(), {s.batch, s.L, s.D}, "dx"), g,
                     /*accumulate=*/true);
    return g;
  };
  std::vector<float> dx_keep, dx_re, dx_two;
  auto keep = run(moss::ActivationPolicy::keep, 1, dx_keep);
  auto re = run(moss::ActivationPolicy::recompute, 1, dx_re);
  auto two = run(moss::ActivationPolicy::keep, 2, dx_two);
  CHECK(dx_keep == dx_re);
  CHECK(dx_two == dx_keep);  // dx is written, never accumulated
  std::vector<float*> a, b, c;
  std::vector<index_t> sizes;
  std::vector<std::string> names;
  moss::Mamba<float>::visit_params(keep, [&](const std::string& name, auto& t) {
    a.push_back(t.data());
    sizes.push_back(t.numel());
    names.push_back(name);
  });
  moss::Mamba<float>::visit_params(re, [&](const std::string&, auto& t) { b.push_back(t.data()); });
  moss::Mamba<float>::visit_params(two, [&](const std::string&, auto& t) { c.push_back(t.data()); });
  for (std::size_t k = 0; k < a.size(); ++k) {
    CAPTURE(names[k]);
    CHECK(same_bits(a[k], b[k], sizes[k]));
    std::vector<float> doubled(a[k], a[k] + sizes[k]);
    for (auto& v : doubled) v += v;
    CHECK(same_bits(doubled.data(), c[k], sizes[k]));  // g + g: exact in float
  }

  // A saved state from another input shape is refused, naming what it holds.
  moss::Mamba<float>::Saved other;
  const std::vector<float> x2(static_cast<std::size_t>(s.D * 3), 0.5f);
  std::vector<float> o2(x2.size()), dx2(x2.size());
  mixer.forward_train(Host{}, p, ConstView<float, 3>(x2.data(), {1, 3, s.D}, "x"),
                      TensorView<float, 3>(o2.data(), {1, 3, s.D}, "out"), other);
  auto g = mixer.make_grads(Host{}, p);
  std::vector<float> dx(static_cast<std::size_t>(n));
  REQUIRE_THROWS_WITH(
      mixer.backward(Host{}, p, xv, other, dv, TensorView<float, 3>(dx.data(), {s.batch, s.L, s.D}, "dx"), g),
      Catch::Matchers::ContainsSubstring("the saved activations are of batch 1 and seqlen 3"));
}
