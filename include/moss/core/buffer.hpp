// moss/core/buffer.hpp: owning, typed, backend-allocated memory.
//
// A `Buffer<T>` owns `size()` elements allocated by a backend (`Host::alloc`, `Cuda::alloc`)
// and frees them with the deleter the backend gave it. It is move-only and hands out views.
#pragma once

#include <cstddef>
#include <utility>

#include "moss/core/tensor.hpp"

namespace moss {

/// Where a buffer's memory lives.
enum class Device : std::uint8_t { host, cuda };

constexpr const char* device_name(Device d) { return d == Device::host ? "host" : "cuda"; }

/// How a buffer returns its memory: a plain function and an opaque context (a stream, say).
struct Deleter {
  void (*fn)(void* ptr, void* ctx) = nullptr;
  void* ctx = nullptr;
};

/// Owning array of `T` on one device. Move-only.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(T* p, index_t n, Device where, Deleter d) : data_(p), size_(n), device_(where), deleter_(d) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    Buffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~Buffer() { reset(); }

  /// Frees the memory now (the buffer becomes empty).
  void reset() noexcept {
    if (data_ && deleter_.fn) deleter_.fn(data_, deleter_.ctx);
    data_ = nullptr;
    size_ = 0;
  }

  T* data() const { return data_; }
  index_t size() const { return size_; }
  Device device() const { return device_; }

  /// A view of the first prod(shape) elements, row-major.
  template <std::size_t Rank>
  TensorView<T, Rank> view(const Extents<Rank>& shape, const char* name = "tensor") const {
    index_t n = 1;
    for (auto s : shape) n *= s;
    MOSS_EXPECTS(n <= size_, shape_error, "Buffer::view: ", name, " ", shape_string(shape), " needs ", n,
                 " elements but the buffer holds ", size_);
    return TensorView<T, Rank>(data_, shape, name);
  }
  /// The whole buffer as a 1-D view.
  TensorView<T, 1> flat(const char* name = "tensor") const { return TensorView<T, 1>(data_, {size_}, name); }

 private:
  void swap(Buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(device_, o.device_);
    std::swap(deleter_, o.deleter_);
  }
  T* data_ = nullptr;
  index_t size_ = 0;
  Device device_ = Device::host;
  Deleter deleter_{};
};

}  // namespace moss
