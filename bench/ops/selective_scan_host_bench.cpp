// Host benchmark of moss::selective_scan at a small channel-last shape: batch 1, dim 256, N 16,
// softplus, D, z gate; L 256 with the default strategy (AutoScan: on the CPU the oracle, the
// model's CPU path), and L 1024 per strategy: SequentialScan (the oracle) and ChunkedScan (its
// segment decomposition in four segments: pass 1 over three, the rescan over three).
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "moss/ops/selective_scan.hpp"

namespace {

using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr index_t kBatch = 1, kDim = 256, kState = 16;

template <class T>
std::vector<T> randn(std::size_t n, std::uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = moss::from_float<T>(dist(rng));
  return v;
}

template <class T, class Strategy = moss::AutoScan, index_t kLen = 256>
void BM_selective_scan_host(benchmark::State& state) {
  state.SetLabel(std::string(Strategy::name));
  const std::size_t n = kBatch * kDim * kLen;
  const auto u = randn<T>(n, 1), delta = randn<T>(n, 2), z = randn<T>(n, 3);
  const auto bc = randn<T>(2 * kBatch * kLen * kState, 4);
  std::vector<float> A(kDim * kState), D = randn<float>(kDim, 5), bias = randn<float>(kDim, 6, 0.5f, -3.0f);
  for (index_t d = 0; d < kDim; ++d)
    for (index_t s = 0; s < kState; ++s) A[d * kState + s] = -static_cast<float>(s + 1);
  std::vector<T> out(n);
  std::vector<float> final_state(kBatch * kDim * kState);
  const moss::Extents<3> st{kLen * kDim, 1, kDim};  // channel-last: (batch, L, dim) buffers
  moss::SelectiveScanArgs<T> a;
  a.u = ConstView<T, 3>(u.data(), {kBatch, kDim, kLen}, st);
  a.delta = ConstView<T, 3>(delta.data(), {kBatch, kDim, kLen}, st);
  a.z = ConstView<T, 3>(z.data(), {kBatch, kDim, kLen}, st);
  a.A = ConstView<float, 2>(A.data(), {kDim, kState});
  a.B = ConstView<T, 4>(bc.data(), {kBatch, 1, kState, kLen}, {kLen * 2 * kState, 0, 1, 2 * kState});
  a.C = ConstView<T, 4>(bc.data() + kState, {kBatch, 1, kState, kLen}, {kLen * 2 * kState, 0, 1, 2 * kState});
  a.D = ConstView<float, 1>(D.data(), {kDim});
  a.delta_bias = ConstView<float, 1>(bias.data(), {kDim});
  a.delta_softplus = true;
  a.out = TensorView<T, 3>(out.data(), {kBatch, kDim, kLen}, st);
  a.final_state = TensorView<float, 3>(final_state.data(), {kBatch, kDim, kState});
  for (auto _ : state) {
    moss::selective_scan<Strategy>(moss::Host{}, a);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["state_updates_per_second"] = benchmark::Counter(
      static_cast<double>(kBatch * kDim * kLen * kState) * state.iterations(), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_selective_scan_host<float>)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_host<moss::bf16>)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_host<float, moss::SequentialScan, 1024>)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_host<float, moss::ChunkedScan, 1024>)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_host<moss::bf16, moss::ChunkedScan, 1024>)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
