// moss/ops/grouped_linear/cuda.cuh: `grouped_linear` on CUDA (needs nvcc): one cublasGemmEx per
// non-empty expert segment (see moss/ops/grouped_linear.hpp for why, and the host
// synchronisation it needs when no host offsets are given); with `resident_offsets`, a grouped
// matrix-vector kernel (few rows) or the sync-free grouped GEMM (device_gemm.cuh), both reading
// the offsets on the device.
#pragma once

#include <cstdint>
#include <vector>

#include <climits>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/vector.cuh"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear/device_gemm.cuh"
#include "moss/ops/linear/cuda.cuh"

namespace moss {

namespace detail {

// Defined in device_gemm.cuh (which includes this file's op header, so this file may be reached first).
template <class T>
void grouped_gemm_device(const Cuda& gpu, const GroupedLinearArgs<T>& a);

/// Most rows `ResidentKernel::automatic` sends to the matrix-vector kernel; more go to the tiled
/// GEMM. Measured on an H100 at 8 experts, 768 → 1536 (`BM_grouped_resident_small`): the
/// matrix-vector kernel 15.7 µs at 16 rows and 23.6 µs at 32, the tiled one 19 µs at both.
inline constexpr index_t kGroupedGemvMaxRows = 24;

/// Threads of the grouped matrix-vector kernel: 8 warps, each one output value at a time.
inline constexpr int kGroupedGemvThreads = 256;

/// y[r, o] = Σ_i x[r, i] · W[e(r), o, i] (+ b[e(r), o]) for every row r and output o: one warp
/// per (r, o), its lanes striding over i (8 values per load when `in` and the rows allow),
/// float32 accumulation, a warp-shuffle sum; rows past offsets[X] get zeros.
template <class T, int kVec>
__global__ void __launch_bounds__(kGroupedGemvThreads)
    grouped_gemv_kernel(const T* x, index_t ldx, const T* w, const T* bias, const std::int32_t* offsets,
                        int num_experts, index_t rows, index_t out, index_t in, T* y, index_t ldy) {
  const index_t warp = (static_cast<index_t>(blockIdx.x) * kGroupedGemvThreads + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (warp >= rows * out) return;  // whole warps leave together
  const index_t r = warp / out, o = warp % out;
  const int e = expert_of_row(offsets, num_experts, r);
  if (e < 0) {
    if (lane == 0) y[r * ldy + o] = from_float<T>(0.0f);
    return;
  }
  const T* xr = x + r * ldx;
  const T* wr = w + (static_cast<index_t>(e) * out + o) * in;
  float acc = 0.0f;
  if constexpr (kVec > 1) {
    for (index_t i = static_cast<index_t>(lane) * kVec; i < in; i += 32 * kVec) {
      float xv[kVec], wv[kVec];
      cuda::load_vec<kVec>(xr + i, xv);
      cuda::load_vec<kVec, cuda::Load::read_only>(wr + i, wv);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc += xv[j] * wv[j];
    }
  } else {
    for (index_t i = lane; i < in; i += 32) acc += to_float(xr[i]) * to_float(wr[i]);
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) y[r * ldy + o] = from_float<T>(bias ? acc + to_float(bias[static_cast<index_t>(e) * out + o]) : acc);
}

template <class T>
void grouped_gemv(const Cuda& gpu, const GroupedLinearArgs<T>& a) {
  const index_t rows = a.x.shape[0], X = a.weight.shape[0], out = a.weight.shape[1], in = a.weight.shape[2];
  if (rows == 0) return;
  MOSS_EXPECTS(X <= INT_MAX, unsupported_error, "grouped_linear (cuda, resident offsets): ", X, " experts");
  const index_t warps = rows * out;
  const index_t blocks = ceil_div<index_t>(warps, kGroupedGemvThreads / 32);
  MOSS_EXPECTS(blocks <= INT_MAX, unsupported_error, "grouped_linear (cuda, resident offsets): ", rows, " rows × ", out,
               " outputs exceed the grid limit");
  constexpr int kVec = 16 / sizeof(T);
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool vec = in % kVec == 0 && a.x.stride[0] % kVec == 0 && aligned(a.x.data) && aligned(a.weight.data);
  const auto kernel = vec ? grouped_gemv_kernel<T, kVec> : grouped_gemv_kernel<T, 1>;
  kernel<<<static_cast<unsigned>(blocks), kGroupedGemvThreads, 0, gpu.stream>>>(
      a.x.data, a.x.stride[0], a.weight.data, present(a.bias) ? a.bias.data : nullptr, a.offsets.data,
      static_cast<int>(X), rows, out, in, a.y.data, a.y.stride[0]);
  MOSS_CHECK_LAUNCH("grouped_gemv_kernel", gpu.stream);
}

}  // namespace detail

/// Runs every expert's linear map over its segment on the GPU, queued on the stream. Reads
/// `offsets` to the host (one synchronisation) unless `host_offsets` is given.
template <class T>
void grouped_linear(const Cuda& gpu, const GroupedLinearArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::grouped_linear: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "grouped_linear");
  if (a.resident_offsets) {
    const bool gemv = a.resident_kernel == ResidentKernel::matrix_vector ||
                      (a.resident_kernel == ResidentKernel::automatic && a.x.shape[0] <= detail::kGroupedGemvMaxRows);
    if (gemv)
      detail::grouped_gemv(gpu, a);
    else
      detail::grouped_gemm_device(gpu, a);
    return;
  }
  const index_t X = a.weight.shape[0];
  std::vector<std::int32_t> read;
  const std::int32_t* off = a.host_offsets;
  if (!off) {
    read.resize(static_cast<std::size_t>(X + 1));
    download(gpu, read.data(), a.offsets.data, X + 1);
    off = read.data();
  }
  detail::check_offsets("grouped_linear", off, X, a.x.shape[0]);
  // cublasGemmEx needs no per-shape plan: the segment lengths change with every batch, which
  // would defeat cuBLASLt's plan cache.
  detail::for_each_segment(a, off, [&](const LinearArgs<T>& l) { detail::linear_gemm_ex(gpu, l); });
}

}  // namespace moss
