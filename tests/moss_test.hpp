// tests/moss_test.hpp: helpers shared by the tests (random data, error norms, GPU gating).
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::test {

/// Directory of the fixtures copied from ../shared/fixtures (a missing file is a failure).
inline std::string data_dir() { return MOSS_TEST_DATA_DIR; }

/// `n` floats from N(mean, stddev) with a fixed seed.
inline std::vector<float> randn(std::size_t n, std::uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// `n` floats from U(lo, hi) with a fixed seed.
inline std::vector<float> uniform(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Rounds float data to storage type T.
template <class T>
std::vector<T> to_storage(const std::vector<float>& v) {
  std::vector<T> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = from_float<T>(v[i]);
  return r;
}

/// Widens storage-type data to double.
template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = static_cast<double>(to_float(v[i]));
  return r;
}

/// Any element (float, f16, bf16, double) as double.
inline double as_double(double x) { return x; }
inline double as_double(float x) { return x; }
inline double as_double(f16 x) { return moss::to_float(x); }
inline double as_double(bf16 x) { return moss::to_float(x); }

/// Relative L2 error ‖a − b‖₂ / ‖b‖₂ (b is the reference). NaN anywhere gives NaN, which fails
/// every `<=` comparison; an all-zero reference compares absolute error.
template <class A, class B>
double rel_l2(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = as_double(a[i]);
    const double y = as_double(b[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// Per-op tolerance of REFERENCE.md's precision contract for storage type T.
template <class T>
constexpr double op_tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, f16>) return 3e-3;
  else return 1e-2;
}

/// True when the GPU run (scripts/test --gpu) demands a device: then "no device" fails.
inline bool gpu_required() {
  const char* v = std::getenv("MOSS_REQUIRE_GPU");
  return v && std::string(v) == "1";
}

}  // namespace moss::test

/// In a CUDA test: skip (exit code 4) when no GPU is visible, fail when MOSS_REQUIRE_GPU=1.
#define MOSS_REQUIRE_CUDA_DEVICE()                                                  \
  do {                                                                              \
    if (::moss::cuda_device_count() == 0) {                                         \
      if (::moss::test::gpu_required()) FAIL("MOSS_REQUIRE_GPU=1 but no CUDA device is visible"); \
      SKIP("no CUDA device visible");                                               \
    }                                                                               \
  } while (0)
