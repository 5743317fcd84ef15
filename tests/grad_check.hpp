// tests/grad_check.hpp: finite-difference gradient checks in float64 (docs/training.md §Tests).
//
// A backward pass is checked against central differences of the op's own forward pass run in
// double: for a scalar loss L(x) = Σ out(x) · w with a fixed random w (which is also the `dout`
// given to the backward pass), the analytic dL/dx from the backward pass must match
// (L(x + h·e_i) − L(x − h·e_i)) / 2h for every element i of every input. In double with h ≈ 1e-6
// the two agree to ~1e-8 relative unless the backward pass is wrong.
#pragma once

#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace moss::test {

/// `n` doubles from N(0, stddev) with a fixed seed.
inline std::vector<double> randn_f64(std::size_t n, std::uint64_t seed, double stddev = 1.0, double mean = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Σ a[i]·b[i] in double (the loss L = <out, w>).
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) s += a[i] * b[i];
  return s;
}

/// Central-difference gradient of `loss()` with respect to every element of `x`, which `loss`
/// reads (it is perturbed in place and restored). `h` is relative to max(1, |x[i]|).
template <class Loss>
std::vector<double> numeric_gradient(Loss&& loss, std::vector<double>& x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i], step = h * std::max(1.0, std::abs(xi));
    x[i] = xi + step;
    const double up = loss();
    x[i] = xi - step;
    const double down = loss();
    x[i] = xi;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

/// Largest |analytic − numeric| / (|numeric|∞ + tiny) over the elements: the error relative to
/// the gradient's scale, so that elements whose gradient is ~0 do not dominate.
inline double gradient_error(const std::vector<double>& analytic, const std::vector<double>& numeric) {
  double scale = 1e-12, worst = 0;
  for (double v : numeric) scale = std::max(scale, std::abs(v));
  for (std::size_t i = 0; i < numeric.size(); ++i) worst = std::max(worst, std::abs(analytic[i] - numeric[i]));
  return worst / scale;
}

/// Checks the analytic gradient `analytic` of `name` against central differences of `loss` over
/// `x`: the relative error must stay under `tol` (default 1e-6 in double), and every element must
/// be finite. On failure the message names the input, the worst element and both values.
template <class Loss>
void check_gradient(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x,
                    double tol = 1e-6) {
  REQUIRE(analytic.size() == x.size());
  const std::vector<double> numeric = numeric_gradient(loss, x);
  std::size_t worst = 0;
  for (std::size_t i = 0; i < numeric.size(); ++i)
    if (std::abs(analytic[i] - numeric[i]) > std::abs(analytic[worst] - numeric[worst])) worst = i;
  const double err = gradient_error(analytic, numeric);
  INFO("d/d" << name << ": relative error " << err << " at element " << worst << " (analytic "
             << (analytic.empty() ? 0.0 : analytic[worst]) << ", numeric " << (numeric.empty() ? 0.0 : numeric[worst])
             << ")");
  for (double v : analytic) REQUIRE(std::isfinite(v));
  CHECK(err < tol);
}

/// Directional derivative check for composed float layers (which have no double instantiation):
/// for a random direction d (fixed by `seed`, unit RMS) over the `n` floats at `x`, compares
/// <analytic, d> with the central difference (L(x + h·d) − L(x − h·d)) / 2h, where `loss()`
/// reads x (perturbed in place, then restored) and returns the loss summed in double. Returns
/// |a − fd| / max(|a|, |fd|, 1e-12), with both values in the message when it exceeds `tol`.
/// A derivative whose absolute difference stays under `abs_tol` also passes: along some
/// directions the derivative is itself at the central difference's float noise (say 1e-5 of a
/// loss of order 1), where the relative error says nothing.
template <class Loss>
void check_directional(const std::string& name, const float* analytic, float* x, std::size_t n, Loss&& loss,
                       std::uint64_t seed, double h = 1e-3, double tol = 2e-2, double abs_tol = 0) {
  if (n == 0) return;
  const std::vector<double> d = randn_f64(n, seed);
  std::vector<float> saved(x, x + n);
  double a = 0;
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(analytic[i]));
    a += static_cast<double>(analytic[i]) * d[i];
  }
  const auto at = [&](double t) {
    for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(saved[i] + t * d[i]);
    const double l = loss();
    std::copy(saved.begin(), saved.end(), x);
    return l;
  };
  const double fd = (at(h) - at(-h)) / (2 * h);
  const double err = std::abs(a - fd) / std::max({std::abs(a), std::abs(fd), 1e-12});
  INFO("d/d" << name << " along a random direction: analytic " << a << ", central difference " << fd
             << ", relative error " << err << ", absolute " << std::abs(a - fd));
  CHECK((err < tol || std::abs(a - fd) < abs_tol));
}

/// `check_directional` for every tensor of a parameter set: `visit(set, f)` calls f(name,
/// tensor) over the parameters `p` and, with the same names in the same order, over their
/// gradients `g` (a block's static visit_params, a model's visit_params). Tensor k's direction is
/// seeded `first_seed + k`. Returns the number of tensors checked.
template <class Visit, class P, class G, class Loss>
std::size_t check_all_directional(Visit&& visit, P& p, G& g, Loss&& loss, std::uint64_t first_seed, double h,
                                  double tol = 2e-2, double abs_tol = 0) {
  std::vector<std::string> pn, gn;
  std::vector<float*> pd, gd;
  std::vector<std::size_t> sizes;
  visit(p, [&](const std::string& name, auto& t) {
    pn.push_back(name);
    pd.push_back(t.data());
    sizes.push_back(static_cast<std::size_t>(t.numel()));
  });
  visit(g, [&](const std::string& name, auto& t) {
    gn.push_back(name);
    gd.push_back(t.data());
  });
  REQUIRE(pn == gn);
  for (std::size_t k = 0; k < pn.size(); ++k) {
    CAPTURE(pn[k]);
    check_directional(pn[k], gd[k], pd[k], sizes[k], loss, first_seed + k, h, tol, abs_tol);
  }
  return pn.size();
}

}  // namespace moss::test
