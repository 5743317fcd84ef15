// tests/moss_test.hpp: helpers shared by the tests (random data, host buffers and tensors, error
// norms, GPU gating).
#pragma once

#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss::test {

/// Directory of the test fixtures, tests/data (a missing file is a failure).
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

/// max_i |a_i − b_i| / |b_i| over two float vectors: 0 for equal values (equal infinities and
/// NaN on both sides included), +inf when only one side is NaN.
inline double max_rel_nan_aware(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]))) continue;
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    m = std::max(m,
                 std::fabs(static_cast<double>(a[i]) - b[i]) / std::max(std::fabs(static_cast<double>(b[i])), 1e-30));
  }
  return m;
}

/// Index of the largest value of row t of a row-major (rows, X) matrix (ties → lowest index).
template <class V>
index_t argmax_row(const std::vector<V>& m, index_t t, index_t X) {
  index_t best = 0;
  for (index_t i = 1; i < X; ++i)
    if (m[t * X + i] > m[t * X + best]) best = i;
  return best;
}

/// Overwrites host buffer `b` with N(mean, stddev²) values (seeded: randn's) rounded to T.
template <class T>
void fill_normal(Buffer<T>& b, std::uint64_t seed, double stddev, double mean = 0.0) {
  const auto v = randn(static_cast<std::size_t>(b.size()), seed, static_cast<float>(stddev), static_cast<float>(mean));
  for (index_t i = 0; i < b.size(); ++i) b.data()[i] = from_float<T>(v[static_cast<std::size_t>(i)]);
}

/// Overwrites host tensor `t` with N(mean, stddev²) values (seeded) rounded to T; its shape stays.
template <class T, std::size_t Rank>
void fill_normal(Tensor<T, Rank>& t, std::uint64_t seed, double stddev, double mean = 0.0) {
  fill_normal(t.buffer(), seed, stddev, mean);
}

/// A host buffer's elements.
template <class T>
std::vector<T> host_copy(const Buffer<T>& b) {
  return std::vector<T>(b.data(), b.data() + b.size());
}

/// A host tensor's elements, row-major.
template <class T, std::size_t Rank>
std::vector<T> host_copy(const Tensor<T, Rank>& t) {
  return host_copy(t.buffer());
}

/// Whether two host buffers hold the same bits.
template <class T>
bool same_bits(const Buffer<T>& a, const Buffer<T>& b) {
  return a.size() == b.size() && (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0);
}

/// Whether two host tensors have the same presence, shape and name and hold the same bits.
template <class T, std::size_t Rank>
bool same_bits(const Tensor<T, Rank>& a, const Tensor<T, Rank>& b) {
  return a.present() == b.present() && a.shape() == b.shape() && a.name() == b.name() &&
         same_bits(a.buffer(), b.buffer());
}

/// A host copy of host tensor `t` (same shape, name and bits; an absent tensor stays absent).
template <class T, std::size_t Rank>
Tensor<T, Rank> clone(const Tensor<T, Rank>& t) {
  if (!t.present()) return {};
  return Tensor<T, Rank>(upload(Host{}, t.data(), t.numel()), t.shape(), t.name());
}

/// Host tensor `t`'s memory under another shape of the same element count and another name (a
/// copy), e.g. a dense (out, in) weight as a one-expert (1, out, in) stack.
template <std::size_t R2, class T, std::size_t Rank>
Tensor<T, R2> reshaped(const Tensor<T, Rank>& t, const Extents<R2>& shape, std::string name) {
  Tensor<T, Rank> c = clone(t);
  return Tensor<T, R2>(std::move(c.buffer()), shape, std::move(name));
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

/// Per-op tolerance of the precision contract (docs/math.md, "Precision contract") for storage type T.
template <class T>
constexpr double op_tolerance() {
  if constexpr (std::is_same_v<T, float>)
    return 1e-5;
  else if constexpr (std::is_same_v<T, f16>)
    return 3e-3;
  else
    return 1e-2;
}

/// True when the GPU run (scripts/test --gpu) demands a device: then "no device" fails.
inline bool gpu_required() {
  const char* v = std::getenv("MOSS_REQUIRE_GPU");
  return v && std::string(v) == "1";
}

/// `Model`'s default block configs with every routed block (MoE or RoM) given `experts` experts.
template <class Model>
typename Model::BlockConfigs blocks_with_experts(index_t experts) {
  auto blocks = Model::default_block_configs();
  Model::for_each_routing(blocks, [&](auto& routing) { routing.num_experts = experts; });
  return blocks;
}

}  // namespace moss::test

/// In a CUDA test: skip (exit code 4) when no GPU is visible, fail when MOSS_REQUIRE_GPU=1.
#define MOSS_REQUIRE_CUDA_DEVICE()                                                                \
  do {                                                                                            \
    if (::moss::cuda_device_count() == 0) {                                                       \
      if (::moss::test::gpu_required()) FAIL("MOSS_REQUIRE_GPU=1 but no CUDA device is visible"); \
      SKIP("no CUDA device visible");                                                             \
    }                                                                                             \
  } while (0)
