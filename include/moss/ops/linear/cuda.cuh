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
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <type_traits>

#include "moss/backend/cuda.cuh"
#include "moss/core/workspace.hpp"
#include "moss/cuda/launch.cuh"
#include "moss/cuda/vector.cuh"
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
  std::size_t workspace_bytes = 0;  // the work area `algo` needs (at most the preference's maximum)

  /// Builds the descriptors and asks the heuristic for an algorithm that needs at most
  /// `max_workspace_bytes` of work area. `bias` is a device pointer with the key's bias
  /// alignment: the heuristic reads its address (not its data) to rule out misaligned kernels;
  /// every call sets its real bias pointer before it runs.
  LinearPlan(cublasLtHandle_t lt, const LinearPlanKey& k, const void* bias, std::size_t max_workspace_bytes) {
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
    const std::uint64_t ws = max_workspace_bytes;
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
        workspace_bytes = results[i].workspaceSize;
        has_algo = true;
      }
    }
  }
};

/// The plan of `key` for this thread, built on first use (`bias`: see LinearPlan).
inline LinearPlan& linear_plan(const Cuda& gpu, const LinearPlanKey& key, const void* bias) {
  thread_local std::map<LinearPlanKey, std::unique_ptr<LinearPlan>> plans;
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;
  if (plans.size() >= kLinearTuning.plan_cache_entries) plans.clear();
  auto plan = std::make_unique<LinearPlan>(gpu.cublaslt(), key, bias, kLinearTuning.max_workspace_bytes);
  return *plans.emplace(key, std::move(plan)).first->second;
}

/// Where the bias epilogue reads the bias from.
enum class LinearBias : std::uint8_t {
  none,    // no bias
  direct,  // a.bias itself: T is Tout and the vector is aligned for the epilogue's loads
  copied,  // a copy in Tout at the start of the workspace (exact: Tout is T or float)
};

/// Where `a`'s bias is read from.
template <class T, class Tout>
LinearBias linear_bias(const LinearArgs<T, Tout>& a) {
  if (!present(a.bias)) return LinearBias::none;
  if constexpr (std::is_same_v<T, Tout>) {
    if (cuda::is_aligned(a.bias.data, kLinearTuning.bias_alignment)) return LinearBias::direct;
  }
  return LinearBias::copied;
}

/// The plan key of validated arguments `a` with at least one row.
template <class T, class Tout>
LinearPlanKey linear_plan_key(const LinearArgs<T, Tout>& a, LinearBias bias) {
  const LinearShape s = linear_shape(a);
  LinearPlanKey key;
  key.device = cuda::current_device();
  key.type = linear_data_type<T>();
  key.out_type = linear_data_type<Tout>();
  key.rows = s.rows;
  key.in = s.in;
  key.out = s.out;
  // A single row's stride is never used as a step; cuBLAS still wants ld ≥ the row width.
  key.ldx = s.rows > 1 ? a.x.stride[0] : s.in;
  key.ldy = s.rows > 1 ? a.y.stride[0] : s.out;
  key.align_x = cuda::address_alignment(a.x.data);
  key.align_w = cuda::address_alignment(a.weight.data);
  key.align_y = cuda::address_alignment(a.y.data);
  // A copied bias starts the workspace, whose base is kWorkspaceAlignment-aligned (256: the cap).
  key.align_bias = bias == LinearBias::none     ? 0
                   : bias == LinearBias::direct ? cuda::address_alignment(a.bias.data)
                                                : static_cast<std::uint32_t>(kWorkspaceAlignment);
  return key;
}

/// The plan of validated arguments `a` (at least one row) whose bias is read as `bias` says.
/// Before the workspace exists, a copied bias is stood in for by the cuBLAS handle's own work
/// area: a device allocation with the same 256-byte alignment as the copy will have.
template <class T, class Tout>
LinearPlan& linear_plan_for(const Cuda& gpu, const LinearArgs<T, Tout>& a, LinearBias bias) {
  const void* probe = bias == LinearBias::none     ? nullptr
                      : bias == LinearBias::direct ? static_cast<const void*>(a.bias.data)
                                                   : blas_handles().workspace;
  return linear_plan(gpu, linear_plan_key(a, bias), probe);
}

/// The pieces of `linear`'s CUDA workspace (moss/core/workspace.hpp), in layout order.
template <class Tout>
struct LinearWorkspace {
  Tout* bias = nullptr;      // (out), the bias copy when LinearBias::copied
  void* cublaslt = nullptr;  // the chosen algorithm's work area, plan.workspace_bytes
};

/// Lays out the workspace of a call with `bias` and `plan` (nothing when cuBLASLt has no
/// algorithm: the cublasGemmEx fallback works in the handle's own workspace).
template <class T, class Tout>
LinearWorkspace<Tout> linear_workspace(const LinearArgs<T, Tout>& a, LinearBias bias, const LinearPlan& plan,
                                       WorkspaceLayout& layout) {
  LinearWorkspace<Tout> w;
  if (!plan.has_algo) return w;
  if (bias == LinearBias::copied) w.bias = layout.take<Tout>(a.weight.shape[0]);
  w.cublaslt = layout.take<std::byte>(static_cast<index_t>(plan.workspace_bytes));
  return w;
}

/// `linear` through cublasGemmEx: the fallback when cuBLASLt offers no algorithm, also called
/// directly by the tests. The bias is broadcast into y first and the GEMM adds to it (beta = 1),
/// so y is still rounded once.
template <class T, class Tout>
void linear_gemm_ex(const Cuda& gpu, const LinearArgs<T, Tout>& a) {
  static_assert(StorageType<T>, "moss::linear: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
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
    cuda::launch("linear_bias_fill_kernel", linear_bias_fill_kernel<T, Tout>,
                 cuda::grid_blocks(s.rows * s.out, threads), threads, 0, gpu.stream, a.bias.data, s.rows, s.out,
                 a.y.data, ldy);
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

/// Scratch bytes `linear` needs on CUDA for `a` (moss/core/workspace.hpp): the bias copy when
/// the epilogue cannot read the bias in place, and the work area of the algorithm cuBLASLt
/// chose for this shape (asked of the heuristic once per shape and thread). T is a storage type:
/// double is host-only.
template <class T, class Tout>
std::size_t workspace_bytes(const Cuda& gpu, const LinearArgs<T, Tout>& a) {
  static_assert(StorageType<T>, "moss::linear: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "linear workspace_bytes");
  if (a.x.shape[0] == 0) return 0;
  const detail::LinearBias bias = detail::linear_bias(a);
  WorkspaceLayout layout;
  detail::linear_workspace(a, bias, detail::linear_plan_for(gpu, a, bias), layout);
  return layout.bytes();
}

/// y = x · Wᵀ (+ bias) on the GPU, queued on `gpu.stream`: cuBLASLt with float32 accumulation
/// and the bias added in its epilogue, y rounded once to Tout. Runs in `a.workspace` when given,
/// else in memory from the stream-ordered pool. Does not synchronise. T is a storage type: double
/// is host-only.
template <class T, class Tout>
void linear(const Cuda& gpu, const LinearArgs<T, Tout>& a) {
  static_assert(StorageType<T>, "moss::linear: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "linear");
  const LinearShape s = linear_shape(a);
  if (s.rows == 0) return;
  const detail::LinearBias bias_from = detail::linear_bias(a);
  detail::LinearPlan& plan = detail::linear_plan_for(gpu, a, bias_from);
  if (!plan.has_algo) {
    detail::linear_gemm_ex(gpu, a);
    return;
  }
  WorkspaceLayout measure;
  detail::linear_workspace(a, bias_from, plan, measure);
  const OpWorkspace<Cuda> workspace(gpu, a.workspace, measure.bytes(), "linear");
  WorkspaceLayout layout = workspace.layout();
  const detail::LinearWorkspace<Tout> pieces = detail::linear_workspace(a, bias_from, plan, layout);

  const Tout* bias = nullptr;
  if (bias_from == detail::LinearBias::direct) {
    bias = reinterpret_cast<const Tout*>(a.bias.data);  // T is Tout here
  } else if (bias_from == detail::LinearBias::copied) {
    const int threads = detail::kLinearTuning.elementwise_threads;
    cuda::launch("linear_bias_copy_kernel", detail::linear_bias_copy_kernel<T, Tout>, cuda::grid_blocks(s.out, threads),
                 threads, 0, gpu.stream, a.bias.data, s.out, pieces.bias);
    bias = pieces.bias;
  }
  if (bias) {
    MOSS_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f, beta = 0.0f;
  MOSS_CUBLAS_CHECK(cublasLtMatmul(gpu.cublaslt(), plan.desc.get(), &alpha, a.weight.data, plan.w_layout.get(),
                                   a.x.data, plan.x_layout.get(), &beta, a.y.data, plan.y_layout.get(), a.y.data,
                                   plan.y_layout.get(), &plan.algo, pieces.cublaslt, plan.workspace_bytes, gpu.stream));
}

}  // namespace moss
