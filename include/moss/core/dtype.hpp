// moss/core/dtype.hpp: the three storage dtypes (f32, f16, bf16) usable on host and device.
//
// `f16` and `bf16` are moss's own 2-byte types, bit-compatible with `__half` and
// `__nv_bfloat16`, so host code without CUDA can store, load and convert them. Arithmetic is
// always done in float: convert with `to_float` / `from_float<T>`, which round to nearest even
// (NaN stays NaN, overflow goes to infinity), exactly as the CUDA intrinsics do.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "moss/core/config.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace moss {

namespace detail {
MOSS_HD std::uint32_t float_bits(float f) {
#if MOSS_DEVICE_PASS
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
MOSS_HD float bits_float(std::uint32_t u) {
#if MOSS_DEVICE_PASS
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
}  // namespace detail

/// IEEE binary16 storage type (1 sign, 5 exponent, 10 mantissa bits).
struct alignas(2) f16 {
  std::uint16_t bits = 0;
};
/// bfloat16 storage type (1 sign, 8 exponent, 7 mantissa bits).
struct alignas(2) bf16 {
  std::uint16_t bits = 0;
};

/// float → bf16, round to nearest even; NaN stays a quiet NaN.
MOSS_HD bf16 bf16_from_float(float f) {
#if MOSS_DEVICE_PASS
  __nv_bfloat16 h = __float2bfloat16_rn(f);
  bf16 r;
  r.bits = *reinterpret_cast<std::uint16_t*>(&h);
  return r;
#else
  std::uint32_t u = detail::float_bits(f);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, force a quiet payload
    r.bits = static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  r.bits = static_cast<std::uint16_t>(u >> 16);
  return r;
#endif
}
/// bf16 → float (exact).
MOSS_HD float bf16_to_float(bf16 h) { return detail::bits_float(std::uint32_t(h.bits) << 16); }

/// float → f16, round to nearest even, with subnormals, overflow to infinity and NaN.
MOSS_HD f16 f16_from_float(float f) {
#if MOSS_DEVICE_PASS
  __half h = __float2half_rn(f);
  f16 r;
  r.bits = *reinterpret_cast<std::uint16_t*>(&h);
  return r;
#else
  const std::uint32_t u = detail::float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t abs = u & 0x7fffffffu;
  f16 r;
  if (abs > 0x7f800000u) {  // NaN
    r.bits = static_cast<std::uint16_t>(sign | 0x7e00u);
    return r;
  }
  if (abs >= 0x477ff000u) {  // ≥ 65520 rounds to infinity
    r.bits = static_cast<std::uint16_t>(sign | 0x7c00u);
    return r;
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // Scale into the subnormal range with a float add, whose rounding is round-to-nearest-even.
    const float shifted = detail::bits_float(abs) + 0.5f;  // 0.5 = 2^-1 puts 2^-24 at the last bit
    r.bits = static_cast<std::uint16_t>(sign | (detail::float_bits(shifted) - 0x3f000000u));
    return r;
  }
  std::uint32_t mant_odd = (abs >> 13) & 1u;
  std::uint32_t v = abs + 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round
  r.bits = static_cast<std::uint16_t>(sign | (v >> 13));
  return r;
#endif
}
/// f16 → float (exact).
MOSS_HD float f16_to_float(f16 h) {
#if MOSS_DEVICE_PASS
  __half x = *reinterpret_cast<const __half*>(&h.bits);
  return __half2float(x);
#else
  // Branch-free so conversion loops vectorise: placing the 15 magnitude bits at the top of a
  // float's exponent/mantissa and scaling by 2^112 rebiases the exponent (15 → 127) and is
  // exact for normals and subnormals alike; infinities and NaNs are patched in after.
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  const std::uint32_t mag = std::uint32_t(h.bits & 0x7fffu) << 13;
  const std::uint32_t scaled = detail::float_bits(detail::bits_float(mag) * 0x1p112f);
  const std::uint32_t special = 0x7f800000u | (mag & 0x007fe000u);
  return detail::bits_float(sign | ((mag >= 0x0f800000u) ? special : scaled));
#endif
}

MOSS_HD float to_float(float x) { return x; }
MOSS_HD float to_float(bf16 x) { return bf16_to_float(x); }
MOSS_HD float to_float(f16 x) { return f16_to_float(x); }

/// Converts a float to storage type `T` (rounding once).
template <class T>
MOSS_HD T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, bf16>) {
    return bf16_from_float(x);
  } else {
    static_assert(std::is_same_v<T, f16>, "moss::from_float: T must be float, moss::f16 or moss::bf16");
    return f16_from_float(x);
  }
}

/// Runtime tag of an element type, as stored in checkpoints.
enum class DType : std::uint8_t { f32, f16, bf16, i32, i64, u8 };

/// Size in bytes of one element of `d`.
constexpr std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::f32:
      return 4;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 0;
}

/// Short name of `d` as moss prints it ("f32", "bf16", ...).
constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
  }
  return "?";
}

/// The checkpoint tag of a C++ element type: `dtype_of<bf16>` is `DType::bf16`.
template <class T>
inline constexpr DType dtype_of = [] {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<U, f16>)
    return DType::f16;
  else if constexpr (std::is_same_v<U, bf16>)
    return DType::bf16;
  else if constexpr (std::is_same_v<U, std::int32_t>)
    return DType::i32;
  else if constexpr (std::is_same_v<U, std::int64_t>)
    return DType::i64;
  else {
    static_assert(std::is_same_v<U, std::uint8_t>, "moss::dtype_of: not a moss element type");
    return DType::u8;
  }
}();

/// The three floating storage types a model or op can be instantiated with.
template <class T>
concept StorageType = std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>;

/// A storage type, or `double` on the host only: the host ops and their backward passes also
/// instantiate with double so that finite-difference gradient checks run on the library's own
/// code at float64 precision (docs/training.md). CUDA code accepts `StorageType` alone.
template <class T>
concept HostReal = StorageType<T> || std::is_same_v<T, double>;

/// The arithmetic (and parameter / gradient) type of an op over storage type T: float32 for the
/// three storage types, double for double.
template <HostReal T>
using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// `x` (float, f16, bf16 or double) in its arithmetic type `compute_t<T>`: exact.
template <class T>
MOSS_HD auto widen(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return x;
  } else {
    return to_float(x);
  }
}

/// An arithmetic value `v` (float or double) stored as `T` (float, f16, bf16 or double), rounded
/// once to nearest even.
template <class T, class C>
MOSS_HD T narrow(C v) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return from_float<T>(static_cast<float>(v));
  }
}

}  // namespace moss
