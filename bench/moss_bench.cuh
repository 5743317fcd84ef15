// bench/moss_bench.cuh: shared helpers of the CUDA benchmarks.
//
// Times device work with CUDA events (Google Benchmark manual time), rotates among input sets
// larger than L2 so repeated runs do not measure the cache, and reports bytes/s, FLOP/s and
// the ratio to the device floor as counters.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <random>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/dtype.hpp"

namespace moss::bench {

/// Measured ceilings of the H100 of PERFORMANCE.md; each run also measures its own
/// (copy_bench, gemm ceiling) and the results table quotes both.
inline constexpr double kCopyBytesPerSecond = 3.02e12;  // device-to-device, read + written
inline constexpr double kBf16GemmFlops = 736e12;        // cublasGemmEx 16384 x 2048 x 8192

/// Times `fn()` (which queues work on `stream`) with CUDA events for every iteration of `state`.
template <class F>
void time_cuda(benchmark::State& state, cudaStream_t stream, F&& fn) {
  cudaEvent_t start, stop;
  MOSS_CUDA_CHECK(cudaEventCreate(&start));
  MOSS_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) fn();  // warm-up: module load, handles, allocator pools
  MOSS_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (auto _ : state) {
    MOSS_CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    MOSS_CUDA_CHECK(cudaEventRecord(stop, stream));
    MOSS_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MOSS_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  MOSS_CUDA_CHECK(cudaEventDestroy(start));
  MOSS_CUDA_CHECK(cudaEventDestroy(stop));
}

/// Number of input sets to rotate among so that together they exceed `l2_bytes` twice over.
inline int rotation_count(double bytes_per_set, double l2_bytes = 50e6) {
  const int n = static_cast<int>(2 * l2_bytes / bytes_per_set) + 1;
  return n < 1 ? 1 : (n > 8 ? 8 : n);
}

/// A device buffer of `n` elements of T filled with N(mean, stddev) values (never zeros).
template <class T>
Buffer<T> device_randn(const Cuda& gpu, index_t n, std::uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::vector<T> host(static_cast<std::size_t>(n));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  for (auto& x : host) x = from_float<T>(dist(rng));
  Buffer<T> d = gpu.alloc<T>(n);
  MOSS_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice, gpu.stream));
  gpu.synchronize();
  return d;
}

/// Sets the standard counters: bytes/s, FLOP/s and the fraction of the copy-bandwidth floor.
inline void set_rates(benchmark::State& state, double bytes, double flops) {
  using benchmark::Counter;
  state.counters["bytes_per_second"] = Counter(bytes * state.iterations(), Counter::kIsRate);
  if (flops > 0) state.counters["flops"] = Counter(flops * state.iterations(), Counter::kIsRate);
  state.counters["floor_ms"] = bytes / kCopyBytesPerSecond * 1e3;
}

}  // namespace moss::bench
