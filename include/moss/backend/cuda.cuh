// moss/backend/cuda.cuh: the CUDA backend (needs nvcc).
//
// `moss::Cuda{stream}` is the call-site object that runs an op or layer on the current GPU,
// queued on `stream`. Buffers come from a stream-ordered memory pool of moss's own, one per
// device, that keeps freed memory for reuse (see `detail::memory_pool`), so per-call scratch
// memory costs no driver call after the first pass. Every CUDA and cuBLAS call is checked and throws
// `cuda_error` naming the call, the file and the line; with MOSS_SYNC_LAUNCHES=1 every kernel
// launch is followed by a synchronisation so an asynchronous fault names the right kernel.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "moss/core/buffer.hpp"
#include "moss/core/error.hpp"

/// Throws `moss::cuda_error` when a CUDA runtime call fails.
#define MOSS_CUDA_CHECK(expr)                                                                             \
  do {                                                                                                    \
    const cudaError_t moss_err_ = (expr);                                                                 \
    if (moss_err_ != cudaSuccess)                                                                         \
      ::moss::raise<::moss::cuda_error>(#expr, " failed: ", cudaGetErrorName(moss_err_), " (",            \
                                        cudaGetErrorString(moss_err_), ") at ", __FILE__, ":", __LINE__); \
  } while (0)

/// Throws `moss::cuda_error` when a cuBLAS / cuBLASLt call fails.
#define MOSS_CUBLAS_CHECK(expr)                                                                             \
  do {                                                                                                      \
    const cublasStatus_t moss_st_ = (expr);                                                                 \
    if (moss_st_ != CUBLAS_STATUS_SUCCESS)                                                                  \
      ::moss::raise<::moss::cuda_error>(#expr, " failed: ", cublasGetStatusName(moss_st_), " (",            \
                                        cublasGetStatusString(moss_st_), ") at ", __FILE__, ":", __LINE__); \
  } while (0)

/// Checks the launch of the kernel just queued (and, with MOSS_SYNC_LAUNCHES, its completion).
#define MOSS_CHECK_LAUNCH(kernel_name, stream)                                                                        \
  do {                                                                                                                \
    const cudaError_t moss_err_ = cudaGetLastError();                                                                 \
    if (moss_err_ != cudaSuccess)                                                                                     \
      ::moss::raise<::moss::cuda_error>("launch of ", kernel_name, " failed: ", cudaGetErrorName(moss_err_), " (",    \
                                        cudaGetErrorString(moss_err_), ") at ", __FILE__, ":", __LINE__);             \
    if constexpr (MOSS_SYNC_LAUNCHES) {                                                                               \
      const cudaError_t moss_sync_ = cudaStreamSynchronize(stream);                                                   \
      if (moss_sync_ != cudaSuccess)                                                                                  \
        ::moss::raise<::moss::cuda_error>(kernel_name, " failed while running: ", cudaGetErrorName(moss_sync_), " (", \
                                          cudaGetErrorString(moss_sync_), ") at ", __FILE__, ":", __LINE__);          \
    }                                                                                                                 \
  } while (0)

namespace moss {

namespace detail {

/// One cuBLAS and one cuBLASLt handle per (thread, device), created on first use and kept.
struct BlasHandles {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;  // cuBLAS(Lt) workspace, kWorkspaceBytes
  static constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;
  BlasHandles(const BlasHandles&) = delete;
  BlasHandles& operator=(const BlasHandles&) = delete;
  BlasHandles() {
    MOSS_CUBLAS_CHECK(cublasCreate(&blas));
    MOSS_CUBLAS_CHECK(cublasLtCreate(&lt));
    MOSS_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
    MOSS_CUBLAS_CHECK(cublasSetWorkspace(blas, workspace, kWorkspaceBytes));
  }
  ~BlasHandles() {
    // Destruction at thread exit may run after the driver shut down: ignore failures here.
    if (workspace) cudaFree(workspace);
    if (lt) cublasLtDestroy(lt);
    if (blas) cublasDestroy(blas);
  }
};

/// moss's stream-ordered memory pool on device `dev`, created on first use and kept for the
/// process. Its release threshold is unlimited: memory freed by one forward pass stays mapped
/// for the next. (The device's default pool returns it to the driver at every synchronisation,
/// and re-mapping the scratch buffers of a Mamba layer costs about 0.1 ms per call.)
/// `cuda_release_cached_memory()` hands the cached memory back.
inline cudaMemPool_t memory_pool(int dev) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = pools.find(dev);
  if (it != pools.end()) return it->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = dev;
  cudaMemPool_t pool = nullptr;
  MOSS_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
  std::uint64_t keep = UINT64_MAX;
  MOSS_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  return pools.emplace(dev, pool).first->second;
}

inline BlasHandles& blas_handles() {
  int dev = 0;
  MOSS_CUDA_CHECK(cudaGetDevice(&dev));
  thread_local std::map<int, BlasHandles> per_device;
  return per_device.try_emplace(dev).first->second;
}

}  // namespace detail

/// Returns the memory that moss's pool on the current device caches but no buffer uses to the
/// driver (after the streams that freed it reach the free).
inline void cuda_release_cached_memory() {
  int dev = 0;
  MOSS_CUDA_CHECK(cudaGetDevice(&dev));
  MOSS_CUDA_CHECK(cudaMemPoolTrimTo(detail::memory_pool(dev), 0));
}

/// Number of visible CUDA devices (0 when there is no driver or no GPU).
inline int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

/// Runs ops on the current CUDA device, queued on `stream` (the legacy default stream if null).
struct Cuda {
  static constexpr Device device = Device::cuda;
  cudaStream_t stream = nullptr;

  /// Allocates `n` uninitialised elements from moss's pool on the current device, stream-ordered
  /// on `stream`; freed on the same stream.
  template <class T>
  Buffer<T> alloc(index_t n) const {
    MOSS_EXPECTS(n >= 0, config_error, "Cuda::alloc: negative element count ", n);
    if (n == 0) return Buffer<T>(nullptr, 0, Device::cuda, {});
    int dev = 0;
    MOSS_CUDA_CHECK(cudaGetDevice(&dev));
    void* p = nullptr;
    MOSS_CUDA_CHECK(
        cudaMallocFromPoolAsync(&p, static_cast<std::size_t>(n) * sizeof(T), detail::memory_pool(dev), stream));
    return Buffer<T>(static_cast<T*>(p), n, Device::cuda,
                     {[](void* q, void* s) { (void)cudaFreeAsync(q, static_cast<cudaStream_t>(s)); }, stream});
  }
  /// Blocks until every op queued on the stream has finished; throws on an asynchronous error.
  void synchronize() const { MOSS_CUDA_CHECK(cudaStreamSynchronize(stream)); }
  /// The cuBLAS handle of this thread and device, bound to `stream`.
  cublasHandle_t cublas() const {
    auto& h = detail::blas_handles();
    MOSS_CUBLAS_CHECK(cublasSetStream(h.blas, stream));
    return h.blas;
  }
  /// The cuBLASLt handle of this thread and device.
  cublasLtHandle_t cublaslt() const { return detail::blas_handles().lt; }
  /// A cuBLAS(Lt) workspace of `workspace_bytes()` bytes. Ops on one stream may share it; ops on
  /// different streams of one thread must not run it concurrently.
  void* workspace() const { return detail::blas_handles().workspace; }
  static constexpr std::size_t workspace_bytes() { return detail::BlasHandles::kWorkspaceBytes; }
};

/// Copies contiguous `src` into contiguous `dst` (same shape) between any two of host and
/// device memory, queued on the stream. Host memory must stay alive until the stream reaches it
/// (call `synchronize()` before freeing or reading it).
template <class T, std::size_t Rank>
void copy(const Cuda& gpu, const TensorView<T, Rank>& dst, const TensorView<const T, Rank>& src) {
  MOSS_EXPECTS(dst.shape == src.shape, shape_error, "copy: ", dst.name, " is ", shape_string(dst.shape), " but ",
               src.name, " is ", shape_string(src.shape));
  expect_contiguous("copy (cuda)", dst);
  expect_contiguous("copy (cuda)", src);
  if (dst.empty()) return;
  MOSS_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, static_cast<std::size_t>(dst.numel()) * sizeof(T),
                                  cudaMemcpyDefault, gpu.stream));
}

/// Copies a whole host buffer to a new device buffer (queued; the host buffer must outlive it).
template <class T>
Buffer<T> to_device(const Cuda& gpu, const Buffer<T>& host) {
  Buffer<T> d = gpu.alloc<T>(host.size());
  copy(gpu, d.flat(), ConstView<T, 1>(host.flat()));
  return d;
}

/// Sets every element of `b` to zero bits (queued on the stream).
template <class T>
void fill_zero(const Cuda& gpu, Buffer<T>& b) {
  if (b.size())
    MOSS_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, static_cast<std::size_t>(b.size()) * sizeof(T), gpu.stream));
}

/// A new device buffer holding a copy of `n` host elements at `src` (synchronous: `src` may be
/// freed on return).
template <class T>
Buffer<T> upload(const Cuda& gpu, const T* src, index_t n) {
  Buffer<T> b = gpu.alloc<T>(n);
  if (n) {
    MOSS_CUDA_CHECK(
        cudaMemcpyAsync(b.data(), src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice, gpu.stream));
    gpu.synchronize();
  }
  return b;
}

/// Copies `n` device elements at `src` into host memory at `dst` (synchronous).
template <class T>
void download(const Cuda& gpu, T* dst, const T* src, index_t n) {
  if (!n) return;
  MOSS_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost, gpu.stream));
  gpu.synchronize();
}

/// Owns a CUDA stream (created non-blocking) for tests, benchmarks and examples.
class CudaStream {
 public:
  CudaStream() { MOSS_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~CudaStream() {
    if (s_) cudaStreamDestroy(s_);
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace moss
