// bench/ops/dense_host_bench.cpp: the host (CPU, single-threaded) `linear` and `rms_norm` at
// small shapes: a prefill chunk (64 tokens) and a decode step (1 token) at d_model 768
// (Mamba-130M: in_proj 768 → 3072, out_proj 1536 → 768).
// Counters: flops (FLOP/s) for linear, bytes_per_second for rms_norm (bytes read + written).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "moss/ops/linear.hpp"
#include "moss/ops/rms_norm.hpp"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

template <class T>
std::vector<T> randn(index_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = moss::from_float<T>(dist(rng));
  return v;
}

template <class T>
void bm_linear(benchmark::State& state) {
  const index_t rows = state.range(0), in = state.range(1), out = state.range(2);
  const auto x = randn<T>(rows * in, 1);
  const auto w = randn<T>(out * in, 2, 0.05f);
  std::vector<T> y(static_cast<std::size_t>(rows * out));
  moss::LinearArgs<T> a;
  a.x = ConstView<T, 2>(x.data(), {rows, in}, "x");
  a.weight = ConstView<T, 2>(w.data(), {out, in}, "weight");
  a.y = TensorView<T, 2>(y.data(), {rows, out}, "y");
  for (auto _ : state) {
    moss::linear(moss::Host{}, a);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["flops"] =
      benchmark::Counter(moss::linear_shape(a).flops() * double(state.iterations()), benchmark::Counter::kIsRate);
}

template <class T>
void bm_rms_norm(benchmark::State& state) {
  const index_t rows = state.range(0), dim = state.range(1);
  const auto residual0 = randn<float>(rows * dim, 3);
  const auto delta = randn<T>(rows * dim, 4);
  const auto weight = randn<float>(dim, 5);
  std::vector<float> residual = residual0;
  std::vector<T> out(static_cast<std::size_t>(rows * dim));
  moss::RmsNormArgs<T, T> a;
  a.residual = TensorView<float, 2>(residual.data(), {rows, dim}, "residual");
  a.delta = ConstView<T, 2>(delta.data(), {rows, dim}, "delta");
  a.weight = ConstView<float, 1>(weight.data(), {dim}, "weight");
  a.out = TensorView<T, 2>(out.data(), {rows, dim}, "out");
  for (auto _ : state) {
    moss::rms_norm(moss::Host{}, a);  // the residual keeps growing by delta: values stay finite
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double bytes = double(rows * dim) * (2 * sizeof(float) + 2 * sizeof(T)) + double(dim) * sizeof(float);
  state.counters["bytes_per_second"] =
      benchmark::Counter(bytes * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

// {rows, in, out}: in_proj and out_proj of Mamba-130M, prefill chunk and decode step.
BENCHMARK_TEMPLATE(bm_linear, float)->Args({64, 768, 3072})->Args({1, 768, 3072})->Args({64, 1536, 768});
BENCHMARK_TEMPLATE(bm_linear, bf16)->Args({64, 768, 3072})->Args({1, 768, 3072})->Args({64, 1536, 768});
BENCHMARK_TEMPLATE(bm_rms_norm, float)->Args({64, 768})->Args({1, 768});
BENCHMARK_TEMPLATE(bm_rms_norm, bf16)->Args({64, 768})->Args({1, 768});

BENCHMARK_MAIN();
