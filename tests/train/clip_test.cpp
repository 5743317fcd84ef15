// tests/train/clip_test.cpp: global-norm gradient clipping (moss/train/clip.hpp).
#include "moss/train/clip.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <vector>

#include "moss_test.hpp"

using moss::Host;
using moss::TensorView;

TEST_CASE("global_norm: the L2 norm over every tensor of the list", "[host][train]") {
  std::vector<float> a = {3.0f, 0.0f}, b = {4.0f}, c = {12.0f, 0.0f, 0.0f};
  std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(a.data(), {2}, "a"),
                                             TensorView<float, 1>(b.data(), {1}, "b")};
  CHECK(moss::global_norm(Host{}, grads) == 5.0);
  grads.push_back(TensorView<float, 1>(c.data(), {3}, "c"));
  CHECK(moss::global_norm(Host{}, grads) == 13.0);
  // A strided view reads every other element.
  std::vector<double> d = {1.0, 100.0, 2.0, 100.0, 2.0};
  const std::vector<moss::ConstView<double, 1>> strided = {moss::ConstView<double, 1>(d.data(), {3}, {2}, "d")};
  CHECK(moss::global_norm(Host{}, strided) == 3.0);
  // Empty list and empty tensors.
  CHECK(moss::global_norm(Host{}, std::vector<TensorView<float, 1>>{}) == 0.0);
  CHECK(moss::global_norm(Host{}, std::vector<TensorView<float, 1>>{TensorView<float, 1>(nullptr, {0}, "e")}) == 0.0);
}

TEST_CASE("global_norm: accumulates in double", "[host][train]") {
  // 2^24 + 1 ones: a float accumulator stops at 2^24; double gets it exactly.
  const std::size_t n = (1u << 24) + 1;
  std::vector<float> g(n, 1.0f);
  const std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(g.data(), {static_cast<moss::index_t>(n)}, "g")};
  CHECK(moss::global_norm(Host{}, grads) == std::sqrt(static_cast<double>(n)));
}

TEST_CASE("clip_by_global_norm: scales to max_norm above it and returns the norm before", "[host][train]") {
  std::vector<float> a = {3.0f, 0.0f}, b = {4.0f};
  const std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(a.data(), {2}, "a"),
                                                   TensorView<float, 1>(b.data(), {1}, "b")};
  const double norm = moss::clip_by_global_norm(Host{}, grads, 1.0);
  CHECK(norm == 5.0);
  CHECK(a[0] == 3.0f * 0.2f);
  CHECK(a[1] == 0.0f);
  CHECK(b[0] == 4.0f * 0.2f);
  CHECK(std::fabs(moss::global_norm(Host{}, grads) - 1.0) < 1e-6);
}

TEST_CASE("clip_by_global_norm: random gradients end at max_norm", "[host][train]") {
  std::vector<double> a(100), b(33);
  const auto ra = moss::test::randn(a.size(), 3), rb = moss::test::randn(b.size(), 4);
  a.assign(ra.begin(), ra.end());
  b.assign(rb.begin(), rb.end());
  const std::vector<double> a0 = a;
  const std::vector<TensorView<double, 1>> grads = {TensorView<double, 1>(a.data(), {100}, "a"),
                                                    TensorView<double, 1>(b.data(), {33}, "b")};
  const double before = moss::global_norm(Host{}, grads);
  REQUIRE(before > 2.0);
  CHECK(moss::clip_by_global_norm(Host{}, grads, 2.0) == before);
  CHECK(std::fabs(moss::global_norm(Host{}, grads) - 2.0) < 1e-12);
  CHECK(std::fabs(a[7] - a0[7] * 2.0 / before) < 1e-15);
}

TEST_CASE("clip_by_global_norm: no-op at or below max_norm and for zero gradients", "[host][train]") {
  std::vector<float> a = {3.0f, 4.0f};
  const std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(a.data(), {2}, "a")};
  CHECK(moss::clip_by_global_norm(Host{}, grads, 5.0) == 5.0);
  CHECK(a == std::vector<float>{3.0f, 4.0f});
  CHECK(moss::clip_by_global_norm(Host{}, grads, 10.0) == 5.0);
  CHECK(a == std::vector<float>{3.0f, 4.0f});
  std::vector<float> z(8, 0.0f);
  const std::vector<TensorView<float, 1>> zeros = {TensorView<float, 1>(z.data(), {8}, "z")};
  CHECK(moss::clip_by_global_norm(Host{}, zeros, 1.0) == 0.0);
  CHECK(z == std::vector<float>(8, 0.0f));
}

TEST_CASE("clip_by_global_norm: a non-finite norm is returned and nothing is scaled", "[host][train]") {
  std::vector<float> a = {3.0f, INFINITY}, b = {100.0f};
  const std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(a.data(), {2}, "a"),
                                                   TensorView<float, 1>(b.data(), {1}, "b")};
  CHECK(std::isinf(moss::clip_by_global_norm(Host{}, grads, 1.0)));
  CHECK(b[0] == 100.0f);
  a[1] = NAN;
  CHECK(std::isnan(moss::clip_by_global_norm(Host{}, grads, 1.0)));
  CHECK(a[0] == 3.0f);
  CHECK(b[0] == 100.0f);
}

TEST_CASE("clip_by_global_norm: max_norm must be finite and positive", "[host][train]") {
  std::vector<float> a = {3.0f, 4.0f};
  const std::vector<TensorView<float, 1>> grads = {TensorView<float, 1>(a.data(), {2}, "a")};
  using Catch::Matchers::ContainsSubstring;
  CHECK_THROWS_WITH(moss::clip_by_global_norm(Host{}, grads, 0.0), ContainsSubstring("max_norm is 0"));
  CHECK_THROWS_WITH(moss::clip_by_global_norm(Host{}, grads, -1.0), ContainsSubstring("max_norm is -1"));
  CHECK_THROWS_AS(moss::clip_by_global_norm(Host{}, grads, INFINITY), moss::config_error);
  CHECK(a == std::vector<float>{3.0f, 4.0f});
}
