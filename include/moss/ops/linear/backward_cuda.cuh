// moss/ops/linear/backward_cuda.cuh: `linear_backward` on CUDA (needs nvcc).
//
// Row-major ↔ column-major as in moss/ops/linear/cuda.cuh: a row-major (rows, n) matrix with row
// stride ld is the column-major (n, rows) matrix with leading dimension ld. So
//   dX (rows, in) = dY (rows, out) · W (out, in)   is   dXᶜ (in, rows) = Wᶜ (in, out) · dYᶜ (out, rows)
//     ("NN": m = in, n = rows, k = out);
//   dW (out, in)  = dYᵀ · X                         is   dWᶜ (in, out) = Xᶜ (in, rows) · dYᶜᵀ (rows, out)
//     ("NT": m = in, n = out, k = rows), with beta = 1 when accumulating (cuBLAS forms the product
//     in float32, then adds the old dW once: the fresh sum first, as on the host).
// Both through cublasGemmEx with float32 accumulation (CUBLAS_COMPUTE_32F; PEDANTIC for float
// inputs, so never TF32), dX rounded once to T by cuBLAS. cuBLAS sums in its own fixed order
// (bitwise repeatable on one device and library version with the handle's workspace set, which
// moss's handles have); it is not the host's order, so the two agree to rounding, not bitwise.
//
// When dY is float32 and T is a 2-byte type (the LM head: linear<T, float>), cuBLAS has no GEMM
// of a float and a 2-byte operand. The 2-byte operand is widened (exactly) to a float32 copy
// instead of rounding dY to T, which would flush the LM head's small gradients in f16: W for dX,
// X for dW (scratch from the stream-ordered pool), and dX is formed in float32 scratch and
// rounded once to T.
//
// db = Σ_rows dY: two small kernels, no atomics. Each part of kColumnSumRows rows (more when the
// rows would need over 65535 parts) is summed per column in ascending row order; the parts'
// sums are then added per column in ascending part order. The order depends on rows alone.
#pragma once

#include <climits>
#include <cstddef>
#include <type_traits>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/linear/cuda.cuh"
#include "moss/ops/linear_backward.hpp"

namespace moss {

namespace detail {

/// Rows of dY that one thread sums for one column in the first pass of the bias gradient.
inline constexpr index_t kColumnSumRows = 256;

/// partial[p, o] = Σ_{r ∈ part p} dy[r, o], rows ascending; part p is rows [p·per_part,
/// (p+1)·per_part). One thread per (column, part): x over columns, y over parts.
template <class Tin>
__global__ void column_sum_partial_kernel(const Tin* __restrict__ dy, index_t ldy, index_t rows, index_t cols,
                                          index_t per_part, float* __restrict__ partial) {
  const index_t o = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t p = blockIdx.y;
  if (o >= cols) return;
  const index_t r0 = p * per_part;
  const index_t r1 = r0 + per_part < rows ? r0 + per_part : rows;
  float s = 0.0f;
  for (index_t r = r0; r < r1; ++r) s += to_float(dy[r * ldy + o]);
  partial[p * cols + o] = s;
}

/// out[o] = Σ_p partial[p, o] (parts ascending), written or added to (`accumulate`). A template
/// (C = float) so that a header-defined kernel is not a second definition in each translation unit.
template <class C>
__global__ void column_sum_final_kernel(const C* __restrict__ partial, index_t parts, index_t cols, bool accumulate,
                                        C* __restrict__ out) {
  for (index_t o = index_t(blockIdx.x) * blockDim.x + threadIdx.x; o < cols; o += index_t(gridDim.x) * blockDim.x) {
    C s = C(0);
    for (index_t p = 0; p < parts; ++p) s += partial[p * cols + o];
    out[o] = accumulate ? out[o] + s : s;
  }
}

/// dst[r, c] = src[r · lds + c] widened to float, dst contiguous (rows, cols); grid-stride.
template <class T>
__global__ void widen_matrix_kernel(const T* __restrict__ src, index_t lds, index_t rows, index_t cols,
                                    float* __restrict__ dst) {
  const index_t n = rows * cols;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / cols;
    dst[i] = to_float(src[r * lds + (i - r * cols)]);
  }
}

/// dst[r · ldd + c] = src[r, c] rounded once to T, src contiguous (rows, cols); grid-stride.
template <class T>
__global__ void narrow_matrix_kernel(const float* __restrict__ src, index_t rows, index_t cols, T* __restrict__ dst,
                                     index_t ldd) {
  const index_t n = rows * cols;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / cols;
    dst[r * ldd + (i - r * cols)] = from_float<T>(src[i]);
  }
}

/// One operand of `backward_gemm`: column-major data, its cuBLAS type and leading dimension.
struct GemmOperand {
  const void* data;
  cudaDataType_t type;
  index_t ld;
};

/// C (m, n) = alpha · op_a(A) · op_b(B) + beta · C, column-major, through cublasGemmEx on
/// gpu.stream with float32 accumulation (PEDANTIC for float inputs: never TF32). A and B must
/// have the same type. `where` names the op in the error for sizes past cuBLAS's int range.
inline void backward_gemm(const Cuda& gpu, const char* where, cublasOperation_t op_a, cublasOperation_t op_b, index_t m,
                          index_t n, index_t k, float alpha, const GemmOperand& a, const GemmOperand& b, float beta,
                          void* c, cudaDataType_t c_type, index_t ldc) {
  MOSS_EXPECTS(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && a.ld <= INT_MAX && b.ld <= INT_MAX && ldc <= INT_MAX,
               unsupported_error, where, ": cublasGemmEx needs sizes and leading dimensions below 2^31; got m = ", m,
               ", n = ", n, ", k = ", k, ", leading dimensions ", a.ld, ", ", b.ld, " and ", ldc);
  const cublasComputeType_t compute = a.type == CUDA_R_32F ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  cublasHandle_t h = gpu.cublas();
  MOSS_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  MOSS_CUBLAS_CHECK(cublasGemmEx(h, op_a, op_b, int(m), int(n), int(k), &alpha, a.data, a.type, int(a.ld), b.data,
                                 b.type, int(b.ld), &beta, c, c_type, int(ldc), compute, CUBLAS_GEMM_DEFAULT));
}

/// `n` floats at `p` set to zero bits (0.0f), queued on the stream.
inline void zero_floats(const Cuda& gpu, float* p, index_t n) {
  if (n > 0) MOSS_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<std::size_t>(n) * sizeof(float), gpu.stream));
}

/// out[o] = Σ_r dy[r, o] (or out[o] += it with `accumulate`) for rows ≥ 1, in the fixed order of
/// the file comment.
template <class Tin>
void column_sums(const Cuda& gpu, const Tin* dy, index_t ldy, index_t rows, index_t cols, bool accumulate, float* out) {
  index_t per_part = kColumnSumRows;
  if (ceil_div(rows, per_part) > cuda::kGridStrideBlocks) per_part = ceil_div(rows, cuda::kGridStrideBlocks);
  const index_t parts = ceil_div(rows, per_part);
  Buffer<float> partial = gpu.alloc<float>(parts * cols, "linear_backward bias partial sums");
  const int threads = cuda::kElementwiseThreads;
  const dim3 grid(cuda::checked_grid(ceil_div<index_t>(cols, threads), "linear_backward (bias gradient)"),
                  static_cast<unsigned>(parts));
  cuda::launch("column_sum_partial_kernel", column_sum_partial_kernel<Tin>, grid, threads, 0, gpu.stream, dy, ldy, rows,
               cols, per_part, partial.data());
  cuda::launch("column_sum_final_kernel", column_sum_final_kernel<float>, cuda::grid_blocks(cols, threads), threads, 0,
               gpu.stream, partial.data(), parts, cols, accumulate, out);
}

/// A float32 copy (rows, cols), contiguous, of the rows of `src` (row stride lds), for the
/// widened GEMM operand of a mixed-type call.
template <class T>
Buffer<float> widened_copy(const Cuda& gpu, const T* src, index_t lds, index_t rows, index_t cols, const char* what) {
  Buffer<float> dst = gpu.alloc<float>(rows * cols, what);
  const int threads = cuda::kElementwiseThreads;
  cuda::launch("widen_matrix_kernel", widen_matrix_kernel<T>, cuda::grid_blocks(rows * cols, threads), threads, 0,
               gpu.stream, src, lds, rows, cols, dst.data());
  return dst;
}

}  // namespace detail

/// The gradients of `linear` on the GPU, queued on `gpu.stream` (see moss/ops/linear_backward.hpp
/// and the file comment): dX = dY · W rounded once to T, dW = dYᵀ · X and db = Σ_rows dY
/// (written, or added when `a.accumulate`), each only when its view is present. Zero rows give
/// dW = 0 and db = 0 (unchanged when accumulating). Deterministic (no atomics); scratch comes
/// from the stream-ordered pool. Does not synchronise. T is a storage type: double is host-only.
template <class T, class Tout>
void linear_backward(const Cuda& gpu, const LinearBackwardArgs<T, Tout>& a) {
  static_assert(StorageType<T>,
                "moss::linear_backward: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "linear_backward");
  const index_t rows = a.x.shape[0], in = a.x.shape[1], out = a.weight.shape[0];
  const bool want_dw = present(a.dweight), want_db = present(a.dbias), want_dx = present(a.dx) && rows > 0;
  if (rows == 0) {
    if (!a.accumulate) {
      if (want_dw) detail::zero_floats(gpu, a.dweight.data, out * in);
      if (want_db) detail::zero_floats(gpu, a.dbias.data, out);
    }
    return;
  }
  // A single row's stride is never used as a step; cuBLAS still wants ld ≥ the row width.
  const index_t ldx = rows > 1 ? a.x.stride[0] : in;
  const index_t ldy = rows > 1 ? a.dy.stride[0] : out;
  constexpr bool kMixed = !std::is_same_v<T, Tout>;  // dY float, T 2-byte: widen the T operand
  constexpr cudaDataType_t kT = detail::linear_data_type<T>();
  constexpr cudaDataType_t kTout = detail::linear_data_type<Tout>();
  const detail::GemmOperand dy{a.dy.data, kTout, ldy};

  if (want_dx) {
    const index_t lddx = rows > 1 ? a.dx.stride[0] : in;
    if constexpr (kMixed) {
      const Buffer<float> w = detail::widened_copy(gpu, a.weight.data, in, out, in, "linear_backward widened weight");
      Buffer<float> dx = gpu.alloc<float>(rows * in, "linear_backward float32 dx");
      detail::backward_gemm(gpu, "linear_backward (dx)", CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, 1.0f,
                            detail::GemmOperand{w.data(), CUDA_R_32F, in}, dy, 0.0f, dx.data(), CUDA_R_32F, in);
      const int threads = cuda::kElementwiseThreads;
      cuda::launch("narrow_matrix_kernel", detail::narrow_matrix_kernel<T>, cuda::grid_blocks(rows * in, threads),
                   threads, 0, gpu.stream, static_cast<const float*>(dx.data()), rows, in, a.dx.data, lddx);
    } else {
      detail::backward_gemm(gpu, "linear_backward (dx)", CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, 1.0f,
                            detail::GemmOperand{a.weight.data, kT, in}, dy, 0.0f, a.dx.data, kT, lddx);
    }
  }
  if (want_dw) {
    const float beta = a.accumulate ? 1.0f : 0.0f;
    if constexpr (kMixed) {
      const Buffer<float> x = detail::widened_copy(gpu, a.x.data, ldx, rows, in, "linear_backward widened x");
      detail::backward_gemm(gpu, "linear_backward (dweight)", CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, 1.0f,
                            detail::GemmOperand{x.data(), CUDA_R_32F, in}, dy, beta, a.dweight.data, CUDA_R_32F, in);
    } else {
      detail::backward_gemm(gpu, "linear_backward (dweight)", CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, 1.0f,
                            detail::GemmOperand{a.x.data, kT, ldx}, dy, beta, a.dweight.data, CUDA_R_32F, in);
    }
  }
  if (want_db) detail::column_sums(gpu, a.dy.data, ldy, rows, out, a.accumulate, a.dbias.data);
}

}  // namespace moss
