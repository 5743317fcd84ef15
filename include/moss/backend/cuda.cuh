// moss/backend/cuda.cuh: the CUDA backend (needs nvcc).
//
// `moss::Cuda{stream}` is the call-site object that runs an op or layer on the current GPU,
// queued on `stream`. Buffers come from a stream-ordered memory pool of moss's own, one per
// device, that keeps freed memory for reuse (see `detail::memory_pool`), so per-call scratch
// memory costs no driver call after the first pass. Every CUDA and cuBLAS call is checked and throws
// `cuda_error` naming the call, the file and the line (MOSS_CUDA_CHECK and MOSS_CHECK_LAUNCH
// live in moss/cuda/check.cuh); with MOSS_SYNC_LAUNCHES=1 every kernel launch is followed by a
// synchronisation so an asynchronous fault names the right kernel. For results the host reads
// later without stalling the stream: `alloc_pinned`, `download_async` and `record()` → Event.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "moss/core/buffer.hpp"
#include "moss/core/error.hpp"
#include "moss/cuda/check.cuh"
#include "moss/cuda/device.cuh"

/// Throws `moss::cuda_error` when a cuBLAS / cuBLASLt call fails.
#define MOSS_CUBLAS_CHECK(expr)                                                                                        \
  do {                                                                                                                 \
    const cublasStatus_t moss_st_ = (expr);                                                                            \
    if (moss_st_ != CUBLAS_STATUS_SUCCESS)                                                                             \
      ::moss::cuda::raise_failed_call(#expr, cublasGetStatusName(moss_st_), cublasGetStatusString(moss_st_), __FILE__, \
                                      __LINE__);                                                                       \
  } while (0)

namespace moss {

namespace detail {

/// Throws the `out_of_memory_error` of a failed CUDA allocation (`call` returned
/// cudaErrorMemoryAllocation) by `who` of `bytes` bytes for `what` (null: unnamed): device
/// memory on device `dev` (with what the device and moss's pool `pool` hold, when not null) or,
/// with `pinned`, page-locked host memory. Clears the error first, so no later check reports it.
[[noreturn]] inline void raise_cuda_out_of_memory(const char* who, const char* call, std::uint64_t bytes, int dev,
                                                  cudaMemPool_t pool, bool pinned, const char* what) {
  (void)cudaGetLastError();
  std::string name = cat("cuda:", dev);
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
    name += cat(" (", prop.name, ")");
  else
    (void)cudaGetLastError();
  const std::string device = pinned ? cat("page-locked host memory (for ", name, ")") : cat("device memory on ", name);
  std::string why = cat(call, " failed");
  std::size_t free_bytes = 0, total_bytes = 0;
  if (pinned) {
    why += "; page-locked memory is limited by the host's RAM and its locked-memory limit";
  } else if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    why += cat("; the device has ", byte_size_text(free_bytes, false), " free of ", byte_size_text(total_bytes, false));
  } else {
    (void)cudaGetLastError();
  }
  std::uint64_t used = 0, reserved = 0;
  if (pool && cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess &&
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess) {
    why += cat("; moss's pool holds ", byte_size_text(used, false), " in live buffers and ",
               byte_size_text(reserved > used ? reserved - used : 0, false), " cached for reuse");
  } else {
    (void)cudaGetLastError();
  }
  raise_out_of_memory(who, bytes, device, what, why);
}

/// Checks the status `err` of the allocation `call` made by `who`: `out_of_memory_error` for
/// cudaErrorMemoryAllocation (see `raise_cuda_out_of_memory`), `cuda_error` for any other failure.
inline void check_cuda_alloc(cudaError_t err, const char* who, const char* call, std::uint64_t bytes, int dev,
                             cudaMemPool_t pool, bool pinned, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  if (err == cudaErrorMemoryAllocation) raise_cuda_out_of_memory(who, call, bytes, dev, pool, pinned, what);
  (void)cudaGetLastError();
  cuda::raise_failed_call(call, cudaGetErrorName(err), cudaGetErrorString(err), file, line);
}

/// One cuBLAS and one cuBLASLt handle per (thread, device), created on first use and kept.
struct BlasHandles {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  // cuBLAS's own work area (cublasSetWorkspace) for the handle's legacy-API calls; ops that call
  // cuBLASLt take theirs through the workspace contract (moss/core/workspace.hpp).
  void* workspace = nullptr;
  static constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;
  BlasHandles(const BlasHandles&) = delete;
  BlasHandles& operator=(const BlasHandles&) = delete;
  BlasHandles() {
    MOSS_CUBLAS_CHECK(cublasCreate(&blas));
    MOSS_CUBLAS_CHECK(cublasLtCreate(&lt));
    check_cuda_alloc(cudaMalloc(&workspace, kWorkspaceBytes), "cuBLAS handle setup", "cudaMalloc", kWorkspaceBytes,
                     cuda::current_device(), nullptr, false, "the cuBLAS workspace", __FILE__, __LINE__);
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
  thread_local std::map<int, BlasHandles> per_device;
  return per_device.try_emplace(cuda::current_device()).first->second;
}

}  // namespace detail

/// Returns the memory that moss's pool on the current device caches but no buffer uses to the
/// driver (after the streams that freed it reach the free).
inline void cuda_release_cached_memory() {
  MOSS_CUDA_CHECK(cudaMemPoolTrimTo(detail::memory_pool(cuda::current_device()), 0));
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

/// A point in a stream's queued work (from `Cuda::record`) that the host can poll or wait for.
/// Move-only; destroys its CUDA event. A default-constructed event is already complete.
class CudaEvent {
 public:
  CudaEvent() = default;
  /// Records a new event on `stream`: it completes when the stream reaches this point.
  explicit CudaEvent(cudaStream_t stream) {
    MOSS_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    const cudaError_t err = cudaEventRecord(event_, stream);
    if (err != cudaSuccess) {
      (void)cudaEventDestroy(event_);
      event_ = nullptr;
      MOSS_CUDA_CHECK(err);
    }
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent(CudaEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept {
    CudaEvent tmp(std::move(o));
    std::swap(event_, tmp.event_);
    return *this;
  }
  ~CudaEvent() {
    if (event_) (void)cudaEventDestroy(event_);  // may run after the driver shut down: ignore failures
  }

  /// Blocks the calling thread until the stream has passed the event; throws `cuda_error` for
  /// an asynchronous error of the work before it.
  void wait() const {
    if (event_) MOSS_CUDA_CHECK(cudaEventSynchronize(event_));
  }
  /// True once the stream has passed the event (never blocks); throws like `wait`.
  bool ready() const {
    if (!event_) return true;
    const cudaError_t err = cudaEventQuery(event_);
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // "not ready" is an answer, not an error: keep it out of later checks
      return false;
    }
    MOSS_CUDA_CHECK(err);
    return true;
  }
  /// The CUDA event (null for a default-constructed one).
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

/// Runs ops on the current CUDA device, queued on `stream` (the legacy default stream if null).
struct Cuda {
  static constexpr Device device = Device::cuda;
  /// What `record` returns.
  using Event = CudaEvent;
  cudaStream_t stream = nullptr;

  /// Allocates `n` uninitialised elements from moss's pool on the current device, stream-ordered
  /// on `stream`; freed on the same stream. `what` names the buffer in the
  /// `out_of_memory_error` raised when the device has not the memory (null: unnamed).
  template <class T>
  Buffer<T> alloc(index_t n, const char* what = nullptr) const {
    const int dev = cuda::current_device();
    const std::size_t bytes = alloc_bytes("Cuda::alloc", n, sizeof(T), "device memory", what);
    if (n == 0) return Buffer<T>(nullptr, 0, Device::cuda, {});
    void* p = nullptr;
    const cudaMemPool_t pool = detail::memory_pool(dev);
    detail::check_cuda_alloc(cudaMallocFromPoolAsync(&p, bytes, pool, stream), "Cuda::alloc", "cudaMallocFromPoolAsync",
                             bytes, dev, pool, false, what, __FILE__, __LINE__);
    return Buffer<T>(static_cast<T*>(p), n, Device::cuda,
                     {[](void* q, void* s) { (void)cudaFreeAsync(q, static_cast<cudaStream_t>(s)); }, stream});
  }
  /// Allocates `n` uninitialised elements of page-locked host memory (`Device::host`), the
  /// destination that lets `download_async` overlap the host's work; freed with cudaFreeHost.
  /// `what` names the buffer in the `out_of_memory_error` raised on failure (null: unnamed).
  template <class T>
  Buffer<T> alloc_pinned(index_t n, const char* what = nullptr) const {
    const std::size_t bytes = alloc_bytes("Cuda::alloc_pinned", n, sizeof(T), "page-locked host memory", what);
    if (n == 0) return Buffer<T>(nullptr, 0, Device::host, {});
    void* p = nullptr;
    detail::check_cuda_alloc(cudaMallocHost(&p, bytes), "Cuda::alloc_pinned", "cudaMallocHost", bytes,
                             cuda::current_device(), nullptr, true, what, __FILE__, __LINE__);
    return Buffer<T>(static_cast<T*>(p), n, Device::host, {[](void* q, void*) { (void)cudaFreeHost(q); }, nullptr});
  }
  /// An event recorded on the stream now: it completes when the work queued so far has run.
  Event record() const { return Event(stream); }
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
};

/// Copies `src` into `dst` (same shape) between any two of host and device memory, queued on the
/// stream: contiguous views in one copy, 2-D views with unit inner stride (rows of a wider
/// matrix, e.g. tokens[:, :L]) as one strided 2-D copy; other strides are a `shape_error`. Host
/// memory must stay alive until the stream reaches it (call `synchronize()` before freeing or
/// reading it). Capturable in a CUDA graph.
template <class T, std::size_t Rank>
void copy(const Cuda& gpu, const TensorView<T, Rank>& dst, const TensorView<const T, Rank>& src) {
  MOSS_EXPECTS(dst.shape == src.shape, shape_error, "copy: ", dst.name, " is ", shape_string(dst.shape), " but ",
               src.name, " is ", shape_string(src.shape));
  if (dst.empty()) return;
  if constexpr (Rank == 2) {
    if (!dst.is_contiguous() || !src.is_contiguous()) {
      expect_unit_inner_stride("copy (cuda)", dst);
      expect_unit_inner_stride("copy (cuda)", src);
      const auto pitch = [](const auto& v) {
        return static_cast<std::size_t>(v.shape[0] > 1 ? v.stride[0] : v.shape[1]) * sizeof(T);
      };
      MOSS_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, pitch(dst), src.data, pitch(src),
                                        static_cast<std::size_t>(dst.shape[1]) * sizeof(T),
                                        static_cast<std::size_t>(dst.shape[0]), cudaMemcpyDefault, gpu.stream));
      return;
    }
  }
  expect_contiguous("copy (cuda)", dst);
  expect_contiguous("copy (cuda)", src);
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

/// Sets every byte of `b` to `byte` (queued on the stream; capturable).
template <class T>
void fill_bytes(const Cuda& gpu, Buffer<T>& b, unsigned char byte) {
  if (b.size())
    MOSS_CUDA_CHECK(cudaMemsetAsync(b.data(), byte, static_cast<std::size_t>(b.size()) * sizeof(T), gpu.stream));
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

/// Queues a copy of `n` device elements at `src` into host memory at `dst` on the stream and
/// returns at once; `dst` holds them once the stream passes the copy (`record()` an event and
/// wait for it). `dst` should be page-locked (`alloc_pinned`): into pageable memory CUDA may
/// finish the copy before returning. Both must stay alive until the copy has run.
template <class T>
void download_async(const Cuda& gpu, T* dst, const T* src, index_t n) {
  if (n > 0)
    MOSS_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost, gpu.stream));
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
