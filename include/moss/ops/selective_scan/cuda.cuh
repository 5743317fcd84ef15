// moss/ops/selective_scan/cuda.cuh: the CUDA selective scan and decode step (needs nvcc).
//
//   moss::selective_scan(moss::Cuda{stream}, args);       // queued on stream, no host sync
//   moss::selective_scan_step(moss::Cuda{stream}, args);
//
// The host side validates (backend-neutral `validate`), picks the tuning row for N, the
// shared-memory layout (time-major when u has unit stride along dim or nowhere, row-major when
// along L) and, per tensor, 16-byte copies where strides and alignment allow, and launches.
// T is a moss::StorageType: the double instantiation (moss::HostReal) is host-only, and every
// CUDA entry point says so in a static_assert.
#pragma once

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/cuda/device.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan/kernel.cuh"
#include "moss/ops/selective_scan/tuning.cuh"

namespace moss {

namespace detail::scan {

/// Smallest power of two ≥ x (x ≥ 1).
constexpr int next_pow2(index_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

/// 16-byte copies are possible when the base is 16-byte aligned, every stride that moves the
/// tile's start (`offset_strides`) keeps that alignment, and the tile is contiguous along the
/// axis the layout stores contiguously.
template <class T>
TileAccess tile_access(const void* data, TileLayout layout, index_t row_stride, index_t time_stride,
                       std::initializer_list<index_t> offset_strides) {
  constexpr index_t V = 16 / sizeof(T);
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0) return TileAccess::scalar;
  for (index_t s : offset_strides)
    if (s % V != 0) return TileAccess::scalar;
  if (layout == TileLayout::time_major && row_stride == 1 && time_stride % V == 0) return TileAccess::vector_rows;
  if (layout == TileLayout::row_major && time_stride == 1 && row_stride % V == 0) return TileAccess::vector_time;
  return TileAccess::scalar;
}

/// An activation operand (batch, dim, L) of the kernel.
template <class T, class P>
ScanOperand<P> act_operand(const TensorView<P, 3>& v, TileLayout layout) {
  ScanOperand<P> o;
  if (!present(v)) return o;
  o.data = v.data;
  o.batch_stride = v.stride[0];
  o.row_stride = v.stride[1];
  o.time_stride = v.stride[2];
  // Tiles start at multiples of the channel tile (rows) and of the chunk (time), both multiples of V.
  o.access = tile_access<T>(v.data, layout, v.stride[1], v.stride[2], {v.shape[0] > 1 ? v.stride[0] : 0});
  return o;
}

/// B or C (batch, groups, N, L) of the kernel, with its raw staged layout.
template <class T>
ScanBc<T> bc_operand(const ConstView<T, 4>& v, index_t dim, int chunk) {
  constexpr int V = 16 / sizeof(T);
  ScanBc<T> o;
  o.layout = (v.stride[3] == 1 && v.stride[2] != 1) ? TileLayout::row_major : TileLayout::time_major;
  o.ld = o.layout == TileLayout::time_major ? static_cast<int>(ceil_div<index_t>(v.shape[2], V) * V) : chunk + V;
  o.tile.data = v.data;
  o.tile.batch_stride = v.stride[0];
  o.tile.row_stride = v.stride[2];
  o.tile.time_stride = v.stride[3];
  o.tile.access = tile_access<T>(v.data, o.layout, v.stride[2], v.stride[3],
                                 {v.shape[0] > 1 ? v.stride[0] : 0, v.shape[1] > 1 ? v.stride[1] : 0});
  o.group_stride = v.stride[1];
  o.channels_per_group = dim / v.shape[1];
  return o;
}

/// Elements of one raw staged B or C tile.
template <class T>
int bc_tile_elems(const ScanBc<T>& o, int N, int chunk) {
  return o.layout == TileLayout::time_major ? chunk * o.ld : N * o.ld;
}

/// The kernel parameters of a full-sequence scan with tuning `cfg`, and their shared memory.
template <class T, ScanTuning cfg>
std::size_t scan_params(const SelectiveScanArgs<T>& a, ScanParams<T>& p) {
  constexpr int kSpt = cfg.states_per_thread;
  constexpr int V = 16 / sizeof(T);
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2];
  const int N = static_cast<int>(a.A.shape[1]);

  p.batch = batch;
  p.dim = dim;
  p.L = L;
  p.N = N;
  p.threads_per_channel = next_pow2(ceil_div<index_t>(N, kSpt));
  p.channels = cfg.threads / p.threads_per_channel;
  p.chunk = cfg.template chunk<T>();
  const index_t tiles = ceil_div<index_t>(dim, p.channels);
  MOSS_EXPECTS(tiles * batch <= INT_MAX, unsupported_error, "selective_scan (cuda): batch ", batch, " × ", tiles,
               " channel tiles exceed the grid limit of ", INT_MAX, " blocks");
  p.tiles = static_cast<int>(tiles);

  p.act_layout = (a.u.stride[2] == 1 && a.u.stride[1] != 1) ? TileLayout::row_major : TileLayout::time_major;
  p.act_ld = p.act_layout == TileLayout::time_major ? p.channels : p.chunk + V;
  p.act_tile_elems = p.act_layout == TileLayout::time_major ? p.chunk * p.channels : p.channels * p.act_ld;
  p.u = act_operand<T>(a.u, p.act_layout);
  p.delta = act_operand<T>(a.delta, p.act_layout);
  p.z = act_operand<T>(a.z, p.act_layout);
  p.out = act_operand<T>(a.out, p.act_layout);

  p.B = bc_operand(a.B, dim, p.chunk);
  p.C = bc_operand(a.C, dim, p.chunk);
  const int b_elems = bc_tile_elems(p.B, N, p.chunk), c_elems = bc_tile_elems(p.C, N, p.chunk);
  p.bc_tile_elems = b_elems > c_elems ? b_elems : c_elems;
  p.bc_float_ld = p.threads_per_channel * (kSpt + kSlicePad);

  p.A = a.A.data;
  p.A_row_stride = a.A.stride[0];
  p.A_state_stride = a.A.stride[1];
  if (present(a.D)) {
    p.D = a.D.data;
    p.D_stride = a.D.stride[0];
  }
  if (present(a.delta_bias)) {
    p.delta_bias = a.delta_bias.data;
    p.delta_bias_stride = a.delta_bias.stride[0];
  }
  if (present(a.initial_state)) {
    p.initial_state = a.initial_state.data;
    for (int i = 0; i < 3; ++i) p.initial_strides[i] = a.initial_state.stride[i];
  }
  if (present(a.final_state)) {
    p.final_state = a.final_state.data;
    for (int i = 0; i < 3; ++i) p.final_strides[i] = a.final_state.stride[i];
  }
  p.delta_softplus = a.delta_softplus;

  return (6 * static_cast<std::size_t>(p.act_tile_elems) + 4 * p.bc_tile_elems) * sizeof(T) +
         2 * sizeof(float) * p.chunk * p.bc_float_ld;
}

static_assert(
    [] {
      for (const ScanTuning& t : kScanTunings)
        if (kScanCheckpointSteps % t.chunk_2byte != 0 || kScanCheckpointSteps % t.chunk_4byte != 0) return false;
      return true;
    }(),
    "moss: every staged scan chunk must divide kScanCheckpointSteps (the checkpoints start at chunk starts)");

/// The full-sequence kernel over prepared parameters `p` (`scan_params`) with `smem` bytes.
template <class T, ScanTuning cfg>
void launch_scan_params(const Cuda& gpu, const ScanParams<T>& p, std::size_t smem) {
  const index_t blocks = static_cast<index_t>(p.tiles) * p.batch;
  auto kernel = selective_scan_kernel<T, cfg.states_per_thread, cfg.threads, cfg.min_blocks, cfg.steps_per_group>;
  cuda::allow_dynamic_shared(kernel, smem);
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_kernel", gpu.stream);
}

/// Launches the full-sequence kernel with tuning `cfg` (a kScanTunings row; benchmarks may pass
/// others to compare): SequentialScan.
template <class T, ScanTuning cfg>
void launch_scan(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  ScanParams<T> p;
  const std::size_t smem = scan_params<T, cfg>(a, p);
  launch_scan_params<T, cfg>(gpu, p, smem);
}

/// How ChunkedScan splits L: `segments` segments of `segment_len` steps (the last one shorter).
struct SegmentPlan {
  index_t segment_len = 0;
  int segments = 1;
};

/// Segments of `segment_len` steps rounded up to a multiple of the staged chunk (so every
/// segment starts 16-byte aligned where the chunks do), at least one.
template <class T, ScanTuning cfg>
SegmentPlan fixed_segments(index_t L, index_t segment_len) {
  constexpr index_t chunk = cfg.template chunk<T>();
  SegmentPlan plan;
  plan.segment_len = ceil_div<index_t>(segment_len < 1 ? 1 : segment_len, chunk) * chunk;
  plan.segments = L == 0 ? 1 : static_cast<int>(ceil_div<index_t>(L, plan.segment_len));
  return plan;
}

/// Shortest segment ChunkedScan makes when L allows two: shorter ones pay pass 1 and the
/// carries for little parallelism.
inline constexpr index_t kMinSegment = 128;

/// AutoScan picks ChunkedScan when the sequential kernel would fill at most 1 / kAutoIdleFactor
/// of one wave and L has at least kAutoMinLength steps (see AutoScan for why).
inline constexpr index_t kAutoIdleFactor = 4;
inline constexpr index_t kAutoMinLength = 512;

/// How many times the sequential kernel's blocks (batch × channel tiles) fit into one wave of
/// resident blocks (sms × the row's blocks per SM): f means it leaves (f - 1) / f of the GPU idle.
template <class T, ScanTuning cfg>
index_t idle_factor(const SelectiveScanArgs<T>& a, int sms) {
  const index_t batch = a.u.shape[0], dim = a.u.shape[1];
  const index_t per_block = cfg.threads / next_pow2(ceil_div<index_t>(a.A.shape[1], cfg.states_per_thread));
  const index_t row_blocks = batch * ceil_div<index_t>(dim, per_block);
  return row_blocks > 0 ? static_cast<index_t>(sms) * cfg.min_blocks / row_blocks : 0;
}

/// ChunkedScan's split of L for `a` on a GPU of `sms` multiprocessors: enough segments to fill
/// one wave of resident blocks (at least two), each at least kMinSegment steps (or L / 2 when L
/// is shorter than two of them); one segment only when L fits one staged chunk.
template <class T, ScanTuning cfg>
SegmentPlan plan_segments(const SelectiveScanArgs<T>& a, int sms) {
  const index_t L = a.u.shape[2];
  const index_t factor = idle_factor<T, cfg>(a, sms);
  const index_t want = factor > 2 ? factor : 2;
  const index_t shortest = kMinSegment < ceil_div<index_t>(L, 2) ? kMinSegment : ceil_div<index_t>(L, 2);
  const index_t len = ceil_div<index_t>(L, want);
  return fixed_segments<T, cfg>(L, len > shortest ? len : shortest);
}

/// The segmented scan (ChunkedScan) with tuning `cfg` and `plan` (segments ≥ 2): pass 1, the
/// carries, the rescan, in `ends` and `delta_sums` (see `segment_scratch`).
template <class T, ScanTuning cfg>
void launch_segments(const Cuda& gpu, const SelectiveScanArgs<T>& a, const SegmentPlan& plan, float* ends,
                     float* delta_sums) {
  ScanParams<T> p;
  const std::size_t smem = scan_params<T, cfg>(a, p);
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], N = a.A.shape[1];
  const index_t row_blocks = static_cast<index_t>(p.tiles) * batch;
  const index_t blocks = row_blocks * (plan.segments - 1);
  MOSS_EXPECTS(blocks <= INT_MAX, unsupported_error, "selective_scan (cuda, chunked): ", row_blocks, " blocks × ",
               plan.segments - 1, " segments exceed the grid limit of ", INT_MAX, " blocks");
  p.segment_len = plan.segment_len;
  p.segments = plan.segments;
  p.ends = ends;
  p.delta_sums = delta_sums;
  auto kernel =
      selective_scan_segment_kernel<T, cfg.states_per_thread, cfg.threads, cfg.min_blocks, cfg.steps_per_group>;
  cuda::allow_dynamic_shared(kernel, smem);
  // Pass 1: segments 0 .. K-2.
  p.first_segment = 0;
  p.rescan = false;
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_segment_kernel (pass 1)", gpu.stream);
  // The carries.
  const index_t states = batch * dim * N;
  scan_carry_kernel<256><<<static_cast<unsigned>(ceil_div<index_t>(states, 256)), 256, 0, gpu.stream>>>(
      p.ends, p.delta_sums, a.A.data, a.A.stride[0], a.A.stride[1], batch, dim, N, plan.segments);
  MOSS_CHECK_LAUNCH("scan_carry_kernel", gpu.stream);
  // The rescan: segments 1 .. K-1.
  p.first_segment = 1;
  p.rescan = true;
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_segment_kernel (rescan)", gpu.stream);
}

/// Calls `f.template operator()<row>()` with the kScanTunings row serving d_state N.
template <class F>
decltype(auto) with_tuning(index_t N, F&& f) {
  static_assert(kScanBuckets == 3, "moss: selective_scan dispatches three kScanTunings rows");
  switch (scan_bucket(N)) {
    case 0:
      return f.template operator()<kScanTunings[0]>();
    case 1:
      return f.template operator()<kScanTunings[1]>();
    default:
      return f.template operator()<kScanTunings[2]>();
  }
}

/// The state entering every kScanCheckpointSteps-step chunk of `a` (validated; `a.out`, `a.z`
/// and `a.D` are not used and may be absent) into `checkpoints`, (batch, dim, ⌈L /
/// kScanCheckpointSteps⌉, N) floats, contiguous; nothing else is written. The sequential kernel's
/// recurrence (SequentialScan's states), for the scan backward (backward_cuda.cuh).
template <class T>
void launch_checkpoints(const Cuda& gpu, const SelectiveScanArgs<T>& a, float* checkpoints) {
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0 || a.u.shape[2] == 0) return;
  with_tuning(a.A.shape[1], [&]<ScanTuning cfg>() {
    ScanParams<T> p;
    const std::size_t smem = scan_params<T, cfg>(a, p);
    p.checkpoints = checkpoints;
    p.checkpoint_chunks = ceil_div<index_t>(a.u.shape[2], kScanCheckpointSteps);
    p.states_only = true;
    launch_scan_params<T, cfg>(gpu, p, smem);
  });
}

/// ChunkedScan's plan for `a` on the current device.
template <class T>
SegmentPlan chunked_plan(const SelectiveScanArgs<T>& a) {
  const int sms = cuda::sm_count();
  return with_tuning(a.A.shape[1], [&]<ScanTuning cfg>() { return plan_segments<T, cfg>(a, sms); });
}

/// AutoScan's rule on the current device (see AutoScan): true for ChunkedScan.
template <class T>
bool auto_chunks(const SelectiveScanArgs<T>& a) {
  const int sms = cuda::sm_count();
  const index_t factor = with_tuning(a.A.shape[1], [&]<ScanTuning cfg>() { return idle_factor<T, cfg>(a, sms); });
  return factor >= kAutoIdleFactor && a.u.shape[2] >= kAutoMinLength;
}

/// Runs the segmented scan of `a` with `plan` (segments ≥ 2), its scratch (`segment_scratch`)
/// from `a.workspace` or, when that has no data, from the backend's pool (stream-ordered: freed
/// after the launches on the stream).
template <class T>
void run_segments(const Cuda& gpu, const SelectiveScanArgs<T>& a, const SegmentPlan& plan) {
  WorkspaceLayout measure;
  segment_scratch(measure, a, plan.segments);
  const OpWorkspace<Cuda> ws(gpu, a.workspace, measure.bytes(), "selective_scan (cuda, chunked)");
  WorkspaceLayout layout = ws.layout();
  const SegmentScratch scratch = segment_scratch(layout, a, plan.segments);
  with_tuning(a.A.shape[1],
              [&]<ScanTuning cfg>() { launch_segments<T, cfg>(gpu, a, plan, scratch.ends, scratch.delta_sums); });
}

template <class T>
void launch_step(const Cuda& gpu, const SelectiveScanStepArgs<T>& a) {
  constexpr int kSpt = kStepTuning.states_per_thread;
  constexpr int kThreads = kStepTuning.threads;
  const index_t batch = a.u.shape[0], dim = a.u.shape[1];
  StepParams<T> p;
  p.state = a.state.data;
  for (int i = 0; i < 3; ++i) {
    p.state_strides[i] = a.state.stride[i];
    p.B_strides[i] = a.B.stride[i];
    p.C_strides[i] = a.C.stride[i];
  }
  for (int i = 0; i < 2; ++i) {
    p.u_strides[i] = a.u.stride[i];
    p.delta_strides[i] = a.delta.stride[i];
    p.z_strides[i] = a.z.stride[i];
    p.out_strides[i] = a.out.stride[i];
    p.A_strides[i] = a.A.stride[i];
  }
  p.u = a.u.data;
  p.delta = a.delta.data;
  p.z = present(a.z) ? a.z.data : nullptr;
  p.out = a.out.data;
  p.A = a.A.data;
  p.B = a.B.data;
  p.C = a.C.data;
  p.b_channels_per_group = dim / a.B.shape[1];
  p.c_channels_per_group = dim / a.C.shape[1];
  if (present(a.D)) {
    p.D = a.D.data;
    p.D_stride = a.D.stride[0];
  }
  if (present(a.delta_bias)) {
    p.delta_bias = a.delta_bias.data;
    p.delta_bias_stride = a.delta_bias.stride[0];
  }
  p.dim = dim;
  p.N = static_cast<int>(a.A.shape[1]);
  p.delta_softplus = a.delta_softplus;
  // The float4 kernel when the state and A rows are contiguous and 16-byte aligned along N (and
  // N ≤ 128, so a channel's N / 4 threads stay within one warp's shuffles).
  const auto aligned = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  const bool vec4 = p.N % 4 == 0 && p.N <= 128 && a.state.stride[2] == 1 && a.state.stride[1] % 4 == 0 &&
                    a.state.stride[0] % 4 == 0 && aligned(a.state.data) && a.A.stride[1] == 1 &&
                    a.A.stride[0] % 4 == 0 && aligned(a.A.data);
  p.threads_per_channel = next_pow2(ceil_div<index_t>(p.N, vec4 ? 4 : kSpt));
  p.channels = kThreads / p.threads_per_channel;
  const index_t tiles = ceil_div<index_t>(dim, p.channels);
  const index_t blocks = tiles * batch;
  MOSS_EXPECTS(blocks <= INT_MAX, unsupported_error, "selective_scan_step (cuda): batch ", batch, " × ", tiles,
               " channel tiles exceed the grid limit of ", INT_MAX, " blocks");
  p.tiles = static_cast<int>(tiles);
  if (vec4) {
    selective_scan_step_vec4_kernel<T, kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, gpu.stream>>>(p);
    MOSS_CHECK_LAUNCH("selective_scan_step_vec4_kernel", gpu.stream);
    return;
  }
  selective_scan_step_kernel<T, kSpt, kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_step_kernel", gpu.stream);
}

}  // namespace detail::scan

/// SequentialScan on the GPU: one thread per (channel, slice of states) walks all of L, queued
/// on `gpu.stream` (args validated by `selective_scan`).
template <class T>
void SequentialScan::run(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  detail::scan::with_tuning(a.A.shape[1], [&]<detail::ScanTuning cfg>() { detail::scan::launch_scan<T, cfg>(gpu, a); });
}

/// ChunkedScan on the GPU: the segmented scan with the plan for this device (the sequential
/// kernel when L fits one staged chunk). Scratch: `a.workspace` or the backend's pool.
template <class T>
void ChunkedScan::run(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  const detail::scan::SegmentPlan plan = detail::scan::chunked_plan(a);
  if (plan.segments < 2) return SequentialScan::run(gpu, a);
  detail::scan::run_segments(gpu, a, plan);
}

/// Bytes of scratch ChunkedScan needs for `a` on the current device (0 when it runs unsegmented).
template <class T>
std::size_t ChunkedScan::workspace_bytes(const Cuda&, const SelectiveScanArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return 0;
  WorkspaceLayout measure;
  detail::scan::segment_scratch(measure, a, detail::scan::chunked_plan(a).segments);
  return measure.bytes();
}

/// AutoScan on the GPU: ChunkedScan when its plan splits L (see AutoScan), else SequentialScan.
template <class T>
void AutoScan::run(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  if (detail::scan::auto_chunks(a)) return ChunkedScan::run(gpu, a);
  SequentialScan::run(gpu, a);
}

/// Bytes of scratch AutoScan needs for `a` on the current device (0 when it runs SequentialScan).
template <class T>
std::size_t AutoScan::workspace_bytes(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0 || !detail::scan::auto_chunks(a)) return 0;
  return ChunkedScan::workspace_bytes(gpu, a);
}

/// Advances every sequence by one token on the GPU, updating `state` in place.
template <class T>
void selective_scan_step(const Cuda& gpu, const SelectiveScanStepArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::selective_scan_step (cuda): T must be float, moss::f16 or moss::bf16; double is host-only");
  validate(a, "selective_scan_step");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  detail::scan::launch_step(gpu, a);
}

}  // namespace moss
