// bench/ops/linear_bench.cu: `linear` (cuBLASLt) on the four GEMMs of a Mamba layer at the
// layer shape of docs/performance.md: batch 8 × seqlen 2048 = 16384 tokens, d_model 2048
// (d_inner 4096, dt_rank 128, d_state 16), bf16 in and out, float32 accumulation.
//
// Counters: flops (FLOP/s), bytes_per_second (each operand read or written once), and
// ratio_to_gemm_ceiling, the achieved FLOP/s over the 736 TFLOP/s bf16 cublasGemmEx ceiling
// (ceilings_bench measures it again on the machine of the run).
#include <cmath>
#include <compare>
#include <map>
#include <vector>

#include "moss/ops/linear/cuda.cuh"
#include "moss_bench.cuh"

namespace {

using moss::bf16;
using moss::index_t;

/// One projection: y (rows, out) = x (rows, in) · Wᵀ, x read with row stride x_ld.
struct Projection {
  index_t rows, in, out;
  index_t x_ld;
  auto operator<=>(const Projection&) const = default;
};

/// The stream every benchmark here runs on (buffers are allocated and freed on it).
const moss::Cuda& bench_gpu() {
  static moss::CudaStream stream;
  static const moss::Cuda gpu{stream.get()};
  return gpu;
}

/// Rotating input sets of one projection, made once per process: Google Benchmark calls a
/// benchmark function several times while it sizes the iteration count, and generating
/// hundreds of MB of random numbers each time would cost more than the measurement.
struct ProjectionData {
  int sets = 0;
  std::vector<moss::Buffer<bf16>> xs, ws, ys;
};

ProjectionData& projection_data(const Projection& p) {
  static std::map<Projection, ProjectionData> cache;
  auto [it, made] = cache.try_emplace(p);
  ProjectionData& d = it->second;
  if (!made) return d;
  const moss::Cuda& gpu = bench_gpu();
  d.sets = moss::bench::rotation_count(2.0 * double(p.rows * p.x_ld + p.out * p.in + p.rows * p.out));
  for (int s = 0; s < d.sets; ++s) {
    d.xs.push_back(moss::bench::device_randn<bf16>(gpu, p.rows * p.x_ld, 10 + s));
    // Weights at the scale of a trained projection (≈ 1/sqrt(in)) keep outputs O(1).
    d.ws.push_back(moss::bench::device_randn<bf16>(gpu, p.out * p.in, 20 + s, 1.0f / std::sqrt(float(p.in))));
    d.ys.push_back(gpu.alloc<bf16>(p.rows * p.out));
  }
  return d;
}

void bm_linear(benchmark::State& state, Projection p) {
  const moss::Cuda& gpu = bench_gpu();
  ProjectionData& d = projection_data(p);
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    const int s = next++ % d.sets;
    moss::LinearArgs<bf16> a;
    a.x = moss::ConstView<bf16, 2>(d.xs[s].data(), {p.rows, p.in}, {p.x_ld, 1}, "x");
    a.weight = moss::ConstView<bf16, 2>(d.ws[s].data(), {p.out, p.in}, "weight");
    a.y = moss::TensorView<bf16, 2>(d.ys[s].data(), {p.rows, p.out}, "y");
    moss::linear(gpu, a);
  });
  const double flops = moss::LinearShape{p.rows, p.in, p.out}.flops();
  const double bytes = 2.0 * double(p.rows * p.in + p.out * p.in + p.rows * p.out);
  moss::bench::set_rates(state, bytes, flops);
  state.counters["ratio_to_gemm_ceiling"] =
      benchmark::Counter(flops * double(state.iterations()) / moss::bench::kBf16GemmFlops, benchmark::Counter::kIsRate);
  state.counters["rotation_sets"] = d.sets;
}

constexpr index_t kTokens = 8 * 2048;

}  // namespace

BENCHMARK_CAPTURE(bm_linear, in_proj_16384x2048to8192, Projection{kTokens, 2048, 8192, 2048})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_linear, out_proj_16384x4096to2048, Projection{kTokens, 4096, 2048, 4096})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_linear, x_proj_16384x4096to160, Projection{kTokens, 4096, 160, 4096})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// dt_proj reads the first dt_rank = 128 columns of x_proj's (rows, 160) output in place.
BENCHMARK_CAPTURE(bm_linear, dt_proj_16384x128to4096, Projection{kTokens, 128, 4096, 160})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
