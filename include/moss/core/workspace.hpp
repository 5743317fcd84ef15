// moss/core/workspace.hpp: the scratch-memory contract of ops (CUTLASS's workspace contract).
//
// An op that needs device scratch beyond its outputs (a staging copy, a flag, a library's work
// area) follows three rules, so that a caller such as a training step can plan its memory:
//  1. It says how much: `std::size_t workspace_bytes(const Backend&, const Args&)`, an overload
//     beside the op on each backend, for exactly those arguments (0 when the call needs none).
//  2. Its Args carry `Workspace workspace` (default: none). When the caller gives one, the op
//     runs in it: at least workspace_bytes(...) bytes, aligned to kWorkspaceAlignment, else a
//     `config_error` naming the op. When none is given, the op takes exactly that many bytes
//     from the backend's pool itself (`OpWorkspace`), freed when the op returns (stream-ordered
//     on CUDA, so the memory is reused at no driver cost).
//  3. It lays its pieces out with `WorkspaceLayout`, one piece after the other, each aligned to
//     kWorkspaceAlignment; workspace_bytes runs the same layout without memory, so the size it
//     reports and the memory the op uses cannot drift apart.
// Given memory is used by work queued on the backend's stream: it must stay alive, and must not
// be handed to another op running concurrently, until the stream has passed the op.
#pragma once

#include <cstddef>
#include <cstdint>

#include "moss/core/buffer.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Scratch memory a caller hands to an op (in the memory of the backend that runs it); `data`
/// null: none given, the op allocates its own.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

/// True when the caller gave a workspace.
inline bool present(const Workspace& w) { return w.data != nullptr; }

/// Alignment of a given workspace and of every piece laid out in one (cuBLAS(Lt) asks 256 bytes
/// of its work area; every CUDA allocation has at least that, `Host::alloc` gives 64, which no
/// host code needs exceeded).
inline constexpr std::size_t kWorkspaceAlignment = 256;

/// Lays out the pieces of one op's workspace in order, each aligned to kWorkspaceAlignment.
/// Over null memory it only measures (`bytes()`); over real memory it also hands out pointers.
class WorkspaceLayout {
 public:
  /// A layout over `base` (aligned to kWorkspaceAlignment), or a measuring one when null.
  explicit WorkspaceLayout(void* base = nullptr) : base_(static_cast<std::byte*>(base)) {}

  /// Reserves `n` elements of T; returns where they start (null when measuring or n is 0).
  template <class T>
  T* take(index_t n) {
    if (n <= 0) return nullptr;
    const std::size_t start = used_;
    used_ +=
        (static_cast<std::size_t>(n) * sizeof(T) + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
    return base_ ? reinterpret_cast<T*>(base_ + start) : nullptr;
  }
  /// Bytes reserved so far: what `workspace_bytes` reports.
  std::size_t bytes() const { return used_; }

 private:
  std::byte* base_ = nullptr;
  std::size_t used_ = 0;
};

/// The workspace one op call runs in: the caller's `given` one when present (checked to hold
/// `needed` bytes at kWorkspaceAlignment), else `needed` bytes from the backend's pool, owned
/// here and freed with this object. `where` names the op in errors.
template <class Backend>
class OpWorkspace {
 public:
  OpWorkspace(const Backend& backend, const Workspace& given, std::size_t needed, const char* where) {
    if (present(given)) {
      MOSS_EXPECTS(given.bytes >= needed, config_error, where, ": the workspace holds ", given.bytes,
                   " bytes but this call needs ", needed, " (ask workspace_bytes for the same arguments)");
      MOSS_EXPECTS(reinterpret_cast<std::uintptr_t>(given.data) % kWorkspaceAlignment == 0, config_error, where,
                   ": the workspace at ", given.data, " is not aligned to ", kWorkspaceAlignment, " bytes");
      data_ = given.data;
    } else if (needed > 0) {
      owned_ = backend.template alloc<std::byte>(static_cast<index_t>(needed));
      data_ = owned_.data();
    }
  }
  /// The start of the workspace (null when the call needs none and none was given).
  void* data() const { return data_; }
  /// A layout over the workspace, for the op to take its pieces in the order it measured them.
  WorkspaceLayout layout() const { return WorkspaceLayout(data_); }

 private:
  Buffer<std::byte> owned_;
  void* data_ = nullptr;
};

}  // namespace moss
