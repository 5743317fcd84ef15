// moss/core/buffer.hpp: owning, typed, backend-allocated memory.
//
// A `Buffer<T>` owns `size()` elements allocated by a backend (`Host::alloc`, `Cuda::alloc`)
// and frees them with the deleter the backend gave it. It is move-only and hands out views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "moss/core/tensor.hpp"

namespace moss {

/// Where a buffer's memory lives.
enum class Device : std::uint8_t { host, cuda };

constexpr const char* device_name(Device d) { return d == Device::host ? "host" : "cuda"; }

/// A byte count as people read it: "512 bytes", "1.50 GiB (1610612736 bytes)" (without the
/// exact count in parentheses when `exact` is false: "1.50 GiB").
inline std::string byte_size_text(std::uint64_t bytes, bool exact = true) {
  if (bytes < 1024) return cat(bytes, " bytes");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  std::size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(units)) {
    v /= 1024.0;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.2f %s", v, units[u]);
  return exact ? cat(text, " (", bytes, " bytes)") : std::string(text);
}

/// Throws `out_of_memory_error` for a failed allocation: `who` made it ("Host::alloc"), of
/// `bytes` bytes on `device` ("host memory", "cuda:0 (NVIDIA H100)"), for `what` (the buffer's
/// name; null or empty when the caller did not say), and `why` (what failed, what was free).
[[noreturn]] inline void raise_out_of_memory(const char* who, std::uint64_t bytes, const std::string& device,
                                             const char* what, const std::string& why) {
  const std::string text = bytes == UINT64_MAX ? std::string("more than 2^64 bytes") : byte_size_text(bytes);
  const std::string for_what = what && *what ? cat(" for ", what) : std::string(" (buffer not named by the caller)");
  throw out_of_memory_error(
      cat(who, ": out of memory: ", text, " of ", device, " requested", for_what, why.empty() ? "" : "; ", why), bytes);
}

/// The bytes of `n` elements of `elem_size` bytes each, for `who` allocating `what` on
/// `device`: `config_error` for a negative `n`, `out_of_memory_error` when the size does not
/// fit in `std::size_t` (no allocation can succeed).
inline std::size_t alloc_bytes(const char* who, index_t n, std::size_t elem_size, const char* device,
                               const char* what) {
  MOSS_EXPECTS(n >= 0, config_error, who, ": negative element count ", n, what && *what ? cat(" for ", what) : "");
  const auto count = static_cast<std::uint64_t>(n);
  if (elem_size != 0 && count > std::numeric_limits<std::size_t>::max() / elem_size)
    raise_out_of_memory(who, UINT64_MAX, device, what,
                        cat(n, " elements of ", elem_size, " bytes exceed the address space"));
  return static_cast<std::size_t>(count) * elem_size;
}

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

/// An owning, named tensor: a buffer, its extents and its name. Layers hold their parameters and
/// long-lived scratch as tensors, so a shape is stated once (where the tensor is made) and every
/// view, message and checkpoint entry takes it from there. An empty tensor (no data) stands for
/// an absent optional parameter: its views are not `present`.
/// @tparam T element type.
/// @tparam Rank number of dimensions (≥ 1).
template <class T, std::size_t Rank>
class Tensor {
 public:
  using element_type = T;
  static constexpr std::size_t rank = Rank;

  Tensor() = default;
  /// Takes `buffer`, which must hold exactly prod(shape) elements.
  Tensor(Buffer<T> buffer, const Extents<Rank>& shape, std::string name)
      : buffer_(std::move(buffer)), shape_(shape), name_(std::move(name)) {
    MOSS_EXPECTS(!name_.empty(), config_error, "Tensor: every tensor needs a name (it is used in messages)");
    index_t n = 1;
    for (auto s : shape_) {
      MOSS_EXPECTS(s >= 0, shape_error, "Tensor: ", name_, " has negative extent ", shape_string(shape_));
      n *= s;
    }
    MOSS_EXPECTS(n == buffer_.size(), shape_error, "Tensor: ", name_, " ", shape_string(shape_), " needs ", n,
                 " elements but its buffer holds ", buffer_.size());
  }

  /// Whether the tensor was made (a default-constructed one is an absent optional parameter).
  bool present() const { return !name_.empty(); }
  T* data() const { return buffer_.data(); }
  const Extents<Rank>& shape() const { return shape_; }
  index_t size(std::size_t d) const { return shape_[d]; }
  index_t numel() const { return buffer_.size(); }
  const std::string& name() const { return name_; }
  Device device() const { return buffer_.device(); }
  Buffer<T>& buffer() { return buffer_; }
  const Buffer<T>& buffer() const { return buffer_; }
  /// The extents as a list (the form checkpoint files use).
  std::vector<index_t> dims() const { return std::vector<index_t>(shape_.begin(), shape_.end()); }

  /// A contiguous view named after the tensor (null data when absent).
  TensorView<T, Rank> view() const {
    if (!present()) return {};
    return TensorView<T, Rank>(buffer_.data(), shape_, name_.c_str());
  }
  /// A read-only view; tensors convert to one implicitly, so ops take them directly.
  ConstView<T, Rank> cview() const { return view(); }
  operator ConstView<T, Rank>() const { return view(); }  // NOLINT(google-explicit-constructor)
  /// The memory read as another shape of the same element count (e.g. (X, out, in) as (X·out, in)).
  template <std::size_t R2>
  TensorView<T, R2> view_as(const Extents<R2>& shape) const {
    return buffer_.template view<R2>(shape, name_.c_str());
  }

  /// Frees the memory (the tensor becomes absent).
  void reset() noexcept { buffer_.reset(); }

 private:
  Buffer<T> buffer_;
  Extents<Rank> shape_{};
  std::string name_;
};

}  // namespace moss
