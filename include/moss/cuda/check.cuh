// moss/cuda/check.cuh: checks of CUDA runtime calls and kernel launches (needs nvcc).
//
// Every CUDA call and launch in moss is checked; a failure throws `cuda_error` naming the call
// or kernel, the file and the line. With MOSS_SYNC_LAUNCHES=1 (the Debug preset) each launch is
// followed by a synchronisation, so an asynchronous fault names the kernel that caused it.
#pragma once

#include <cuda_runtime.h>

#include "moss/core/config.hpp"
#include "moss/core/error.hpp"

/// Throws `moss::cuda_error` when a CUDA runtime call fails.
#define MOSS_CUDA_CHECK(expr)                                                                                      \
  do {                                                                                                             \
    const cudaError_t moss_err_ = (expr);                                                                          \
    if (moss_err_ != cudaSuccess)                                                                                  \
      ::moss::cuda::raise_failed_call(#expr, cudaGetErrorName(moss_err_), cudaGetErrorString(moss_err_), __FILE__, \
                                      __LINE__);                                                                   \
  } while (0)

/// Checks the launch of the kernel just queued on `stream` (and, with MOSS_SYNC_LAUNCHES, its
/// completion); throws `moss::cuda_error` naming `kernel_name` and the place of the check.
#define MOSS_CHECK_LAUNCH(kernel_name, stream) ::moss::cuda::check_launch(kernel_name, stream, __FILE__, __LINE__)

namespace moss::cuda {

/// Throws the `cuda_error` of a failed library call: what was called, the library's name and
/// description of the status, and where (the body of MOSS_CUDA_CHECK and MOSS_CUBLAS_CHECK).
[[noreturn]] inline void raise_failed_call(const char* call, const char* status_name, const char* status_text,
                                           const char* file, int line) {
  raise<cuda_error>(call, " failed: ", status_name, " (", status_text, ") at ", file, ":", line);
}

/// The body of MOSS_CHECK_LAUNCH: the launch error of the kernel just queued, then (with
/// MOSS_SYNC_LAUNCHES) any error it raised while running.
inline void check_launch(const char* kernel_name, cudaStream_t stream, const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    raise<cuda_error>("launch of ", kernel_name, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                      ") at ", file, ":", line);
  if constexpr (MOSS_SYNC_LAUNCHES) {
    const cudaError_t sync = cudaStreamSynchronize(stream);
    if (sync != cudaSuccess)
      raise<cuda_error>(kernel_name, " failed while running: ", cudaGetErrorName(sync), " (", cudaGetErrorString(sync),
                        ") at ", file, ":", line);
  }
}

}  // namespace moss::cuda
