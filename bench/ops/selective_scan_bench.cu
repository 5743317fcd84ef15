// CUDA benchmarks of moss::selective_scan and moss::selective_scan_step.
//
// Scan: the canonical shape of docs/performance.md (batch 8, dim 4096, L 2048, N 16, bf16 u,
// delta, z, B, C; float A, D, delta_bias; softplus on; z gate on) in the layer's channel-last
// layout (u, delta, out from (batch, L, dim) buffers, z the second half of the (batch, L, 2·dim)
// in_proj output, B and C columns of the (batch, L, R + 2N) x_proj output, R = 128) and
// channel-first. Counters: bytes/s, state updates/s, anchor_ratio (mamba_ssm's 1.168 ms / time,
// > 1 is faster; canonical shape only), bytes_floor_ratio and exp2_floor_ratio (floor / time, ≤ 1).
//
// Strategies: every scan strategy (sequential, chunked, auto) on the same shapes, batch × L =
// 8 × 2048 (canonical), 1 × 2048 (where the sequential kernel fills 32 of 132 SMs) and 1 × 8192,
// dim 4096, both layouts; the label names the strategy.
//
// Step: batch 1 / 64 / 256, dim 4096, N 16, bf16, timed as a CUDA graph of kStepsPerGraph
// launches (rotating input sets); the time column is per graph, seconds_per_step per launch.
// mamba_step: the mixer core's decode step at the 130M shape, batch 1 and 16, 24 layers in a CUDA
// graph, fused (two kernels) against the ops in turn (four ops).
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "moss/ops/mamba_step.hpp"
#include "moss/ops/selective_scan/cuda.cuh"
#include "moss_bench.cuh"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr double kScanAnchorSeconds = 1.168e-3;  // mamba_ssm selective_scan_fn, H100 (docs/performance.md)
constexpr double kExp2PerSecond = 4.2e12;        // SFU exp2 rate of the H100 (docs/performance.md)
constexpr index_t kBatch = 8, kDim = 4096, kLen = 2048, kState = 16, kRank = 128;

/// Float parameters of one layer: A = -(n + 1) (S4D-real), D, delta_bias.
struct ScanWeights {
  moss::Buffer<float> A, D, bias;
  explicit ScanWeights(const moss::Cuda& gpu, index_t dim, index_t N, std::uint64_t seed) {
    std::vector<float> a(static_cast<std::size_t>(dim * N));
    for (index_t d = 0; d < dim; ++d)
      for (index_t n = 0; n < N; ++n) a[d * N + n] = -static_cast<float>(n + 1);
    A = gpu.alloc<float>(dim * N);
    MOSS_CUDA_CHECK(cudaMemcpy(A.data(), a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
    D = moss::bench::device_randn<float>(gpu, dim, seed);
    bias = moss::bench::device_randn<float>(gpu, dim, seed + 1, 0.5f, -3.0f);  // Δ ≈ softplus(-3) ≈ 0.05
  }
};

/// One input set of the scan at dim 4096, N 16 and (batch, L) (default: the canonical shape), in
/// one of the two layouts.
struct ScanSet {
  moss::Buffer<bf16> u, delta, xz, xproj, out;
  ScanWeights w;
  moss::SelectiveScanArgs<bf16> args;

  ScanSet(const moss::Cuda& gpu, bool channel_last, std::uint64_t seed, index_t batch = kBatch, index_t L = kLen)
      : w(gpu, kDim, kState, seed + 10) {
    const index_t n = batch * kDim * L;
    u = moss::bench::device_randn<bf16>(gpu, n, seed);
    delta = moss::bench::device_randn<bf16>(gpu, n, seed + 1);
    xz = moss::bench::device_randn<bf16>(gpu, 2 * n, seed + 2);
    out = gpu.alloc<bf16>(n);
    const index_t W = kRank + 2 * kState;
    xproj = moss::bench::device_randn<bf16>(gpu, batch * L * W, seed + 3);
    if (channel_last) {
      const moss::Extents<3> st{L * kDim, 1, kDim};
      args.u = ConstView<bf16, 3>(u.data(), {batch, kDim, L}, st);
      args.delta = ConstView<bf16, 3>(delta.data(), {batch, kDim, L}, st);
      args.z = ConstView<bf16, 3>(xz.data() + kDim, {batch, kDim, L}, {2 * L * kDim, 1, 2 * kDim});
      args.out = TensorView<bf16, 3>(out.data(), {batch, kDim, L}, st);
      args.B = ConstView<bf16, 4>(xproj.data() + kRank, {batch, 1, kState, L}, {L * W, 0, 1, W});
      args.C = ConstView<bf16, 4>(xproj.data() + kRank + kState, {batch, 1, kState, L}, {L * W, 0, 1, W});
    } else {
      args.u = ConstView<bf16, 3>(u.data(), {batch, kDim, L});
      args.delta = ConstView<bf16, 3>(delta.data(), {batch, kDim, L});
      args.z = ConstView<bf16, 3>(xz.data(), {batch, kDim, L});
      args.out = TensorView<bf16, 3>(out.data(), {batch, kDim, L});
      args.B = ConstView<bf16, 4>(xproj.data(), {batch, 1, kState, L});
      args.C = ConstView<bf16, 4>(xproj.data() + batch * kState * L, {batch, 1, kState, L});
    }
    args.A = ConstView<float, 2>(w.A.data(), {kDim, kState});
    args.D = ConstView<float, 1>(w.D.data(), {kDim});
    args.delta_bias = ConstView<float, 1>(w.bias.data(), {kDim});
    args.delta_softplus = true;
  }
};

/// Bytes the scan must move: u, delta, z read, out written, B and C read, A / D / bias read.
double scan_bytes(index_t batch = kBatch, index_t L = kLen) {
  const double act = static_cast<double>(batch) * kDim * L * sizeof(bf16);
  return 4 * act + 2.0 * batch * kState * L * sizeof(bf16) + (kDim * kState + 2.0 * kDim) * sizeof(float);
}

void set_scan_counters(benchmark::State& state, index_t batch = kBatch, index_t L = kLen) {
  using benchmark::Counter;
  const double updates = static_cast<double>(batch) * kDim * L * kState;
  const double bytes = scan_bytes(batch, L);
  moss::bench::set_rates(state, bytes, 0);
  const double it = static_cast<double>(state.iterations());
  state.counters["state_updates_per_second"] = Counter(updates * it, Counter::kIsRate);
  if (batch == kBatch && L == kLen) state.counters["anchor_ratio"] = Counter(kScanAnchorSeconds * it, Counter::kIsRate);
  state.counters["bytes_floor_ratio"] = Counter(bytes / moss::bench::kCopyBytesPerSecond * it, Counter::kIsRate);
  state.counters["exp2_floor_ms"] = updates / kExp2PerSecond * 1e3;
  state.counters["exp2_floor_ratio"] = Counter(updates / kExp2PerSecond * it, Counter::kIsRate);
}

/// Times `launch(gpu, args)` over rotating input sets of shape (batch, 4096, L).
template <class Launch>
void run_scan(benchmark::State& state, bool channel_last, Launch launch, index_t batch = kBatch, index_t L = kLen) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::vector<std::unique_ptr<ScanSet>> sets;
  const int n_sets = moss::bench::rotation_count(scan_bytes(batch, L));
  for (int i = 0; i < n_sets; ++i) sets.push_back(std::make_unique<ScanSet>(gpu, channel_last, 100 + 20 * i, batch, L));
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    launch(gpu, sets[next]->args);
    next = (next + 1) % n_sets;
  });
  set_scan_counters(state, batch, L);
}

/// Strategy S at (batch = range 0, L = range 1, channel-last = range 2), dim 4096, N 16, bf16.
template <class S>
void BM_selective_scan_strategy(benchmark::State& state) {
  const index_t batch = state.range(0), L = state.range(1);
  state.SetLabel(std::string(S::name));
  run_scan(
      state, state.range(2) != 0, [](const moss::Cuda& gpu, const auto& a) { moss::selective_scan<S>(gpu, a); }, batch,
      L);
}

/// The shapes every strategy runs: batch × L, channel-last then channel-first.
void strategy_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "L", "channel_last"});
  for (int channel_last : {1, 0})
    for (auto [batch, L] : {std::pair<int, int>{8, 2048}, {1, 2048}, {1, 8192}}) b->Args({batch, L, channel_last});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_TEMPLATE(BM_selective_scan_strategy, moss::SequentialScan)->Apply(strategy_shapes);
BENCHMARK_TEMPLATE(BM_selective_scan_strategy, moss::ChunkedScan)->Apply(strategy_shapes);
BENCHMARK_TEMPLATE(BM_selective_scan_strategy, moss::AutoScan)->Apply(strategy_shapes);

/// Probes of AutoScan's rule (channel-last): batch 2 and 4 at L 2048 (the sequential kernel fills
/// a quarter and a half of one wave) and batch 1 at L 256 and 512 (short sequences).
void auto_rule_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "L", "channel_last"});
  for (auto [batch, L] : {std::pair<int, int>{2, 2048}, {4, 2048}, {1, 256}, {1, 512}}) b->Args({batch, L, 1});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_TEMPLATE(BM_selective_scan_strategy, moss::SequentialScan)->Apply(auto_rule_shapes);
BENCHMARK_TEMPLATE(BM_selective_scan_strategy, moss::ChunkedScan)->Apply(auto_rule_shapes);

void BM_selective_scan_bf16_channel_last(benchmark::State& state) {
  run_scan(state, true, [](const moss::Cuda& gpu, const auto& a) { moss::selective_scan(gpu, a); });
}
void BM_selective_scan_bf16_channel_first(benchmark::State& state) {
  run_scan(state, false, [](const moss::Cuda& gpu, const auto& a) { moss::selective_scan(gpu, a); });
}
/// Tuning probes at the canonical shape: the N ≤ 64 row of kScanTunings with other group
/// lengths (steps issued together; 4 is the table's choice), and two threads per channel
/// (8 states each, 4 blocks per SM), to compare with the table's one thread per channel.
template <int kStepsPerGroup>
void BM_selective_scan_bf16_channel_last_group(benchmark::State& state) {
  constexpr moss::detail::ScanTuning row{64, 16, 128, 2, 32, 16, kStepsPerGroup};
  run_scan(state, true,
           [](const moss::Cuda& gpu, const auto& a) { moss::detail::scan::launch_scan<bf16, row>(gpu, a); });
}
void BM_selective_scan_bf16_channel_last_two_threads_per_channel(benchmark::State& state) {
  constexpr moss::detail::ScanTuning row{64, 8, 128, 4, 32, 16, 1};
  run_scan(state, true,
           [](const moss::Cuda& gpu, const auto& a) { moss::detail::scan::launch_scan<bf16, row>(gpu, a); });
}

BENCHMARK(BM_selective_scan_bf16_channel_last)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_bf16_channel_first)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_bf16_channel_last_group<1>)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_bf16_channel_last_group<2>)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_bf16_channel_last_group<8>)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_bf16_channel_last_two_threads_per_channel)->UseManualTime()->Unit(benchmark::kMillisecond);

constexpr int kStepsPerGraph = 32;

/// Captures what `queue` queues on `gpu.stream` in a CUDA graph once and times its launches.
template <class F>
void time_graph(benchmark::State& state, const moss::Cuda& gpu, F&& queue) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MOSS_CUDA_CHECK(cudaStreamBeginCapture(gpu.stream, cudaStreamCaptureModeThreadLocal));
  queue();
  MOSS_CUDA_CHECK(cudaStreamEndCapture(gpu.stream, &graph));
  MOSS_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  moss::bench::time_cuda(state, gpu.stream, [&] { MOSS_CUDA_CHECK(cudaGraphLaunch(exec, gpu.stream)); });
  MOSS_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MOSS_CUDA_CHECK(cudaGraphDestroy(graph));
}

/// One input set of the decode step: state, projections' outputs and a layer's weights.
struct StepSet {
  moss::Buffer<float> state;
  moss::Buffer<bf16> u, delta, z, xproj, out;
  ScanWeights w;
  moss::SelectiveScanStepArgs<bf16> args;

  StepSet(const moss::Cuda& gpu, index_t batch, std::uint64_t seed) : w(gpu, kDim, kState, seed + 10) {
    const index_t W = kRank + 2 * kState;
    state = moss::bench::device_randn<float>(gpu, batch * kDim * kState, seed);
    u = moss::bench::device_randn<bf16>(gpu, batch * kDim, seed + 1);
    delta = moss::bench::device_randn<bf16>(gpu, batch * kDim, seed + 2);
    z = moss::bench::device_randn<bf16>(gpu, batch * kDim, seed + 3);
    xproj = moss::bench::device_randn<bf16>(gpu, batch * W, seed + 4);
    out = gpu.alloc<bf16>(batch * kDim);
    args.state = TensorView<float, 3>(state.data(), {batch, kDim, kState});
    args.u = ConstView<bf16, 2>(u.data(), {batch, kDim});
    args.delta = ConstView<bf16, 2>(delta.data(), {batch, kDim});
    args.z = ConstView<bf16, 2>(z.data(), {batch, kDim});
    args.A = ConstView<float, 2>(w.A.data(), {kDim, kState});
    args.B = ConstView<bf16, 3>(xproj.data() + kRank, {batch, 1, kState}, {W, 0, 1});
    args.C = ConstView<bf16, 3>(xproj.data() + kRank + kState, {batch, 1, kState}, {W, 0, 1});
    args.D = ConstView<float, 1>(w.D.data(), {kDim});
    args.delta_bias = ConstView<float, 1>(w.bias.data(), {kDim});
    args.delta_softplus = true;
    args.out = TensorView<bf16, 2>(out.data(), {batch, kDim});
  }
};

void BM_selective_scan_step_bf16(benchmark::State& state) {
  const index_t batch = state.range(0);
  const double anchor = batch == 1 ? 0.047e-3 : (batch == 64 ? 0.040e-3 : 0.055e-3);  // Triton selective_state_update
  const double bytes = batch * kDim * kState * 2.0 * sizeof(float) + 4.0 * batch * kDim * sizeof(bf16) +
                       2.0 * batch * kState * sizeof(bf16) + (kDim * kState + 2.0 * kDim) * sizeof(float);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::vector<std::unique_ptr<StepSet>> sets;
  const int n_sets = moss::bench::rotation_count(bytes);
  for (int i = 0; i < n_sets; ++i) sets.push_back(std::make_unique<StepSet>(gpu, batch, 300 + 20 * i));

  // The launches are far shorter than event timing resolution: time a graph of many.
  time_graph(state, gpu, [&] {
    for (int i = 0; i < kStepsPerGraph; ++i) moss::selective_scan_step(gpu, sets[i % n_sets]->args);
  });

  using benchmark::Counter;
  const double steps = static_cast<double>(state.iterations()) * kStepsPerGraph;
  moss::bench::set_rates(state, bytes * kStepsPerGraph, 0);
  state.counters["seconds_per_step"] = Counter(steps, Counter::kIsRate | Counter::kInvert);
  state.counters["anchor_ratio"] = Counter(anchor * steps, Counter::kIsRate);
  state.counters["bytes_floor_ratio"] = Counter(bytes / moss::bench::kCopyBytesPerSecond * steps, Counter::kIsRate);
}

BENCHMARK(BM_selective_scan_step_bf16)->Arg(1)->Arg(64)->Arg(256)->UseManualTime()->Unit(benchmark::kMicrosecond);

/// The Mamba-130M shape's mixer core for `mamba_step`: ED 1536, N 16, R 48, W 4.
constexpr index_t kStepED = 1536, kStepN = 16, kStepR = 48, kStepW = 4;

/// One layer's weights and caches for `mamba_step` at the 130M shape.
struct MambaStepSet {
  moss::Buffer<bf16> xz, conv_state, conv_weight, conv_bias, x_proj, dt_proj, out;
  moss::Buffer<float> dt_bias, A, D, ssm_state;
  moss::MambaStepArgs<bf16> args;

  MambaStepSet(const moss::Cuda& gpu, index_t batch, std::uint64_t seed) {
    using moss::bench::device_randn;
    xz = device_randn<bf16>(gpu, batch * 2 * kStepED, seed);
    conv_state = device_randn<bf16>(gpu, batch * kStepED * (kStepW - 1), seed + 1);
    conv_weight = device_randn<bf16>(gpu, kStepED * kStepW, seed + 2, 0.5f);
    conv_bias = device_randn<bf16>(gpu, kStepED, seed + 3, 0.5f);
    x_proj = device_randn<bf16>(gpu, (kStepR + 2 * kStepN) * kStepED, seed + 4, 0.03f);
    dt_proj = device_randn<bf16>(gpu, kStepED * kStepR, seed + 5, 0.15f);
    dt_bias = device_randn<float>(gpu, kStepED, seed + 6, 0.5f, -3.0f);
    A = device_randn<float>(gpu, kStepED * kStepN, seed + 7, 0.5f, -2.0f);
    D = device_randn<float>(gpu, kStepED, seed + 8);
    ssm_state = device_randn<float>(gpu, batch * kStepED * kStepN, seed + 9);
    out = gpu.alloc<bf16>(batch * kStepED);
    args.xz = ConstView<bf16, 2>(xz.data(), {batch, 2 * kStepED}, "xz");
    args.conv_state = TensorView<bf16, 3>(conv_state.data(), {batch, kStepED, kStepW - 1}, "conv_state");
    args.conv_weight = ConstView<bf16, 2>(conv_weight.data(), {kStepED, kStepW}, "conv_weight");
    args.conv_bias = ConstView<bf16, 1>(conv_bias.data(), {kStepED}, "conv_bias");
    args.x_proj = ConstView<bf16, 2>(x_proj.data(), {kStepR + 2 * kStepN, kStepED}, "x_proj");
    args.dt_proj = ConstView<bf16, 2>(dt_proj.data(), {kStepED, kStepR}, "dt_proj");
    args.dt_bias = ConstView<float, 1>(dt_bias.data(), {kStepED}, "dt_bias");
    args.A = ConstView<float, 2>(A.data(), {kStepED, kStepN}, "A");
    args.D = ConstView<float, 1>(D.data(), {kStepED}, "D");
    args.ssm_state = TensorView<float, 3>(ssm_state.data(), {batch, kStepED, kStepN}, "ssm_state");
    args.out = TensorView<bf16, 2>(out.data(), {batch, kStepED}, "out");
  }
};

/// The mixer core's decode step (conv step, x_proj, dt_proj, scan step) at the 130M shape, one
/// set per layer of 24, as a CUDA graph of the 24 layers' steps: `fused` (mamba_step's two
/// kernels) or the ops in turn (mamba_step_composed: four ops, two of them cuBLAS GEMMs). The
/// time column is per graph, seconds_per_step per layer.
void BM_mamba_step_bf16(benchmark::State& state) {
  const index_t batch = state.range(0);
  const bool fused = state.range(1) != 0;
  constexpr int kLayers = 24;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::vector<std::unique_ptr<MambaStepSet>> layers;
  for (int i = 0; i < kLayers; ++i) layers.push_back(std::make_unique<MambaStepSet>(gpu, batch, 500 + 20 * i));
  const auto step = [&](const MambaStepSet& l) {
    if (fused)
      moss::mamba_step(gpu, l.args);
    else
      moss::mamba_step_composed(gpu, l.args);
  };
  for (const auto& l : layers) step(*l);  // first use outside the capture (handles, pool, attributes)
  gpu.synchronize();
  time_graph(state, gpu, [&] {
    for (const auto& l : layers) step(*l);
  });
  using benchmark::Counter;
  state.counters["seconds_per_step"] =
      Counter(static_cast<double>(state.iterations()) * kLayers, Counter::kIsRate | Counter::kInvert);
}

BENCHMARK(BM_mamba_step_bf16)
    ->ArgNames({"batch", "fused"})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({16, 0})
    ->Args({16, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
