// CUDA benchmarks of the training path: one Mamba layer's forward + backward, and one optimiser
// step of a whole language model.
//
// BM_mamba_layer_fwd_bwd: moss::Mamba<bf16> at the canonical layer shape of docs/performance.md
// (d_model 2048, d_inner 4096, d_state 16, d_conv 4, dt_rank 128), batch 8 × L 2048; each
// iteration is one `forward_train` (ActivationPolicy::keep) and one `backward` (accumulate =
// false, every parameter gradient and dx). Anchor: mamba_ssm's Mamba module forward + backward,
// 10.13 ms on the H100; goal ≤ 7 ms. Counters:
//   anchor_speedup     anchor time / measured time (> 1: faster than mamba_ssm)
//   goal_fraction      goal time / measured time (≥ 1: the goal is met)
//   tokens_per_second  batch · L per iteration
//   flops              the GEMMs' FLOPs (forward, and twice that for the backward)
//
// BM_lm_train_step<Model>: one `moss::Trainer<Model, moss::Cuda>::step` (one micro-batch: loss and
// gradients, global-norm clipping, AdamW, refresh of A) at the Mamba-130M shape: d_model 768, 24
// layers, vocab 50280, d_state 16, expand 2, bf16, batch 8 × seq 2048 (random token ids), for
// MambaLM<bf16> and RomLM<bf16> with 8 experts. Under `keep` a layer saves about 16 KB per token,
// 6 GB for the 24 layers at 16384 tokens: this fits an 80 GB H100 with room to spare. The step
// reads the gradient norm back to the host (one synchronisation), so the time includes the host's
// work of the step. Counters: tokens_per_second, seconds_per_step (the RoM / dense ratio is
// computed in the results table).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "moss/models/variants.hpp"
#include "moss/moss.hpp"
#include "moss/train/trainer.hpp"
#include "moss_bench.cuh"

namespace {

using namespace moss;

constexpr double kLayerAnchorSeconds = 10.13e-3;  // mamba_ssm Mamba forward + backward, H100
constexpr double kLayerGoalSeconds = 7e-3;

/// One forward_train + backward of the Mamba layer at d_model 2048, batch 8 × L 2048, bf16.
void BM_mamba_layer_fwd_bwd(benchmark::State& state) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg;
  cfg.d_model = 2048;  // d_inner 4096, dt_rank 128
  cfg.d_state = 16;
  cfg.d_conv = 4;
  const index_t batch = 8, L = 2048, D = cfg.d_model;
  const Mamba<bf16> layer(cfg.dims());
  Rng rng(1);
  const auto p = layer.init(gpu, rng, 48);
  auto grads = layer.make_grads(gpu, p);
  Mamba<bf16>::Saved saved;

  const Buffer<bf16> x = bench::device_randn<bf16>(gpu, batch * L * D, 2);
  const Buffer<bf16> dout = bench::device_randn<bf16>(gpu, batch * L * D, 3);
  Buffer<bf16> out = gpu.alloc<bf16>(batch * L * D);
  Buffer<bf16> dx = gpu.alloc<bf16>(batch * L * D);
  const ConstView<bf16, 3> x_view(x.data(), {batch, L, D}, "x");
  const ConstView<bf16, 3> dout_view(dout.data(), {batch, L, D}, "dout");
  bench::time_cuda(state, gpu.stream, [&] {
    layer.forward_train(gpu, p, x_view, out.view<3>({batch, L, D}, "out"), saved, ActivationPolicy::keep);
    layer.backward(gpu, p, x_view, saved, dout_view, dx.view<3>({batch, L, D}, "dx"), grads, false);
  });

  using benchmark::Counter;
  const double it = static_cast<double>(state.iterations());
  const double tokens = static_cast<double>(batch * L), ED = 2.0 * D;
  const double R = static_cast<double>(cfg.resolved_dt_rank()), XP = R + 2.0 * cfg.d_state;
  const double forward_flops = 2 * tokens * (D * 2 * ED + ED * D + ED * XP + R * ED);
  bench::set_rates(state, 0, 3 * forward_flops);
  state.counters["tokens_per_second"] = Counter(tokens * it, Counter::kIsRate);
  state.counters["anchor_speedup"] = Counter(kLayerAnchorSeconds * it, Counter::kIsRate);
  state.counters["goal_fraction"] = Counter(kLayerGoalSeconds * it, Counter::kIsRate);
}
BENCHMARK(BM_mamba_layer_fwd_bwd)->UseManualTime()->Unit(benchmark::kMillisecond);

/// The model under test at `cfg`: RomLM with 8 experts per mixer, any other model with its
/// default block configs.
template <class Model>
Model make_model(const MambaConfig& cfg) {
  auto blocks = Model::default_block_configs();
  if constexpr (std::is_same_v<Model, RomLM<bf16>>) std::get<0>(blocks).routing.num_experts = 8;
  return Model(cfg, blocks);
}

/// One Trainer step of `Model` at the Mamba-130M shape, batch 8 × seq 2048, bf16.
template <class Model>
void BM_lm_train_step(benchmark::State& state) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg;  // Mamba-130M: d_model 768, 24 layers, vocab 50280, d_state 16, expand 2
  const index_t batch = 8, seq = 2048;
  const Model model = make_model<Model>(cfg);
  auto params = model.init(gpu, 1);
  Trainer<Model, Cuda> trainer(model, params, TrainerSettings{}, gpu);

  // (batch, seq + 1) random token ids: the model reads [:, :-1] and predicts [:, 1:].
  Rng rng(2);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch * (seq + 1)));
  for (auto& t : tokens) t = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(cfg.vocab_size));
  const ConstView<std::int64_t, 2> ids(tokens.data(), {batch, seq + 1}, "tokens");
  bench::time_cuda(state, gpu.stream, [&] { trainer.step({ids}); });

  using benchmark::Counter;
  const double it = static_cast<double>(state.iterations());
  state.counters["tokens_per_second"] = Counter(static_cast<double>(batch * seq) * it, Counter::kIsRate);
  state.counters["seconds_per_step"] = Counter(it, Counter::kIsRate | Counter::kInvert);
}
BENCHMARK_TEMPLATE(BM_lm_train_step, MambaLM<bf16>)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_lm_train_step, RomLM<bf16>)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
