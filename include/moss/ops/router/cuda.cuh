// moss/ops/router/cuda.cuh: `route` and `router_stats` on CUDA (needs nvcc). Queued on the
// stream; neither synchronises with the host.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moss/backend/cuda.cuh"
#include "moss/ops/router.hpp"
#include "moss/ops/router/kernel.cuh"
#include "moss/ops/router/tuning.cuh"

namespace moss {

namespace detail::route {

/// The current device's multiprocessor count (a cheap attribute query; sizes the persistent grid).
inline int sm_count() {
  int dev = 0;
  MOSS_CUDA_CHECK(cudaGetDevice(&dev));
  int n = 0;
  MOSS_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

}  // namespace detail::route

/// Routes every token on the GPU (contract: moss/ops/router.hpp): bit-identical logits to the
/// host's, the router's selection, and Sinkhorn balancing first when the router asks for it.
template <class T, Router R>
void route(const Cuda& gpu, const RouteArgs<T, R>& a) {
  using namespace detail::route;
  validate(a, "route");
  const index_t tokens = a.x.shape[0];
  if (tokens == 0) return;
  constexpr RouteTuning cfg = kRouteTuning;
  RouteParams<T, R> p;
  p.router = a.router;
  p.x = a.x.data;
  p.x_row_stride = a.x.stride[0];
  p.weight = a.weight.data;
  p.logits = a.logits.data;
  p.expert = a.expert.data;
  p.gate = a.gate.data;
  p.tokens = tokens;
  p.D = a.x.shape[1];
  p.X = static_cast<int>(a.weight.shape[0]);
  constexpr index_t V = 16 / sizeof(T);
  p.vector_x = reinterpret_cast<std::uintptr_t>(a.x.data) % 16 == 0 && (tokens <= 1 || a.x.stride[0] % V == 0);
  const std::size_t weight_bytes = static_cast<std::size_t>(p.X * p.D) * sizeof(float);
  p.weight_in_smem = weight_bytes <= static_cast<std::size_t>(cfg.smem_weight_bytes);
  const bool balance = router_wants_balance(a.router);
  p.select = !balance;

  const std::size_t smem = (p.weight_in_smem ? weight_bytes : 0) + sizeof(float) * cfg.warps_per_block * p.X;
  auto kernel = route_logits_kernel<T, R, cfg.warps_per_block>;
  MOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const index_t wanted = ceil_div<index_t>(tokens, cfg.warps_per_block);
  const unsigned blocks = static_cast<unsigned>(std::min<index_t>(wanted, index_t(sm_count()) * cfg.blocks_per_sm));
  kernel<<<blocks, cfg.warps_per_block * 32, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("route_logits_kernel", gpu.stream);
  if (!balance) return;

  Buffer<float> scores = gpu.alloc<float>(tokens * p.X);
  Buffer<float> d0 = gpu.alloc<float>(tokens);
  const std::size_t sh = sizeof(float) * (cfg.sinkhorn_threads + 2 * p.X);
  route_sinkhorn_kernel<<<1, cfg.sinkhorn_threads, sh, gpu.stream>>>(a.logits.data, tokens, p.X, scores.data(),
                                                                     d0.data());
  MOSS_CHECK_LAUNCH("route_sinkhorn_kernel", gpu.stream);
  const unsigned sel_blocks =
      static_cast<unsigned>(std::min<index_t>(ceil_div<index_t>(tokens, cfg.select_threads), 65535));
  route_select_kernel<R><<<sel_blocks, cfg.select_threads, 0, gpu.stream>>>(a.router, a.logits.data, scores.data(),
                                                                            tokens, p.X, a.expert.data, a.gate.data);
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
  MOSS_EXPECTS(tiles <= 1 << 30, unsupported_error, "router_stats (cuda): ", tokens, " tokens are too many");
  Buffer<float> partial = gpu.alloc<float>(tiles * (X + 1));
  if (tokens > 0) {
    router_stats_partial_kernel<<<static_cast<unsigned>(tiles), threads, threads * sizeof(float), gpu.stream>>>(
        a.logits.data, tokens, X, partial.data());
    MOSS_CHECK_LAUNCH("router_stats_partial_kernel", gpu.stream);
  }
  router_stats_final_kernel<<<1, 256, 0, gpu.stream>>>(partial.data(), tokens > 0 ? static_cast<int>(tiles) : 0, tokens,
                                                       X, a.k, a.counts.data, a.aux_loss, a.aux_loss_coef,
                                                       a.z_loss_coef, a.out.data);
  MOSS_CHECK_LAUNCH("router_stats_final_kernel", gpu.stream);
}

}  // namespace moss
