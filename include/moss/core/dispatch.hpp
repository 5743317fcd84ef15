// moss/core/dispatch.hpp: turning runtime choices into compile-time ones.
//
// `dispatch_dtype(DType::bf16, f)` calls `f(type_tag<bf16>{})`; `dispatch_bool(flag, f)` calls
// `f(std::true_type{})` or `f(std::false_type{})`. Each lists what it supports in its error.
#pragma once

#include <string_view>
#include <type_traits>
#include <utility>

#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"

namespace moss {

/// An empty value that carries a type: `typename decltype(tag)::type`.
template <class T>
struct type_tag {
  using type = T;
};

/// Calls `f(type_tag<T>{})` for the floating storage type named by `d` (f32, f16 or bf16).
template <class F>
decltype(auto) dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f32:
      return std::forward<F>(f)(type_tag<float>{});
    case DType::f16:
      return std::forward<F>(f)(type_tag<f16>{});
    case DType::bf16:
      return std::forward<F>(f)(type_tag<bf16>{});
    default:
      break;
  }
  raise<unsupported_error>("dispatch_dtype: dtype ", dtype_name(d),
                           " is not a storage dtype; supported: f32, f16, bf16");
}

/// Calls `f(std::bool_constant<b>{})`.
template <class F>
decltype(auto) dispatch_bool(bool b, F&& f) {
  if (b) return std::forward<F>(f)(std::true_type{});
  return std::forward<F>(f)(std::false_type{});
}

/// Parses "f32" / "float32", "f16" / "float16", "bf16" / "bfloat16" (config and command line).
inline DType parse_storage_dtype(std::string_view s, const char* where) {
  if (s == "f32" || s == "float32" || s == "float") return DType::f32;
  if (s == "f16" || s == "float16" || s == "half") return DType::f16;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  raise<config_error>(where, ": unknown dtype \"", s, "\"; supported: f32, f16, bf16 (or float32, float16, bfloat16)");
}

}  // namespace moss
