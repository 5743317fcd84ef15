// bench/ops/ceilings_bench.cu: the two ceilings every results table quotes, measured on the
// machine of the run (docs/performance.md lists the H100 reference values):
//   copy: a 1 GiB device-to-device cudaMemcpyAsync; bytes_per_second counts bytes read plus
//         written (2 GiB per copy). Reference: 3.02 TB/s.
//   gemm: cublasGemmEx bf16 in/out, float32 accumulation, 16384 × 2048 × 8192 (tokens × in →
//         out: a Mamba in_proj at batch 8 × 2048, d_model 2048). Reference: 736 TFLOP/s.
// Each reports its ratio to the reference value, so a table can say how this machine compares.
#include <cmath>
#include <vector>

#include "moss_bench.cuh"

namespace {

using moss::bf16;
using moss::index_t;

void bm_copy(benchmark::State& state) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t bytes = index_t(1) << 30;
  moss::Buffer<unsigned char> src = gpu.alloc<unsigned char>(bytes);
  moss::Buffer<unsigned char> dst = gpu.alloc<unsigned char>(bytes);
  // A copy's speed does not depend on the values; a non-zero byte pattern avoids
  // generating a gigabyte of random numbers on the host for nothing.
  MOSS_CUDA_CHECK(cudaMemsetAsync(src.data(), 0x5a, static_cast<std::size_t>(bytes), stream.get()));
  moss::bench::time_cuda(state, stream.get(), [&] {
    MOSS_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice,
                                    stream.get()));
  });
  const double moved = 2.0 * double(bytes);  // read + written
  moss::bench::set_rates(state, moved, 0);
  state.counters["ratio_to_reference"] = benchmark::Counter(
      moved * double(state.iterations()) / moss::bench::kCopyBytesPerSecond, benchmark::Counter::kIsRate);
}

/// The GEMM's inputs, made once per process (Google Benchmark calls the function several times
/// while it sizes the iteration count; 350 MB of host random numbers each time would dominate).
struct GemmData {
  static constexpr index_t m = 16384, k = 2048, n = 8192;  // rows (tokens), in, out
  int sets = 0;
  std::vector<moss::Buffer<bf16>> xs, ws, ys;
};

const GemmData& gemm_data(const moss::Cuda& gpu) {
  static const GemmData d = [&] {
    GemmData g;
    g.sets = moss::bench::rotation_count(2.0 * double(g.m * g.k + g.n * g.k + g.m * g.n));
    for (int s = 0; s < g.sets; ++s) {
      g.xs.push_back(moss::bench::device_randn<bf16>(gpu, g.m * g.k, 30 + s));
      g.ws.push_back(moss::bench::device_randn<bf16>(gpu, g.n * g.k, 40 + s, 1.0f / std::sqrt(float(g.k))));
      g.ys.push_back(gpu.alloc<bf16>(g.m * g.n));
    }
    return g;
  }();
  return d;
}

void bm_gemm(benchmark::State& state) {
  // Constructed before gemm_data's buffers, so destroyed after their stream-ordered frees.
  static moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const GemmData& d = gemm_data(gpu);
  const float alpha = 1.0f, beta = 0.0f;
  int next = 0;
  moss::bench::time_cuda(state, stream.get(), [&] {
    const int s = next++ % d.sets;
    // Row-major y (m, n) = x (m, k) · Wᵀ is column-major Y (n, m) = Wᵀ · X, W seen as (k, n).
    MOSS_CUBLAS_CHECK(cublasGemmEx(gpu.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(d.n), int(d.m), int(d.k), &alpha,
                                   d.ws[s].data(), CUDA_R_16BF, int(d.k), d.xs[s].data(), CUDA_R_16BF, int(d.k), &beta,
                                   d.ys[s].data(), CUDA_R_16BF, int(d.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  const double flops = 2.0 * double(d.m) * double(d.k) * double(d.n);
  moss::bench::set_rates(state, 2.0 * double(d.m * d.k + d.n * d.k + d.m * d.n), flops);
  state.counters["ratio_to_reference"] =
      benchmark::Counter(flops * double(state.iterations()) / moss::bench::kBf16GemmFlops, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(bm_copy)->Name("ceiling/copy_d2d_1GiB")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_gemm)->Name("ceiling/cublasGemmEx_bf16_16384x2048x8192")->UseManualTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
