// tests/moss_cuda_test.cuh: helpers shared by the CUDA tests: host ↔ backend copies, bit
// comparison, and the comparison of two backends' routing reports.
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/buffer.hpp"
#include "moss/layers/routing.hpp"

namespace moss::test {

/// A new buffer on `backend` holding `v` (synchronous).
template <class T, class Backend>
Buffer<T> device_copy(const Backend& backend, const std::vector<T>& v) {
  return upload(backend, v.data(), static_cast<index_t>(v.size()));
}

/// The whole buffer `b` of `backend` in host memory (synchronous).
template <class T, class Backend>
std::vector<T> host_copy(const Backend& backend, const Buffer<T>& b) {
  std::vector<T> v(static_cast<std::size_t>(b.size()));
  download(backend, v.data(), b.data(), b.size());
  return v;
}

/// The whole tensor `t` of `backend` in host memory, row-major (synchronous).
template <class T, std::size_t Rank, class Backend>
std::vector<T> host_copy(const Backend& backend, const Tensor<T, Rank>& t) {
  return host_copy(backend, t.buffer());
}

/// True when `a` and `b` hold the same bytes.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// |a − b| ≤ tol · |b| (+ a tiny floor for values that are 0 on both sides).
inline bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * std::fabs(b) + 1e-9; }

/// Two backends' routing reports agree: names, token counts, counts, kept and dropped pairs
/// exactly; the losses and mean probabilities within `tol`.
inline void check_reports(const std::vector<RouterStats>& got, const std::vector<RouterStats>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const RouterStats &g = got[i], &w = want[i];
    CAPTURE(i, w.layer);
    CHECK(g.layer == w.layer);
    CHECK(g.tokens == w.tokens);
    CHECK(g.k == w.k);
    CHECK(g.counts == w.counts);
    CHECK(g.kept == w.kept);
    CHECK(g.dropped == w.dropped);
    CHECK(close(g.aux_loss, w.aux_loss, tol));
    CHECK(close(g.z_loss, w.z_loss, tol));
    REQUIRE(g.prob_mean.size() == w.prob_mean.size());
    for (std::size_t e = 0; e < g.prob_mean.size(); ++e) CHECK(close(g.prob_mean[e], w.prob_mean[e], tol));
  }
}

}  // namespace moss::test
