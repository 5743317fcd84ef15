// moss/ops/selective_scan/backward_cuda.cuh: the CUDA backward of the selective scan (needs nvcc;
// contract in moss/ops/selective_scan_backward.hpp, math in docs/math.md §4.1, the host oracle in
// backward_host.hpp, the kernels in backward_kernel.cuh and backward_state_kernel.cuh).
//
//   moss::selective_scan_backward(moss::Cuda{stream}, args);   // queued on stream, no host sync
//
// T is a moss::StorageType (float, f16, bf16): the double instantiation is host-only. Every value
// is computed in float32 and each T-typed gradient is rounded once.
//
// Recomputation. No forward state is saved by the forward. One thread block per (batch row,
// super-tile of channels) runs each channel's forward again over L (math.hpp's arithmetic, the
// forward's), writing the state entering every `chunk`-th step to a checkpoint workspace, then
// walks the chunks from the last to the first: each chunk's states are recomputed from its
// checkpoint into shared memory and its steps walked backwards with the adjoint state λ = dL/dh
// carried in registers (λ_{t−1} = exp(Δ_t·A)·λ_t + dy_{t−1}·C_{t−1}: a linear scan in reverse
// time). The chunk is the longest power of two ≤ 64 that keeps the block's shared memory,
// (2 with dB, else 1)·chunk·⌈N / lanes⌉·128 + channels·chunk floats, within 96 KiB: with dB asked
// for, 64 steps for N ≤ 32, 32 for N ≤ 64, 16 for N ≤ 128 and 8 above (64, 64, 32 and 16
// without). The inputs are read three times (forward to the checkpoints, chunk recomputation,
// reverse walk), all from global memory.
//
// Workspace (from the backend's pool, stream-ordered, freed when the call returns: the Args carry
// no Workspace), per token (batch row × step), in bytes:
//   checkpoints           4 · dim · N / chunk          (e.g. dim bytes for N = 16)
//   dB partials           4 · N · (supertiles + groups_b − 1)   when dB is asked for and does not sum over L
//   dC partials           4 · N · (supertiles + groups_c − 1)   likewise
// plus, per batch row, 4 · dim · (N + 2) bytes of dA / dD / d delta_bias partials and, for a dB
// or dC that sums over L, 4 · N · (supertiles + groups − 1). `supertiles` = ⌈dim / (S · c)⌉ with
// c = 8 channels per sub-tile for N ≤ 16 (4 above) and S sub-tiles per block chosen from the
// shapes alone (about 1024 blocks in all; see `backward_plan`), so the result does not depend on
// the device. Example: batch 8 × L 2048, dim 4096, N 16, groups 1, dB and dC: 4 KiB of
// checkpoints and 2 × 8 KiB of partials per token, 320 MiB in all.
//
// Reductions, all in one order fixed by the shapes (no atomics: bitwise repeatable):
//  - du, ddelta: dy·D + the sum over the states of the channel's logical warp (a fixed shuffle
//    tree, cuda::warp_sum); dz from the recomputed y (also a warp sum).
//  - dA[d, n], dD[d], d delta_bias[d]: per (b, d) over t from L − 1 down to 0 in registers, then
//    over b in increasing order by `backward_param_reduce_kernel` (written or accumulated).
//  - dB / dC[b, g, n, t]: per chunk, the channels of group g in one sub-tile in increasing order;
//    the sub-tiles of a super-tile in order (the first writes the block's partial slot, the later
//    add to it); then `backward_bc_reduce_kernel` adds the super-tiles of the group in increasing
//    order. A view with a zero stride along L gets its time sum in the main kernel (t decreasing,
//    per sub-tile group sum first); one along batch sums b increasing in the second pass.
// The orders differ from the host's (a warp tree over the states, the channel sums split by
// super-tile), so CUDA and host agree to float rounding, not bitwise.
//
// Two kernels. d_state ≤ 16 with dB / dC not summed over L (every Mamba layer) takes the
// warp-per-state kernel of backward_state_kernel.cuh: one warp per state, lanes along time with 8
// steps each, both recurrences as a lane walk plus one warp scan, 256-step chunks, slices of 16 to
// 64 channels per block (its own header says how it sums; checkpoints 4 · dim · N / 256 bytes per
// token, dB / dC partials 4 · N · (slices + groups − 1) each). Its checkpoints, the state
// entering every 256-step chunk, come from the forward scan kernel run first in a states-only
// mode (`launch_checkpoints`: the sequential recurrence, SequentialScan's states; nothing else
// written) instead of the kernel's own pass 1 (kept behind `kernel_checkpoints` for the tests and
// the benchmark). The rest (larger d_state, a dB or
// dC summed over L, forced sub-tiles in tests) takes the sequential kernel described above
// (backward_kernel.cuh).
//
// Measured (H100 80GB, bf16, batch 8 × L 2048 × dim 4096, N 16; bench/results/2026-12-07-h100.md):
// the sequential kernel 92.6 ms per call; threads along time with block scans 33.6 then 27.4 ms;
// the warp-per-state kernel 10.7 ms (same run as the 27.4; anchor `mamba_ssm` 4.79 ms, goal
// 1.9 ms). ncu on it: 4.13 G instructions (half the block-scan kernel's), 16 warps per SM (the
// 128-register cap of 512-thread blocks, with some spilling, and 210 KiB of shared memory), 0.39
// instructions issued per scheduler and cycle: latency-bound. Written and not yet run on a GPU:
// two states per warp (256 threads, more registers and independent work per warp, half the shared
// partial sums) and the checkpoints from the forward scan kernel.
#pragma once

#include <cstddef>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/cuda/launch.cuh"
#include "moss/ops/selective_scan/backward_kernel.cuh"
#include "moss/ops/selective_scan/backward_state_kernel.cuh"
#include "moss/ops/selective_scan/cuda.cuh"
#include "moss/ops/selective_scan_backward.hpp"

namespace moss {

namespace detail::scan {

/// Threads per block of the main backward kernel.
inline constexpr int kBackwardThreads = 128;
/// Shared memory the main kernel's chunk may take (opted in above the default 48 KiB).
inline constexpr std::size_t kBackwardSharedBudget = std::size_t(96) << 10;
/// The longest recomputed chunk (steps).
inline constexpr int kBackwardMaxChunk = 64;
/// About how many blocks the main kernel should have before sub-tiles are merged into super-tiles
/// (a constant, not the device's SM count, so that the summation order depends on the shapes only).
inline constexpr index_t kBackwardTargetBlocks = 1024;
/// States per warp of the warp-per-state kernel: 1 (measured: 10.7 ms at the canonical shape on an
/// H100); 2 is written and tested against the host on the CPU side only, not yet run on a GPU.
inline constexpr int kWsStatesPerWarp = 1;
/// Whether the warp-per-state plan has the forward scan kernel write the checkpoints
/// (`launch_checkpoints`: its sequential recurrence over L) instead of the kernel's own pass 1,
/// which recomputes every chunk's states with warp scans before the backward proper. Predicted:
/// the forward kernel's states-only pass takes about 0.6 ms at the canonical shape (the forward
/// takes 0.75 ms), pass 1 about a fifth of the backward's 10.7 ms; not yet measured.
inline constexpr bool kWsForwardCheckpoints = true;
/// The warp-per-state kernel's widest slice (channels per block) and the blocks it aims for.
inline constexpr int kWsMaxSlice = 64;
inline constexpr index_t kWsMinBlocks = 256;
/// Threads per block of the two reduction kernels.
inline constexpr int kBackwardReduceThreads = 256;

/// Lanes of one channel's logical warp for d_state N.
constexpr int backward_lanes(index_t N) { return N <= 16 ? 16 : 32; }
/// States per lane for d_state N (a compile-time register array bound).
constexpr int backward_states_per_lane(index_t N) { return N <= 32 ? 1 : N <= 64 ? 2 : N <= 128 ? 4 : 8; }

/// Shared memory of the main kernel for a chunk of `chunk` steps.
constexpr std::size_t backward_shared_bytes(int chunk, int states_per_lane, int lanes, bool want_db) {
  return ((want_db ? 2 : 1) * std::size_t(chunk) * states_per_lane * kBackwardThreads +
          std::size_t(kBackwardThreads / lanes) * chunk) *
         sizeof(float);
}

/// How the main kernel splits the work.
struct BackwardPlan {
  bool warp_per_state = false;       // d_state ≤ 16: backward_state_kernel.cuh instead of the sequential kernel
  int states_per_warp = 1;           // warp per state: states per warp (1 or 2)
  bool forward_checkpoints = false;  // warp per state: the forward scan kernel writes the checkpoints
  int slice_channels = 0;            // warp per state: channels per block (supertiles = slices per batch row)
  int threads = 0;                   // threads per block of the main kernel
  int lanes = 16, states_per_lane = 1;
  int chunk = 1;                     // steps per recomputed chunk
  index_t chunks = 0;                // ⌈L / chunk⌉
  int channels = 8;                  // per sub-tile
  int subtiles = 1;                  // sub-tiles per super-tile (one block)
  index_t supertiles = 1;            // per batch row
  index_t slots_b = 0, slots_c = 0;  // partial slots per batch row of dB / dC
  std::size_t shared = 0;            // dynamic shared memory of the main kernel
};

/// True when `g` (a dB or dC output) is asked for and has elements.
template <class T>
bool wants_bc(const TensorView<T, 4>& g) {
  return present(g) && !g.empty();
}

/// Whether the warp-per-state kernel takes `a`: d_state ≤ 16 and no dB / dC summed over L (a
/// zero stride along time); `subtiles` > 0 (tests) forces the sequential kernel.
template <class T>
bool backward_warp_per_state(const SelectiveScanBackwardArgs<T>& a, index_t subtiles) {
  const auto sums_time = [](const auto& g) { return wants_bc(g) && g.stride[3] == 0; };
  return subtiles <= 0 && a.A.shape[1] <= kWsMaxN && !sums_time(a.dB) && !sums_time(a.dC);
}

/// The plan for `a` (validated, dim ≥ 1); `subtiles` > 0 forces the sequential kernel with that
/// many sub-tiles per block, `states_per_warp` > 0 the warp-per-state kernel's states per warp,
/// `kernel_checkpoints` its own checkpoint pass (tests and benchmarks).
template <class T>
BackwardPlan backward_plan(const SelectiveScanBackwardArgs<T>& a, index_t subtiles = 0, int states_per_warp = 0,
                           bool kernel_checkpoints = false) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  BackwardPlan p;
  if (backward_warp_per_state(a, subtiles)) {
    // One warp per state; the widest slice (fewest dB / dC partials) that still gives at least
    // kWsMinBlocks blocks, from the shapes alone (the sums' order must not depend on the device).
    p.warp_per_state = true;
    p.states_per_warp = states_per_warp > 0 ? states_per_warp : kWsStatesPerWarp;
    p.forward_checkpoints = kWsForwardCheckpoints && !kernel_checkpoints;
    p.slice_channels = kWsMaxSlice;
    while (p.slice_channels > kWsGroup && batch * ceil_div<index_t>(dim, p.slice_channels) < kWsMinBlocks)
      p.slice_channels /= 2;
    p.threads = 32 * ws_warps(static_cast<int>(N), p.states_per_warp);
    p.chunk = kWsChunk;
    p.chunks = ceil_div<index_t>(L, kWsChunk);
    p.supertiles = ceil_div<index_t>(dim, p.slice_channels);
    p.slots_b = p.supertiles + a.B.shape[1] - 1;
    p.slots_c = p.supertiles + a.C.shape[1] - 1;
    p.shared = ws_shared_bytes(static_cast<int>(N), p.states_per_warp, p.slice_channels);
    return p;
  }
  p.threads = kBackwardThreads;
  p.lanes = backward_lanes(N);
  p.states_per_lane = backward_states_per_lane(N);
  const bool want_db = wants_bc(a.dB);
  p.chunk = kBackwardMaxChunk;
  while (p.chunk > 1 && backward_shared_bytes(p.chunk, p.states_per_lane, p.lanes, want_db) > kBackwardSharedBudget)
    p.chunk /= 2;
  p.shared = backward_shared_bytes(p.chunk, p.states_per_lane, p.lanes, want_db);
  p.chunks = ceil_div<index_t>(L, p.chunk);
  p.channels = kBackwardThreads / p.lanes;
  const index_t sub = ceil_div<index_t>(dim, p.channels);
  index_t s = subtiles > 0 ? subtiles : batch * sub / kBackwardTargetBlocks;
  if (s < 1) s = 1;
  if (s > sub) s = sub;
  p.subtiles = static_cast<int>(s);
  p.supertiles = ceil_div<index_t>(sub, s);
  p.slots_b = p.supertiles + a.B.shape[1] - 1;
  p.slots_c = p.supertiles + a.C.shape[1] - 1;
  return p;
}

/// The workspace pieces of the backward.
struct BackwardScratch {
  float* ckpt = nullptr;        // (batch, dim, chunks, N)
  float* dA_part = nullptr;     // (batch, dim, N)
  float* dD_part = nullptr;     // (batch, dim)
  float* dbias_part = nullptr;  // (batch, dim)
  float* dB_part = nullptr;     // (batch, slots_b, N, L or 1)
  float* dC_part = nullptr;     // (batch, slots_c, N, L or 1)
};

/// Takes the backward's workspace for `a` and `plan` from `layout` (measuring when the layout has
/// no memory), in this order.
template <class T>
BackwardScratch backward_scratch(WorkspaceLayout& layout, const SelectiveScanBackwardArgs<T>& a,
                                 const BackwardPlan& plan) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2], N = a.A.shape[1];
  BackwardScratch s;
  s.ckpt = layout.take<float>(batch * dim * plan.chunks * N);
  if (present(a.dA)) s.dA_part = layout.take<float>(batch * dim * N);
  if (present(a.dD)) s.dD_part = layout.take<float>(batch * dim);
  if (present(a.ddelta_bias)) s.dbias_part = layout.take<float>(batch * dim);
  if (wants_bc(a.dB)) s.dB_part = layout.take<float>(batch * plan.slots_b * N * (a.dB.stride[3] == 0 ? 1 : L));
  if (wants_bc(a.dC)) s.dC_part = layout.take<float>(batch * plan.slots_c * N * (a.dC.stride[3] == 0 ? 1 : L));
  return s;
}

/// Calls `f.template operator()<lanes, states per lane>()` for d_state N (1 ≤ N ≤ 256).
template <class F>
void with_backward_shape(index_t N, F&& f) {
  static_assert(kMaxStateSize <= 32 * 8, "moss: the backward's widest shape holds 8 states in each of 32 lanes");
  if (N <= 16) return f.template operator()<16, 1>();
  if (N <= 32) return f.template operator()<32, 1>();
  if (N <= 64) return f.template operator()<32, 2>();
  if (N <= 128) return f.template operator()<32, 4>();
  return f.template operator()<32, 8>();
}

/// Queues the main kernel (batch ≥ 1, dim ≥ 1).
template <class T, int kLanes, int kSpt>
void launch_backward_main(const Cuda& gpu, const SelectiveScanBackwardArgs<T>& a, const BackwardPlan& plan,
                          const BackwardScratch& s) {
  BackwardParams<T> p;
  p.u = a.u;
  p.delta = a.delta;
  p.z = a.z;
  p.dout = a.dout;
  p.A = a.A;
  p.B = a.B;
  p.C = a.C;
  p.D = a.D;
  p.delta_bias = a.delta_bias;
  p.initial_state = a.initial_state;
  p.dfinal_state = a.dfinal_state;
  p.delta_softplus = a.delta_softplus;
  p.du = a.du;
  p.ddelta = a.ddelta;
  p.dz = a.dz;
  p.dinitial_state = a.dinitial_state;
  p.want_db = wants_bc(a.dB);
  p.want_dc = wants_bc(a.dC);
  p.ckpt = s.ckpt;
  p.ckpt_ready = plan.forward_checkpoints;
  p.dA_part = s.dA_part;
  p.dD_part = s.dD_part;
  p.dbias_part = s.dbias_part;
  p.dB_part = s.dB_part;
  p.dC_part = s.dC_part;
  p.slots_b = plan.slots_b;
  p.slots_c = plan.slots_c;
  p.batch = a.u.shape[0];
  p.dim = a.u.shape[1];
  p.L = a.u.shape[2];
  p.N = static_cast<int>(a.A.shape[1]);
  p.cpg_b = p.dim / a.B.shape[1];
  p.cpg_c = p.dim / a.C.shape[1];
  p.sum_t_b = p.want_db && a.dB.stride[3] == 0;
  p.sum_t_c = p.want_dc && a.dC.stride[3] == 0;
  p.chunk = plan.chunk;
  p.chunks = plan.chunks;
  p.subtiles = plan.subtiles;
  p.supertiles = plan.supertiles;
  const unsigned grid = cuda::checked_grid(p.batch * plan.supertiles, "selective_scan_backward (cuda)");
  if (plan.warp_per_state) {
    p.slice_channels = plan.slice_channels;
    auto kernel = plan.states_per_warp == 2 ? selective_scan_backward_state_kernel<T, 2>
                                            : selective_scan_backward_state_kernel<T, 1>;
    cuda::allow_dynamic_shared(kernel, plan.shared);
    cuda::launch("selective_scan_backward_state_kernel", kernel, dim3(grid), dim3(plan.threads), plan.shared,
                 gpu.stream, p);
    return;
  }
  auto kernel = selective_scan_backward_kernel<T, kLanes, kSpt, kBackwardThreads>;
  MOSS_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.shared)));
  cuda::launch("selective_scan_backward_kernel", kernel, dim3(grid), dim3(kBackwardThreads), plan.shared, gpu.stream,
               p);
}

/// Queues the second pass of dB or dC (`g` asked for and not empty).
template <class T>
void launch_bc_reduce(const Cuda& gpu, const float* part, const TensorView<T, 4>& g, index_t batch, index_t slots,
                      index_t supertile_channels, index_t dim, const char* name) {
  const bool sum_b = g.stride[0] == 0, sum_t = g.stride[3] == 0;
  const index_t groups = g.shape[1], N = g.shape[2], L = g.shape[3];
  const index_t total = (sum_b ? 1 : batch) * groups * N * (sum_t ? 1 : L);
  cuda::launch(name, backward_bc_reduce_kernel<T, kBackwardReduceThreads>,
               dim3(cuda::grid_blocks(total, kBackwardReduceThreads)), dim3(kBackwardReduceThreads), 0, gpu.stream,
               part, g, batch, slots, sum_t ? index_t(1) : L, dim / groups, supertile_channels, sum_b, sum_t);
}

/// The forward scan's arguments of the backward's `a`: what `launch_checkpoints` reads.
template <class T>
SelectiveScanArgs<T> checkpoint_args(const SelectiveScanBackwardArgs<T>& a) {
  SelectiveScanArgs<T> f;
  f.u = a.u;
  f.delta = a.delta;
  f.A = a.A;
  f.B = a.B;
  f.C = a.C;
  f.delta_bias = a.delta_bias;
  f.delta_softplus = a.delta_softplus;
  f.initial_state = a.initial_state;
  return f;
}

/// The backward of `a` (validated) on the GPU: the plan (the test and benchmark hooks: see
/// `backward_plan`), the workspace from the backend's pool, the checkpoints (by the forward scan
/// kernel for the warp-per-state plan), the main kernel, the second passes.
template <class T>
void run_backward(const Cuda& gpu, const SelectiveScanBackwardArgs<T>& a, index_t subtiles = 0, int states_per_warp = 0,
                  bool kernel_checkpoints = false) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], N = a.A.shape[1];
  if (dim == 0) return;  // every output is empty
  const BackwardPlan plan = backward_plan(a, subtiles, states_per_warp, kernel_checkpoints);
  WorkspaceLayout measure;
  backward_scratch(measure, a, plan);
  const OpWorkspace<Cuda> ws(gpu, Workspace{}, measure.bytes(), "selective_scan_backward (cuda)");
  WorkspaceLayout layout = ws.layout();
  const BackwardScratch s = backward_scratch(layout, a, plan);
  if (batch > 0 && plan.forward_checkpoints) launch_checkpoints(gpu, checkpoint_args(a), s.ckpt);
  if (batch > 0 && plan.warp_per_state)
    launch_backward_main<T, 16, 1>(gpu, a, plan, s);
  else if (batch > 0)
    with_backward_shape(N, [&]<int kLanes, int kSpt>() { launch_backward_main<T, kLanes, kSpt>(gpu, a, plan, s); });
  const index_t supertile_channels =
      plan.warp_per_state ? plan.slice_channels : static_cast<index_t>(plan.subtiles) * plan.channels;
  if (wants_bc(a.dB))
    launch_bc_reduce(gpu, s.dB_part, a.dB, batch, plan.slots_b, supertile_channels, dim,
                     "backward_bc_reduce_kernel (dB)");
  if (wants_bc(a.dC))
    launch_bc_reduce(gpu, s.dC_part, a.dC, batch, plan.slots_c, supertile_channels, dim,
                     "backward_bc_reduce_kernel (dC)");
  if (present(a.dA) || present(a.dD) || present(a.ddelta_bias))
    cuda::launch("backward_param_reduce_kernel", backward_param_reduce_kernel<kBackwardReduceThreads>,
                 dim3(cuda::grid_blocks(dim * N, kBackwardReduceThreads)), dim3(kBackwardReduceThreads), 0, gpu.stream,
                 s.dA_part, TensorView<float, 2>(a.dA), s.dD_part, TensorView<float, 1>(a.dD), s.dbias_part,
                 TensorView<float, 1>(a.ddelta_bias), batch, dim, N, a.accumulate);
}

/// Bytes of device scratch `selective_scan_backward(gpu, a)` takes from the backend's pool for
/// `a` (validated): the layout above, measured.
template <class T>
std::size_t backward_workspace_bytes(const SelectiveScanBackwardArgs<T>& a) {
  if (a.u.shape[1] == 0) return 0;
  WorkspaceLayout measure;
  backward_scratch(measure, a, backward_plan(a));
  return measure.bytes();
}

}  // namespace detail::scan

/// The selective-scan backward on the GPU (contract: moss/ops/selective_scan_backward.hpp):
/// validates once, then queues the kernels of backward_kernel.cuh on `gpu.stream`; never
/// synchronises. Scratch comes from the backend's pool (stream-ordered).
template <class T>
void selective_scan_backward(const Cuda& gpu, const SelectiveScanBackwardArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan_backward (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(a, "selective_scan_backward");
  detail::scan::run_backward(gpu, a);
}

}  // namespace moss
