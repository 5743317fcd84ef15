// moss/ops/selective_scan/kernel.cuh: the selective-scan kernels (needs nvcc).
//
// Full sequence: a per-thread sequential recurrence over time. A thread keeps kStatesPerThread
// states of one channel in a register array indexed only by compile-time constants;
// `threads_per_channel` threads share a channel and add their partial y by warp shuffles. A block
// covers a tile of channels of one batch row and walks L in chunks: it copies the chunk of u,
// delta, z (channels × chunk) and of B, C (N × chunk, once for all its channels when they share a
// group) into shared memory with 16-byte cp.async along the unit-stride axis, one chunk ahead of
// the math; computes (in groups of steps whose loads, Δ and gates are issued together, see
// `staged_group`); writes out through shared memory with coalesced 16-byte stores.
//
// Segmented (ChunkedScan, docs/math.md §1): the same block body over one time segment of L per
// block, so batch · channel tiles · segments blocks fill the GPU when batch · dim alone cannot.
// Pass 1 scans segments 0 .. K-2 (segment 0 from the true initial state, writing its outputs;
// the others from zero, writing nothing but their end state and Σ Δ); `scan_carry_kernel` turns
// the end states into the true state entering each segment with the (a, b) pair of math.hpp;
// the rescan (the block body again) recomputes segments 1 .. K-1 from those states and writes
// the outputs and the final state.
//
// Step: one thread per (batch, channel, slice of states), plain loads.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/selective_scan/math.hpp"

namespace moss::detail::scan {

/// How a block moves a (rows × chunk) tile between global and shared memory.
enum class TileAccess : std::uint8_t {
  vector_rows,  // 16-byte copies along unit-stride rows (channels, or states for B / C); time-major tile
  vector_time,  // 16-byte copies along unit-stride time; row-major tile
  scalar,       // one element at a time, any strides
};

/// Steps between the states the full-sequence kernel writes for the scan backward
/// (`ScanParams::checkpoints`): the backward's chunk (backward_state_kernel.cuh). Every staged
/// chunk length divides it (tuning.cuh), so the kernel sees each multiple at a chunk's start.
inline constexpr int kScanCheckpointSteps = 256;

/// Shared-memory layout of a tile: element (row, t) at t·ld + row (time_major) or row·ld + t.
enum class TileLayout : std::uint8_t { time_major, row_major };

/// Shared-memory index of tile element (row, t).
MOSS_DEVICE int tile_index(TileLayout layout, int ld, int row, int t) {
  return layout == TileLayout::time_major ? t * ld + row : row * ld + t;
}

/// A strided (batch, rows, L) operand of the scan kernel (u, delta, z, out).
template <class P>
struct ScanOperand {
  P* data = nullptr;
  index_t batch_stride = 0, row_stride = 0, time_stride = 0;
  TileAccess access = TileAccess::scalar;

  /// Address of element (b, row, t).
  MOSS_HD P* at(index_t b, index_t row, index_t t) const {
    return data + b * batch_stride + row * row_stride + t * time_stride;
  }
};

/// B or C, (batch, groups, N, L): `tile` addresses group 0 and its rows are the N states.
template <class T>
struct ScanBc {
  ScanOperand<const T> tile;
  index_t group_stride = 0;
  index_t channels_per_group = 1;
  TileLayout layout = TileLayout::time_major;  // of the raw staged tile
  int ld = 0;                                  // leading dimension of the raw staged tile
};

/// Everything the full-sequence kernel needs, by value.
template <class T>
struct ScanParams {
  ScanOperand<const T> u, delta, z;  // z.data null when absent
  ScanOperand<T> out;
  ScanBc<T> B, C;
  const float* A = nullptr;  // (dim, N)
  index_t A_row_stride = 0, A_state_stride = 0;
  const float* D = nullptr;  // (dim), optional
  index_t D_stride = 0;
  const float* delta_bias = nullptr;  // (dim), optional
  index_t delta_bias_stride = 0;
  const float* initial_state = nullptr;  // (batch, dim, N), optional
  index_t initial_strides[3] = {0, 0, 0};
  float* final_state = nullptr;  // (batch, dim, N), optional
  index_t final_strides[3] = {0, 0, 0};
  index_t dim = 0, L = 0;
  int N = 0;
  int threads_per_channel = 1;  // a power of two ≤ 32
  int channels = 0;             // per block
  int tiles = 0;                // channel tiles per batch row
  int chunk = 0;                // time steps per staged chunk
  TileLayout act_layout = TileLayout::time_major;
  int act_ld = 0;          // leading dimension of the u / delta / z / out tiles
  int act_tile_elems = 0;  // elements of one such tile
  int bc_tile_elems = 0;   // elements of one raw B or C tile
  int bc_float_ld = 0;     // floats per time step of the converted B or C chunk
  bool delta_softplus = false;
  // The states every kScanCheckpointSteps steps (the scan backward's checkpoints): the state
  // entering step k · kScanCheckpointSteps of (b, d) at ((b · dim + d) · checkpoint_chunks + k) · N
  // + n; null: not written. With `states_only` nothing else is written (no out, z not read).
  float* checkpoints = nullptr;
  index_t checkpoint_chunks = 0;
  bool states_only = false;
  // Segments (the segmented kernel only; the sequential one scans all of L in one block).
  index_t batch = 0;
  index_t segment_len = 0;      // steps per segment, a multiple of `chunk`
  int segments = 0;             // segments of the whole sequence (K ≥ 2)
  int first_segment = 0;        // segment of this launch's first blocks
  bool rescan = false;          // false: pass 1 (end states), true: the rescan that writes outputs
  float* ends = nullptr;        // (K - 1, batch, dim, N) contiguous: end states, then the carries in
  float* delta_sums = nullptr;  // (K - 1, batch, dim) contiguous: Σ Δ of segments 1 .. K-2
};

/// Floats of padding after each thread's slice of states in the converted B / C rows: with a
/// slice stride of 5 × 16 bytes the threads of one channel read 16-byte words in distinct banks.
inline constexpr int kSlicePad = 4;

MOSS_DEVICE void cp_async16(void* smem, const void* gmem) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
MOSS_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most the newest committed group is still in flight.
MOSS_DEVICE void cp_async_wait_all_but_newest() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

/// Copies the (rows × nt) tile at `g` (row stride `rs`, time stride `ts`) into shared memory.
/// Vector accesses issue cp.async (complete after the next wait + barrier); the scalar path and
/// the ragged ends of vector rows store directly. Elements past `rows` in a vector are zeroed.
template <class T, int kThreads>
MOSS_DEVICE void load_tile(T* s, TileLayout layout, int ld, const T* g, index_t rs, index_t ts, int rows, int nt,
                           TileAccess access) {
  constexpr int V = 16 / sizeof(T);
  if (access == TileAccess::vector_rows) {
    const int nv = (rows + V - 1) / V;
    for (int i = threadIdx.x; i < nt * nv; i += kThreads) {
      const int t = i / nv, r = (i - t * nv) * V;
      T* dst = s + t * ld + r;
      const T* src = g + t * ts + r;
      if (r + V <= rows) {
        cp_async16(dst, src);
      } else {
        for (int j = 0; j < V; ++j) dst[j] = r + j < rows ? src[j] : T{};
      }
    }
  } else if (access == TileAccess::vector_time) {
    const int nv = (nt + V - 1) / V;
    for (int i = threadIdx.x; i < rows * nv; i += kThreads) {
      const int r = i / nv, t = (i - r * nv) * V;
      T* dst = s + r * ld + t;
      const T* src = g + r * rs + t;
      if (t + V <= nt) {
        cp_async16(dst, src);
      } else {
        for (int j = 0; j < V; ++j) dst[j] = t + j < nt ? src[j] : T{};
      }
    }
  } else {
    // Consecutive threads walk the axis with unit stride, if there is one.
    const bool rows_fastest = rs == 1 || ts != 1;
    for (int i = threadIdx.x; i < rows * nt; i += kThreads) {
      int r, t;
      if (rows_fastest) {
        t = i / rows;
        r = i - t * rows;
      } else {
        r = i / nt;
        t = i - r * nt;
      }
      s[tile_index(layout, ld, r, t)] = g[r * rs + t * ts];
    }
  }
}

/// Writes the (rows × nt) tile in shared memory to `g`; the mirror of `load_tile`.
template <class T, int kThreads>
MOSS_DEVICE void store_tile(T* g, index_t rs, index_t ts, const T* s, TileLayout layout, int ld, int rows, int nt,
                            TileAccess access) {
  constexpr int V = 16 / sizeof(T);
  if (access == TileAccess::vector_rows) {
    const int nv = (rows + V - 1) / V;
    for (int i = threadIdx.x; i < nt * nv; i += kThreads) {
      const int t = i / nv, r = (i - t * nv) * V;
      T* dst = g + t * ts + r;
      const T* src = s + t * ld + r;
      if (r + V <= rows) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int j = 0; j < V && r + j < rows; ++j) dst[j] = src[j];
      }
    }
  } else if (access == TileAccess::vector_time) {
    const int nv = (nt + V - 1) / V;
    for (int i = threadIdx.x; i < rows * nv; i += kThreads) {
      const int r = i / nv, t = (i - r * nv) * V;
      T* dst = g + r * rs + t;
      const T* src = s + r * ld + t;
      if (t + V <= nt) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int j = 0; j < V && t + j < nt; ++j) dst[j] = src[j];
      }
    }
  } else {
    const bool rows_fastest = rs == 1 || ts != 1;
    for (int i = threadIdx.x; i < rows * nt; i += kThreads) {
      int r, t;
      if (rows_fastest) {
        t = i / rows;
        r = i - t * rows;
      } else {
        r = i / nt;
        t = i - r * nt;
      }
      g[r * rs + t * ts] = s[tile_index(layout, ld, r, t)];
    }
  }
}

/// Converts a raw staged B or C chunk (N × nt, storage type) to float rows of `ld` floats per
/// step, state n at n + kSlicePad · (n / kSpt). Padding states keep the zeros written at start.
template <class T, int kSpt, int kThreads>
MOSS_DEVICE void convert_bc(float* dst, int dst_ld, const T* raw, TileLayout layout, int ld, int N, int nt) {
  for (int i = threadIdx.x; i < N * nt; i += kThreads) {
    const int t = i / N, n = i - t * N;
    dst[t * dst_ld + n + kSlicePad * (n / kSpt)] = to_float(raw[tile_index(layout, ld, n, t)]);
  }
}

/// Reads kSpt consecutive floats (16-byte aligned) from shared memory.
template <int kSpt>
MOSS_DEVICE void load_states(float (&v)[kSpt], const float* p) {
  static_assert(kSpt % 4 == 0, "moss: kStatesPerThread must be a multiple of 4 (float4 loads)");
#pragma unroll
  for (int j = 0; j < kSpt / 4; ++j) {
    const float4 q = reinterpret_cast<const float4*>(p)[j];
    v[4 * j] = q.x;
    v[4 * j + 1] = q.y;
    v[4 * j + 2] = q.z;
    v[4 * j + 3] = q.w;
  }
}

/// Reads the first `valid` of kSpt strided values from global memory; zeros after them.
template <int kSpt, class T>
MOSS_DEVICE void load_states(float (&v)[kSpt], const T* p, index_t stride, int valid) {
#pragma unroll
  for (int i = 0; i < kSpt; ++i) v[i] = i < valid ? to_float(p[i * stride]) : 0.0f;
}

/// Sum of `v` over the `width` lanes (a power of two) that share a channel.
MOSS_DEVICE float sum_over_channel(float v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Advances kSpt states by one step and returns their contribution Σ C·h to y. Four partial
/// sums keep the y dependency chain short (the host adds in n order).
template <int kSpt>
MOSS_DEVICE float update_and_read(float (&h)[kSpt], const float (&a_scaled)[kSpt], float dt, float dt_u,
                                  const float (&bv)[kSpt], const float (&cv)[kSpt]) {
  float y4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kSpt; ++i) {
    h[i] = update_state(h[i], dt, a_scaled[i], dt_u, bv[i]);
    y4[i % 4] += cv[i] * h[i];
  }
  return (y4[0] + y4[1]) + (y4[2] + y4[3]);
}

/// kSteps consecutive steps t0.. of one channel whose thread owns all its states, with B and C
/// staged as floats: first every step's u, Δ and z (independent of the state), then the state
/// updates, then the gates and the stores that replace u by the output in the tile.
/// With kSumDelta the group also adds its Δ to `dt_sum`, in step order.
template <class T, int kSpt, int kSteps, bool kSumDelta>
MOSS_DEVICE void staged_group(float (&h)[kSpt], const float (&a_scaled)[kSpt], T* su, const T* sd, const T* sz, int own,
                              int own_step, int t0, const float* fb, const float* fc, int bc_ld, float bias,
                              bool softplus, bool has_d, float d_skip, bool has_z, float& dt_sum) {
  float u[kSteps], dt[kSteps], zv[kSteps], y[kSteps];
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    const int o = own + (t0 + j) * own_step;
    u[j] = to_float(su[o]);
    dt[j] = delta_value(to_float(sd[o]), bias, softplus);
    zv[j] = has_z ? to_float(sz[o]) : 0.0f;
  }
  if constexpr (kSumDelta) {
#pragma unroll
    for (int j = 0; j < kSteps; ++j) dt_sum += dt[j];
  }
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    float bv[kSpt], cv[kSpt];
    load_states<kSpt>(bv, fb + (t0 + j) * bc_ld);
    load_states<kSpt>(cv, fc + (t0 + j) * bc_ld);
    y[j] = update_and_read<kSpt>(h, a_scaled, dt[j], dt[j] * u[j], bv, cv);
  }
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    float out = has_d ? add_skip(y[j], d_skip, u[j]) : y[j];
    out = has_z ? gate(out, zv[j]) : out;
    su[own + (t0 + j) * own_step] = from_float<T>(out);
  }
}

/// One block of the full-sequence scan: channels [tile · channels, +channels) of batch row b;
/// with kSegmented, over steps [s · segment_len, +segment_len) of segment s only (see the top).
template <class T, int kSpt, int kThreads, int kStepsPerGroup, bool kSegmented>
MOSS_DEVICE void scan_block(const ScanParams<T>& p, unsigned char* smem) {
  constexpr int kSlice = kSpt + kSlicePad;
  const int tpc = p.threads_per_channel;
  const int tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.tiles));
  const index_t row = blockIdx.x / static_cast<unsigned>(p.tiles);  // batch row, segment-major when segmented
  const index_t b = kSegmented ? row % p.batch : row;
  const int seg = kSegmented ? p.first_segment + static_cast<int>(row / p.batch) : 0;
  const index_t t_begin = kSegmented ? seg * p.segment_len : 0;
  const index_t len = kSegmented ? (p.L - t_begin < p.segment_len ? p.L - t_begin : p.segment_len) : p.L;
  // Pass 1 has the true states only in segment 0, the one that starts from the true initial
  // state: it writes outputs (and checkpoints) there only.
  const bool true_states = !kSegmented || p.rescan || seg == 0;
  const bool write_out = true_states && !p.states_only;
  const index_t d0 = static_cast<index_t>(tile) * p.channels;
  const int rows = static_cast<int>(p.dim - d0 < p.channels ? p.dim - d0 : p.channels);
  const int c = static_cast<int>(threadIdx.x) / tpc;
  const int slice = static_cast<int>(threadIdx.x) - c * tpc;
  const bool active = c < rows;
  const index_t d = active ? d0 + c : d0;  // inactive threads run the loop (shuffles, barriers) on safe addresses
  const int n0 = slice * kSpt;
  const int n_valid = active ? p.N - n0 : 0;  // states of this slice below N (may be ≤ 0)
  // The state entering the block: the caller's initial state for segment 0, the carried one
  // (rescan) or zero (pass 1) for the others.
  const float* init = p.initial_state;
  index_t init_strides[3] = {p.initial_strides[0], p.initial_strides[1], p.initial_strides[2]};
  if (kSegmented && seg > 0) {
    init = p.rescan ? p.ends + (seg - 1) * p.batch * p.dim * p.N : nullptr;
    init_strides[0] = p.dim * p.N;
    init_strides[1] = p.N;
    init_strides[2] = 1;
  }

  // Shared memory: [2 stages][u, delta, z] tiles, [2 stages][B, C] raw tiles, [B, C] float chunks.
  T* act = reinterpret_cast<T*>(smem);
  T* bc_raw = act + 6 * p.act_tile_elems;
  float* b_float = reinterpret_cast<float*>(bc_raw + 4 * p.bc_tile_elems);
  float* c_float = b_float + p.chunk * p.bc_float_ld;

  // B and C are staged once for the block when all its channels use one group.
  const index_t gb = d0 / p.B.channels_per_group, gc = d0 / p.C.channels_per_group;
  const bool stage_b = (d0 + rows - 1) / p.B.channels_per_group == gb;
  const bool stage_c = (d0 + rows - 1) / p.C.channels_per_group == gc;
  const T* b_own = p.B.tile.data + b * p.B.tile.batch_stride + (d / p.B.channels_per_group) * p.B.group_stride +
                   n0 * p.B.tile.row_stride;
  const T* c_own = p.C.tile.data + b * p.C.tile.batch_stride + (d / p.C.channels_per_group) * p.C.group_stride +
                   n0 * p.C.tile.row_stride;

  float a_scaled[kSpt], h[kSpt];
#pragma unroll
  for (int i = 0; i < kSpt; ++i) {
    const bool ok = i < n_valid;
    const index_t n = n0 + i;
    a_scaled[i] = ok ? a_log2e(p.A[d * p.A_row_stride + n * p.A_state_stride]) : 0.0f;
    h[i] = ok && init ? init[b * init_strides[0] + d * init_strides[1] + n * init_strides[2]] : 0.0f;
  }
  const bool has_d = p.D != nullptr, has_z = p.z.data != nullptr && write_out;
  float dt_sum = 0.0f;  // Σ Δ over the segment (segmented pass 1)
  const float d_skip = has_d ? p.D[d * p.D_stride] : 0.0f;
  const float bias = p.delta_bias ? p.delta_bias[d * p.delta_bias_stride] : 0.0f;

  // Padding states (n ≥ N) read B = C = 0, so their h stays 0 and adds nothing to y.
  for (int i = threadIdx.x; i < 2 * p.chunk * p.bc_float_ld; i += kThreads) b_float[i] = 0.0f;

  const index_t chunks = (len + p.chunk - 1) / p.chunk;
  auto chunk_steps = [&](index_t k) {
    const index_t left = len - k * p.chunk;
    return static_cast<int>(left < p.chunk ? left : p.chunk);
  };
  auto issue_loads = [&](index_t k, int stage) {
    const index_t t0 = t_begin + k * p.chunk;
    const int nt = chunk_steps(k);
    T* s = act + 3 * stage * p.act_tile_elems;
    load_tile<T, kThreads>(s, p.act_layout, p.act_ld, p.u.at(b, d0, t0), p.u.row_stride, p.u.time_stride, rows, nt,
                           p.u.access);
    load_tile<T, kThreads>(s + p.act_tile_elems, p.act_layout, p.act_ld, p.delta.at(b, d0, t0), p.delta.row_stride,
                           p.delta.time_stride, rows, nt, p.delta.access);
    if (has_z)
      load_tile<T, kThreads>(s + 2 * p.act_tile_elems, p.act_layout, p.act_ld, p.z.at(b, d0, t0), p.z.row_stride,
                             p.z.time_stride, rows, nt, p.z.access);
    T* r = bc_raw + 2 * stage * p.bc_tile_elems;
    if (stage_b)
      load_tile<T, kThreads>(r, p.B.layout, p.B.ld, p.B.tile.at(b, 0, t0) + gb * p.B.group_stride, p.B.tile.row_stride,
                             p.B.tile.time_stride, p.N, nt, p.B.tile.access);
    if (stage_c)
      load_tile<T, kThreads>(r + p.bc_tile_elems, p.C.layout, p.C.ld, p.C.tile.at(b, 0, t0) + gc * p.C.group_stride,
                             p.C.tile.row_stride, p.C.tile.time_stride, p.N, nt, p.C.tile.access);
  };

  const int own = p.act_layout == TileLayout::time_major ? c : c * p.act_ld;  // tile index of (c, t = 0)
  const int own_step = p.act_layout == TileLayout::time_major ? p.act_ld : 1;
  if (chunks > 0) issue_loads(0, 0);
  cp_async_commit();
  for (index_t k = 0; k < chunks; ++k) {
    const int stage = static_cast<int>(k & 1);
    const int nt = chunk_steps(k);
    const index_t t0 = t_begin + k * p.chunk;
    __syncthreads();  // every thread is done with the stage the next loads overwrite
    if (k + 1 < chunks) issue_loads(k + 1, stage ^ 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "chunk k"
    cp_async_wait_all_but_newest();
    __syncthreads();  // chunk k is visible to every thread
    T* raw = bc_raw + 2 * stage * p.bc_tile_elems;
    if (stage_b) convert_bc<T, kSpt, kThreads>(b_float, p.bc_float_ld, raw, p.B.layout, p.B.ld, p.N, nt);
    if (stage_c)
      convert_bc<T, kSpt, kThreads>(c_float, p.bc_float_ld, raw + p.bc_tile_elems, p.C.layout, p.C.ld, p.N, nt);
    __syncthreads();

    if (p.checkpoints && true_states && active && t0 % kScanCheckpointSteps == 0) {
      float* ck = p.checkpoints + ((b * p.dim + d) * p.checkpoint_chunks + t0 / kScanCheckpointSteps) * p.N + n0;
#pragma unroll
      for (int i = 0; i < kSpt; ++i)
        if (i < n_valid) ck[i] = h[i];
    }

    T* su = act + 3 * stage * p.act_tile_elems;  // u, replaced step by step by out
    const T* sd = su + p.act_tile_elems;
    const T* sz = su + 2 * p.act_tile_elems;
    const float* fb = b_float + slice * kSlice;
    const float* fc = c_float + slice * kSlice;
    const T* gb_t = b_own + t0 * p.B.tile.time_stride;
    const T* gc_t = c_own + t0 * p.C.tile.time_stride;
    // The steps of the chunk. With B and C both staged and one thread per channel (the
    // canonical case) `staged_group` runs kStepsPerGroup steps at a time: the loads, Δ and gate
    // of the whole group are independent of the state chain, so the in-order scheduler can
    // overlap them with the state updates. Otherwise B / C may be read per channel and y is
    // added over the channel's threads, one step at a time.
    if (stage_b && stage_c && tpc == 1) {
      int t = 0;
      for (; t + kStepsPerGroup <= nt; t += kStepsPerGroup)
        staged_group<T, kSpt, kStepsPerGroup, kSegmented>(h, a_scaled, su, sd, sz, own, own_step, t, fb, fc,
                                                          p.bc_float_ld, bias, p.delta_softplus, has_d, d_skip, has_z,
                                                          dt_sum);
      for (; t < nt; ++t)
        staged_group<T, kSpt, 1, kSegmented>(h, a_scaled, su, sd, sz, own, own_step, t, fb, fc, p.bc_float_ld, bias,
                                             p.delta_softplus, has_d, d_skip, has_z, dt_sum);
    } else {
      // u and Δ of step t + 1 are read and computed during step t.
      float u_next = to_float(su[own]);
      float dt_next = delta_value(to_float(sd[own]), bias, p.delta_softplus);
      for (int t = 0; t < nt; ++t) {
        const int o = own + t * own_step;
        const float u = u_next, dt = dt_next;
        if constexpr (kSegmented) dt_sum += dt;
        const int o_next = t + 1 < nt ? o + own_step : o;
        u_next = to_float(su[o_next]);
        dt_next = delta_value(to_float(sd[o_next]), bias, p.delta_softplus);
        const float dt_u = dt * u;
        float bv[kSpt], cv[kSpt];
        if (stage_b) {
          load_states<kSpt>(bv, fb + t * p.bc_float_ld);
        } else {
          load_states<kSpt>(bv, gb_t + t * p.B.tile.time_stride, p.B.tile.row_stride, n_valid);
        }
        if (stage_c) {
          load_states<kSpt>(cv, fc + t * p.bc_float_ld);
        } else {
          load_states<kSpt>(cv, gc_t + t * p.C.tile.time_stride, p.C.tile.row_stride, n_valid);
        }
        float y = sum_over_channel(update_and_read<kSpt>(h, a_scaled, dt, dt_u, bv, cv), tpc);
        y = has_d ? add_skip(y, d_skip, u) : y;
        y = has_z ? gate(y, to_float(sz[o])) : y;
        // Every lane of the channel has read su[o]: lane 0 may replace it by the output.
        __syncwarp();
        if (slice == 0) su[o] = from_float<T>(y);
      }
    }
    __syncthreads();  // the out chunk is complete in shared memory
    if (write_out)
      store_tile<T, kThreads>(p.out.at(b, d0, t0), p.out.row_stride, p.out.time_stride, su, p.act_layout, p.act_ld,
                              rows, nt, p.out.access);
  }

  // The state leaving the block: the caller's final state after the last segment, else (pass 1)
  // the segment's end state and Σ Δ for `scan_carry_kernel`.
  float* fin = p.final_state;
  index_t fin_strides[3] = {p.final_strides[0], p.final_strides[1], p.final_strides[2]};
  if (kSegmented && seg + 1 < p.segments) {
    fin = p.rescan ? nullptr : p.ends + seg * p.batch * p.dim * p.N;
    fin_strides[0] = p.dim * p.N;
    fin_strides[1] = p.N;
    fin_strides[2] = 1;
    if (!p.rescan && seg > 0 && active && slice == 0) p.delta_sums[(seg * p.batch + b) * p.dim + d] = dt_sum;
  }
  if (fin && active) {
#pragma unroll
    for (int i = 0; i < kSpt; ++i)
      if (i < n_valid) fin[b * fin_strides[0] + d * fin_strides[1] + (n0 + i) * fin_strides[2]] = h[i];
  }
}

/// The full-sequence scan: one block per (batch row, channel tile); see `scan_block`.
template <class T, int kSpt, int kThreads, int kMinBlocks, int kStepsPerGroup>
__global__ void __launch_bounds__(kThreads, kMinBlocks) selective_scan_kernel(const ScanParams<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  scan_block<T, kSpt, kThreads, kStepsPerGroup, false>(p, smem);
}

/// Pass 1 or the rescan of the segmented scan: one block per (segment, batch row, channel tile).
template <class T, int kSpt, int kThreads, int kMinBlocks, int kStepsPerGroup>
__global__ void __launch_bounds__(kThreads, kMinBlocks) selective_scan_segment_kernel(const ScanParams<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  scan_block<T, kSpt, kThreads, kStepsPerGroup, true>(p, smem);
}

/// The carries between segments: one thread per (batch, channel, state) walks the segments in
/// order, h ← exp(A·Σ Δ_s)·h + end_s (`apply` of the segment's pair), from the true end state of
/// segment 0, and overwrites end_s by the state entering segment s + 1.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    scan_carry_kernel(float* ends /* (K - 1, batch, dim, N) */, const float* delta_sums /* (K - 1, batch, dim) */,
                      const float* A, index_t A_row_stride, index_t A_state_stride, index_t batch, index_t dim,
                      index_t N, int segments) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  const index_t per_segment = batch * dim * N;
  if (i >= per_segment) return;
  const index_t n = i % N, bd = i / N, d = bd % dim;
  const float a = a_log2e(A[d * A_row_stride + n * A_state_stride]);
  float h = ends[i];
  for (int s = 1; s + 1 < segments; ++s) {
    h = apply(ScanPair{segment_decay(a, delta_sums[s * batch * dim + bd]), ends[s * per_segment + i]}, h);
    ends[s * per_segment + i] = h;
  }
}

/// Everything the step kernel needs, by value.
template <class T>
struct StepParams {
  float* state = nullptr;  // (batch, dim, N)
  index_t state_strides[3] = {0, 0, 0};
  const T* u = nullptr;  // (batch, dim)
  index_t u_strides[2] = {0, 0};
  const T* delta = nullptr;
  index_t delta_strides[2] = {0, 0};
  const T* z = nullptr;  // optional
  index_t z_strides[2] = {0, 0};
  T* out = nullptr;
  index_t out_strides[2] = {0, 0};
  const float* A = nullptr;  // (dim, N)
  index_t A_strides[2] = {0, 0};
  const T* B = nullptr;  // (batch, groups, N)
  index_t B_strides[3] = {0, 0, 0};
  index_t b_channels_per_group = 1;
  const T* C = nullptr;
  index_t C_strides[3] = {0, 0, 0};
  index_t c_channels_per_group = 1;
  const float* D = nullptr;
  index_t D_stride = 0;
  const float* delta_bias = nullptr;
  index_t delta_bias_stride = 0;
  index_t dim = 0;
  int N = 0;
  int threads_per_channel = 1;
  int channels = 0;  // per block
  int tiles = 0;     // channel tiles per batch row
  bool delta_softplus = false;
};

/// One token for every sequence: one thread per (batch, channel, slice of kSpt states).
template <class T, int kSpt, int kThreads>
__global__ void __launch_bounds__(kThreads) selective_scan_step_kernel(const StepParams<T> p) {
  const int tpc = p.threads_per_channel;
  const int tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.tiles));
  const index_t b = blockIdx.x / static_cast<unsigned>(p.tiles);
  const int c = static_cast<int>(threadIdx.x) / tpc;
  const int slice = static_cast<int>(threadIdx.x) - c * tpc;
  const index_t d = static_cast<index_t>(tile) * p.channels + c;
  const bool active = d < p.dim;  // inactive threads still take part in the shuffles
  const int n0 = slice * kSpt;

  float u = 0.0f, dt = 0.0f, y = 0.0f;
  if (active) {
    u = to_float(p.u[b * p.u_strides[0] + d * p.u_strides[1]]);
    const float bias = p.delta_bias ? p.delta_bias[d * p.delta_bias_stride] : 0.0f;
    dt = delta_value(to_float(p.delta[b * p.delta_strides[0] + d * p.delta_strides[1]]), bias, p.delta_softplus);
    const float dt_u = dt * u;
    const T* bp = p.B + b * p.B_strides[0] + (d / p.b_channels_per_group) * p.B_strides[1];
    const T* cp = p.C + b * p.C_strides[0] + (d / p.c_channels_per_group) * p.C_strides[1];
    float* hp = p.state + b * p.state_strides[0] + d * p.state_strides[1];
#pragma unroll
    for (int i = 0; i < kSpt; ++i) {
      const index_t n = n0 + i;
      if (n < p.N) {
        const float a = a_log2e(p.A[d * p.A_strides[0] + n * p.A_strides[1]]);
        const float h = update_state(hp[n * p.state_strides[2]], dt, a, dt_u, to_float(bp[n * p.B_strides[2]]));
        hp[n * p.state_strides[2]] = h;
        y += to_float(cp[n * p.C_strides[2]]) * h;
      }
    }
  }
  y = sum_over_channel(y, tpc);
  if (active && slice == 0) {
    if (p.D) y = add_skip(y, p.D[d * p.D_stride], u);
    if (p.z) y = gate(y, to_float(p.z[b * p.z_strides[0] + d * p.z_strides[1]]));
    p.out[b * p.out_strides[0] + d * p.out_strides[1]] = from_float<T>(y);
  }
}

/// The step kernel when the state and A are contiguous along N, 16-byte aligned, with N a
/// multiple of 4 (every model's cache): each thread owns 4 states of one channel and moves them
/// and their A with one float4 load and store each, so a warp touches whole 512-byte runs of
/// the state (the general kernel's kSpt strided scalar loads fetch every sector kSpt times).
/// B and C stay scalar loads: one row of N per sequence, shared by every channel, cached.
template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads) selective_scan_step_vec4_kernel(const StepParams<T> p) {
  const int tpc = p.threads_per_channel;  // N / 4 rounded up to a power of two
  const int tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.tiles));
  const index_t b = blockIdx.x / static_cast<unsigned>(p.tiles);
  const int c = static_cast<int>(threadIdx.x) / tpc;
  const int slice = static_cast<int>(threadIdx.x) - c * tpc;
  const index_t d = static_cast<index_t>(tile) * p.channels + c;
  const int n0 = slice * 4;
  const bool active = d < p.dim && n0 < p.N;  // inactive threads still take part in the shuffles

  float u = 0.0f, y = 0.0f;
  if (active) {
    u = to_float(p.u[b * p.u_strides[0] + d * p.u_strides[1]]);
    const float bias = p.delta_bias ? p.delta_bias[d * p.delta_bias_stride] : 0.0f;
    const float dt =
        delta_value(to_float(p.delta[b * p.delta_strides[0] + d * p.delta_strides[1]]), bias, p.delta_softplus);
    const float dt_u = dt * u;
    const T* bp = p.B + b * p.B_strides[0] + (d / p.b_channels_per_group) * p.B_strides[1] + n0 * p.B_strides[2];
    const T* cp = p.C + b * p.C_strides[0] + (d / p.c_channels_per_group) * p.C_strides[1] + n0 * p.C_strides[2];
    auto* hp = reinterpret_cast<float4*>(p.state + b * p.state_strides[0] + d * p.state_strides[1] + n0);
    const float4 a4 = *reinterpret_cast<const float4*>(p.A + d * p.A_strides[0] + n0);
    float4 h = *hp;
    h.x = update_state(h.x, dt, a_log2e(a4.x), dt_u, to_float(bp[0]));
    h.y = update_state(h.y, dt, a_log2e(a4.y), dt_u, to_float(bp[p.B_strides[2]]));
    h.z = update_state(h.z, dt, a_log2e(a4.z), dt_u, to_float(bp[2 * p.B_strides[2]]));
    h.w = update_state(h.w, dt, a_log2e(a4.w), dt_u, to_float(bp[3 * p.B_strides[2]]));
    *hp = h;
    y = to_float(cp[0]) * h.x + to_float(cp[p.C_strides[2]]) * h.y + to_float(cp[2 * p.C_strides[2]]) * h.z +
        to_float(cp[3 * p.C_strides[2]]) * h.w;
  }
  y = sum_over_channel(y, tpc);
  if (active && slice == 0) {
    if (p.D) y = add_skip(y, p.D[d * p.D_stride], u);
    if (p.z) y = gate(y, to_float(p.z[b * p.z_strides[0] + d * p.z_strides[1]]));
    p.out[b * p.out_strides[0] + d * p.out_strides[1]] = from_float<T>(y);
  }
}

}  // namespace moss::detail::scan
