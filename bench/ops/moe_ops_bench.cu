// CUDA benchmarks of the sparse-layer ops at the expert shape of docs/performance.md: 16384
// tokens, 8 experts, top-1, 2048 → 8192, bf16.
//
// grouped_linear: timed against a dense cublasGemmEx of the same FLOPs (16384 × 2048 × 8192)
// measured in the same benchmark, for balanced segments (2048 rows each) and skewed ones (half
// the tokens on expert 0, the rest spread over the others). Counters: fraction_of_dense (dense
// time / grouped time; docs/performance.md's bar is ≥ 0.80 now, ≥ 0.95 later), dense_ms, TFLOP/s.
// `_with_offset_read` includes the device → host copy of the offsets and its synchronisation
// (what a layer pays once per routing decision); `_sync_free` is moss's own grouped GEMM reading
// the offsets on the device (`resident_offsets`, the tiled kernel), which needs no synchronisation.
// grouped_linear_backward: dX and dW (`dw` 1) at the same shape and segments, by the segment GEMMs
// (cuBLAS) and by moss's sync-free kernels; fraction_of_dense against the same dense forward GEMM
// (equal FLOPs).
// grouped_resident_small: the two resident kernels (matrix-vector, tiled) at decode-sized row
// counts, 8 experts, 768 → 1536 (the Mamba-130M shape's in_proj): where `automatic` switches.
//
// router_permute_gather: route (Top1Switch, float32 logits) + permute_plan + gather_rows, no host
// synchronisation; anchor PyTorch 0.25 ms, goal ≤ 0.08 ms (the floor: x read twice and written
// once, ≈ 0.067 ms at 3 TB/s). `_planned_workspace`: the same with permute_plan's scratch
// planned once by the caller (the workspace contract) instead of taken from the pool per call.
// `_route_only`, `_permute_plan_only`, `_gather_only`: each op of the planned pipeline alone.
// `_4_tokens_per_warp`: the router's logits kernel with a warp taking 4 tokens at a time (each
// weight element read from shared memory serves 4 tokens), alone and in the planned pipeline.
//
// sinkhorn_router: SinkhornTop1 in training mode as the layer runs it, route_logits + sinkhorn
// (at most 100 rounds, one block) + route_select, at the same shape.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moss/ops/grouped_linear/cuda.cuh"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/permute/cuda.cuh"
#include "moss/ops/router/cuda.cuh"
#include "moss/ops/sinkhorn/cuda.cuh"
#include "moss_bench.cuh"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

constexpr index_t kTokens = 16384, kExperts = 8, kIn = 2048, kOut = 8192;

/// Row offsets of the expert segments: balanced, or half the rows on expert 0.
std::vector<std::int32_t> segment_offsets(bool skewed) {
  std::vector<std::int32_t> off(kExperts + 1, 0);
  if (!skewed) {
    for (index_t e = 0; e < kExperts; ++e) off[e + 1] = static_cast<std::int32_t>((e + 1) * kTokens / kExperts);
  } else {
    off[1] = kTokens / 2;
    const index_t rest = kTokens - kTokens / 2;
    for (index_t e = 1; e < kExperts; ++e)
      off[e + 1] = static_cast<std::int32_t>(kTokens / 2 + e * rest / (kExperts - 1));
  }
  return off;
}

/// The dense reference: one cublasGemmEx over all tokens with one expert's weight shape.
double dense_gemm_ms(const moss::Cuda& gpu, const moss::Buffer<bf16>& x, const moss::Buffer<bf16>& w,
                     moss::Buffer<bf16>& y) {
  moss::LinearArgs<bf16> l{ConstView<bf16, 2>(x.data(), {kTokens, kIn}),
                           ConstView<bf16, 2>(w.data(), {kOut, kIn}),
                           {},
                           TensorView<bf16, 2>(y.data(), {kTokens, kOut})};
  return moss::bench::median_ms(gpu.stream, 20, [&] { moss::detail::linear_gemm_ex(gpu, l); });
}

/// The expert shape's inputs: x, the stacked weights, an output y, the segment offsets (host and
/// device), and the dense reference's time on the same buffers.
struct ExpertGemmInputs {
  moss::Buffer<bf16> x, w, y;
  std::vector<std::int32_t> host_off;
  moss::Buffer<std::int32_t> dev_off;
  double dense_ms;
  ExpertGemmInputs(const moss::Cuda& gpu, bool skewed)
      : x(moss::bench::device_randn<bf16>(gpu, kTokens * kIn, 1, 0.5f)),
        w(moss::bench::device_randn<bf16>(gpu, kExperts * kOut * kIn, 2, 0.02f)),
        y(gpu.alloc<bf16>(kTokens * kOut)),
        host_off(segment_offsets(skewed)),
        dev_off(moss::upload(gpu, host_off.data(), kExperts + 1)),
        dense_ms(dense_gemm_ms(gpu, x, w, y)) {}
};

/// The counters of a GEMM of the expert shape's FLOPs: flops, dense_ms, and fraction_of_dense
/// (dense time / this time: a rate counter of dense seconds per iteration).
void set_gemm_counters(benchmark::State& state, double dense_ms) {
  using benchmark::Counter;
  const double it = static_cast<double>(state.iterations());
  state.counters["flops"] = Counter(2.0 * kTokens * kIn * kOut * it, Counter::kIsRate);
  state.counters["dense_ms"] = dense_ms;
  state.counters["fraction_of_dense"] = Counter(dense_ms * 1e-3 * it, Counter::kIsRate);
}

/// How the timed call gets its offsets.
enum class OffsetMode { host, read, sync_free };

void run_grouped(benchmark::State& state, bool skewed, OffsetMode mode) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  ExpertGemmInputs io(gpu, skewed);

  moss::GroupedLinearArgs<bf16> g;
  g.x = ConstView<bf16, 2>(io.x.data(), {kTokens, kIn});
  g.weight = ConstView<bf16, 3>(io.w.data(), {kExperts, kOut, kIn});
  g.offsets = ConstView<std::int32_t, 1>(io.dev_off.data(), {kExperts + 1});
  g.host_offsets = mode == OffsetMode::host ? io.host_off.data() : nullptr;
  g.resident_offsets = mode == OffsetMode::sync_free;
  g.resident_kernel = moss::ResidentKernel::tiled;
  g.y = TensorView<bf16, 2>(io.y.data(), {kTokens, kOut});
  moss::bench::time_cuda(state, gpu.stream, [&] { moss::grouped_linear(gpu, g); });

  set_gemm_counters(state, io.dense_ms);
}

void BM_grouped_linear_bf16_balanced(benchmark::State& s) { run_grouped(s, false, OffsetMode::host); }
void BM_grouped_linear_bf16_skewed(benchmark::State& s) { run_grouped(s, true, OffsetMode::host); }
void BM_grouped_linear_bf16_balanced_with_offset_read(benchmark::State& s) { run_grouped(s, false, OffsetMode::read); }
void BM_grouped_linear_bf16_skewed_with_offset_read(benchmark::State& s) { run_grouped(s, true, OffsetMode::read); }
void BM_grouped_linear_bf16_balanced_sync_free(benchmark::State& s) { run_grouped(s, false, OffsetMode::sync_free); }
void BM_grouped_linear_bf16_skewed_sync_free(benchmark::State& s) { run_grouped(s, true, OffsetMode::sync_free); }
BENCHMARK(BM_grouped_linear_bf16_balanced)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_bf16_skewed)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_bf16_balanced_with_offset_read)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_bf16_skewed_with_offset_read)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_bf16_balanced_sync_free)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_bf16_skewed_sync_free)->UseManualTime()->Unit(benchmark::kMillisecond);

/// grouped_linear_backward at the same shape: the input gradient (dX = dY · W_e, `dw` 0) or
/// the weight gradient (dW_e = dY_eᵀ · X_e in float, `dw` 1), each the forward's FLOPs, by
/// the segment GEMMs (cuBLAS, host offsets) or moss's sync-free kernels (resident offsets).
void run_grouped_backward(benchmark::State& state, bool skewed, bool sync_free) {
  const bool dw = state.range(0) == 1;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  ExpertGemmInputs io(gpu, skewed);
  const auto dy = moss::bench::device_randn<bf16>(gpu, kTokens * kOut, 3, 0.5f);
  auto dx = gpu.alloc<bf16>(kTokens * kIn);
  auto dweight = gpu.alloc<float>(kExperts * kOut * kIn);

  moss::GroupedLinearBackwardArgs<bf16> g;
  g.dy = ConstView<bf16, 2>(dy.data(), {kTokens, kOut});
  g.x = ConstView<bf16, 2>(io.x.data(), {kTokens, kIn});
  g.weight = ConstView<bf16, 3>(io.w.data(), {kExperts, kOut, kIn});
  g.offsets = ConstView<std::int32_t, 1>(io.dev_off.data(), {kExperts + 1});
  g.host_offsets = sync_free ? nullptr : io.host_off.data();
  g.resident_offsets = sync_free;
  if (dw)
    g.dweight = TensorView<float, 3>(dweight.data(), {kExperts, kOut, kIn});
  else
    g.dx = TensorView<bf16, 2>(dx.data(), {kTokens, kIn});
  moss::bench::time_cuda(state, gpu.stream, [&] { moss::grouped_linear_backward(gpu, g); });

  set_gemm_counters(state, io.dense_ms);
}

void BM_grouped_linear_backward_bf16_balanced(benchmark::State& s) { run_grouped_backward(s, false, false); }
void BM_grouped_linear_backward_bf16_skewed(benchmark::State& s) { run_grouped_backward(s, true, false); }
void BM_grouped_linear_backward_bf16_balanced_sync_free(benchmark::State& s) { run_grouped_backward(s, false, true); }
void BM_grouped_linear_backward_bf16_skewed_sync_free(benchmark::State& s) { run_grouped_backward(s, true, true); }
BENCHMARK(BM_grouped_linear_backward_bf16_balanced)
    ->ArgName("dw")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_backward_bf16_skewed)
    ->ArgName("dw")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_backward_bf16_balanced_sync_free)
    ->ArgName("dw")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_grouped_linear_backward_bf16_skewed_sync_free)
    ->ArgName("dw")
    ->Arg(0)
    ->Arg(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

/// The resident kernels at decode-sized row counts: rows spread evenly over 8 experts,
/// 768 → 1536; state.range(0) rows, state.range(1) 0 = matrix-vector, 1 = tiled.
void BM_grouped_resident_small(benchmark::State& state) {
  constexpr index_t X = 8, in = 768, out = 1536;
  const index_t rows = state.range(0);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const auto x = moss::bench::device_randn<bf16>(gpu, rows * in, 1, 0.5f);
  const auto w = moss::bench::device_randn<bf16>(gpu, X * out * in, 2, 0.02f);
  auto y = gpu.alloc<bf16>(rows * out);
  std::vector<std::int32_t> off(X + 1);
  for (index_t e = 0; e <= X; ++e) off[e] = static_cast<std::int32_t>(e * rows / X);
  moss::Buffer<std::int32_t> dev_off = moss::upload(gpu, off.data(), X + 1);
  moss::GroupedLinearArgs<bf16> g;
  g.x = ConstView<bf16, 2>(x.data(), {rows, in});
  g.weight = ConstView<bf16, 3>(w.data(), {X, out, in});
  g.offsets = ConstView<std::int32_t, 1>(dev_off.data(), {X + 1});
  g.y = TensorView<bf16, 2>(y.data(), {rows, out});
  g.resident_offsets = true;
  g.resident_kernel = state.range(1) ? moss::ResidentKernel::tiled : moss::ResidentKernel::matrix_vector;
  moss::bench::time_cuda(state, gpu.stream, [&] { moss::grouped_linear(gpu, g); });
  // The floor: every expert's weights read once.
  state.counters["weight_GB_per_s"] = benchmark::Counter(
      static_cast<double>(X * out * in * 2) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_grouped_resident_small)
    ->ArgsProduct({{1, 8, 16, 32, 64, 256}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

/// Which part of the routing pipeline a router_permute_gather benchmark times.
enum class RouteStage { all, route, permute_plan, gather };

/// route + permute_plan + gather_rows at 16384 × 2048, 8 experts, top-1 (no host sync); with
/// `planned`, permute_plan's workspace is allocated once outside the timed loop. `stage` other
/// than `all` times that op alone (the others run once before the timing): where the time goes.
void run_router_permute_gather(benchmark::State& state, bool planned, RouteStage stage = RouteStage::all,
                               int tokens_per_warp = 0) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const int sets = moss::bench::rotation_count(static_cast<double>(kTokens) * kIn * sizeof(bf16));
  std::vector<moss::Buffer<bf16>> xs;
  for (int i = 0; i < sets; ++i) xs.push_back(moss::bench::device_randn<bf16>(gpu, kTokens * kIn, 10 + i));
  const auto wr = moss::bench::device_randn<float>(gpu, kExperts * kIn, 3, 0.02f);
  auto logits = gpu.alloc<float>(kTokens * kExperts);
  auto expert = gpu.alloc<std::int32_t>(kTokens);
  auto gate = gpu.alloc<float>(kTokens);
  auto pair_row = gpu.alloc<std::int32_t>(kTokens), row_pair = gpu.alloc<std::int32_t>(kTokens);
  auto offsets = gpu.alloc<std::int32_t>(kExperts + 1), counts = gpu.alloc<std::int32_t>(kExperts);
  auto xp = gpu.alloc<bf16>(kTokens * kIn);
  moss::PermutePlanArgs plan{ConstView<std::int32_t, 2>(expert.data(), {kTokens, 1}),
                             kExperts,
                             0,
                             pair_row.flat(),
                             row_pair.flat(),
                             offsets.flat(),
                             counts.flat(),
                             {}};
  moss::Buffer<unsigned char> workspace;
  if (planned) {
    workspace = gpu.alloc<unsigned char>(static_cast<index_t>(moss::workspace_bytes(gpu, plan)));
    plan.workspace = moss::Workspace{workspace.data(), static_cast<std::size_t>(workspace.size())};
  }
  const auto route = [&](int set) {
    moss::RouteArgs<bf16, moss::Top1Switch> r;
    r.x = ConstView<bf16, 2>(xs[static_cast<std::size_t>(set)].data(), {kTokens, kIn});
    r.weight = ConstView<float, 2>(wr.data(), {kExperts, kIn});
    r.logits = logits.view<2>({kTokens, kExperts});
    r.expert = expert.view<2>({kTokens, 1});
    r.gate = gate.view<2>({kTokens, 1});
    if (tokens_per_warp == 0)
      moss::route(gpu, r);
    else
      moss::detail::route::run_route(gpu, r, tokens_per_warp);
  };
  const auto gather = [&](int set) {
    moss::gather_rows(
        gpu, moss::GatherRowsArgs<bf16>{ConstView<bf16, 2>(xs[static_cast<std::size_t>(set)].data(), {kTokens, kIn}),
                                        ConstView<std::int32_t, 1>(row_pair.data(), {kTokens}),
                                        ConstView<std::int32_t, 1>(offsets.data(), {kExperts + 1}), 1,
                                        xp.view<2>({kTokens, kIn})});
  };
  if (stage != RouteStage::all) {  // the untimed stages once, so the timed one reads real routing
    route(0);
    moss::permute_plan(gpu, plan);
  }
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    if (stage == RouteStage::all || stage == RouteStage::route) route(next);
    if (stage == RouteStage::all || stage == RouteStage::permute_plan) moss::permute_plan(gpu, plan);
    if (stage == RouteStage::all || stage == RouteStage::gather) gather(next);
    next = (next + 1) % sets;
  });
  double bytes = 3.0 * kTokens * kIn * sizeof(bf16);  // x read by the router and the gather, written once
  if (stage == RouteStage::route) bytes = 1.0 * kTokens * kIn * sizeof(bf16);
  if (stage == RouteStage::gather) bytes = 2.0 * kTokens * kIn * sizeof(bf16);
  if (stage == RouteStage::permute_plan) bytes = 0;
  moss::bench::set_rates(state, bytes, 0);
  if (stage == RouteStage::all) {
    state.counters["anchor_ms"] = 0.25;
    state.counters["goal_ms"] = 0.08;
  }
}
void BM_router_permute_gather_bf16(benchmark::State& s) { run_router_permute_gather(s, false); }
void BM_router_permute_gather_bf16_planned_workspace(benchmark::State& s) { run_router_permute_gather(s, true); }
void BM_router_permute_gather_bf16_route_only(benchmark::State& s) {
  run_router_permute_gather(s, true, RouteStage::route);
}
void BM_router_permute_gather_bf16_route_only_4_tokens_per_warp(benchmark::State& s) {
  run_router_permute_gather(s, true, RouteStage::route, 4);
}
void BM_router_permute_gather_bf16_planned_4_tokens_per_warp(benchmark::State& s) {
  run_router_permute_gather(s, true, RouteStage::all, 4);
}
void BM_router_permute_gather_bf16_permute_plan_only(benchmark::State& s) {
  run_router_permute_gather(s, true, RouteStage::permute_plan);
}
void BM_router_permute_gather_bf16_gather_only(benchmark::State& s) {
  run_router_permute_gather(s, true, RouteStage::gather);
}
BENCHMARK(BM_router_permute_gather_bf16)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_planned_workspace)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_route_only)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_route_only_4_tokens_per_warp)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_planned_4_tokens_per_warp)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_permute_plan_only)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_router_permute_gather_bf16_gather_only)->UseManualTime()->Unit(benchmark::kMillisecond);

/// SinkhornTop1 in training mode at 16384 × 2048, 8 experts: route_logits + sinkhorn +
/// route_select, the sinkhorn workspace planned once (no host sync).
void BM_sinkhorn_router_bf16(benchmark::State& state) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const int sets = moss::bench::rotation_count(static_cast<double>(kTokens) * kIn * sizeof(bf16));
  std::vector<moss::Buffer<bf16>> xs;
  for (int i = 0; i < sets; ++i) xs.push_back(moss::bench::device_randn<bf16>(gpu, kTokens * kIn, 20 + i));
  const auto wr = moss::bench::device_randn<float>(gpu, kExperts * kIn, 4, 0.02f);
  auto logits = gpu.alloc<float>(kTokens * kExperts), scores = gpu.alloc<float>(kTokens * kExperts);
  auto expert = gpu.alloc<std::int32_t>(kTokens);
  auto gate = gpu.alloc<float>(kTokens);
  moss::SinkhornArgs sa;
  sa.logits = ConstView<float, 2>(logits.data(), {kTokens, kExperts});
  sa.scores = scores.view<2>({kTokens, kExperts});
  auto workspace = gpu.alloc<unsigned char>(static_cast<index_t>(moss::workspace_bytes(gpu, sa)));
  sa.workspace = moss::Workspace{workspace.data(), static_cast<std::size_t>(workspace.size())};
  moss::SinkhornTop1 router;
  router.training = true;
  int next = 0;
  moss::bench::time_cuda(state, gpu.stream, [&] {
    moss::route_logits(gpu, moss::RouteLogitsArgs<bf16>{ConstView<bf16, 2>(xs[next].data(), {kTokens, kIn}),
                                                        ConstView<float, 2>(wr.data(), {kExperts, kIn}),
                                                        logits.view<2>({kTokens, kExperts})});
    moss::sinkhorn(gpu, sa);
    moss::route_select(gpu, moss::RouteSelectArgs<moss::SinkhornTop1>{
                                router, sa.logits, ConstView<float, 2>(scores.data(), {kTokens, kExperts}),
                                expert.view<2>({kTokens, 1}), gate.view<2>({kTokens, 1})});
    next = (next + 1) % sets;
  });
  moss::bench::set_rates(state, static_cast<double>(kTokens) * kIn * sizeof(bf16), 0);  // x read once
}
BENCHMARK(BM_sinkhorn_router_bf16)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
