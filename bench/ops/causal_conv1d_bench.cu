// CUDA benchmarks of causal_conv1d and causal_conv1d_step.
//
// Canonical shape (docs/performance.md): batch 8, dim 4096, L 2048, W 4, SiLU, bias, bf16; floor
// 268 MB / 3.0 TB/s = 0.089 ms, anchor `causal-conv1d` 0.098 ms. Each iteration launches a CUDA
// graph of kOpsPerGraph calls (rotating input sets larger than L2), so the event timing sees
// GPU time rather than the host's validation and launch latency; the counters are per call:
//   seconds_per_op   time of one call
//   floor_fraction   floor time / measured time (1 = the copy bandwidth of docs/performance.md)
//   anchor_speedup   anchor time / measured time (> 1: faster than `causal-conv1d`; bf16 only)
// bytes_per_second and flops are rates; floor_ms (from set_rates) is per iteration, that is per
// kOpsPerGraph calls. The label prints the launch plan. `BM_causal_conv1d_steps` sweeps the
// channel-last kernel's run length (tuning.cuh) at the canonical shape.
#include <benchmark/benchmark.h>

#include <type_traits>
#include <vector>

#include "moss/ops/causal_conv1d/cuda.cuh"
#include "moss_bench.cuh"

namespace {

using moss::index_t;

constexpr index_t kBatch = 8, kDim = 4096, kSeqlen = 2048, kWidth = 4;
constexpr double kAnchorSeconds = 0.098e-3;  // causal-conv1d forward, W 4, SiLU, bf16, H100
constexpr int kOpsPerGraph = 20;             // ~2 ms of work per launch: host latency is < 0.5 %
constexpr int kStepsPerGraph = 100;

/// How x and out sit in memory.
enum class Layout {
  channel_last,   // (batch, L, dim) buffers
  channel_first,  // (batch, dim, L) buffers
  in_proj_slice,  // x is the first half of a (batch, L, 2·dim) in_proj output; out (batch, L, dim)
};

/// A CUDA graph of `count` calls of `op(i)`, captured on `stream`.
class Graph {
 public:
  template <class Op>
  Graph(cudaStream_t stream, int count, Op&& op) : stream_(stream) {
    MOSS_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < count; ++i) op(i);
    cudaGraph_t graph = nullptr;
    MOSS_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    MOSS_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph, 0));
    MOSS_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  ~Graph() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch() const { MOSS_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaStream_t stream_;
  cudaGraphExec_t exec_ = nullptr;
};

/// Per-call counters for a benchmark whose iterations run `ops` calls of `bytes` each.
void report(benchmark::State& state, int ops, double bytes, double flops, double anchor_seconds) {
  using benchmark::Counter;
  const double calls = double(ops) * double(state.iterations());
  moss::bench::set_rates(state, bytes * ops, flops * ops);
  state.counters["seconds_per_op"] = Counter(calls, Counter::kIsRate | Counter::kInvert);
  state.counters["floor_fraction"] = Counter(bytes / moss::bench::kCopyBytesPerSecond * calls, Counter::kIsRate);
  if (anchor_seconds > 0) state.counters["anchor_speedup"] = Counter(anchor_seconds * calls, Counter::kIsRate);
}

/// The full op at the canonical shape in `layout`; `steps_per_thread` > 0 forces the
/// channel-last kernel's run length.
template <class T>
void BM_causal_conv1d(benchmark::State& state, Layout layout, index_t steps_per_thread) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t batch = kBatch, dim = kDim, seqlen = kSeqlen, width = kWidth;
  const index_t x_row = layout == Layout::in_proj_slice ? 2 * dim : dim;
  const double bytes = double(sizeof(T)) * (2.0 * batch * dim * seqlen + dim * (width + 1));
  const double flops = double(batch) * dim * seqlen * (2.0 * width + 5);  // taps, bias, SiLU
  const int sets = moss::bench::rotation_count(bytes);

  const auto w = moss::bench::device_randn<T>(gpu, dim * width, 1, 0.5f);
  const auto bias = moss::bench::device_randn<T>(gpu, dim, 2);
  std::vector<moss::Buffer<T>> xs, outs;
  std::vector<moss::CausalConv1dArgs<T>> args(sets);
  for (int s = 0; s < sets; ++s) {
    xs.push_back(moss::bench::device_randn<T>(gpu, batch * seqlen * x_row, 10 + s));
    outs.push_back(gpu.alloc<T>(batch * seqlen * dim));
    auto& a = args[s];
    if (layout == Layout::channel_first) {
      a.x = moss::ConstView<T, 3>(xs[s].data(), {batch, dim, seqlen}, {dim * seqlen, seqlen, 1}, "x");
      a.out = moss::TensorView<T, 3>(outs[s].data(), {batch, dim, seqlen}, {dim * seqlen, seqlen, 1}, "out");
    } else {
      a.x = moss::ConstView<T, 3>(xs[s].data(), {batch, dim, seqlen}, {seqlen * x_row, 1, x_row}, "x");
      a.out = moss::TensorView<T, 3>(outs[s].data(), {batch, dim, seqlen}, {seqlen * dim, 1, dim}, "out");
    }
    a.weight = moss::ConstView<T, 2>(w.data(), {dim, width}, "weight");
    a.bias = moss::ConstView<T, 1>(bias.data(), {dim}, "bias");
    a.silu = true;
    moss::validate(a, "causal_conv1d");
  }
  // Planned outside the capture: the plan asks the runtime for the kernel's occupancy.
  const auto plan = moss::detail::plan_causal_conv1d(args[0], steps_per_thread);
  state.SetLabel(moss::cat(plan, ", ", kOpsPerGraph, " calls per iteration"));
  const Graph graph(gpu.stream, kOpsPerGraph,
                    [&](int i) { moss::detail::run_causal_conv1d(gpu, args[i % sets], plan); });
  moss::bench::time_cuda(state, gpu.stream, [&] { graph.launch(); });
  report(state, kOpsPerGraph, bytes, flops, std::is_same_v<T, moss::bf16> ? kAnchorSeconds : 0.0);
}

void BM_causal_conv1d_bf16(benchmark::State& state, Layout layout) { BM_causal_conv1d<moss::bf16>(state, layout, 0); }
void BM_causal_conv1d_f32(benchmark::State& state, Layout layout) { BM_causal_conv1d<float>(state, layout, 0); }
void BM_causal_conv1d_steps(benchmark::State& state) {
  BM_causal_conv1d<moss::bf16>(state, Layout::channel_last, state.range(0));
}

/// One decode step per sequence at dim 4096, W 4, SiLU, bias; state (batch, dim, 3) contiguous.
template <class T>
void BM_causal_conv1d_step(benchmark::State& state) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t batch = state.range(0), dim = kDim, width = kWidth;
  const double bytes = double(sizeof(T)) * (batch * dim * (2.0 * (width - 1) + 2) + dim * (width + 1));
  const double flops = double(batch) * dim * (2.0 * width + 5);
  const int sets = moss::bench::rotation_count(bytes);

  const auto w = moss::bench::device_randn<T>(gpu, dim * width, 1, 0.5f);
  const auto bias = moss::bench::device_randn<T>(gpu, dim, 2);
  std::vector<moss::Buffer<T>> states, xs, outs;
  std::vector<moss::CausalConv1dStepArgs<T>> args(sets);
  for (int s = 0; s < sets; ++s) {
    states.push_back(moss::bench::device_randn<T>(gpu, batch * dim * (width - 1), 10 + s));
    xs.push_back(moss::bench::device_randn<T>(gpu, batch * dim, 100 + s));
    outs.push_back(gpu.alloc<T>(batch * dim));
    auto& a = args[s];
    a.state = moss::TensorView<T, 3>(states[s].data(), {batch, dim, width - 1}, "state");
    a.x = moss::ConstView<T, 2>(xs[s].data(), {batch, dim}, "x");
    a.weight = moss::ConstView<T, 2>(w.data(), {dim, width}, "weight");
    a.bias = moss::ConstView<T, 1>(bias.data(), {dim}, "bias");
    a.silu = true;
    a.out = moss::TensorView<T, 2>(outs[s].data(), {batch, dim}, "out");
  }
  state.SetLabel(moss::cat(kStepsPerGraph, " steps per iteration"));
  const Graph graph(gpu.stream, kStepsPerGraph, [&](int i) { moss::causal_conv1d_step(gpu, args[i % sets]); });
  moss::bench::time_cuda(state, gpu.stream, [&] { graph.launch(); });
  report(state, kStepsPerGraph, bytes, flops, 0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_causal_conv1d_bf16, channel_last, Layout::channel_last)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_causal_conv1d_bf16, in_proj_slice, Layout::in_proj_slice)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_causal_conv1d_bf16, channel_first, Layout::channel_first)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_causal_conv1d_f32, channel_last, Layout::channel_last)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_causal_conv1d_steps)
    ->ArgName("steps_per_thread")
    ->Arg(16)
    ->Arg(32)
    ->Arg(64)
    ->Arg(128)
    ->Arg(205)
    ->Arg(256)
    ->Arg(512)
    ->Arg(2048)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_causal_conv1d_step<moss::bf16>)
    ->ArgName("batch")
    ->Arg(1)
    ->Arg(64)
    ->Arg(256)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
