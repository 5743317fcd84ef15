// moss/core/error.hpp: the error hierarchy and the checks that raise it.
//
// Every check happens once, at op or layer entry, in backend-neutral code, so the host-only CI
// exercises every error path. Messages name the place, the tensor, the actual and the expected
// value. Device code never throws.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moss {

/// Base of every exception moss throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/// A model or op configuration that cannot work (bad sizes, inconsistent keys).
class config_error : public error {
 public:
  using error::error;
};
/// A tensor whose shape, stride or dtype does not match what the op or layer expects.
class shape_error : public error {
 public:
  using error::error;
};
/// A valid request this build or backend does not support; the message lists what is supported.
class unsupported_error : public error {
 public:
  using error::error;
};
/// A failed CUDA runtime, cuBLAS or kernel-launch call.
class cuda_error : public error {
 public:
  using error::error;
};
/// A malformed, truncated or inconsistent file (checkpoint, config, inputs).
class io_error : public error {
 public:
  using error::error;
};
/// Memory a backend could not allocate: host memory (`Host::alloc`) or device memory
/// (`Cuda::alloc`, `Cuda::alloc_pinned`). Raised instead of `std::bad_alloc` or a bare
/// cudaErrorMemoryAllocation; the message says how many bytes were requested, on which device,
/// for what when the caller named the buffer, and (on a GPU) how much memory was free.
class out_of_memory_error : public error {
 public:
  /// `bytes`: the size of the request that failed (UINT64_MAX when it exceeds 64 bits).
  explicit out_of_memory_error(const std::string& message, std::uint64_t bytes = 0) : error(message), bytes_(bytes) {}
  /// The number of bytes that were requested (0 when not known).
  std::uint64_t bytes() const noexcept { return bytes_; }

 private:
  std::uint64_t bytes_ = 0;
};

namespace detail {

inline void append(std::ostringstream&) {}
template <class First, class... Rest>
void append(std::ostringstream& os, First&& first, Rest&&... rest) {
  os << std::forward<First>(first);
  append(os, std::forward<Rest>(rest)...);
}

}  // namespace detail

/// Concatenates its arguments with `operator<<` into a string.
template <class... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream os;
  detail::append(os, std::forward<Parts>(parts)...);
  return os.str();
}

/// Throws `Error` with the concatenated message.
template <class Error, class... Parts>
[[noreturn]] void raise(Parts&&... parts) {
  throw Error(cat(std::forward<Parts>(parts)...));
}

}  // namespace moss

/// Throws `kind` (a moss error type) with the streamed message parts unless `cond` holds.
/// Example: MOSS_EXPECTS(n > 0, moss::config_error, "Mamba: d_model is ", n, ", expected > 0");
#define MOSS_EXPECTS(cond, kind, ...)              \
  do {                                             \
    if (!(cond)) ::moss::raise<kind>(__VA_ARGS__); \
  } while (0)
