// moss/ops/cross_entropy/cuda.cuh: `cross_entropy` (the LM loss fused with the LM head) on CUDA.
//
// The targets are host memory, as on the host backend: the op checks them and counts N on the
// host before queuing anything (so a bad target throws with nothing written, and dloss / N is
// known before the first chunk), then copies the counted rows' indices and targets to the
// device. The counted rows are processed in chunks of up to `chunk_rows` rows; per chunk:
//   1. its rows of H are gathered into a contiguous (n, d) buffer (skipped when no row is
//      ignored: then H is read in place), so an ignored row's H is never read, as on the host;
//   2. logits (n, V) in float32 = Hc · Wᵀ: cublasGemmEx "TN", float32 accumulation (the LM head);
//   3. one block per row (cross_entropy_softmax_kernel): the max and Σ exp with moss's block
//      reductions, loss_r, and dl = softmax − onehot in T (in place over the logits for float);
//   4. dH (n, d) = (dloss / N) · dl · W, cublasGemmEx "NN" rounding once to T, straight into
//      dhidden (or into a buffer scattered to the counted rows; ignored rows were zeroed first);
//   5. dW (V, d) += (dloss / N) · dlᵀ · Hc, cublasGemmEx "NT" into dweight with beta = 0 for the
//      first chunk (1 when accumulating) and 1 after: chunk after chunk in order, float32.
// The per-row losses are kept (N floats) and summed once at the end in a fixed order
// (cross_entropy_loss_sum_kernel); the mean is formed on the host, which is why the op
// synchronises once, at its end, to return the loss like the host op.
//
// Memory: one chunk's (n, V) float32 logits, plus (n, V) of T for dl when T is 2-byte, plus
// (n, d) of T twice when rows are ignored: never the (tokens, V) logits.
//
// Precision and order (differences from the host op, all within the precision contract):
//  - dl is stored in T before the dH and dW GEMMs (cuBLAS multiplies operands of one type);
//    for float it is exact, for f16 / bf16 it adds one rounding of a value in [−1, 1] (the factor
//    dloss / N is the GEMMs' alpha, so nothing underflows) — what PyTorch's and Liger's bf16
//    losses do. dH is still rounded once to T and dW accumulates in float32.
//  - cuBLAS sums in its own order, which can depend on the chunk's row count: the results are
//    bitwise repeatable for the same inputs, chunk_rows and device, but (unlike the host) not
//    bitwise independent of chunk_rows; across chunk sizes they agree to rounding.
//  - With `accumulate`, dW is added into dweight chunk by chunk (beta = 1), so the old value
//    enters the first chunk's sum instead of being added to the finished sum.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss/ops/cross_entropy.hpp"
#include "moss/ops/cross_entropy/kernel.cuh"
#include "moss/ops/linear/backward_cuda.cuh"
#include "moss/ops/linear/cuda.cuh"

namespace moss {

namespace detail {

/// One chunk's (chunk, V) float32 logits and the logits' gradient dl in T: for float, dl is
/// the logits themselves (the softmax overwrites them in place); for a 2-byte T, its own buffer.
template <class T>
struct ChunkLogits {
  Buffer<float> logits;
  Buffer<T> dl_buffer;  // empty for float

  ChunkLogits(const Cuda& gpu, index_t chunk, index_t vocab, const char* op)
      : logits(gpu.alloc<float>(chunk * vocab, cat(op, " chunk logits").c_str())) {
    if constexpr (!std::is_same_v<T, float>) dl_buffer = gpu.alloc<T>(chunk * vocab, cat(op, " chunk dlogits").c_str());
  }
  /// Where dl goes.
  T* dl() {
    if constexpr (std::is_same_v<T, float>)
      return logits.data();
    else
      return dl_buffer.data();
  }
};

}  // namespace detail

/// The mean cross-entropy loss of the LM head over the counted rows on the GPU, and in the same
/// pass dhidden (written) and dweight (written, or added when `a.accumulate`), each only when its
/// view is present; see moss/ops/cross_entropy.hpp for the math and the file comment for the
/// CUDA plan. `targets` is host memory; hidden, weight and the gradients are device memory.
/// Every target is checked first: one that is neither ignore_index nor in [0, vocab) throws
/// `shape_error` naming the first bad position, with nothing queued. Work is queued on
/// `gpu.stream`; the op synchronises it once at the end to return the loss and the count.
/// Deterministic (no atomics). T is a storage type: double is host-only.
template <class T>
CrossEntropyResult<compute_t<T>> cross_entropy(const Cuda& gpu, const CrossEntropyArgs<T>& a) {
  static_assert(StorageType<T>,
                "moss::cross_entropy: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "cross_entropy");
  using C = compute_t<T>;
  const index_t tokens = a.hidden.shape[0], d = a.hidden.shape[1], vocab = a.weight.shape[0];
  MOSS_EXPECTS(tokens <= INT32_MAX && vocab <= INT32_MAX, unsupported_error, "cross_entropy: ", tokens,
               " rows and a vocabulary of ", vocab, " must both be below 2^31 on CUDA");

  // The counted rows and their targets, host side (the same check and message as the host op).
  std::vector<std::int32_t> rows, targets;  // alive until the final synchronisation (async copies)
  for (index_t r = 0; r < tokens; ++r) {
    const std::int64_t t = a.targets(r);
    if (t == a.ignore_index) continue;
    if (t < 0 || t >= vocab) detail::raise_bad_cross_entropy_target("cross_entropy", r, t, vocab, a.ignore_index);
    rows.push_back(static_cast<std::int32_t>(r));
    targets.push_back(static_cast<std::int32_t>(t));
  }
  const index_t count = static_cast<index_t>(rows.size());
  const bool want_dh = present(a.dhidden), want_dw = present(a.dweight);
  const index_t ldh = tokens > 1 ? a.hidden.stride[0] : d;
  const index_t lddh = want_dh && tokens > 1 ? a.dhidden.stride[0] : d;

  if (want_dh && count < tokens) {
    // Ignored rows' gradient is zero (zero bits are 0 in float, f16 and bf16); the counted rows
    // are overwritten below.
    MOSS_CUDA_CHECK(cudaMemset2DAsync(a.dhidden.data, static_cast<std::size_t>(lddh) * sizeof(T), 0,
                                      static_cast<std::size_t>(d) * sizeof(T), static_cast<std::size_t>(tokens),
                                      gpu.stream));
  }
  if (want_dw && !a.accumulate && count == 0) detail::zero_floats(gpu, a.dweight.data, vocab * d);
  if (count == 0) return {C(0), 0};

  const bool direct = count == tokens;  // no row ignored: H and dhidden are used in place
  const index_t chunk = a.chunk_rows < count ? a.chunk_rows : count;
  constexpr cudaDataType_t kT = detail::linear_data_type<T>();
  const C scale = a.dloss / C(count);

  Buffer<std::int32_t> d_targets = gpu.alloc<std::int32_t>(count, "cross_entropy targets");
  MOSS_CUDA_CHECK(cudaMemcpyAsync(d_targets.data(), targets.data(),
                                  static_cast<std::size_t>(count) * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                                  gpu.stream));
  Buffer<std::int32_t> d_rows;
  Buffer<T> hc, dhc;  // (chunk, d): the gathered H rows and their dH, when rows are ignored
  if (!direct) {
    d_rows = gpu.alloc<std::int32_t>(count, "cross_entropy rows");
    MOSS_CUDA_CHECK(cudaMemcpyAsync(d_rows.data(), rows.data(), static_cast<std::size_t>(count) * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, gpu.stream));
    hc = gpu.alloc<T>(chunk * d, "cross_entropy chunk hidden");
    if (want_dh) dhc = gpu.alloc<T>(chunk * d, "cross_entropy chunk dhidden");
  }
  detail::ChunkLogits<T> chunk_logits(gpu, chunk, vocab, "cross_entropy");
  Buffer<float>& logits = chunk_logits.logits;
  T* const dl = chunk_logits.dl();
  Buffer<float> losses = gpu.alloc<float>(count + 1, "cross_entropy row losses");  // + the sum

  constexpr detail::CrossEntropyTuning cfg = detail::kCrossEntropyTuning;
  for (index_t c0 = 0; c0 < count; c0 += chunk) {
    const index_t n = chunk < count - c0 ? chunk : count - c0;
    const T* h = nullptr;  // the chunk's H rows, row stride ld
    index_t ld = d;
    if (direct) {
      h = a.hidden.data + c0 * ldh;
      ld = n > 1 ? ldh : d;
    } else {
      cuda::launch("cross_entropy_gather_kernel", detail::cross_entropy_gather_kernel<T>,
                   cuda::grid_blocks(n * d, cfg.copy_threads), cfg.copy_threads, 0, gpu.stream, a.hidden.data, ldh,
                   static_cast<const std::int32_t*>(d_rows.data() + c0), n, d, hc.data());
      h = hc.data();
    }
    // logits (n, V): column-major (V, n) = Wᶜᵀ (V, d) · Hᶜ (d, n).
    detail::backward_gemm(gpu, "cross_entropy (logits)", CUBLAS_OP_T, CUBLAS_OP_N, vocab, n, d, 1.0f,
                          detail::GemmOperand{a.weight.data, kT, d}, detail::GemmOperand{h, kT, ld}, 0.0f,
                          logits.data(), CUDA_R_32F, vocab);
    cuda::launch("cross_entropy_softmax_kernel", detail::cross_entropy_softmax_kernel<T, cfg.softmax_threads>,
                 cuda::row_blocks(n), cfg.softmax_threads, 0, gpu.stream, logits.data(), vocab,
                 static_cast<const std::int32_t*>(d_targets.data() + c0), n, dl, losses.data() + c0);
    if (want_dh) {
      // dH (n, d): column-major (d, n) = Wᶜ (d, V) · dlᶜ (V, n), alpha = dloss / N, rounded once to T.
      T* dst = direct ? a.dhidden.data + c0 * lddh : dhc.data();
      const index_t ldd = direct && n > 1 ? lddh : d;
      detail::backward_gemm(gpu, "cross_entropy (dhidden)", CUBLAS_OP_N, CUBLAS_OP_N, d, n, vocab, float(scale),
                            detail::GemmOperand{a.weight.data, kT, d}, detail::GemmOperand{dl, kT, vocab}, 0.0f, dst,
                            kT, ldd);
      if (!direct) {
        cuda::launch("cross_entropy_scatter_kernel", detail::cross_entropy_scatter_kernel<T>,
                     cuda::grid_blocks(n * d, cfg.copy_threads), cfg.copy_threads, 0, gpu.stream,
                     static_cast<const T*>(dhc.data()), static_cast<const std::int32_t*>(d_rows.data() + c0), n, d,
                     a.dhidden.data, lddh);
      }
    }
    if (want_dw) {
      // dW (V, d): column-major (d, V) = Hᶜ (d, n) · dlᶜᵀ (n, V), alpha = dloss / N, chunk after chunk.
      const float beta = (a.accumulate || c0 > 0) ? 1.0f : 0.0f;
      detail::backward_gemm(gpu, "cross_entropy (dweight)", CUBLAS_OP_N, CUBLAS_OP_T, d, vocab, n, float(scale),
                            detail::GemmOperand{h, kT, ld}, detail::GemmOperand{dl, kT, vocab}, beta, a.dweight.data,
                            CUDA_R_32F, d);
    }
  }
  cuda::launch("cross_entropy_loss_sum_kernel", detail::cross_entropy_loss_sum_kernel<cfg.softmax_threads>, 1,
               cfg.softmax_threads, 0, gpu.stream, static_cast<const float*>(losses.data()), count,
               losses.data() + count);
  float loss_sum = 0.0f;
  download(gpu, &loss_sum, losses.data() + count, 1);  // synchronises: `rows` and `targets` may go
  return {C(loss_sum) / C(count), count};
}

/// `cross_entropy` with the targets in device memory and the results left in device memory
/// (`out`), queued on `gpu.stream` with no synchronisation, so that it can be captured in a CUDA
/// graph (a training step; moss/train/trainer.hpp). The same math, with these differences from
/// `cross_entropy` (Cuda):
///  - the count N and the factor dloss / N are formed on the device (cross_entropy_targets_kernel),
///    and the factor multiplies dl in the softmax kernel before dl is rounded to T (the GEMMs run
///    with alpha 1);
///  - every row goes through the chunks, an ignored row (or one whose target is bad) as a zero row
///    of H (so its H is never read into a result) with a zero dl row and loss 0; its dhidden row
///    is written with zeros by the dH GEMM;
///  - a bad target does not throw: it lowers `out.bad_row` (when given; the caller reads it with
///    the loss) and counts as ignored;
///  - the per-row losses are summed over all rows (zeros included) in one fixed order.
/// Deterministic (no atomics in any sum); bitwise repeatable for the same inputs and chunk_rows.
template <class T>
void cross_entropy_resident(const Cuda& gpu, const CrossEntropyArgs<T>& a, const CrossEntropyOutputs& out) {
  static_assert(StorageType<T>,
                "moss::cross_entropy_resident: double is host-only; on CUDA T must be float, moss::f16 or moss::bf16");
  validate(a, "cross_entropy_resident");
  validate(out, "cross_entropy_resident");
  const index_t tokens = a.hidden.shape[0], d = a.hidden.shape[1], vocab = a.weight.shape[0];
  MOSS_EXPECTS(tokens <= INT32_MAX && vocab <= INT32_MAX, unsupported_error, "cross_entropy_resident: ", tokens,
               " rows and a vocabulary of ", vocab, " must both be below 2^31 on CUDA");
  const bool want_dh = present(a.dhidden), want_dw = present(a.dweight);
  constexpr detail::CrossEntropyTuning cfg = detail::kCrossEntropyTuning;
  if (tokens == 0) {
    MOSS_CUDA_CHECK(cudaMemsetAsync(out.loss, 0, sizeof(float), gpu.stream));
    MOSS_CUDA_CHECK(cudaMemsetAsync(out.count, 0, sizeof(std::int64_t), gpu.stream));
    if (want_dw && !a.accumulate) detail::zero_floats(gpu, a.dweight.data, vocab * d);
    return;
  }
  const index_t ldh = tokens > 1 ? a.hidden.stride[0] : d;
  const index_t lddh = want_dh && tokens > 1 ? a.dhidden.stride[0] : d;
  const index_t chunk = a.chunk_rows < tokens ? a.chunk_rows : tokens;
  constexpr cudaDataType_t kT = detail::linear_data_type<T>();

  Buffer<std::int32_t> tgt = gpu.alloc<std::int32_t>(tokens, "cross_entropy_resident targets");
  Buffer<float> scale = gpu.alloc<float>(1, "cross_entropy_resident scale");
  cuda::launch("cross_entropy_targets_kernel", detail::cross_entropy_targets_kernel<cfg.softmax_threads>, 1,
               cfg.softmax_threads, 0, gpu.stream, a.targets.data, a.targets.stride[0], tokens, vocab, a.ignore_index,
               static_cast<float>(a.dloss), tgt.data(), out.count, scale.data(), out.bad_row);
  Buffer<T> hc = gpu.alloc<T>(chunk * d, "cross_entropy_resident chunk hidden");
  detail::ChunkLogits<T> chunk_logits(gpu, chunk, vocab, "cross_entropy_resident");
  Buffer<float>& logits = chunk_logits.logits;
  T* const dl = chunk_logits.dl();
  Buffer<float> losses = gpu.alloc<float>(tokens, "cross_entropy_resident row losses");
  for (index_t c0 = 0; c0 < tokens; c0 += chunk) {
    const index_t n = chunk < tokens - c0 ? chunk : tokens - c0;
    cuda::launch("cross_entropy_masked_rows_kernel", detail::cross_entropy_masked_rows_kernel<T>,
                 cuda::grid_blocks(n * d, cfg.copy_threads), cfg.copy_threads, 0, gpu.stream,
                 static_cast<const T*>(a.hidden.data + c0 * ldh), ldh,
                 static_cast<const std::int32_t*>(tgt.data() + c0), n, d, hc.data());
    // logits (n, V): column-major (V, n) = Wᶜᵀ (V, d) · Hᶜ (d, n).
    detail::backward_gemm(gpu, "cross_entropy_resident (logits)", CUBLAS_OP_T, CUBLAS_OP_N, vocab, n, d, 1.0f,
                          detail::GemmOperand{a.weight.data, kT, d}, detail::GemmOperand{hc.data(), kT, d}, 0.0f,
                          logits.data(), CUDA_R_32F, vocab);
    cuda::launch("cross_entropy_softmax_scaled_kernel",
                 detail::cross_entropy_softmax_scaled_kernel<T, cfg.softmax_threads>, cuda::row_blocks(n),
                 cfg.softmax_threads, 0, gpu.stream, logits.data(), vocab,
                 static_cast<const std::int32_t*>(tgt.data() + c0), n, dl, losses.data() + c0,
                 static_cast<const float*>(scale.data()));
    if (want_dh) {
      // dH (n, d): column-major (d, n) = Wᶜ (d, V) · dlᶜ (V, n), rounded once to T (zero rows for
      // ignored targets).
      detail::backward_gemm(gpu, "cross_entropy_resident (dhidden)", CUBLAS_OP_N, CUBLAS_OP_N, d, n, vocab, 1.0f,
                            detail::GemmOperand{a.weight.data, kT, d}, detail::GemmOperand{dl, kT, vocab}, 0.0f,
                            a.dhidden.data + c0 * lddh, kT, n > 1 ? lddh : d);
    }
    if (want_dw) {
      // dW (V, d): column-major (d, V) = Hᶜ (d, n) · dlᶜᵀ (n, V), chunk after chunk.
      const float beta = (a.accumulate || c0 > 0) ? 1.0f : 0.0f;
      detail::backward_gemm(gpu, "cross_entropy_resident (dweight)", CUBLAS_OP_N, CUBLAS_OP_T, d, vocab, n, 1.0f,
                            detail::GemmOperand{hc.data(), kT, d}, detail::GemmOperand{dl, kT, vocab}, beta,
                            a.dweight.data, CUDA_R_32F, d);
    }
  }
  cuda::launch("cross_entropy_loss_mean_kernel", detail::cross_entropy_loss_mean_kernel<cfg.softmax_threads>, 1,
               cfg.softmax_threads, 0, gpu.stream, static_cast<const float*>(losses.data()), tokens,
               static_cast<const std::int64_t*>(out.count), out.loss);
}

}  // namespace moss
