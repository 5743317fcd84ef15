// Mamba layer forward and decode step on the host at a small shape (the CPU path of moss-demo).
#include <benchmark/benchmark.h>

#include "moss/moss.hpp"

namespace {

using namespace moss;

void BM_host_mamba_layer_forward(benchmark::State& state) {
  MambaConfig cfg;
  cfg.d_model = 256;
  const index_t batch = 1, L = state.range(0), D = cfg.d_model;
  const Mamba<float> layer(cfg.dims());
  Rng rng(1);
  const auto p = layer.init(Host{}, rng, 4);
  std::vector<float> x(batch * L * D, 0.5f), y(batch * L * D);
  for (auto _ : state) {
    layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<float, 3>(y.data(), {batch, L, D}, "y"));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(L) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_host_mamba_layer_forward)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
