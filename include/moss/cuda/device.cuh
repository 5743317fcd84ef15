// moss/cuda/device.cuh: properties of a CUDA device, queried once per device and kept (needs nvcc).
//
// Launch code sizes grids by the SM count, picks shared-memory budgets and checks compute
// capabilities on every call; asking the driver each time costs an attribute query per value.
// `device_properties(device)` asks once per device for the whole process (thread-safe) and
// hands out a reference that stays valid until the process ends.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <mutex>

#include "moss/core/error.hpp"
#include "moss/cuda/check.cuh"

namespace moss::cuda {

/// What launch code needs to know about one device.
struct DeviceProperties {
  int device = 0;                            // the CUDA ordinal
  int sm_count = 0;                          // streaming multiprocessors
  int compute_major = 0, compute_minor = 0;  // compute capability, e.g. 9.0 for H100 / H200
  int warp_size = 0;
  int max_threads_per_block = 0;
  int max_threads_per_sm = 0;
  std::size_t shared_per_block = 0;        // bytes a block gets without opting in
  std::size_t shared_per_block_optin = 0;  // bytes a block may opt in to (cudaFuncSetAttribute)
  std::size_t shared_per_sm = 0;           // bytes of shared memory per SM
  std::size_t l2_bytes = 0;                // L2 cache size

  /// The compute capability as one number: 10 · major + minor (90 for sm_90).
  constexpr int compute_capability() const { return 10 * compute_major + compute_minor; }
};

/// The current device of the calling thread.
inline int current_device() {
  int device = 0;
  MOSS_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

namespace detail {

/// Asks the driver for every field of `DeviceProperties` (attribute queries: cheaper than
/// cudaGetDeviceProperties, which fills hundreds of fields).
inline DeviceProperties query_device_properties(int device) {
  const auto attribute = [device](cudaDeviceAttr attr) {
    int v = 0;
    MOSS_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
    return v;
  };
  DeviceProperties p;
  p.device = device;
  p.sm_count = attribute(cudaDevAttrMultiProcessorCount);
  p.compute_major = attribute(cudaDevAttrComputeCapabilityMajor);
  p.compute_minor = attribute(cudaDevAttrComputeCapabilityMinor);
  p.warp_size = attribute(cudaDevAttrWarpSize);
  p.max_threads_per_block = attribute(cudaDevAttrMaxThreadsPerBlock);
  p.max_threads_per_sm = attribute(cudaDevAttrMaxThreadsPerMultiProcessor);
  p.shared_per_block = static_cast<std::size_t>(attribute(cudaDevAttrMaxSharedMemoryPerBlock));
  p.shared_per_block_optin = static_cast<std::size_t>(attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  p.shared_per_sm = static_cast<std::size_t>(attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
  p.l2_bytes = static_cast<std::size_t>(attribute(cudaDevAttrL2CacheSize));
  return p;
}

}  // namespace detail

/// The properties of `device`, asked of the driver on the first call for that device and kept
/// for the process: every later call (from any thread) returns the same object. Throws
/// `cuda_error` for a device that does not exist.
inline const DeviceProperties& device_properties(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceProperties> cache;  // map nodes never move: references stay valid
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = cache.find(device); it != cache.end()) return it->second;
  return cache.emplace(device, detail::query_device_properties(device)).first->second;
}

/// The properties of the calling thread's current device.
inline const DeviceProperties& device_properties() { return device_properties(current_device()); }

/// Streaming multiprocessors of the current device (sizes persistent and occupancy-bound grids).
inline int sm_count() { return device_properties().sm_count; }

}  // namespace moss::cuda
