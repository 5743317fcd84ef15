// moss/ops/router/cuda.cuh: `route`, `route_logits`, `route_select` and `router_stats` on CUDA
// (needs nvcc). Queued on the stream; none synchronises with the host.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/router.hpp"
#include "moss/ops/router/kernel.cuh"
#include "moss/ops/router/tuning.cuh"

namespace moss {

namespace detail::route {

/// Launches the logits kernel over x (tokens, D) and weight (X, D) into logits (tokens, X); with
/// a router R other than `LogitsOnly` it also selects into expert and gate (tokens, K). A warp
/// takes TPW tokens at a time (the same bits for every TPW).
template <class T, class R, int TPW = 1>
void launch_logits(const Cuda& gpu, const R& router, const ConstView<T, 2>& x, const ConstView<float, 2>& weight,
                   float* logits, std::int32_t* expert, float* gate) {
  const index_t tokens = x.shape[0];
  if (tokens == 0) return;
  constexpr RouteTuning cfg = kRouteTuning;
  RouteParams<T, R> p;
  p.router = router;
  p.x = x.data;
  p.x_row_stride = x.stride[0];
  p.weight = weight.data;
  p.logits = logits;
  p.expert = expert;
  p.gate = gate;
  p.tokens = tokens;
  p.D = x.shape[1];
  p.X = static_cast<int>(weight.shape[0]);
  p.vector_x = cuda::vector_aligned(x, cuda::kVec16<T>);
  const std::size_t weight_bytes = static_cast<std::size_t>(p.X * p.D) * sizeof(float);
  p.weight_in_smem = weight_bytes <= static_cast<std::size_t>(cfg.smem_weight_bytes);

  const std::size_t smem =
      (p.weight_in_smem ? weight_bytes : 0) + sizeof(float) * cfg.warps_per_block * TPW * static_cast<std::size_t>(p.X);
  auto kernel = route_logits_kernel<T, R, cfg.warps_per_block, TPW>;
  cuda::allow_dynamic_shared(kernel, smem);
  const unsigned blocks =
      cuda::sm_capped_blocks(ceil_div<index_t>(tokens, cfg.warps_per_block * TPW), cfg.blocks_per_sm);
  kernel<<<blocks, cfg.warps_per_block * 32, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("route_logits_kernel", gpu.stream);
}

}  // namespace detail::route

namespace detail::route {

/// `route` with a warp taking `tokens_per_warp` (1 or 4) tokens at a time, 0 being `route`'s
/// choice (1); the test and benchmark hook. The results are the same bits whatever the choice.
template <class T, Router R>
void run_route(const Cuda& gpu, const RouteArgs<T, R>& a, int tokens_per_warp) {
  static_assert(StorageType<T>, "moss::route: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  MOSS_EXPECTS(tokens_per_warp == 0 || tokens_per_warp == 1 || tokens_per_warp == 4, config_error,
               "run_route: tokens_per_warp is ", tokens_per_warp, ", expected 0, 1 or 4");
  validate(a, "route");
  if (tokens_per_warp == 4)
    launch_logits<T, R, 4>(gpu, a.router, a.x, a.weight, a.logits.data, a.expert.data, a.gate.data);
  else
    launch_logits<T, R, 1>(gpu, a.router, a.x, a.weight, a.logits.data, a.expert.data, a.gate.data);
}

}  // namespace detail::route

/// Routes every token on the GPU (contract: moss/ops/router.hpp): bit-identical logits to the
/// host's and the router's selection with scores = logits, in one kernel.
template <class T, Router R>
void route(const Cuda& gpu, const RouteArgs<T, R>& a) {
  detail::route::run_route(gpu, a, 0);
}

/// The logits alone on the GPU: the same kernel as `route`'s without the selection, so the
/// logits are bit-identical to `route`'s (and to the host's).
template <class T>
void route_logits(const Cuda& gpu, const RouteLogitsArgs<T>& a) {
  static_assert(StorageType<T>, "moss::route: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "route_logits");
  detail::route::launch_logits(gpu, detail::route::LogitsOnly{}, a.x, a.weight, a.logits.data, nullptr, nullptr);
}

/// The router's selection on the GPU from given logits and scores (one thread per token).
template <Router R, class C>
void route_select(const Cuda& gpu, const RouteSelectArgs<R, C>& a) {
  static_assert(std::is_same_v<C, float>, "moss::route_select: double is host-only; on CUDA the logits are float");
  using namespace detail::route;
  validate(a, "route_select");
  const index_t tokens = a.logits.shape[0];
  if (tokens == 0) return;
  constexpr int threads = kRouteTuning.select_threads;
  const unsigned blocks = cuda::grid_blocks(tokens, threads);
  route_select_kernel<R><<<blocks, threads, 0, gpu.stream>>>(
      a.router, a.logits.data, a.scores.data, tokens, static_cast<int>(a.logits.shape[1]), a.expert.data, a.gate.data);
  MOSS_CHECK_LAUNCH("route_select_kernel", gpu.stream);
}

/// The router statistics on the GPU (contract: `router_stats` in moss/ops/router/host.hpp):
/// per-tile partial sums added in tile order, so the result is deterministic.
inline void router_stats(const Cuda& gpu, const RouterStatsArgs& a) {
  using namespace detail::route;
  validate(a, "router_stats");
  const index_t tokens = a.logits.shape[0];
  const int X = static_cast<int>(a.logits.shape[1]);
  constexpr int threads = kRouteTuning.stats_threads;
  const index_t tiles = std::max<index_t>(1, ceil_div<index_t>(tokens, threads));
  const unsigned grid = cuda::checked_grid(tiles, "router_stats (cuda)");
  Buffer<float> partial = gpu.alloc<float>(tiles * (X + 1));
  if (tokens > 0) {
    router_stats_partial_kernel<threads><<<grid, threads, 0, gpu.stream>>>(a.logits.data, tokens, X, partial.data());
    MOSS_CHECK_LAUNCH("router_stats_partial_kernel", gpu.stream);
  }
  router_stats_final_kernel<><<<1, 256, 0, gpu.stream>>>(partial.data(), tokens > 0 ? static_cast<int>(tiles) : 0,
                                                         tokens, X, a.k, a.counts.data, a.aux_loss, a.aux_loss_coef,
                                                         a.z_loss_coef, a.out.data);
  MOSS_CHECK_LAUNCH("router_stats_final_kernel", gpu.stream);
}

}  // namespace moss
