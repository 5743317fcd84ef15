// moss/ops/linear/cuda.cuh: `linear` on CUDA through cuBLASLt.
//
// Row-major ↔ column-major: cuBLAS is column-major, and a row-major (rows, n) matrix with row
// stride ld is the column-major (n, rows) matrix with leading dimension ld. So
//   y (rows, out) = x (rows, in) · Wᵀ      becomes, column-major,
//   Y (out, rows) = op(A) · B  with A = W seen as (in, out), op = transpose, B = x seen as (in, rows):
// m = out, n = rows, k = in ("TN", the layout cuBLASLt's fastest kernels are built for), and the
// row strides of x and y are the leading dimensions of B and D. The bias is a vector over m,
// which the BIAS epilogue adds before the single rounding to Tout.
//
// Accumulation is float32 for every dtype (CUBLAS_COMPUTE_32F; never TF32, so f32 keeps the
// 1e-5 contract). Descriptors and the heuristic's algorithm are cached per thread, keyed by the
// shape, leading dimensions and pointer alignments, since cuBLASLt picks kernels by alignment.
// Should the heuristic offer no algorithm, the op falls back to cublasGemmEx.
#pragma once

#include <climits>
#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <type_traits>

#include "moss/backend/cuda.cuh"
#include "moss/ops/linear.hpp"
#include "moss/ops/linear/kernel.cuh"
#include "moss/ops/linear/math.hpp"
#include "moss/ops/linear/tuning.cuh"

namespace moss {

namespace detail {

/// The cuBLAS tag of a storage type.
template <class T>
constexpr cudaDataType_t linear_data_type() {
  static_assert(StorageType<T>, "moss::linear: T must be float, moss::f16 or moss::bf16");
  if constexpr (std::is_same_v<T, float>) {
    return CUDA_R_32F;
  } else if constexpr (std::is_same_v<T, f16>) {
    return CUDA_R_16F;
  } else {
    return CUDA_R_16BF;
  }
}

/// The largest power of two (≤ 256, cuBLASLt's default assumption) that divides the address.
inline std::uint32_t linear_alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t low = a & (~a + 1);
  return (low == 0 || low > 256) ? 256u : static_cast<std::uint32_t>(low);
}

/// Blocks for a grid-stride element-wise kernel over n elements.
inline unsigned linear_blocks(index_t n, int threads) {
  const index_t b = ceil_div<index_t>(n, threads);
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

/// Everything the cuBLASLt heuristic's answer depends on.
struct LinearPlanKey {
  int device = 0;
  cudaDataType_t type = CUDA_R_32F;      // x and weight
  cudaDataType_t out_type = CUDA_R_32F;  // y and the bias the epilogue reads
  index_t rows = 0, in = 0, out = 0;
  index_t ldx = 0, ldy = 0;
  std::uint32_t align_x = 0, align_w = 0, align_y = 0;
  std::uint32_t align_bias = 0;  // 0: no bias epilogue
  auto operator<=>(const LinearPlanKey&) const = default;
};

/// Owns one cuBLASLt descriptor; destroys it when dropped.
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
class LtDescriptor {
 public:
  LtDescriptor() = default;
  LtDescriptor(const LtDescriptor&) = delete;
  LtDescriptor& operator=(const LtDescriptor&) = delete;
  ~LtDescriptor() {
    if (h_) Destroy(h_);
  }
  Handle* out() { return &h_; }
  Handle get() const { return h_; }

 private:
  Handle h_ = nullptr;
};

/// The matmul description of one key and the algorithm cuBLASLt's heuristic chose for it.
struct LinearPlan {
  LtDescriptor<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> desc;
  LtDescriptor<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> w_layout;  // (in, out), ld in
  LtDescriptor<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> x_layout;  // (in, rows), ld ldx
  LtDescriptor<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> y_layout;  // (out, rows), ld ldy
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;

  /// Builds the descriptors and asks the heuristic. `bias` is a pointer with the key's bias
  /// alignment: the heuristic reads its address (not its data) to rule out misaligned kernels.
  LinearPlan(cublasLtHandle_t lt, const LinearPlanKey& k, const void* bias, std::size_t workspace_bytes) {
    MOSS_CUBLAS_CHECK(cublasLtMatmulDescCreate(desc.out(), CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_w = CUBLAS_OP_T, trans_x = CUBLAS_OP_N;
    MOSS_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, &trans_w, sizeof(trans_w)));
    MOSS_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, &trans_x, sizeof(trans_x)));
    if (k.align_bias != 0) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const std::int32_t bias_type = k.out_type;
      MOSS_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      MOSS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                       sizeof(bias_type)));
      MOSS_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    MOSS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(w_layout.out(), k.type, std::uint64_t(k.in), std::uint64_t(k.out),
                                                 std::int64_t(k.in)));
    MOSS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(x_layout.out(), k.type, std::uint64_t(k.in), std::uint64_t(k.rows),
                                                 std::int64_t(k.ldx)));
    MOSS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(y_layout.out(), k.out_type, std::uint64_t(k.out),
                                                 std::uint64_t(k.rows), std::int64_t(k.ldy)));

    LtDescriptor<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy> pref;
    MOSS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(pref.out()));
    const std::uint64_t ws = workspace_bytes;
    MOSS_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, std::uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.align_w},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.align_x},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.align_y},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.align_y}};
    for (const auto& [attr, bytes] : alignments) {
      MOSS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.get(), attr, &bytes, sizeof(bytes)));
    }

    cublasLtMatmulHeuristicResult_t results[8] = {};
    const int requested = kLinearTuning.heuristic_candidates < 8 ? kLinearTuning.heuristic_candidates : 8;
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt, desc.get(), w_layout.get(), x_layout.get(), y_layout.get(), y_layout.get(),
                                       pref.get(), requested, results, &found);
    // NOT_SUPPORTED means "no algorithm for this problem": the caller falls back to cublasGemmEx.
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) MOSS_CUBLAS_CHECK(st);
    for (int i = 0; i < found && !has_algo; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) {
        algo = results[i].algo;
        has_algo = true;
      }
    }
  }
};

/// The plan of `key` for this thread, built on first use.
inline LinearPlan& linear_plan(const Cuda& gpu, const LinearPlanKey& key, const void* bias) {
  thread_local std::map<LinearPlanKey, std::unique_ptr<LinearPlan>> plans;
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;
  if (plans.size() >= kLinearTuning.plan_cache_entries) plans.clear();
  auto plan = std::make_unique<LinearPlan>(gpu.cublaslt(), key, bias, Cuda::workspace_bytes());
  return *plans.emplace(key, std::move(plan)).first->second;
}

/// `linear` through cublasGemmEx: the fallback when cuBLASLt offers no algorithm, also called
/// directly by the tests. The bias is broadcast into y first and the GEMM adds to it (beta = 1),
/// so y is still rounded once.
template <class T, class Tout>
void linear_gemm_ex(const Cuda& gpu, const LinearArgs<T, Tout>& a) {
  validate(a, "linear");
  const LinearShape s = linear_shape(a);
  if (s.rows == 0) return;
  const index_t ldx = s.rows > 1 ? a.x.stride[0] : s.in;
  const index_t ldy = s.rows > 1 ? a.y.stride[0] : s.out;
  MOSS_EXPECTS(s.rows <= INT_MAX && s.in <= INT_MAX && s.out <= INT_MAX && ldx <= INT_MAX && ldy <= INT_MAX,
               unsupported_error,
               "linear: the cublasGemmEx path needs sizes and row strides below 2^31; got rows = ", s.rows,
               ", in = ", s.in, ", out = ", s.out, ", row strides ", ldx, " and ", ldy);
  const float alpha = 1.0f;
  float beta = 0.0f;
  if (present(a.bias)) {
    const int threads = kLinearTuning.elementwise_threads;
    linear_bias_fill_kernel<T, Tout>
        <<<linear_blocks(s.rows * s.out, threads), threads, 0, gpu.stream>>>(a.bias.data, s.rows, s.out, a.y.data, ldy);
    MOSS_CHECK_LAUNCH("linear_bias_fill_kernel", gpu.stream);
    beta = 1.0f;
  }
  // PEDANTIC keeps f32 in full float32 even if someone set TF32 math on the shared handle.
  const cublasComputeType_t compute = std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  cublasHandle_t h = gpu.cublas();
  MOSS_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  MOSS_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(s.out), int(s.rows), int(s.in), &alpha, a.weight.data,
                                 linear_data_type<T>(), int(s.in), a.x.data, linear_data_type<T>(), int(ldx), &beta,
                                 a.y.data, linear_data_type<Tout>(), int(ldy), compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace detail

/// y = x · Wᵀ (+ bias) on the GPU, queued on `gpu.stream`: cuBLASLt with float32 accumulation
/// and the bias added in its epilogue, y rounded once to Tout. Does not synchronise.
template <class T, class Tout>
void linear(const Cuda& gpu, const LinearArgs<T, Tout>& a) {
  validate(a, "linear");
  const LinearShape s = linear_shape(a);
  if (s.rows == 0) return;

  // The epilogue reads a bias of D's type with aligned vector loads; anything else is copied
  // (exactly: Tout is T or float) into a scratch vector from the stream-ordered allocator.
  Buffer<Tout> bias_copy;
  const Tout* bias = nullptr;
  if (present(a.bias)) {
    if constexpr (std::is_same_v<T, Tout>) {
      if (reinterpret_cast<std::uintptr_t>(a.bias.data) % detail::kLinearTuning.bias_alignment == 0) {
        bias = a.bias.data;
      }
    }
    if (bias == nullptr) {
      bias_copy = gpu.alloc<Tout>(s.out);
      const int threads = detail::kLinearTuning.elementwise_threads;
      detail::linear_bias_copy_kernel<T, Tout>
          <<<detail::linear_blocks(s.out, threads), threads, 0, gpu.stream>>>(a.bias.data, s.out, bias_copy.data());
      MOSS_CHECK_LAUNCH("linear_bias_copy_kernel", gpu.stream);
      bias = bias_copy.data();
    }
  }

  detail::LinearPlanKey key;
  MOSS_CUDA_CHECK(cudaGetDevice(&key.device));
  key.type = detail::linear_data_type<T>();
  key.out_type = detail::linear_data_type<Tout>();
  key.rows = s.rows;
  key.in = s.in;
  key.out = s.out;
  // A single row's stride is never used as a step; cuBLAS still wants ld ≥ the row width.
  key.ldx = s.rows > 1 ? a.x.stride[0] : s.in;
  key.ldy = s.rows > 1 ? a.y.stride[0] : s.out;
  key.align_x = detail::linear_alignment(a.x.data);
  key.align_w = detail::linear_alignment(a.weight.data);
  key.align_y = detail::linear_alignment(a.y.data);
  key.align_bias = bias ? detail::linear_alignment(bias) : 0;

  detail::LinearPlan& plan = detail::linear_plan(gpu, key, bias);
  if (!plan.has_algo) {
    detail::linear_gemm_ex(gpu, a);
    return;
  }
  if (bias) {
    MOSS_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f, beta = 0.0f;
  MOSS_CUBLAS_CHECK(cublasLtMatmul(gpu.cublaslt(), plan.desc.get(), &alpha, a.weight.data, plan.w_layout.get(),
                                   a.x.data, plan.x_layout.get(), &beta, a.y.data, plan.y_layout.get(), a.y.data,
                                   plan.y_layout.get(), &plan.algo, gpu.workspace(), Cuda::workspace_bytes(),
                                   gpu.stream));
}

}  // namespace moss
