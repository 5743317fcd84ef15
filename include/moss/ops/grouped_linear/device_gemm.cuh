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
//  - f16 / bf16 with 16-byte aligned rows (`in` a multiple of 8): 128 × 256 × 64 tiles (128 × 128
//    when out < 256), 8 warps of 64 × 64 (64 × 32), `mma.sync.m16n8k16` with float32 accumulators
//    (sm_80 and later), operands through a 3-stage cp.async pipeline into XOR-swizzled shared
//    memory read by `ldmatrix` (no bank conflicts); rows and columns past the segment are
//    zero-filled by the copy itself.
//  - everything else (float32, unaligned rows, sm < 80): 64 × 64 × 16 tiles of float FMAs, 4 × 4
//    outputs per thread; exact float32 accumulation like the host.
//
// Measured (H100, bf16, 16384 rows, 8 experts, 2048 → 8192; bench/results/2026-12-07-h100.md):
// 2.03 ms balanced, 2.07 ms skewed, 36 % of the same run's dense cublasGemmEx (128 × 128 tiles:
// 2.28 ms). One block of 8 warps per SM (246 registers); cuBLAS's Hopper kernels use wgmma and TMA,
// which this engine does not: it is the capturable path, not yet the fast one. At decode sizes
// (8 experts, 768 → 1536) it takes 19 µs from 1 to 256 rows, where the matrix-vector kernel takes
// 7.7 µs at 1 row and 23.6 µs at 32.
#pragma once

#include <cub/block/block_scan.cuh>

#include <climits>
#include <cstdint>

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

// ---- the tensor-core engine (f16 / bf16) ----

inline constexpr int kMmaTileM = 128, kMmaTileK = 64, kMmaStages = 3;
/// Dynamic shared memory of one stage of the tensor-core engine with `tile_n` columns: A and B tiles.
constexpr std::size_t mma_stage_bytes(int tile_n) { return std::size_t(kMmaTileM + tile_n) * kMmaTileK * 2; }

/// Byte offset of the 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-row tile, XOR
/// swizzled so that the 8 rows one `ldmatrix` phase reads lie in 8 distinct bank groups.
MOSS_DEVICE unsigned swizzle(int row, int chunk) { return unsigned(row * 128 + ((chunk ^ (row & 7)) * 16)); }

/// 16-byte cp.async that copies `bytes` (16 or 0) and zero-fills the rest.
MOSS_DEVICE void cp_async16_zfill(unsigned smem, const void* gmem, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes) : "memory");
}

MOSS_DEVICE void ldmatrix_x4(unsigned smem, std::uint32_t (&r)[4]) {
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

/// Queues the cp.async copies of k-tile `kt` of one output tile into stage buffers `sa`, `sb`:
/// rows [r0, r_end) of x and output columns [c0, out) of W_e (kTileN of them), zero-filled past
/// them and past `in`.
template <int kTileN, class T>
MOSS_DEVICE void mma_load_stage(unsigned sa, unsigned sb, const T* x, index_t ldx, const T* w_e, index_t r0,
                                index_t r_end, index_t c0, index_t out, index_t in, index_t kt) {
  const index_t k0 = kt * kMmaTileK;
#pragma unroll
  for (int it = 0; it < kMmaTileM * 8 / kGroupedGemmThreads; ++it) {  // 8 chunks of 16 bytes per row
    const int i = it * kGroupedGemmThreads + static_cast<int>(threadIdx.x);
    const int row = i / 8, chunk = i % 8;
    const index_t k = k0 + chunk * 8, ra = r0 + row;
    const bool ok = k < in && ra < r_end;
    cp_async16_zfill(sa + swizzle(row, chunk), ok ? x + ra * ldx + k : x, ok ? 16 : 0);
  }
#pragma unroll
  for (int it = 0; it < kTileN * 8 / kGroupedGemmThreads; ++it) {
    const int i = it * kGroupedGemmThreads + static_cast<int>(threadIdx.x);
    const int row = i / 8, chunk = i % 8;
    const index_t k = k0 + chunk * 8, cb = c0 + row;
    const bool ok = k < in && cb < out;
    cp_async16_zfill(sb + swizzle(row, chunk), ok ? w_e + cb * in + k : w_e, ok ? 16 : 0);
  }
}

/// The tensor-core engine with 128 × kTileN output tiles; see the file comment. Dynamic shared
/// memory: kMmaStages stages, then the tile prefix (X + 1 ints).
template <class T, int kTileN>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_gemm_mma_kernel(const T* x, index_t ldx, const T* w, const T* bias, const std::int32_t* offsets,
                            int num_experts, index_t rows, index_t out, index_t in, T* y, index_t ldy) {
  constexpr std::size_t kStageBytes = mma_stage_bytes(kTileN);
  constexpr int kWarpN = kTileN / 4, kN8 = kWarpN / 8;  // columns and n8 tiles per warp
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  int* tiles_before = reinterpret_cast<int*>(gemm_smem + kMmaStages * kStageBytes);
  build_tile_prefix<kMmaTileM>(tiles_before, offsets, num_experts, rows);
  const GroupedTileSchedule sched{tiles_before, num_experts, static_cast<int>(ceil_div<index_t>(out, kTileN))};
  const unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(gemm_smem));
  const auto stage_a = [&](int s) { return base + unsigned(s * kStageBytes); };
  const auto stage_b = [&](int s) { return base + unsigned(s * kStageBytes + kMmaTileM * kMmaTileK * 2); };

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp_m = warp / 4, warp_n = warp % 4;  // 2 × 4 warps, 64 × kWarpN outputs each
  const index_t k_tiles = ceil_div<index_t>(in, kMmaTileK);

  for (index_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
    const auto [e, r0, seg_end, c0] = sched.tile(t, offsets, rows, kMmaTileM, kTileN);
    const T* w_e = w + static_cast<index_t>(e) * out * in;

    float acc[4][kN8][4] = {};  // [m16 tile][n8 tile][fragment]
    for (int s = 0; s < kMmaStages - 1; ++s) {
      if (s < k_tiles) mma_load_stage<kTileN>(stage_a(s), stage_b(s), x, ldx, w_e, r0, seg_end, c0, out, in, s);
      asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    for (index_t kt = 0; kt < k_tiles; ++kt) {
      asm volatile("cp.async.wait_group %0;\n" ::"n"(kMmaStages - 2) : "memory");
      __syncthreads();  // stage kt is in; every warp is done with the stage refilled below
      const index_t next = kt + kMmaStages - 1;
      if (next < k_tiles) {
        const int s = static_cast<int>(next % kMmaStages);
        mma_load_stage<kTileN>(stage_a(s), stage_b(s), x, ldx, w_e, r0, seg_end, c0, out, in, next);
      }
      asm volatile("cp.async.commit_group;\n" ::: "memory");
      const int s = static_cast<int>(kt % kMmaStages);
#pragma unroll
      for (int kk = 0; kk < kMmaTileK / 16; ++kk) {
        std::uint32_t a[4][4], b[kN8 / 2][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          // x4: rows 0-7 / 8-15 of the m16 tile × k chunks 2kk / 2kk+1 = a0..a3 of the mma
          const int row = warp_m * 64 + i * 16 + (lane % 16);
          ldmatrix_x4(stage_a(s) + swizzle(row, kk * 2 + lane / 16), a[i]);
        }
#pragma unroll
        for (int j = 0; j < kN8 / 2; ++j) {
          // x4: (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi) = b0, b1 of two n8 tiles
          const int mi = lane / 8;
          const int row = warp_n * kWarpN + j * 16 + (mi / 2) * 8 + (lane % 8);
          ldmatrix_x4(stage_b(s) + swizzle(row, kk * 2 + (mi % 2)), b[j]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < kN8; ++j) mma_16816<T>(acc[i][j], a[i], b[j / 2][(j % 2) * 2], b[j / 2][(j % 2) * 2 + 1]);
      }
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();  // the next tile's copies may overwrite every stage

    // Epilogue: fragment (i, j) holds rows lane/4 and lane/4 + 8, columns 2(lane%4) + {0, 1}.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const index_t r = r0 + warp_m * 64 + i * 16 + lane / 4 + half * 8;
        if (r >= seg_end) continue;
        T* yr = y + r * ldy;
#pragma unroll
        for (int j = 0; j < kN8; ++j) {
          const index_t c = c0 + warp_n * kWarpN + j * 8 + (lane % 4) * 2;
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            if (c + q >= out) continue;
            float v = acc[i][j][half * 2 + q];
            if (bias) v += to_float(bias[static_cast<index_t>(e) * out + c + q]);
            yr[c + q] = from_float<T>(v);
          }
        }
      }
    }
  }
  zero_tail_rows(offsets, num_experts, rows, out, y, ldy);
}

// ---- the float FMA engine (any T, any alignment) ----

inline constexpr int kFmaTileM = 64, kFmaTileN = 64, kFmaTileK = 16;

/// The FMA engine: 64 × 64 output tiles, 4 × 4 per thread, K in steps of 16 through shared
/// memory (float, transposed so the inner loop reads rows of 4 consecutive floats).
template <class T>
__global__ void __launch_bounds__(kGroupedGemmThreads)
    grouped_gemm_fma_kernel(const T* x, index_t ldx, const T* w, const T* bias, const std::int32_t* offsets,
                            int num_experts, index_t rows, index_t out, index_t in, T* y, index_t ldy) {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  int* tiles_before = reinterpret_cast<int*>(gemm_smem);
  __shared__ float xs[kFmaTileK][kFmaTileM + 4], ws[kFmaTileK][kFmaTileN + 4];
  build_tile_prefix<kFmaTileM>(tiles_before, offsets, num_experts, rows);
  const GroupedTileSchedule sched{tiles_before, num_experts, static_cast<int>(ceil_div<index_t>(out, kFmaTileN))};
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;

  for (index_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
    const auto [e, r0, seg_end, c0] = sched.tile(t, offsets, rows, kFmaTileM, kFmaTileN);
    const T* w_e = w + static_cast<index_t>(e) * out * in;
    float acc[4][4] = {};
    for (index_t k0 = 0; k0 < in; k0 += kFmaTileK) {
      for (int i = threadIdx.x; i < kFmaTileM * kFmaTileK; i += kGroupedGemmThreads) {
        const int row = i / kFmaTileK, k = i % kFmaTileK;
        const index_t ra = r0 + row, cb = c0 + row, kk = k0 + k;
        xs[k][row] = ra < seg_end && kk < in ? to_float(x[ra * ldx + kk]) : 0.0f;
        ws[k][row] = cb < out && kk < in ? to_float(w_e[cb * in + kk]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kFmaTileK; ++k) {
        float a[4], b[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) a[q] = xs[k][ty * 4 + q], b[q] = ws[k][tx * 4 + q];
#pragma unroll
        for (int p = 0; p < 4; ++p)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[p][q] += a[p] * b[q];
      }
      __syncthreads();
    }
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const index_t r = r0 + ty * 4 + p;
      if (r >= seg_end) continue;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const index_t c = c0 + tx * 4 + q;
        if (c >= out) continue;
        float v = acc[p][q];
        if (bias) v += to_float(bias[static_cast<index_t>(e) * out + c]);
        y[r * ldy + c] = from_float<T>(v);
      }
    }
  }
  zero_tail_rows(offsets, num_experts, rows, out, y, ldy);
}

/// Whether the tensor-core engine takes `a` on the current device.
template <class T>
bool grouped_gemm_mma_applies(const GroupedLinearArgs<T>& a) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
    const index_t in = a.weight.shape[2];
    return cuda::device_properties().compute_major >= 8 && in % 8 == 0 &&
           (a.x.shape[0] <= 1 || a.x.stride[0] % 8 == 0) && aligned(a.x.data) && aligned(a.weight.data);
  }
}

/// Queues the sync-free grouped GEMM of `a` (offsets read on the device only).
template <class T>
void grouped_gemm_device(const Cuda& gpu, const GroupedLinearArgs<T>& a) {
  const index_t rows = a.x.shape[0], X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  if (rows == 0) return;
  MOSS_EXPECTS(X <= kGroupedGemmMaxExperts, unsupported_error, "grouped_linear (cuda, resident offsets): ", X,
               " experts exceed the ", kGroupedGemmMaxExperts, " the sync-free grouped GEMM schedules");
  const bool mma = grouped_gemm_mma_applies(a);
  const bool wide = out >= 256;  // 128 × 256 tiles (a quarter less operand traffic per FLOP) when out allows
  const index_t tile_m = mma ? kMmaTileM : kFmaTileM, tile_n = mma ? (wide ? 256 : 128) : kFmaTileN;
  // Row tiles: at most ⌈rows / BM⌉ plus one partial tile per expert; the int tile prefix must hold them.
  const index_t row_tiles = ceil_div(rows, tile_m) + X, col_tiles = ceil_div(out, tile_n);
  MOSS_EXPECTS(row_tiles <= INT_MAX && col_tiles <= INT_MAX, unsupported_error,
               "grouped_linear (cuda, resident offsets): ", rows, " rows × ", out, " outputs are too many tiles");
  const std::size_t prefix_bytes = static_cast<std::size_t>(X + 1) * sizeof(int);
  const T* bias = present(a.bias) ? a.bias.data : nullptr;
  const int experts = static_cast<int>(X);
  // One wave: the blocks that fit at once, but no more than the tiles there can be (a tail of
  // rows past offsets[X] still gets at least one block to zero it).
  const index_t max_tiles = row_tiles * col_tiles;
  if (mma) {
    const std::size_t shared = kMmaStages * mma_stage_bytes(static_cast<int>(tile_n)) + prefix_bytes;
    const auto kernel = wide ? grouped_gemm_mma_kernel<T, 256> : grouped_gemm_mma_kernel<T, 128>;
    MOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads, shared) / kGroupedGemmThreads;
    const auto grid = static_cast<unsigned>(max_tiles < wave ? max_tiles : wave);
    cuda::launch("grouped_gemm_mma_kernel", kernel, grid, kGroupedGemmThreads, shared, gpu.stream, a.x.data,
                 a.x.stride[0], a.weight.data, bias, a.offsets.data, experts, rows, out, in, a.y.data, a.y.stride[0]);
  } else {
    const auto kernel = grouped_gemm_fma_kernel<T>;
    const index_t wave = cuda::resident_threads(kernel, kGroupedGemmThreads, prefix_bytes) / kGroupedGemmThreads;
    const auto grid = static_cast<unsigned>(max_tiles < wave ? max_tiles : wave);
    cuda::launch("grouped_gemm_fma_kernel", kernel, grid, kGroupedGemmThreads, prefix_bytes, gpu.stream, a.x.data,
                 a.x.stride[0], a.weight.data, bias, a.offsets.data, experts, rows, out, in, a.y.data, a.y.stride[0]);
  }
}

}  // namespace detail

}  // namespace moss
