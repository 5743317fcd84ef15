// CUDA benchmarks of the backward ops of the training path: selective_scan_backward and
// causal_conv1d_backward, each at the canonical shape of docs/performance.md and in the layout
// the Mamba layer gives it (MambaCore::backward in moss/layers/mamba.hpp).
//
// selective_scan_backward: batch 8, dim 4096, L 2048, N 16; bf16 u, delta, z, B, C, dout; float
// A (dim, N), D, delta_bias; softplus on; B and C grouped 1, (batch, 1, N, L). Channel-last: u,
// delta, dout (batch, dim, L) views of (batch, L, dim) buffers; z the second half of a (batch, L,
// 2·dim) in_proj output; B and C columns of a (batch, L, R + 2N) x_proj output, R = 128. Every
// gradient the layer asks for: du, ddelta, dz (into the second half of a dxz buffer), dB and dC
// (into the columns of a dx_dbl buffer), dA, dD, ddelta_bias. Anchor: mamba_ssm's backward,
// 4.79 ms on the H100; goal ≤ 1.9 ms. `states_per_warp:2` times the warp-per-state kernel with two
// states per warp (`states_per_warp:0` is the plan's choice); `kernel_checkpoints:1` with its own
// checkpoint pass instead of the forward scan kernel's states (`:0`, the plan's).
//
// causal_conv1d_backward: batch 8, dim 4096, L 2048, W 4, SiLU, bias, bf16, channel-last with x
// the first half of a (batch, L, 2·dim) in_proj output and dx written there too (as the layer
// does); dout (batch, L, dim); dweight and dbias in float. Anchor: causal-conv1d's backward,
// 0.282 ms on the H100; goal ≤ 0.2 ms. `load_steps:1|8` times the kernel with the rows of 1 or 8
// timesteps loaded together (`load_steps:0` is the op's choice, 4).
//
// Both ops queue their kernels without a host synchronisation but take scratch from the
// backend's pool, so instead of capturing them in a CUDA graph each iteration queues
// kCallsPerIteration calls between its two events: the host runs ahead of the GPU after the first
// call, and the events see GPU time. Counters are per call:
//   seconds_per_op   time of one call
//   anchor_speedup   anchor time / measured time (> 1: faster than the anchor)
//   goal_fraction    goal time / measured time (≥ 1: the goal is met)
//   floor_fraction   floor time / measured time (floor: the op's minimum bytes at the copy bandwidth)
// bytes_per_second and flops are rates; floor_ms (from set_rates) is per iteration.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "moss/ops/causal_conv1d_backward.hpp"
#include "moss/ops/selective_scan_backward.hpp"
#include "moss_bench.cuh"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr index_t kBatch = 8, kDim = 4096, kLen = 2048, kState = 16, kRank = 128, kWidth = 4;

constexpr double kScanAnchorSeconds = 4.79e-3;  // mamba_ssm selective scan backward, H100
constexpr double kScanGoalSeconds = 1.9e-3;
constexpr double kConvAnchorSeconds = 0.282e-3;  // causal-conv1d backward, W 4, SiLU, bf16, H100
constexpr double kConvGoalSeconds = 0.2e-3;

constexpr int kScanCallsPerIteration = 2;   // ~4 to 10 ms of work per iteration
constexpr int kConvCallsPerIteration = 10;  // ~3 ms of work per iteration

/// Per-call counters for a benchmark whose iterations run `calls` calls of `bytes` and `flops` each.
void report(benchmark::State& state, int calls, double bytes, double flops, double anchor_seconds,
            double goal_seconds) {
  using benchmark::Counter;
  const double total = double(calls) * double(state.iterations());
  moss::bench::set_rates(state, bytes * calls, flops * calls);
  state.counters["seconds_per_op"] = Counter(total, Counter::kIsRate | Counter::kInvert);
  state.counters["anchor_speedup"] = Counter(anchor_seconds * total, Counter::kIsRate);
  state.counters["goal_fraction"] = Counter(goal_seconds * total, Counter::kIsRate);
  state.counters["floor_fraction"] = Counter(bytes / moss::bench::kCopyBytesPerSecond * total, Counter::kIsRate);
}

/// The inputs and gradient outputs of one selective_scan_backward call, laid out as
/// MambaCore::backward lays them out.
struct ScanBackwardSet {
  moss::Buffer<bf16> v, delta, xz, x_dbl, dy;  // forward inputs and the output's gradient
  moss::Buffer<bf16> dv, ddelta, dxz, dx_dbl;  // activation gradients
  moss::Buffer<float> A, D, delta_bias;        // parameters
  moss::Buffer<float> dA, dD, ddelta_bias;     // parameter gradients
  moss::SelectiveScanBackwardArgs<bf16> args;

  ScanBackwardSet(const moss::Cuda& gpu, std::uint64_t seed) {
    const index_t batch = kBatch, ED = kDim, L = kLen, N = kState, R = kRank;
    const index_t XP = R + 2 * N, tokens = batch * L;
    v = moss::bench::device_randn<bf16>(gpu, tokens * ED, seed);
    delta = moss::bench::device_randn<bf16>(gpu, tokens * ED, seed + 1);
    xz = moss::bench::device_randn<bf16>(gpu, tokens * 2 * ED, seed + 2);
    x_dbl = moss::bench::device_randn<bf16>(gpu, tokens * XP, seed + 3);
    dy = moss::bench::device_randn<bf16>(gpu, tokens * ED, seed + 4);
    dv = gpu.alloc<bf16>(tokens * ED);
    ddelta = gpu.alloc<bf16>(tokens * ED);
    dxz = gpu.alloc<bf16>(tokens * 2 * ED);
    dx_dbl = gpu.alloc<bf16>(tokens * XP);

    // A = -(n + 1) (S4D-real, as the layer's init), D ~ N(0, 1), Δ ≈ softplus(-3) ≈ 0.05.
    std::vector<float> a(static_cast<std::size_t>(ED * N));
    for (index_t d = 0; d < ED; ++d)
      for (index_t n = 0; n < N; ++n) a[static_cast<std::size_t>(d * N + n)] = -static_cast<float>(n + 1);
    A = gpu.alloc<float>(ED * N);
    MOSS_CUDA_CHECK(cudaMemcpy(A.data(), a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
    D = moss::bench::device_randn<float>(gpu, ED, seed + 5);
    delta_bias = moss::bench::device_randn<float>(gpu, ED, seed + 6, 0.5f, -3.0f);
    dA = gpu.alloc<float>(ED * N);
    dD = gpu.alloc<float>(ED);
    ddelta_bias = gpu.alloc<float>(ED);

    const moss::Extents<3> bel{batch, ED, L};
    const moss::Extents<3> cl{L * ED, 1, ED};           // channel-last strides of a (tokens, ED) buffer
    const moss::Extents<3> cl2{L * 2 * ED, 1, 2 * ED};  // ... of a half of a (tokens, 2·ED) buffer
    auto& s = args;
    s.u = ConstView<bf16, 3>(v.data(), bel, cl, "conv_out");
    s.delta = ConstView<bf16, 3>(delta.data(), bel, cl, "delta");
    s.A = ConstView<float, 2>(A.data(), {ED, N}, "A");
    s.B = ConstView<bf16, 4>(x_dbl.data() + R, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "B");
    s.C = ConstView<bf16, 4>(x_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "C");
    s.D = ConstView<float, 1>(D.data(), {ED}, "D");
    s.z = ConstView<bf16, 3>(xz.data() + ED, bel, cl2, "z");
    s.delta_bias = ConstView<float, 1>(delta_bias.data(), {ED}, "delta_bias");
    s.delta_softplus = true;
    s.dout = ConstView<bf16, 3>(dy.data(), bel, cl, "dy");
    s.du = TensorView<bf16, 3>(dv.data(), bel, cl, "d conv_out");
    s.ddelta = TensorView<bf16, 3>(ddelta.data(), bel, cl, "d delta");
    s.dA = TensorView<float, 2>(dA.data(), {ED, N}, "dA");
    s.dB = TensorView<bf16, 4>(dx_dbl.data() + R, {batch, 1, N, L}, {L * XP, N, 1, XP}, "dB");
    s.dC = TensorView<bf16, 4>(dx_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, N, 1, XP}, "dC");
    s.dD = TensorView<float, 1>(dD.data(), {ED}, "dD");
    s.dz = TensorView<bf16, 3>(dxz.data() + ED, bel, cl2, "dz");
    s.ddelta_bias = TensorView<float, 1>(ddelta_bias.data(), {ED}, "d delta_bias");
    s.accumulate = false;
    moss::validate(s, "selective_scan_backward");
  }
};

/// selective_scan_backward at the canonical shape, channel-last as in the Mamba layer, every
/// gradient the layer asks for.
void BM_selective_scan_backward_bf16(benchmark::State& state) {
  const int states_per_warp = static_cast<int>(state.range(0));  // 0: the plan's (1); 2: two per warp
  const bool kernel_checkpoints = state.range(1) != 0;           // the kernel's own checkpoint pass
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const double act = double(kBatch) * kDim * kLen * sizeof(bf16);   // one (batch, dim, L) tensor
  const double bc = double(kBatch) * kState * kLen * sizeof(bf16);  // one of B, C, dB, dC
  const double params = (double(kDim) * kState + 2.0 * kDim) * sizeof(float);
  // Read u, delta, z, dout, B, C, A, D, delta_bias; write du, ddelta, dz, dB, dC, dA, dD, ddelta_bias.
  const double bytes = 7 * act + 4 * bc + 2 * params;
  const int n_sets = moss::bench::rotation_count(bytes);
  std::vector<std::unique_ptr<ScanBackwardSet>> sets;
  for (int i = 0; i < n_sets; ++i) sets.push_back(std::make_unique<ScanBackwardSet>(gpu, 100 + 20 * i));
  state.SetLabel(moss::cat(kScanCallsPerIteration, " calls per iteration, ", n_sets, " input sets"));
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    for (int c = 0; c < kScanCallsPerIteration; ++c) {
      if (states_per_warp > 0 || kernel_checkpoints)
        moss::detail::scan::run_backward(gpu, sets[next]->args, 0, states_per_warp, kernel_checkpoints);
      else
        moss::selective_scan_backward(gpu, sets[next]->args);
      next = (next + 1) % n_sets;
    }
  });
  report(state, kScanCallsPerIteration, bytes, 0, kScanAnchorSeconds, kScanGoalSeconds);
  const double updates = double(kBatch) * kDim * kLen * kState;
  state.counters["state_updates_per_second"] =
      benchmark::Counter(updates * kScanCallsPerIteration * double(state.iterations()), benchmark::Counter::kIsRate);
}

/// causal_conv1d_backward at the canonical shape, x the first half of the in_proj output (as in
/// the Mamba layer), dx written into the first half of a dxz buffer, dweight and dbias in float.
/// `load_steps`: timesteps whose rows a thread loads together (0: the op's choice; 1, 4, 8).
void BM_causal_conv1d_backward_bf16(benchmark::State& state) {
  const int load_steps = static_cast<int>(state.range(0));
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t batch = kBatch, dim = kDim, L = kLen, W = kWidth;
  // Read x and dout, write dx; read weight and bias, write float dweight and dbias.
  const double bytes = 3.0 * batch * dim * L * sizeof(bf16) + dim * (W + 1) * (sizeof(bf16) + sizeof(float));
  // Per output: recompute the pre-activation (2W + 1) and SiLU' (~6), dx (2W), dweight / dbias (2W + 1).
  const double flops = double(batch) * dim * L * (6.0 * W + 8);
  const int n_sets = moss::bench::rotation_count(bytes);

  const auto weight = moss::bench::device_randn<bf16>(gpu, dim * W, 1, 0.5f);
  const auto bias = moss::bench::device_randn<bf16>(gpu, dim, 2);
  auto dweight = gpu.alloc<float>(dim * W);
  auto dbias = gpu.alloc<float>(dim);
  const moss::Extents<3> bel{batch, dim, L};
  const moss::Extents<3> cl{L * dim, 1, dim};           // channel-last strides of a (batch, L, dim) buffer
  const moss::Extents<3> cl2{L * 2 * dim, 1, 2 * dim};  // ... of the first half of a (batch, L, 2·dim) buffer
  std::vector<moss::Buffer<bf16>> xzs, douts, dxzs;
  std::vector<moss::CausalConv1dBackwardArgs<bf16>> args(static_cast<std::size_t>(n_sets));
  for (int s = 0; s < n_sets; ++s) {
    xzs.push_back(moss::bench::device_randn<bf16>(gpu, batch * L * 2 * dim, 10 + s));
    douts.push_back(moss::bench::device_randn<bf16>(gpu, batch * L * dim, 100 + s));
    dxzs.push_back(gpu.alloc<bf16>(batch * L * 2 * dim));
    auto& a = args[static_cast<std::size_t>(s)];
    a.x = ConstView<bf16, 3>(xzs.back().data(), bel, cl2, "u");
    a.weight = ConstView<bf16, 2>(weight.data(), {dim, W}, "weight");
    a.bias = ConstView<bf16, 1>(bias.data(), {dim}, "bias");
    a.silu = true;
    a.dout = ConstView<bf16, 3>(douts.back().data(), bel, cl, "d conv_out");
    a.dx = TensorView<bf16, 3>(dxzs.back().data(), bel, cl2, "du");
    a.dweight = TensorView<float, 2>(dweight.data(), {dim, W}, "dweight");
    a.dbias = TensorView<float, 1>(dbias.data(), {dim}, "dbias");
    a.accumulate = false;
    moss::validate(a, "causal_conv1d_backward");
  }
  state.SetLabel(moss::cat(kConvCallsPerIteration, " calls per iteration, ", n_sets, " input sets"));
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    for (int c = 0; c < kConvCallsPerIteration; ++c) {
      moss::detail::run_conv1d_backward(gpu, args[static_cast<std::size_t>(next)], load_steps);
      next = (next + 1) % n_sets;
    }
  });
  report(state, kConvCallsPerIteration, bytes, flops, kConvAnchorSeconds, kConvGoalSeconds);
}

}  // namespace

BENCHMARK(BM_selective_scan_backward_bf16)
    ->ArgNames({"states_per_warp", "kernel_checkpoints"})
    ->Args({0, 0})
    ->Args({2, 0})
    ->Args({0, 1})
    ->Args({2, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_causal_conv1d_backward_bf16)
    ->ArgName("load_steps")
    ->Arg(0)
    ->Arg(1)
    ->Arg(8)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
