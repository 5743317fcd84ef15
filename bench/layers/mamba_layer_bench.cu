// Mamba layer forward on CUDA at the canonical layer shape of docs/performance.md (d_model 2048,
// d_inner 4096, d_state 16, d_conv 4, batch 8 x seqlen 2048, bf16; anchor: mamba_ssm's fused
// Mamba module, 2.52 ms on the H100), the same layer at batch 1 x 2048 with each scan strategy
// (SequentialScan, ChunkedScan and the default AutoScan, which picks by shape), plus the
// language-model decode step at Mamba-130M's shape, eager and as generate's CUDA graph.
#include <chrono>
#include <tuple>
#include <type_traits>

#include "moss/moss.hpp"
#include "moss_bench.cuh"

namespace {

using namespace moss;

constexpr double kLayerAnchorMs = 2.52;

/// Times `Mamba<bf16, Scan>::forward` at (batch, L) = (range 0, range 1).
template <class Scan>
void mamba_layer_forward(benchmark::State& state) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg;
  cfg.d_model = 2048;
  cfg.d_state = 16;
  const index_t batch = state.range(0), L = state.range(1), D = cfg.d_model;
  const Mamba<bf16, Scan> layer(cfg.dims());
  Rng rng(1);
  const auto p = layer.init(gpu, rng, 48);
  const Buffer<bf16> x = bench::device_randn<bf16>(gpu, batch * L * D, 2);
  Buffer<bf16> y = gpu.alloc<bf16>(batch * L * D);
  bench::time_cuda(state, gpu.stream, [&] {
    layer.forward(gpu, p, ConstView<bf16, 3>(x.data(), {batch, L, D}, "x"), y.view<3>({batch, L, D}, "y"));
  });
  const double tokens = static_cast<double>(batch * L), ED = 2.0 * D;
  const double flops = 2 * tokens * (D * 2 * ED + ED * D + ED * (128 + 32) + 128 * ED);
  bench::set_rates(state, 0, flops);
  state.counters["tokens_per_second"] = benchmark::Counter(tokens * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["anchor_ms"] = kLayerAnchorMs;
}

void BM_mamba_layer_forward(benchmark::State& state) { mamba_layer_forward<AutoScan>(state); }
BENCHMARK(BM_mamba_layer_forward)->Args({8, 2048})->Args({1, 2048})->UseManualTime()->Unit(benchmark::kMillisecond);

// Batch 1 x 2048, where the sequential recurrence leaves most SMs idle: each strategy named.
template <class Scan>
void BM_mamba_layer_forward_scan(benchmark::State& state) {
  mamba_layer_forward<Scan>(state);
}
BENCHMARK_TEMPLATE(BM_mamba_layer_forward_scan, SequentialScan)
    ->Args({1, 2048})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_mamba_layer_forward_scan, ChunkedScan)
    ->Args({1, 2048})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_mamba_layer_forward_scan, AutoScan)
    ->Args({1, 2048})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// One decode benchmark's set-up at Mamba-130M's shape (d 768, 24 layers, vocab 50280), bf16:
/// MambaLM, or RomLM with 8 experts per mixer (top-1, shared routing); seeded weights, an empty
/// cache and (batch, V) logits for `batch` = the benchmark's argument.
template <class Model>
struct DecodeSetup {
  CudaStream stream;
  Cuda gpu{stream.get()};
  Model model{MambaConfig{}, experts(8)};
  typename Model::Params p = model.init(gpu, 1);
  index_t batch, V = model.config().vocab_size;
  typename Model::Cache cache;
  Buffer<float> logits;
  std::vector<std::int64_t> ids;

  explicit DecodeSetup(index_t b)
      : batch(b), cache(model.make_cache(gpu, b)), logits(gpu.alloc<float>(b * V)), ids(b, 7) {}
  TensorView<float, 2> logits_view() { return logits.view<2>({batch, V}, "logits"); }

 private:
  static typename Model::BlockConfigs experts(index_t n) {
    auto blocks = Model::default_block_configs();
    Model::for_each_routing(blocks, [&](auto& routing) { routing.num_experts = n; });
    return blocks;
  }
};

// Whole-model decode step (batch 1 / 8 / 16), eager: every launch from the host, the logits left
// on the device. Anchor 2.03 ms/token (mamba_ssm with CUDA graphs), floor 0.09 ms (0.26 GB of
// weights at 3 TB/s).
template <class Model>
void BM_lm_decode_step(benchmark::State& state) {
  DecodeSetup<Model> d(state.range(0));
  bench::time_cuda(state, d.gpu.stream, [&] {
    d.model.step(d.gpu, d.p, ConstView<std::int64_t, 1>(d.ids.data(), {d.batch}, "ids"), d.logits_view(), d.cache);
  });
  state.counters["anchor_ms"] = 2.03;
}
BENCHMARK_TEMPLATE(BM_lm_decode_step, MambaLM<bf16>)
    ->Arg(1)
    ->Arg(8)
    ->Arg(16)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_lm_decode_step, RomLM<bf16>)->Arg(1)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);

#if __has_include("moss/models/generation_cuda.cuh")  // (this file also builds against older trees)
// The same decode step as `generate` runs it on CUDA: one CUDA graph replay per token (ids up,
// the whole step, the greedy pick on the device, the picks down) and the host waiting for the
// picks, as a decode loop must before its next token. Wall time per token.
template <class Model>
void BM_lm_decode_graph(benchmark::State& state) {
  DecodeSetup<Model> d(state.range(0));
  StepRunner<Model, Cuda> runner(d.gpu, d.model, d.p, d.cache, d.logits_view(), {});
  runner.run(d.ids);  // captures the graph
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    runner.run(d.ids);
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    d.ids.assign(runner.picks(), runner.picks() + d.batch);
  }
  state.counters["anchor_ms"] = 2.03;
  state.counters["graphed"] = runner.graphed() ? 1 : 0;
}
BENCHMARK_TEMPLATE(BM_lm_decode_graph, MambaLM<bf16>)
    ->Arg(1)
    ->Arg(8)
    ->Arg(16)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_lm_decode_graph, RomLM<bf16>)->Arg(1)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);
#endif

}  // namespace

BENCHMARK_MAIN();
