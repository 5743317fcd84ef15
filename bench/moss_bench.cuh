// bench/moss_bench.cuh: shared helpers of the CUDA benchmarks.
//
// Times device work with CUDA events (Google Benchmark manual time), rotates among input sets
// larger than L2 so repeated runs do not measure the cache, and reports bytes/s, FLOP/s and
// the ratio to the device floor as counters.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/dtype.hpp"

namespace moss::bench {

/// Measured ceilings of the H100 of docs/performance.md; each run also measures its own
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

/// Median time in ms of `reps` event-timed calls of fn (after three warm-up calls): a reference
/// timed inside another benchmark (e.g. the dense GEMM a grouped GEMM is compared with).
template <class F>
double median_ms(cudaStream_t stream, int reps, F&& fn) {
  cudaEvent_t a, b;
  MOSS_CUDA_CHECK(cudaEventCreate(&a));
  MOSS_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    MOSS_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    MOSS_CUDA_CHECK(cudaEventRecord(b, stream));
    MOSS_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    MOSS_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  MOSS_CUDA_CHECK(cudaEventDestroy(a));
  MOSS_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Number of input sets to rotate among so that together they exceed `l2_bytes` twice over.
inline int rotation_count(double bytes_per_set, double l2_bytes = 50e6) {
  const int n = static_cast<int>(2 * l2_bytes / bytes_per_set) + 1;
  return n < 1 ? 1 : (n > 8 ? 8 : n);
}

/// The i-th value of a seeded N(0, 1) stream: splitmix64 of (seed, i) → two uniforms → Box–Muller.
/// The same on host and device; used to fill benchmark inputs on the GPU without a host copy.
MOSS_HD float hashed_normal(std::uint64_t seed, std::uint64_t i) {
  auto mix = [](std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const std::uint64_t a = mix(seed * 0x100000001b3ull ^ mix(2 * i)), b = mix(a ^ mix(2 * i + 1));
  const float u1 = (static_cast<float>(a >> 40) + 1.0f) * 0x1.0p-24f;  // (0, 1]
  const float u2 = static_cast<float>(b >> 40) * 0x1.0p-24f;           // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795865f * u2);
}

/// Fills `out` with N(mean, stddev²) values of the stream `seed`.
template <class T>
__global__ void fill_normal_kernel(T* out, index_t n, std::uint64_t seed, float stddev, float mean) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(mean + stddev * hashed_normal(seed, static_cast<std::uint64_t>(i)));
}

/// A device buffer of `n` elements of T filled with N(mean, stddev²) values (never zeros),
/// generated on the device (benchmarks fill gigabytes; a host generator took seconds per buffer).
template <class T>
Buffer<T> device_randn(const Cuda& gpu, index_t n, std::uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  Buffer<T> d = gpu.alloc<T>(n);
  if (n > 0) {
    const index_t blocks = std::min<index_t>((n + 255) / 256, 65535);
    fill_normal_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, gpu.stream>>>(d.data(), n, seed, stddev, mean);
    MOSS_CHECK_LAUNCH("fill_normal_kernel", gpu.stream);
    gpu.synchronize();
  }
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
