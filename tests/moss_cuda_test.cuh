// tests/moss_cuda_test.cuh: helpers shared by the CUDA tests (host ↔ device copies, bit
// comparison). Include after moss/backend/cuda.cuh.
#pragma once

#include <cstring>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/buffer.hpp"

namespace moss::test {

/// A new device buffer holding `v` (synchronous).
template <class T>
Buffer<T> device_copy(const Cuda& gpu, const std::vector<T>& v) {
  return upload(gpu, v.data(), static_cast<index_t>(v.size()));
}

/// The whole device buffer `b` in host memory (synchronous).
template <class T>
std::vector<T> host_copy(const Cuda& gpu, const Buffer<T>& b) {
  std::vector<T> v(static_cast<std::size_t>(b.size()));
  download(gpu, v.data(), b.data(), b.size());
  return v;
}

/// True when `a` and `b` hold the same bytes.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace moss::test
