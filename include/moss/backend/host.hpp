// moss/backend/host.hpp: the CPU backend.
//
// `moss::Host` is the call-site object that runs an op or layer on the CPU (plain loops over
// the `MOSS_HD` math of each op: the oracle the CUDA backend is tested against).
#pragma once

#include <cstdlib>
#include <cstring>
#include <limits>

#include "moss/core/buffer.hpp"

namespace moss {

/// The host's counterpart of `CudaEvent` (moss/backend/cuda.cuh): host work is synchronous,
/// so every event is complete when it is recorded.
struct HostEvent {
  /// Returns at once: the work before the event is done.
  void wait() const {}
  /// Always true.
  bool ready() const { return true; }
};

/// Runs ops on the CPU. Stateless and cheap to copy.
struct Host {
  static constexpr Device device = Device::host;
  /// What `record` returns.
  using Event = HostEvent;

  /// Allocates `n` uninitialised elements of host memory (64-byte aligned). `what` names the
  /// buffer in the `out_of_memory_error` raised when the memory is not there (null: unnamed).
  template <class T>
  Buffer<T> alloc(index_t n, const char* what = nullptr) const {
    const std::size_t bytes = alloc_bytes("Host::alloc", n, sizeof(T), "host memory", what);
    if (n == 0) return Buffer<T>(nullptr, 0, Device::host, {});
    if (bytes > std::numeric_limits<std::size_t>::max() - 63)
      raise_out_of_memory("Host::alloc", bytes, "host memory", what, "the size exceeds the address space");
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) raise_out_of_memory("Host::alloc", bytes, "host memory", what, "std::aligned_alloc returned null");
    return Buffer<T>(static_cast<T*>(p), n, Device::host, {[](void* q, void*) { std::free(q); }, nullptr});
  }
  /// Allocates `n` elements of host memory for `download_async` (on the host, ordinary memory:
  /// the same as `alloc`).
  template <class T>
  Buffer<T> alloc_pinned(index_t n, const char* what = nullptr) const {
    return alloc<T>(n, what);
  }
  /// Waits for queued work (host work is synchronous: nothing to wait for).
  void synchronize() const {}
  /// An event for the work done so far: already complete.
  Event record() const { return {}; }
};

/// Copies `src` into `dst` (same shape; any strides) on the host.
template <class T, std::size_t Rank>
void copy(const Host&, const TensorView<T, Rank>& dst, const TensorView<const T, Rank>& src) {
  MOSS_EXPECTS(dst.shape == src.shape, shape_error, "copy: ", dst.name, " is ", shape_string(dst.shape), " but ",
               src.name, " is ", shape_string(src.shape));
  if (dst.is_contiguous() && src.is_contiguous()) {
    if (!dst.empty()) std::memcpy(dst.data, src.data, static_cast<std::size_t>(dst.numel()) * sizeof(T));
    return;
  }
  Extents<Rank> idx{};
  const index_t n = dst.numel();
  for (index_t k = 0; k < n; ++k) {
    index_t od = 0, os = 0;
    for (std::size_t i = 0; i < Rank; ++i) {
      od += idx[i] * dst.stride[i];
      os += idx[i] * src.stride[i];
    }
    dst.data[od] = src.data[os];
    for (std::size_t i = Rank; i-- > 0;) {
      if (++idx[i] < dst.shape[i]) break;
      idx[i] = 0;
    }
  }
}

/// Sets every element of `b` to zero bits.
template <class T>
void fill_zero(const Host&, Buffer<T>& b) {
  if (b.size()) std::memset(static_cast<void*>(b.data()), 0, static_cast<std::size_t>(b.size()) * sizeof(T));
}

/// Sets every byte of `b` to `byte` (e.g. 0xff: every unsigned element at its maximum).
template <class T>
void fill_bytes(const Host&, Buffer<T>& b, unsigned char byte) {
  if (b.size()) std::memset(static_cast<void*>(b.data()), byte, static_cast<std::size_t>(b.size()) * sizeof(T));
}

/// A new host buffer holding a copy of `src`.
template <class T>
Buffer<T> upload(const Host& host, const T* src, index_t n) {
  Buffer<T> b = host.alloc<T>(n);
  if (n > 0) std::memcpy(b.data(), src, static_cast<std::size_t>(n) * sizeof(T));
  return b;
}

/// Copies `n` elements of backend memory at `src` into host memory at `dst`.
template <class T>
void download(const Host&, T* dst, const T* src, index_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
}

/// The host form of the stream-ordered copy (moss/backend/cuda.cuh): `download`, done on return.
template <class T>
void download_async(const Host& host, T* dst, const T* src, index_t n) {
  download(host, dst, src, n);
}

}  // namespace moss
