// moss/ops/selective_scan/cuda.cuh: the CUDA selective scan and decode step (needs nvcc).
//
//   moss::selective_scan(moss::Cuda{stream}, args);       // queued on stream, no host sync
//   moss::selective_scan_step(moss::Cuda{stream}, args);
//
// The host side validates (backend-neutral `validate`), picks the tuning row for N, the
// shared-memory layout (time-major when u has unit stride along dim or nowhere, row-major when
// along L) and, per tensor, 16-byte copies where strides and alignment allow, and launches.
#pragma once

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "moss/backend/cuda.cuh"
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

/// Launches the full-sequence kernel with tuning `cfg` (a kScanTunings row; benchmarks may pass
/// others to compare).
template <class T, ScanTuning cfg>
void launch_scan(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  constexpr int kSpt = cfg.states_per_thread;
  constexpr int V = 16 / sizeof(T);
  const index_t batch = a.u.shape[0], dim = a.u.shape[1], L = a.u.shape[2];
  const int N = static_cast<int>(a.A.shape[1]);

  ScanParams<T> p;
  p.dim = dim;
  p.L = L;
  p.N = N;
  p.threads_per_channel = next_pow2(ceil_div<index_t>(N, kSpt));
  p.channels = cfg.threads / p.threads_per_channel;
  p.chunk = cfg.template chunk<T>();
  const index_t tiles = ceil_div<index_t>(dim, p.channels);
  const index_t blocks = tiles * batch;
  MOSS_EXPECTS(blocks <= INT_MAX, unsupported_error, "selective_scan (cuda): batch ", batch, " × ", tiles,
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

  const std::size_t smem = (6 * static_cast<std::size_t>(p.act_tile_elems) + 4 * p.bc_tile_elems) * sizeof(T) +
                           2 * sizeof(float) * p.chunk * p.bc_float_ld;
  auto kernel = selective_scan_kernel<T, kSpt, cfg.threads, cfg.min_blocks, cfg.steps_per_group>;
  MOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, smem, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_kernel", gpu.stream);
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
  p.threads_per_channel = next_pow2(ceil_div<index_t>(p.N, kSpt));
  p.channels = kThreads / p.threads_per_channel;
  p.delta_softplus = a.delta_softplus;
  const index_t tiles = ceil_div<index_t>(dim, p.channels);
  const index_t blocks = tiles * batch;
  MOSS_EXPECTS(blocks <= INT_MAX, unsupported_error, "selective_scan_step (cuda): batch ", batch, " × ", tiles,
               " channel tiles exceed the grid limit of ", INT_MAX, " blocks");
  p.tiles = static_cast<int>(tiles);
  selective_scan_step_kernel<T, kSpt, kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, gpu.stream>>>(p);
  MOSS_CHECK_LAUNCH("selective_scan_step_kernel", gpu.stream);
}

}  // namespace detail::scan

/// Runs the selective scan on the GPU, queued on `gpu.stream` (contract: moss/ops/selective_scan.hpp).
template <class T>
void selective_scan(const Cuda& gpu, const SelectiveScanArgs<T>& a) {
  static_assert(detail::kScanBuckets == 3, "moss: selective_scan dispatches three kScanTunings rows");
  validate(a, "selective_scan");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  switch (detail::scan_bucket(a.A.shape[1])) {
    case 0:
      detail::scan::launch_scan<T, detail::kScanTunings[0]>(gpu, a);
      break;
    case 1:
      detail::scan::launch_scan<T, detail::kScanTunings[1]>(gpu, a);
      break;
    default:
      detail::scan::launch_scan<T, detail::kScanTunings[2]>(gpu, a);
      break;
  }
}

/// Advances every sequence by one token on the GPU, updating `state` in place.
template <class T>
void selective_scan_step(const Cuda& gpu, const SelectiveScanStepArgs<T>& a) {
  validate(a, "selective_scan_step");
  if (a.u.shape[0] == 0 || a.u.shape[1] == 0) return;
  detail::scan::launch_step(gpu, a);
}

}  // namespace moss
