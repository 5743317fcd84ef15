// moss/ops/grouped_linear/device_gemm.cuh: the sync-free grouped GEMM (needs nvcc). Every
// expert's y_e = x_e · W_eᵀ (+ b_e) over its segment of rows, with the segment offsets read from
// device memory only, so a routed layer never waits for the host and can be captured in a CUDA
// graph (`GroupedLinearArgs::resident_offsets`).
//
// Work decomposition: a persistent grid (one wave) strides over output tiles. Each block first
// turns the device offsets into the prefix of per-expert row-tile counts in shared memory
// (tiles_before[e] = Σ_{j<e} ⌈len_j / BM⌉, one block scan), then takes tiles t = blockIdx.x,
// blockIdx.x + gridDim.x, …: t / tilesN is a row tile, found in its expert by binary search over
// the prefix, and t % tilesN the column tile (columns fastest, so the blocks running at once share
// their rows of x and one expert's weights in L2). Rows at or past offsets[X] are written as
// zeros; offsets outside [0, rows] are clamped, so bad offsets never address memory outside x and y.
//
// Two tile engines:
//  - f16 / bf16 with 16-byte aligned rows (every contiguous extent a multiple of 8): 128 × 256 × 64
//    tiles (128 × 128 below 256 output columns, and in the weight gradient), 8 warps of 64 × 64
//    (64 × 32), `mma.sync.m16n8k16` with float32 accumulators (sm_80 and later), operands through
//    a 3-stage cp.async pipeline into XOR-swizzled shared memory read by `ldmatrix` (no bank
//    conflicts); rows and columns past the segment are zero-filled by the copy itself.
//  - everything else (float32, unaligned rows, sm < 80): 64 × 64 × 16 tiles of float FMAs, 4 × 4
//    outputs per thread; exact float32 accumulation like the host.
// Both engines take each operand k-contiguous (x and W in the forward) or transposed (W in the
// input gradient dX = dY · W_e; dY and X in the weight gradient, whose tiles are ldmatrix .trans
// reads of the same swizzled layout), so the backward of a resident decision runs on them too:
// dX on the forward's schedule, dW_e (out, in) on a fixed schedule of (expert, 128 × 128) tiles,
// each reducing its segment's rows in order (K = the segment's length read on the device; no
// split-K, so no atomics and the same bits every run).
//
// Measured (H100, bf16, 16384 rows, 8 experts, 2048 → 8192; bench/results/2026-12-07-h100.md):
// 2.03 ms balanced, 2.07 ms skewed, 36 % of the same run's dense cublasGemmEx (128 × 128 tiles:
// 2.28 ms); on a slower H100 of a later session 2.42 / 2.45 ms, with dX 2.26 / 2.53 ms and dW
// 2.22 / 2.21 ms (cuBLAS per segment: 0.83 / 0.86 and 0.90 / 0.93 ms). One block of 8 warps per
// SM (250 registers); cuBLAS's Hopper kernels use wgmma and TMA, which this engine does not: it is
// the capturable path, not yet the fast one. At decode sizes (8 experts, 768 → 1536) it takes
// 19 µs from 1 to 256 rows, where the matrix-vector kernel takes 7.7 µs at 1 row and 23.6 µs at 32.
#pragma once

#include <cub/block/block_scan.cuh>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/device.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/grouped_linear.hpp"

namespace moss {

namespace detail {

/// Threads of both tile engines of the sync-free grouped GEMM.
inline constexpr int kGroupedGemmThreads = 256;
/// Most experts the sync-free grouped GEMM takes (its shared-memory tile prefix holds X + 1 ints).
inline constexpr index_t kGroupedGemmMaxExperts = 8192;

/// The segment [begin, end) of expert e, clamped into [0, rows] (bad offsets address nothing).
MOSS_DEVICE void segment_of(const std::int32_t* offsets, int e, index_t rows, index_t& begin, index_t& end) {
  const auto clamp = [rows](index_t v) { return v < 0 ? index_t(0) : (v > rows ? rows : v); };
  begin = clamp(offsets[e]);
  end = clamp(offsets[e + 1]);
  if (end < begin) end = begin;
}

/// The tile schedule of one block: the prefix of row-tile counts per expert, in shared memory.
struct GroupedTileSchedule {
  const int* tiles_before;  // (X + 1) shared: row tiles of experts before e; [X] = all row tiles
  int num_experts;
  int col_tiles;

  /// The expert of row tile m (the last e with tiles_before[e] ≤ m: empty experts are skipped).
  MOSS_DEVICE int expert_of_tile(int m) const { return last_segment_at_most(tiles_before, num_experts, m); }
  MOSS_DEVICE index_t tiles() const { return index_t(tiles_before[num_experts]) * col_tiles; }

  /// One output tile: expert e's rows [r0, r_end) (at most tile_m of them) × columns from c0.
  struct Tile {
    int e;
    index_t r0, r_end, c0;
  };
  /// Tile t of the schedule (t < tiles()): row tile t / col_tiles, column tile t % col_tiles.
  MOSS_DEVICE Tile tile(index_t t, const std::int32_t* offsets, index_t rows, int tile_m, int tile_n) const {
    const int m = static_cast<int>(t / col_tiles);
    Tile r;
    r.e = expert_of_tile(m);
    index_t seg_begin;
    segment_of(offsets, r.e, rows, seg_begin, r.r_end);
    r.r0 = seg_begin + index_t(m - tiles_before[r.e]) * tile_m;
    r.c0 = (t % col_tiles) * tile_n;
    return r;
  }
};

/// Fills `tiles_before` (X + 1 ints of shared memory) from the device offsets; ends with a barrier.
template <int kRowTile>
MOSS_DEVICE void build_tile_prefix(int* tiles_before, const std::int32_t* offsets, int num_experts, index_t rows) {
  using Scan = cub::BlockScan<int, kGroupedGemmThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int running;
  if (threadIdx.x == 0) running = 0;
  __syncthreads();
  for (int base = 0; base < num_experts; base += kGroupedGemmThreads) {
    const int e = base + static_cast<int>(threadIdx.x);
    int count = 0;
    if (e < num_experts) {
      index_t b, end;
      segment_of(offsets, e, rows, b, end);
      count = static_cast<int>((end - b + kRowTile - 1) / kRowTile);
    }
    int before, total;
    Scan(scan_storage).ExclusiveSum(count, before, total);
    if (e < num_experts) tiles_before[e] = running + before;
    __syncthreads();  // every thread has read `running` before it moves on
    if (threadIdx.x == 0) running += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) tiles_before[num_experts] = running;
  __syncthreads();
}

/// Writes zeros into rows [clamped offsets[X], rows) of y, the block's share of them.
template <class T>
MOSS_DEVICE void zero_tail_rows(const std::int32_t* offsets, int num_experts, index_t rows, index_t out, T* y,
                                index_t ldy) {
  index_t b, e;
  segment_of(offsets, num_experts - 1, rows, b, e);
  (void)b;
  const index_t count = (rows - e) * out;
  for (index_t i = static_cast<index_t>(blockIdx.x) * kGroupedGemmThreads + threadIdx.x; i < count;
       i += static_cast<index_t>(gridDim.x) * kGroupedGemmThreads)
    y[(e + i / out) * ldy + i % out] = from_float<T>(0.0f);
}

/// y[r, c] = v (+ bias[e, c]) for an output inside the segment (r < seg_end) and the columns (c < n).
template <class T>
MOSS_DEVICE void store_output(T* y, index_t ldy, const T* bias, int e, index_t n, index_t r, index_t c, index_t seg_end,
                              float v) {
  if (r >= seg_end || c >= n) return;
  if (bias) v += to_float(bias[static_cast<index_t>(e) * n + c]);
  y[r * ldy + c] = from_float<T>(v);
}

// ---- the tensor-core engine (f16 / bf16) ----

inline constexpr int kMmaTileM = 128, kMmaTileK = 64, kMmaStages = 3;
/// Dynamic shared memory of one stage of the tensor-core engine with `tile_n` columns: A and B tiles.
constexpr std::size_t mma_stage_bytes(int tile_n) { return std::size_t(kMmaTileM + tile_n) * kMmaTileK * 2; }

/// Byte offset of the 16-byte chunk `chunk` of row `row` in a tile of `row_bytes`-byte rows, XOR
/// swizzled in its low three bits so that the 8 rows one `ldmatrix` phase reads (same logical
/// chunk) lie in 8 distinct bank groups.
MOSS_DEVICE unsigned swizzle(int row, int chunk, int row_bytes) {
  return unsigned(row * row_bytes + ((chunk ^ (row & 7)) * 16));
}

/// 16-byte cp.async that copies `bytes` (16 or 0) and zero-fills the rest.
MOSS_DEVICE void cp_async16_zfill(unsigned smem, const void* gmem, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes) : "memory");
}

/// Four 8 × 8 b16 matrices from shared memory; `kTrans` transposes each (ldmatrix .trans).
template <bool kTrans>
MOSS_DEVICE void ldmatrix_x4(unsigned smem, std::uint32_t (&r)[4]) {
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem));
}

/// d += a · b on one m16n8k16 tile, float32 accumulators.
template <class T>
MOSS_DEVICE void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();  // the host never launches this engine below sm_80
#endif
}

/// One operand of the tensor-core engine: a matrix of `i_end` rows i (the output tile's rows for
/// A, its columns for B) along the reduction index k. Element (i, k) is at p[i · ld + k] (k
/// contiguous, as x and W in the forward) or, for a transposed operand, at p[k · ld + i] (i
/// contiguous, as W in the input gradient and dY, X in the weight gradient).
template <class T>
struct MmaOperand {
  const T* p;
  index_t ld;
  index_t i_end;  // rows i ≥ i_end read as zeros
};

/// Queues the cp.async copies of one operand's (kRows × 64) block at rows i0.., reduction
/// indices k0.. into a stage buffer, zero-filled at i ≥ i_end and k ≥ k_end. In shared memory a
/// k-contiguous operand is kRows rows of 64 k (128 bytes), a transposed one 64 rows of kRows i
/// (2·kRows bytes), both swizzled; each 16-byte chunk is 8 consecutive elements of the
/// contiguous index, so the contiguous extent must keep chunks whole (multiples of 8: checked by
/// the launcher).
template <int kRows, bool kTrans, class T>
MOSS_DEVICE void mma_load_operand(unsigned s, const MmaOperand<T>& op, index_t i0, index_t k0, index_t k_end) {
  constexpr int kChunks = kTrans ? kRows / 8 : kMmaTileK / 8;  // 16-byte chunks per shared row
  constexpr int kRowBytes = kChunks * 16;
#pragma unroll
  for (int it = 0; it < kRows * kMmaTileK / 8 / kGroupedGemmThreads; ++it) {
    const int c = it * kGroupedGemmThreads + static_cast<int>(threadIdx.x);
    const int row = c / kChunks, chunk = c % kChunks;
    const index_t i = kTrans ? i0 + chunk * 8 : i0 + row, k = kTrans ? k0 + row : k0 + chunk * 8;
    const bool ok = k < k_end && i < op.i_end;
    const T* src = kTrans ? op.p + k * op.ld + i : op.p + i * op.ld + k;
    cp_async16_zfill(s + swizzle(row, chunk, kRowBytes), ok ? src : op.p, ok ? 16 : 0);
  }
}

/// The A fragments (a0..a3 of m16n8k16) of rows i_base..i_base+15 and k step kk of a stage.
template <bool kTrans>
MOSS_DEVICE void mma_fragment_a(unsigned s, int i_base, int kk, int lane, std::uint32_t (&r)[4]) {
  if constexpr (kTrans) {
    // matrix q = lane / 8: rows +8·(q % 2), k +8·(q / 2); its lanes address 8 consecutive k rows
    const int q = lane / 8, k = kk * 16 + (q / 2) * 8 + lane % 8;
    ldmatrix_x4<true>(s + swizzle(k, (i_base + (q % 2) * 8) / 8, kMmaTileM * 2), r);
  } else {
    // lanes 0-15: rows 0-15 at k chunk 2kk, lanes 16-31: the same rows at chunk 2kk + 1
    ldmatrix_x4<false>(s + swizzle(i_base + lane % 16, kk * 2 + lane / 16, kMmaTileK * 2), r);
  }
}

/// The B fragments of two n8 tiles (columns i_base..i_base+15) at k step kk: r[0], r[1] = b0, b1 of
/// the first, r[2], r[3] of the second.
template <int kTileN, bool kTrans>
MOSS_DEVICE void mma_fragment_b(unsigned s, int i_base, int kk, int lane, std::uint32_t (&r)[4]) {
  const int q = lane / 8;  // matrix q: columns +8·(q / 2), k +8·(q % 2)
  if constexpr (kTrans) {
    const int k = kk * 16 + (q % 2) * 8 + lane % 8;
    ldmatrix_x4<true>(s + swizzle(k, (i_base + (q / 2) * 8) / 8, kTileN * 2), r);
  } else {
    ldmatrix_x4<false>(s + swizzle(i_base + (q / 2) * 8 + lane % 8, kk * 2 + q % 2, kMmaTileK * 2), r);
  }
}

/// The accumulators of one 128 × kTileN output tile: 8 warps as 2 × 4, each 64 × kTileN/4 as
/// [m16 tile][n8 tile][fragment].
template <int kTileN>
using MmaAccumulators = float[4][kTileN / 32][4];

/// acc = A[a_i0 .. +128) · B[b_i0 .. +kTileN)ᵀ over the reduction indices [k_begin, k_end): a
/// 3-stage cp.async pipeline of 64-wide k blocks into the dynamic shared memory at `smem`, read by
/// ldmatrix into mma.sync. Every thread of the block calls it; on return the stages are free.
template <class T, int kTileN, bool kATrans, bool kBTrans>
MOSS_DEVICE void mma_tile(MmaAccumulators<kTileN>& acc, unsigned smem, const MmaOperand<T>& a, index_t a_i0,
                          const MmaOperand<T>& b, index_t b_i0, index_t k_begin, index_t k_end) {
  constexpr std::size_t kStageBytes = mma_stage_bytes(kTileN);
  constexpr int kWarpN = kTileN / 4, kN8 = kWarpN / 8;
  const auto stage_a = [&](int s) { return smem + unsigned(s * kStageBytes); };
  const auto stage_b = [&](int s) { return smem + unsigned(s * kStageBytes + kMmaTileM * kMmaTileK * 2); };
  const auto load = [&](int s, index_t kt) {
    const index_t k0 = k_begin + kt * kMmaTileK;
    mma_load_operand<kMmaTileM, kATrans>(stage_a(s), a, a_i0, k0, k_end);
    mma_load_operand<kTileN, kBTrans>(stage_b(s), b, b_i0, k0, k_end);
  };
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp_m = warp / 4, warp_n = warp % 4;
  const index_t k_tiles = k_end > k_begin ? ceil_div<index_t>(k_end - k_begin, kMmaTileK) : 0;

#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < kN8; ++j)
#pragma unroll
      for (int f = 0; f < 4; ++f) acc[i][j][f] = 0.0f;
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < k_tiles) load(s, s);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  }
  for (index_t kt = 0; kt < k_tiles; ++kt) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kMmaStages - 2) : "memory");
    __syncthreads();  // stage kt is in; every warp is done with the stage refilled below
    const index_t next = kt + kMmaStages - 1;
    if (next < k_tiles) load(static_cast<int>(next % kMmaStages), next);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    const int s = static_cast<int>(kt % kMmaStages);
#pragma unroll
    for (int kk = 0; kk < kMmaTileK / 16; ++kk) {
      std::uint32_t af[4][4], bf[kN8 / 2][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) mma_fragment_a<kATrans>(stage_a(s), warp_m * 64 + i * 16, kk, lane, af[i]);
#pragma unroll
      for (int j = 0; j < kN8 / 2; ++j)
        mma_fragment_b<kTileN, kBTrans>(stage_b(s), warp_n * kWarpN + j * 16, kk, lane, bf[j]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kN8; ++j)
          mma_16816<T>(acc[i][j], af[i], bf[j / 2][(j % 2) * 2], bf[j / 2][(j % 2) * 2 + 1]);
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  __syncthreads();  // the next tile's copies may overwrite every stage
}

/// Calls store(row, column, value) for each accumulator the calling thread holds, with row and
/// column relative to the tile: fragment (i, j) holds rows lane/4 and lane/4 + 8 of its m16 tile,
/// columns 2·(lane % 4) + {0, 1} of its n8 tile.
template <int kTileN, class Store>
MOSS_DEVICE void mma_for_each(const MmaAccumulators<kTileN>& acc, Store&& store) {
  constexpr int kWarpN = kTileN / 4, kN8 = kWarpN / 8;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp_m = warp / 4, warp_n = warp % 4;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int j = 0; j < kN8; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q)
          store(warp_m * 64 + i * 16 + lane / 4 + half * 8, warp_n * kWarpN + j * 8 + (lane % 4) * 2 + q,
                acc[i][j][half * 2 + q]);
}

/// The grouped GEMM on tensor cores with 128 × kTileN output tiles over the segments (see the
/// file comment): y[r, c] = Σ_k x[r, k] · B_e(c, k) (+ bias[e, c]) for r in expert e's segment,
/// c < n, with B_e = W_e (n, k) in the forward, or (kBTrans) W_eᵀ for the input gradient (W_e is
/// then (k, n): dX = dY · W_e). Dynamic shared memory: kMmaStages stages, then the tile prefix.
template <class T, int kTileN, bool kBTrans>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_gemm_mma_kernel(const T* x, index_t ldx, const T* w, const T* bias, const std::int32_t* offsets,
                            int num_experts, index_t rows, index_t n, index_t k, T* y, index_t ldy) {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  int* tiles_before = reinterpret_cast<int*>(gemm_smem + kMmaStages * mma_stage_bytes(kTileN));
  build_tile_prefix<kMmaTileM>(tiles_before, offsets, num_experts, rows);
  const GroupedTileSchedule sched{tiles_before, num_experts, static_cast<int>(ceil_div<index_t>(n, kTileN))};
  const unsigned smem = static_cast<unsigned>(__cvta_generic_to_shared(gemm_smem));

  for (index_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
    const auto [e, r0, seg_end, c0] = sched.tile(t, offsets, rows, kMmaTileM, kTileN);
    const MmaOperand<T> a{x, ldx, seg_end};
    const MmaOperand<T> b{w + static_cast<index_t>(e) * n * k, kBTrans ? n : k, n};
    MmaAccumulators<kTileN> acc;
    mma_tile<T, kTileN, false, kBTrans>(acc, smem, a, r0, b, c0, 0, k);
    mma_for_each<kTileN>(acc,
                         [&](int i, int j, float v) { store_output(y, ldy, bias, e, n, r0 + i, c0 + j, seg_end, v); });
  }
  zero_tail_rows(offsets, num_experts, rows, n, y, ldy);
}

/// Input columns per tile of the tensor-core weight gradient (its rows: kMmaTileM outputs).
inline constexpr int kWgradTileN = 128;

/// The weight gradient's fixed schedule: tiles (expert, kTileM outputs, kTileN inputs), inputs
/// fastest, each reducing its expert's segment of rows; the same on the host (grid size) and device.
template <int kTileM, int kTileN>
struct WgradSchedule {
  index_t out, in;

  MOSS_HD index_t col_tiles() const { return ceil_div<index_t>(in, kTileN); }
  MOSS_HD index_t per_expert() const { return ceil_div<index_t>(out, kTileM) * col_tiles(); }
  MOSS_HD index_t tiles(index_t experts) const { return per_expert() * experts; }

  /// Tile t: expert e, first output o0 and input c0, and e's segment [seg_begin, seg_end).
  struct Tile {
    int e;
    index_t o0, c0, seg_begin, seg_end;
  };
  MOSS_DEVICE Tile tile(index_t t, const std::int32_t* offsets, index_t rows) const {
    Tile r;
    r.e = static_cast<int>(t / per_expert());
    r.o0 = (t % per_expert()) / col_tiles() * kTileM;
    r.c0 = (t % per_expert()) % col_tiles() * kTileN;
    segment_of(offsets, r.e, rows, r.seg_begin, r.seg_end);
    return r;
  }
};

/// dW_e[o, c] = v (or += v with `accumulate`) for an output inside the gradient (o < out, c < in).
MOSS_DEVICE void store_wgrad(float* dw_e, index_t out, index_t in, index_t o, index_t c, float v, bool accumulate) {
  if (o >= out || c >= in) return;
  float& d = dw_e[o * in + c];
  d = accumulate ? d + v : v;
}

/// The weight gradient on tensor cores: dW_e (out, in) = dY[seg]ᵀ · X[seg] for every expert, the
/// reduction over the rows of its segment read from the device offsets (K = the segment's
/// length, 0 for an empty one: dW_e = 0). A persistent grid over the fixed tiles (expert, 128
/// outputs, 128 inputs), each reduced by one block in row order: deterministic, no split-K.
/// Written in float (added to with `accumulate`).
template <class T>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_wgrad_mma_kernel(const T* dy, index_t ldy, const T* x, index_t ldx, const std::int32_t* offsets,
                             int num_experts, index_t rows, index_t out, index_t in, float* dw, bool accumulate) {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  const unsigned smem = static_cast<unsigned>(__cvta_generic_to_shared(gemm_smem));
  const WgradSchedule<kMmaTileM, kWgradTileN> sched{out, in};
  for (index_t t = blockIdx.x; t < sched.tiles(num_experts); t += gridDim.x) {
    const auto [e, o0, c0, seg_begin, seg_end] = sched.tile(t, offsets, rows);
    MmaAccumulators<kWgradTileN> acc;
    mma_tile<T, kWgradTileN, true, true>(acc, smem, MmaOperand<T>{dy, ldy, out}, o0, MmaOperand<T>{x, ldx, in}, c0,
                                         seg_begin, seg_end);
    float* dw_e = dw + static_cast<index_t>(e) * out * in;
    mma_for_each<kWgradTileN>(
        acc, [&](int i, int j, float v) { store_wgrad(dw_e, out, in, o0 + i, c0 + j, v, accumulate); });
  }
}

// ---- the float FMA engine (any T, any alignment) ----

inline constexpr int kFmaTileM = 64, kFmaTileN = 64, kFmaTileK = 16;

/// The FMA engine's shared tiles: 16 reduction indices × 64 rows (padded), float, so the inner
/// loop reads 4 consecutive floats of each.
struct FmaTiles {
  float a[kFmaTileK][kFmaTileM + 4], b[kFmaTileK][kFmaTileN + 4];
};

/// Fills one FMA tile from an operand (see MmaOperand: element (i, k) at p[i·ld + k] or, kTrans,
/// p[k·ld + i]) at rows i0.., reduction indices k0..; zeros at i ≥ i_end or k ≥ k_end. Consecutive
/// threads read consecutive addresses in both layouts.
template <bool kTrans, class T>
MOSS_DEVICE void fma_load(float (&tile)[kFmaTileK][kFmaTileM + 4], const T* p, index_t ld, index_t i_end, index_t i0,
                          index_t k0, index_t k_end) {
  for (int c = threadIdx.x; c < kFmaTileM * kFmaTileK; c += kGroupedGemmThreads) {
    const int row = kTrans ? c % kFmaTileM : c / kFmaTileK, kc = kTrans ? c / kFmaTileM : c % kFmaTileK;
    const index_t i = i0 + row, k = k0 + kc;
    tile[kc][row] = i < i_end && k < k_end ? to_float(kTrans ? p[k * ld + i] : p[i * ld + k]) : 0.0f;
  }
}

/// acc (4 × 4 per thread: rows 4·(tid / 16).., columns 4·(tid % 16)..) = A · Bᵀ over the
/// reduction indices [k_begin, k_end), in order, float32.
template <bool kATrans, bool kBTrans, class T>
MOSS_DEVICE void fma_tile(float (&acc)[4][4], FmaTiles& sm, const T* a, index_t lda, index_t a_end, index_t a_i0,
                          const T* b, index_t ldb, index_t b_end, index_t b_i0, index_t k_begin, index_t k_end) {
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[p][q] = 0.0f;
  for (index_t k0 = k_begin; k0 < k_end; k0 += kFmaTileK) {
    fma_load<kATrans>(sm.a, a, lda, a_end, a_i0, k0, k_end);
    fma_load<kBTrans>(sm.b, b, ldb, b_end, b_i0, k0, k_end);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kFmaTileK; ++k) {
      float av[4], bv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) av[q] = sm.a[k][ty * 4 + q], bv[q] = sm.b[k][tx * 4 + q];
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] += av[p] * bv[q];
    }
    __syncthreads();
  }
}

/// The FMA engine of the grouped GEMM: 64 × 64 output tiles, the schedule and operands of
/// grouped_gemm_mma_kernel (B_e = W_e, or W_eᵀ with kBTrans).
template <class T, bool kBTrans>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_gemm_fma_kernel(const T* x, index_t ldx, const T* w, const T* bias, const std::int32_t* offsets,
                            int num_experts, index_t rows, index_t n, index_t k, T* y, index_t ldy) {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  int* tiles_before = reinterpret_cast<int*>(gemm_smem);
  __shared__ FmaTiles sm;
  build_tile_prefix<kFmaTileM>(tiles_before, offsets, num_experts, rows);
  const GroupedTileSchedule sched{tiles_before, num_experts, static_cast<int>(ceil_div<index_t>(n, kFmaTileN))};
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;

  for (index_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
    const auto [e, r0, seg_end, c0] = sched.tile(t, offsets, rows, kFmaTileM, kFmaTileN);
    float acc[4][4];
    fma_tile<false, kBTrans>(acc, sm, x, ldx, seg_end, r0, w + static_cast<index_t>(e) * n * k, kBTrans ? n : k, n, c0,
                             0, k);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const index_t r = r0 + ty * 4 + p;
      if (r >= seg_end) continue;  // (hoisted out of store_output's own check)
#pragma unroll
      for (int q = 0; q < 4; ++q) store_output(y, ldy, bias, e, n, r, c0 + tx * 4 + q, seg_end, acc[p][q]);
    }
  }
  zero_tail_rows(offsets, num_experts, rows, n, y, ldy);
}

/// The FMA engine of the weight gradient: the schedule of grouped_wgrad_mma_kernel with 64 × 64
/// tiles, each reduced over its segment's rows in order, exactly in float32.
template <class T>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_wgrad_fma_kernel(const T* dy, index_t ldy, const T* x, index_t ldx, const std::int32_t* offsets,
                             int num_experts, index_t rows, index_t out, index_t in, float* dw, bool accumulate) {
  __shared__ FmaTiles sm;
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;
  const WgradSchedule<kFmaTileM, kFmaTileN> sched{out, in};
  for (index_t t = blockIdx.x; t < sched.tiles(num_experts); t += gridDim.x) {
    const auto [e, o0, c0, seg_begin, seg_end] = sched.tile(t, offsets, rows);
    float acc[4][4];
    fma_tile<true, true>(acc, sm, dy, ldy, out, o0, x, ldx, in, c0, seg_begin, seg_end);
    float* dw_e = dw + static_cast<index_t>(e) * out * in;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const index_t o = o0 + ty * 4 + p;
      if (o >= out) continue;  // (hoisted out of store_wgrad's own check)
#pragma unroll
      for (int q = 0; q < 4; ++q) store_wgrad(dw_e, out, in, o, c0 + tx * 4 + q, acc[p][q], accumulate);
    }
  }
}

/// The bias gradient: db[e, o] = Σ dy[r, o] over expert e's segment, rows ascending (float32);
/// one thread per (expert, output), the block's threads along o. 0 for an empty segment.
template <class T>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_bias_grad_kernel(const T* dy, index_t ldy, const std::int32_t* offsets, index_t rows, index_t out,
                             float* db, bool accumulate) {
  const index_t o = static_cast<index_t>(blockIdx.x) * kGroupedGemmThreads + threadIdx.x;
  const int e = static_cast<int>(blockIdx.y);
  if (o >= out) return;
  index_t seg_begin, seg_end;
  segment_of(offsets, e, rows, seg_begin, seg_end);
  float sum = 0.0f;
  for (index_t r = seg_begin; r < seg_end; ++r) sum += to_float(dy[r * ldy + o]);
  float& d = db[static_cast<index_t>(e) * out + o];
  d = accumulate ? d + sum : sum;
}

// ---- launchers ----

/// Whether the tensor-core engine takes f16 / bf16 operands on the current device: every
/// pointer 16-byte aligned and every leading dimension and contiguous extent a multiple of 8
/// elements (whole 16-byte chunks).
template <class T>
bool mma_engine_applies(std::initializer_list<const void*> pointers, std::initializer_list<index_t> multiples_of_8) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    if (cuda::device_properties().compute_major < 8) return false;
    for (const void* p : pointers)
      if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
    for (index_t v : multiples_of_8)
      if (v % 8 != 0) return false;
    return true;
  }
}

/// Queues the grouped GEMM y = x · B_eᵀ over the device segments (B_e = W_e (n, k), or with
/// kBTrans W_e stored (k, n)); rows past offsets[X] of y are zeroed.
template <bool kBTrans, class T>
void launch_grouped_gemm(const Cuda& gpu, const T* x, index_t ldx, const T* w, const T* bias,
                         const std::int32_t* offsets, index_t X, index_t rows, index_t n, index_t k, T* y,
                         index_t ldy) {
  if (rows == 0) return;
  MOSS_EXPECTS(X <= kGroupedGemmMaxExperts, unsupported_error, "grouped_linear (cuda, resident offsets): ", X,
               " experts exceed the ", kGroupedGemmMaxExperts, " the sync-free grouped GEMM schedules");
  // Chunks of 16 bytes: x's rows along k, and W's contiguous extent (k, or n when transposed).
  const bool mma = mma_engine_applies<T>({x, w}, {k, kBTrans ? n : k, rows > 1 ? ldx : 8});
  const bool wide = n >= 256;  // 128 × 256 tiles (a quarter less operand traffic per FLOP) when n allows
  const index_t tile_m = mma ? kMmaTileM : kFmaTileM, tile_n = mma ? (wide ? 256 : 128) : kFmaTileN;
  // Row tiles: at most ⌈rows / BM⌉ plus one partial tile per expert; the int tile prefix must hold them.
  const index_t row_tiles = ceil_div(rows, tile_m) + X, col_tiles = ceil_div(n, tile_n);
  MOSS_EXPECTS(row_tiles <= INT_MAX && col_tiles <= INT_MAX, unsupported_error,
               "grouped_linear (cuda, resident offsets): ", rows, " rows × ", n, " outputs are too many tiles");
  const std::size_t prefix_bytes = static_cast<std::size_t>(X + 1) * sizeof(int);
  const int experts = static_cast<int>(X);
  // One wave: the blocks that fit at once, but no more than the tiles there can be (a tail of
  // rows past offsets[X] still gets at least one block to zero it).
  const index_t max_tiles = row_tiles * col_tiles;
  if constexpr (!std::is_same_v<T, float>) {  // (float never takes the tensor-core engine: not instantiated)
    if (mma) {
      const std::size_t shared = kMmaStages * mma_stage_bytes(static_cast<int>(tile_n)) + prefix_bytes;
      const auto kernel = wide ? grouped_gemm_mma_kernel<T, 256, kBTrans> : grouped_gemm_mma_kernel<T, 128, kBTrans>;
      cuda::allow_dynamic_shared(kernel, shared);
      const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads, shared) / kGroupedGemmThreads;
      const auto grid = static_cast<unsigned>(max_tiles < wave ? max_tiles : wave);
      cuda::launch("grouped_gemm_mma_kernel", kernel, grid, kGroupedGemmThreads, shared, gpu.stream, x, ldx, w, bias,
                   offsets, experts, rows, n, k, y, ldy);
      return;
    }
  }
  const auto kernel = grouped_gemm_fma_kernel<T, kBTrans>;
  const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads, prefix_bytes) / kGroupedGemmThreads;
  const auto grid = static_cast<unsigned>(max_tiles < wave ? max_tiles : wave);
  cuda::launch("grouped_gemm_fma_kernel", kernel, grid, kGroupedGemmThreads, prefix_bytes, gpu.stream, x, ldx, w, bias,
               offsets, experts, rows, n, k, y, ldy);
}

/// Queues the sync-free grouped GEMM of `a` (offsets read on the device only).
template <class T>
void grouped_gemm_device(const Cuda& gpu, const GroupedLinearArgs<T>& a) {
  const index_t X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  launch_grouped_gemm<false>(gpu, a.x.data, a.x.stride[0], a.weight.data, present(a.bias) ? a.bias.data : nullptr,
                             a.offsets.data, X, a.x.shape[0], out, in, a.y.data, a.y.stride[0]);
}

}  // namespace detail

}  // namespace moss
