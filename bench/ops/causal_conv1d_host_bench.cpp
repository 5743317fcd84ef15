// Host benchmarks of causal_conv1d and causal_conv1d_step (the CPU path of the model) at a small
// shape: batch 1, dim 256, L 256, W 4, SiLU, bias, channel-last (batch, L, dim) buffers.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "moss/ops/causal_conv1d.hpp"

namespace {

using moss::index_t;

constexpr index_t kDim = 256, kSeqlen = 256, kWidth = 4;

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<T> v(n);
  for (auto& e : v) e = moss::from_float<T>(dist(rng));
  return v;
}

/// Bytes moved per call, and the counters derived from them.
void report(benchmark::State& state, double bytes, double elements) {
  using benchmark::Counter;
  state.counters["bytes_per_second"] = Counter(bytes * state.iterations(), Counter::kIsRate);
  state.counters["outputs_per_second"] = Counter(elements * state.iterations(), Counter::kIsRate);
}

template <class T>
void BM_causal_conv1d_host(benchmark::State& state) {
  const index_t batch = state.range(0), dim = kDim, seqlen = kSeqlen, width = kWidth;
  const auto x = random_values<T>(batch * seqlen * dim, 1);
  const auto w = random_values<T>(dim * width, 2, 0.5f);
  const auto bias = random_values<T>(dim, 3);
  std::vector<T> out(x.size()), final_state(batch * dim * (width - 1));
  moss::CausalConv1dArgs<T> a;
  a.x = moss::ConstView<T, 3>(x.data(), {batch, dim, seqlen}, {seqlen * dim, 1, dim}, "x");
  a.weight = moss::ConstView<T, 2>(w.data(), {dim, width}, "weight");
  a.bias = moss::ConstView<T, 1>(bias.data(), {dim}, "bias");
  a.silu = true;
  a.out = moss::TensorView<T, 3>(out.data(), {batch, dim, seqlen}, {seqlen * dim, 1, dim}, "out");
  a.final_state = moss::TensorView<T, 3>(final_state.data(), {batch, dim, width - 1}, "final_state");
  for (auto _ : state) {
    moss::causal_conv1d(moss::Host{}, a);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, 2.0 * sizeof(T) * x.size(), double(x.size()));
}

template <class T>
void BM_causal_conv1d_step_host(benchmark::State& state) {
  const index_t batch = state.range(0), dim = kDim, width = kWidth;
  auto conv_state = random_values<T>(batch * dim * (width - 1), 1);
  const auto x = random_values<T>(batch * dim, 2);
  const auto w = random_values<T>(dim * width, 3, 0.5f);
  std::vector<T> out(batch * dim);
  moss::CausalConv1dStepArgs<T> a;
  a.state = moss::TensorView<T, 3>(conv_state.data(), {batch, dim, width - 1}, "state");
  a.x = moss::ConstView<T, 2>(x.data(), {batch, dim}, "x");
  a.weight = moss::ConstView<T, 2>(w.data(), {dim, width}, "weight");
  a.silu = true;
  a.out = moss::TensorView<T, 2>(out.data(), {batch, dim}, "out");
  for (auto _ : state) {
    moss::causal_conv1d_step(moss::Host{}, a);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, sizeof(T) * (2.0 * conv_state.size() + x.size() + out.size()), double(out.size()));
}

}  // namespace

BENCHMARK(BM_causal_conv1d_host<float>)->ArgName("batch")->Arg(1);
BENCHMARK(BM_causal_conv1d_host<moss::bf16>)->ArgName("batch")->Arg(1);
BENCHMARK(BM_causal_conv1d_step_host<moss::bf16>)->ArgName("batch")->Arg(1)->Arg(16);

BENCHMARK_MAIN();
