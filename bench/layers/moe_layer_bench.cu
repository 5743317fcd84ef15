// CUDA benchmarks of the sparse layers at docs/performance.md's layer shape (d_model 2048, d_inner
// 4096, d_state 16, batch 8 × seqlen 2048, bf16), 8 experts, top-1:
//   RoM layer vs the dense Mamba layer at equal active parameters (the dense layer is timed in
//   the same benchmark): counters dense_ms and ratio_to_dense (RoM time / dense time; goal
//   ≤ 1.15, anchor: the same layer in PyTorch, 4.42 ms compiled, 6.25 ms eager, on an H100);
//   the MoE feed-forward block (Switch top-1, ReLU MLP experts of width 3 · d_model), with the
//   dense FeedForward of the same active width timed beside it.
// Each layer call synchronises once per routing decision (reading the plan's offsets).
#include <algorithm>
#include <vector>

#include "moss/moss.hpp"
#include "moss_bench.cuh"

namespace {

using namespace moss;

constexpr index_t kBatch = 8, kLen = 2048, kModel = 2048, kExperts = 8;
constexpr index_t kFf = 3 * kModel;  // MoE-Mamba's expert width

MambaConfig layer_config() {
  MambaConfig c;
  c.d_model = kModel;
  c.d_state = 16;
  return c;
}

void BM_rom_layer_forward(benchmark::State& state) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const MambaConfig c = layer_config();
  const index_t tokens = kBatch * kLen;
  const Buffer<bf16> x = bench::device_randn<bf16>(gpu, tokens * kModel, 2);
  Buffer<bf16> y = gpu.alloc<bf16>(tokens * kModel);
  const ConstView<bf16, 3> xv(x.data(), {kBatch, kLen, kModel}, "x");
  const TensorView<bf16, 3> yv = y.view<3>({kBatch, kLen, kModel}, "y");

  const Mamba<bf16> dense(c.dims());
  Rng rng(1);
  const auto dp = dense.init(gpu, rng, 48);
  const double dense_ms = bench::median_ms(gpu.stream, 20, [&] { dense.forward(gpu, dp, xv, yv); });

  using Rom = RoutedMamba<TopK<1>, SharedRouting, Experts<kExperts>, bf16>;
  const Rom rom(c.dims(), kExperts);
  const auto rp = rom.init(gpu, rng, 48);
  bench::time_cuda(state, gpu.stream, [&] { rom.forward(gpu, rp, xv, yv); });
  using benchmark::Counter;
  const double it = static_cast<double>(state.iterations());
  state.counters["dense_ms"] = dense_ms;
  state.counters["ratio_to_dense"] = Counter(dense_ms * 1e-3 * it, Counter::kIsRate | Counter::kInvert);
  state.counters["anchor_ms"] = 4.42;
  state.counters["tokens_per_second"] = Counter(static_cast<double>(tokens) * it, Counter::kIsRate);
}
BENCHMARK(BM_rom_layer_forward)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_moe_feed_forward(benchmark::State& state) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t tokens = kBatch * kLen, F = kFf;
  const Buffer<bf16> x = bench::device_randn<bf16>(gpu, tokens * kModel, 2);
  Buffer<bf16> y = gpu.alloc<bf16>(tokens * kModel);
  const ConstView<bf16, 3> xv(x.data(), {kBatch, kLen, kModel}, "x");
  const TensorView<bf16, 3> yv = y.view<3>({kBatch, kLen, kModel}, "y");

  Rng rng(1);
  const FeedForward<Mlp<Relu>, bf16> dense(kModel, F);
  const auto dp = dense.init(gpu, rng, 48);
  const double dense_ms = bench::median_ms(gpu.stream, 20, [&] { dense.forward(gpu, dp, xv, yv); });

  const MoeFeedForward<Top1Switch, Experts<kExperts>, Mlp<Relu>, bf16> moe(kModel, F, kExperts);
  const auto mp = moe.init(gpu, rng, 48);
  bench::time_cuda(state, gpu.stream, [&] { moe.forward(gpu, mp, xv, yv); });
  using benchmark::Counter;
  const double it = static_cast<double>(state.iterations());
  const double flops = 2.0 * 2.0 * tokens * kModel * F;
  state.counters["flops"] = Counter(flops * it, Counter::kIsRate);
  state.counters["dense_ms"] = dense_ms;
  state.counters["ratio_to_dense"] = Counter(dense_ms * 1e-3 * it, Counter::kIsRate | Counter::kInvert);
}
BENCHMARK(BM_moe_feed_forward)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
