// moss/core/tensor.hpp: non-owning strided tensor views.
//
// A `TensorView<T, Rank>` is a pointer, a shape and strides (in elements), plus a name used in
// error messages. It does not know where its memory lives; ops take views and the backend
// object at the call site says which processor runs the op. Strides make layouts explicit:
// a (batch, seqlen, d_inner) activation read as (batch, dim, L) is a view with strides
// (L·dim, 1, dim), so ops accept both layouts without transpose copies.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <ostream>
#include <string>
#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"

namespace moss {

using index_t = std::int64_t;

/// "Any extent": the one expected extent `expect_shape` lets match every size, as in
/// `expect_shape(where, x, {moss::any, moss::any, d_model}, "(batch, seqlen, d_model)")`.
/// Every other negative expected extent is an error, never a wildcard, so a size computed from a
/// bad config (n − 1 for n = 0, a wrapped product) cannot make a check pass. The value is not −1
/// for the same reason: it is the one negative number no such computation plausibly yields.
inline constexpr index_t any = std::numeric_limits<index_t>::min() + 1;

/// A shape or stride list of fixed rank, printable as "[4, 512, 768]".
template <std::size_t Rank>
using Extents = std::array<index_t, Rank>;

template <std::size_t Rank>
std::string shape_string(const Extents<Rank>& e) {
  std::string s = "[";
  for (std::size_t i = 0; i < Rank; ++i) s += (i ? ", " : "") + std::to_string(e[i]);
  return s + "]";
}

/// Row-major (contiguous) strides of `shape`.
template <std::size_t Rank>
constexpr Extents<Rank> contiguous_strides(const Extents<Rank>& shape) {
  Extents<Rank> st{};
  index_t s = 1;
  for (std::size_t i = Rank; i-- > 0;) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

/// Non-owning strided view of `Rank`-dimensional data of element type `T`.
/// @tparam T element type, `const`-qualified for read-only inputs.
/// @tparam Rank number of dimensions (≥ 1).
template <class T, std::size_t Rank>
struct TensorView {
  static_assert(Rank >= 1, "moss::TensorView: Rank must be at least 1");
  using element_type = T;
  static constexpr std::size_t rank = Rank;

  T* data = nullptr;
  Extents<Rank> shape{};
  Extents<Rank> stride{};
  const char* name = "tensor";

  constexpr TensorView() = default;
  /// A contiguous (row-major) view.
  constexpr TensorView(T* p, const Extents<Rank>& sh, const char* nm = "tensor")
      : data(p), shape(sh), stride(contiguous_strides(sh)), name(nm) {}
  /// A view with explicit strides (elements).
  constexpr TensorView(T* p, const Extents<Rank>& sh, const Extents<Rank>& st, const char* nm = "tensor")
      : data(p), shape(sh), stride(st), name(nm) {}
  /// A mutable view converts to a read-only one.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr TensorView(
      const TensorView<U, Rank>& o)  // NOLINT(google-explicit-constructor)
      : data(o.data), shape(o.shape), stride(o.stride), name(o.name) {}

  MOSS_HD index_t size(std::size_t d) const { return shape[d]; }
  MOSS_HD index_t numel() const {
    index_t n = 1;
    for (std::size_t i = 0; i < Rank; ++i) n *= shape[i];
    return n;
  }
  MOSS_HD bool empty() const { return numel() == 0; }
  /// True when the view is row-major contiguous (size-1 dimensions may have any stride).
  MOSS_HD bool is_contiguous() const {
    index_t s = 1;
    for (std::size_t i = Rank; i-- > 0;) {
      if (shape[i] != 1 && stride[i] != s) return false;
      s *= shape[i];
    }
    return true;
  }
  /// Element offset of a multi-index.
  template <class... I>
  MOSS_HD index_t offset(I... idx) const {
    static_assert(sizeof...(I) == Rank, "moss::TensorView: wrong number of indices");
    const index_t ix[Rank] = {static_cast<index_t>(idx)...};
    index_t o = 0;
    for (std::size_t i = 0; i < Rank; ++i) o += ix[i] * stride[i];
    return o;
  }
  template <class... I>
  MOSS_HD T& operator()(I... idx) const {
    return data[offset(idx...)];
  }
  /// The same memory under another name (for messages).
  constexpr TensorView named(const char* nm) const {
    TensorView v = *this;
    v.name = nm;
    return v;
  }
};

/// A read-only view.
template <class T, std::size_t Rank>
using ConstView = TensorView<const T, Rank>;

/// Bytes spanned by a view (from its first to one past its last element).
template <class T, std::size_t Rank>
index_t span_elements(const TensorView<T, Rank>& v) {
  if (v.empty()) return 0;
  index_t last = 0;
  for (std::size_t i = 0; i < Rank; ++i) last += (v.shape[i] - 1) * v.stride[i];
  return last + 1;
}

/// Checks that `v` has exactly `expected` shape, where an entry `moss::any` matches any extent,
/// and throws `shape_error` naming `where`, the tensor, both shapes and the axis names otherwise:
/// "Mamba::forward: x is [4, 512, 768] (batch, seqlen, d_model) but expected [4, 512, 1024]".
/// Any other negative expected extent (a size computed from a bad config) matches nothing and
/// the message says so.
template <class T, std::size_t Rank>
void expect_shape(const char* where, const TensorView<T, Rank>& v, const Extents<Rank>& expected, const char* axes) {
  bool ok = true, negative = false;
  for (std::size_t i = 0; i < Rank; ++i) {
    negative = negative || (expected[i] < 0 && expected[i] != any);
    ok = ok && (expected[i] == any || v.shape[i] == expected[i]);
  }
  if (ok && !negative) return;
  std::string exp = "[";
  for (std::size_t i = 0; i < Rank; ++i)
    exp += (i ? ", " : "") + (expected[i] == any ? std::string("*") : std::to_string(expected[i]));
  exp += "]";
  raise<shape_error>(where, ": ", v.name, " is ", shape_string(v.shape), " ", axes, " but expected ", exp,
                     negative ? " (a negative expected extent is an invalid size, not a wildcard; moss::any is "
                                "the one extent that matches any size)"
                              : "");
}

/// Checks that a view with a non-zero element count has a non-null pointer and no negative
/// stride; throws `shape_error` otherwise.
template <class T, std::size_t Rank>
void expect_valid(const char* where, const TensorView<T, Rank>& v) {
  for (std::size_t i = 0; i < Rank; ++i) {
    MOSS_EXPECTS(v.shape[i] >= 0, shape_error, where, ": ", v.name, " has negative extent ", shape_string(v.shape));
    MOSS_EXPECTS(v.stride[i] >= 0, shape_error, where, ": ", v.name, " has negative stride ", shape_string(v.stride),
                 "; moss views need non-negative strides");
  }
  MOSS_EXPECTS(v.empty() || v.data != nullptr, shape_error, where, ": ", v.name, " ", shape_string(v.shape),
               " has no data (null pointer)");
}

/// Checks that the view's innermost dimension has unit stride.
template <class T, std::size_t Rank>
void expect_unit_inner_stride(const char* where, const TensorView<T, Rank>& v) {
  MOSS_EXPECTS(v.shape[Rank - 1] <= 1 || v.stride[Rank - 1] == 1, shape_error, where, ": ", v.name,
               " needs unit stride in its last dimension but has strides ", shape_string(v.stride));
}

/// Checks that `v` is row-major contiguous.
template <class T, std::size_t Rank>
void expect_contiguous(const char* where, const TensorView<T, Rank>& v) {
  MOSS_EXPECTS(v.is_contiguous(), shape_error, where, ": ", v.name, " ", shape_string(v.shape),
               " must be contiguous but has strides ", shape_string(v.stride));
}

}  // namespace moss

namespace moss {

/// An optional op argument is a view whose `data` is null when absent.
template <class T, std::size_t Rank>
MOSS_HD bool present(const TensorView<T, Rank>& v) {
  return v.data != nullptr;
}

/// Ceiling of a / b.
template <class I>
constexpr I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

}  // namespace moss
