// Tests of moss/core/dtype.hpp: f16 and bf16 conversions against hand-computed bit patterns,
// exhaustive round trips over all 65536 bit patterns, round-to-nearest-even at every midpoint,
// and the runtime dtype tags.
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

#include "moss/core/dtype.hpp"

using moss::bf16;
using moss::f16;

namespace {

std::uint16_t h(float x) { return moss::from_float<f16>(x).bits; }
std::uint16_t b(float x) { return moss::from_float<bf16>(x).bits; }
float hf(std::uint16_t bits) { return moss::to_float(f16{bits}); }
float bf(std::uint16_t bits) { return moss::to_float(bf16{bits}); }
float p2(int e) { return std::ldexp(1.0f, e); }
float float_of_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// binary16 value of a bit pattern computed in double, independently of dtype.hpp.
double f16_reference(std::uint16_t bits) {
  const int sign = bits >> 15, exp = (bits >> 10) & 0x1f, mant = bits & 0x3ff;
  double v;
  if (exp == 0x1f)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (exp == 0)
    v = std::ldexp(static_cast<double>(mant), -24);
  else
    v = std::ldexp(static_cast<double>(1024 + mant), exp - 25);
  return sign ? -v : v;
}

/// bfloat16 value of a bit pattern computed in double, independently of dtype.hpp.
double bf16_reference(std::uint16_t bits) {
  const int sign = bits >> 15, exp = (bits >> 7) & 0xff, mant = bits & 0x7f;
  double v;
  if (exp == 0xff)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (exp == 0)
    v = std::ldexp(static_cast<double>(mant), -133);
  else
    v = std::ldexp(static_cast<double>(128 + mant), exp - 134);
  return sign ? -v : v;
}

}  // namespace

TEST_CASE("dtype: f16 conversions match hand-computed bit patterns", "[host]") {
  CHECK(h(1.0f) == 0x3c00);
  CHECK(h(-2.5f) == 0xc100);
  CHECK(h(0.0f) == 0x0000);
  CHECK(h(-0.0f) == 0x8000);
  CHECK(h(65504.0f) == 0x7bff);   // largest finite half
  CHECK(h(65519.99f) == 0x7bff);  // just below the midpoint to infinity
  CHECK(h(65520.0f) == 0x7c00);   // the midpoint rounds (to even) to infinity
  CHECK(h(-65520.0f) == 0xfc00);
  CHECK(h(1e10f) == 0x7c00);
  CHECK(h(p2(-14)) == 0x0400);            // smallest normal
  CHECK(h(1023.0f * p2(-24)) == 0x03ff);  // largest subnormal
  CHECK(h(p2(-24)) == 0x0001);            // smallest subnormal
  CHECK(h(-p2(-24)) == 0x8001);
  CHECK(h(p2(-25)) == 0x0000);  // tie between 0 and 2^-24: the even one, 0
  CHECK(h(-p2(-25)) == 0x8000);
  CHECK(h(std::nextafter(p2(-25), 1.0f)) == 0x0001);  // just above the tie rounds up
  CHECK(h(3.0f * p2(-25)) == 0x0002);                 // tie between 2^-24 (odd) and 2^-23 (even): 2^-23
  CHECK(h(5.0f * p2(-25)) == 0x0002);                 // tie between 2·2^-24 (even) and 3·2^-24: 2·2^-24
  CHECK(h(p2(-30)) == 0x0000);                        // underflow to zero
  CHECK(h(1.0f + p2(-11)) == 0x3c00);                 // tie: 1 (even mantissa) wins
  CHECK(h(1.0f + 3.0f * p2(-11)) == 0x3c02);          // tie: 1 + 2^-9 (even mantissa) wins
  CHECK(h(2047.0f * p2(-25)) == 0x0400);              // rounding carries from subnormal into the smallest normal
  CHECK(h(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(h(-std::numeric_limits<float>::infinity()) == 0xfc00);
  const std::uint16_t nan = h(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  const std::uint16_t snan = h(float_of_bits(0x7f800001u));  // payload only in bits a truncation would drop
  CHECK((snan & 0x7c00) == 0x7c00);
  CHECK((snan & 0x03ff) != 0);
  CHECK((h(-std::numeric_limits<float>::quiet_NaN()) & 0x8000) == 0x8000);

  CHECK(hf(0x3c00) == 1.0f);
  CHECK(hf(0xc100) == -2.5f);
  CHECK(hf(0x7bff) == 65504.0f);
  CHECK(hf(0x0001) == p2(-24));
  CHECK(hf(0x03ff) == 1023.0f * p2(-24));
  CHECK(hf(0x0400) == p2(-14));
  CHECK(hf(0x7c00) == std::numeric_limits<float>::infinity());
  CHECK(hf(0xfc00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(hf(0x7e00)));
  CHECK(std::isnan(hf(0x7c01)));
  CHECK(hf(0x8000) == 0.0f);
  CHECK(std::signbit(hf(0x8000)));
}

TEST_CASE("dtype: bf16 conversions match hand-computed bit patterns", "[host]") {
  CHECK(b(1.0f) == 0x3f80);
  CHECK(b(-2.5f) == 0xc020);
  CHECK(b(0.0f) == 0x0000);
  CHECK(b(-0.0f) == 0x8000);
  CHECK(b(1.0f + p2(-8)) == 0x3f80);                      // tie: 1 (even) wins
  CHECK(b(1.0f + 3.0f * p2(-8)) == 0x3f82);               // tie: 1 + 2^-6 (even) wins
  CHECK(b(1.0f + p2(-8) + p2(-20)) == 0x3f81);            // above the tie rounds up
  CHECK(b(1.0f + p2(-7)) == 0x3f81);                      // exact
  CHECK(b(std::numeric_limits<float>::max()) == 0x7f80);  // above the last midpoint: infinity
  CHECK(b(float_of_bits(0x7f7f7fffu)) == 0x7f7f);         // just below it: the largest finite bf16
  CHECK(b(float_of_bits(0x00000001u)) == 0x0000);         // the smallest float subnormal rounds to 0
  CHECK(b(float_of_bits(0x00008000u)) == 0x0000);         // tie at subnormal scale: 0 (even)
  CHECK(b(float_of_bits(0x00018000u)) == 0x0002);         // tie: 2 (even) wins over 1
  CHECK(b(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(b(-std::numeric_limits<float>::infinity()) == 0xff80);
  const std::uint16_t nan = b(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7f80) == 0x7f80);
  CHECK((nan & 0x007f) != 0);
  const std::uint16_t snan = b(float_of_bits(0x7f800001u));  // truncation would make this infinity
  CHECK((snan & 0x7f80) == 0x7f80);
  CHECK((snan & 0x007f) != 0);
  const std::uint16_t nnan = b(float_of_bits(0xffffffffu));  // no carry out of a NaN into the sign
  CHECK((nnan & 0xff80) == 0xff80);
  CHECK((nnan & 0x007f) != 0);

  CHECK(bf(0x3f80) == 1.0f);
  CHECK(bf(0xc020) == -2.5f);
  CHECK(bf(0x7f7f) == float_of_bits(0x7f7f0000u));
  CHECK(bf(0xff80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(bf(0x7fc0)));
}

TEST_CASE("dtype: every f16 bit pattern decodes exactly and round-trips", "[host]") {
  int nans = 0;
  for (std::uint32_t u = 0; u < 65536; ++u) {
    const auto bits = static_cast<std::uint16_t>(u);
    const double ref = f16_reference(bits);
    const float x = hf(bits);
    if (std::isnan(ref)) {
      ++nans;
      REQUIRE(std::isnan(x));
      REQUIRE(std::isnan(hf(h(x))));
      continue;
    }
    INFO("bits 0x" << std::hex << u);
    REQUIRE(static_cast<double>(x) == ref);
    REQUIRE(std::signbit(x) == std::signbit(ref));
    REQUIRE(h(x) == bits);
  }
  CHECK(nans == 2 * 1023);
}

TEST_CASE("dtype: every bf16 bit pattern decodes exactly and round-trips", "[host]") {
  int nans = 0;
  for (std::uint32_t u = 0; u < 65536; ++u) {
    const auto bits = static_cast<std::uint16_t>(u);
    const double ref = bf16_reference(bits);
    const float x = bf(bits);
    if (std::isnan(ref)) {
      ++nans;
      REQUIRE(std::isnan(x));
      REQUIRE(std::isnan(bf(b(x))));
      continue;
    }
    INFO("bits 0x" << std::hex << u);
    REQUIRE(static_cast<double>(x) == ref);
    REQUIRE(std::signbit(x) == std::signbit(ref));
    REQUIRE(b(x) == bits);
  }
  CHECK(nans == 2 * 127);
}

TEST_CASE("dtype: every midpoint between neighbouring f16 / bf16 values rounds to even", "[host]") {
  // For each pair of neighbours (lo, hi) of one sign, the exact midpoint (representable in
  // float) goes to the one with an even mantissa, and one float ulp either side goes to the
  // nearer neighbour. The last pair is the largest finite value and infinity, whose midpoint
  // sits where the next binade's first value would be (65536 for f16, 2^128 for bf16).
  const float inf = std::numeric_limits<float>::infinity();
  for (const std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
    for (std::uint32_t lo = 0; lo < 0x7c00; ++lo) {
      const auto lo_bits = static_cast<std::uint16_t>(lo | sign);
      const auto hi_bits = static_cast<std::uint16_t>((lo + 1) | sign);
      const double hi_value = lo + 1 == 0x7c00 ? (sign ? -65536.0 : 65536.0) : f16_reference(hi_bits);
      const double mid_d = (f16_reference(lo_bits) + hi_value) / 2;
      const auto mid = static_cast<float>(mid_d);
      INFO("f16 lo 0x" << std::hex << lo_bits);
      REQUIRE(static_cast<double>(mid) == mid_d);
      REQUIRE(h(mid) == (lo % 2 == 0 ? lo_bits : hi_bits));
      const float toward_zero = std::nextafter(mid, 0.0f), away = std::nextafter(mid, sign ? -inf : inf);
      REQUIRE(h(toward_zero) == lo_bits);
      REQUIRE(h(away) == hi_bits);
    }
    for (std::uint32_t lo = 0; lo < 0x7f80; ++lo) {
      const auto lo_bits = static_cast<std::uint16_t>(lo | sign);
      const auto hi_bits = static_cast<std::uint16_t>((lo + 1) | sign);
      const double hi_value =
          lo + 1 == 0x7f80 ? (sign ? -std::ldexp(1.0, 128) : std::ldexp(1.0, 128)) : bf16_reference(hi_bits);
      const double mid_d = (bf16_reference(lo_bits) + hi_value) / 2;
      INFO("bf16 lo 0x" << std::hex << lo_bits);
      const auto mid = static_cast<float>(mid_d);
      REQUIRE(static_cast<double>(mid) == mid_d);
      REQUIRE(b(mid) == (lo % 2 == 0 ? lo_bits : hi_bits));
      const float toward_zero = std::nextafter(mid, 0.0f), away = std::nextafter(mid, sign ? -inf : inf);
      REQUIRE(b(toward_zero) == lo_bits);
      REQUIRE(b(away) == hi_bits);
    }
  }
}

TEST_CASE("dtype: random floats round to a nearest representable value", "[host]") {
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    const float x = float_of_bits(rng());
    if (!std::isfinite(x)) continue;
    INFO("x = " << x);
    const std::uint16_t rb = b(x);
    if ((rb & 0x7f80) != 0x7f80) {
      const double err = std::fabs(bf16_reference(rb) - x);
      if ((rb & 0x7fff) != 0x7f7f) REQUIRE(err <= std::fabs(bf16_reference(static_cast<std::uint16_t>(rb + 1)) - x));
      if ((rb & 0x7fff) != 0) REQUIRE(err <= std::fabs(bf16_reference(static_cast<std::uint16_t>(rb - 1)) - x));
    }
    const float y = x * p2(-110);  // scale into the f16 range (|y| up to 2^18)
    const std::uint16_t rh = h(y);
    if ((rh & 0x7c00) != 0x7c00) {
      const double err = std::fabs(f16_reference(rh) - y);
      if ((rh & 0x7fff) != 0x7bff) REQUIRE(err <= std::fabs(f16_reference(static_cast<std::uint16_t>(rh + 1)) - y));
      if ((rh & 0x7fff) != 0) REQUIRE(err <= std::fabs(f16_reference(static_cast<std::uint16_t>(rh - 1)) - y));
    } else {
      REQUIRE(std::fabs(y) >= 65520.0f);
    }
  }
}

TEST_CASE("dtype: runtime tags, sizes and names", "[host]") {
  static_assert(sizeof(f16) == 2 && alignof(f16) == 2);
  static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2);
  static_assert(moss::dtype_of<float> == moss::DType::f32);
  static_assert(moss::dtype_of<const f16> == moss::DType::f16);
  static_assert(moss::dtype_of<bf16> == moss::DType::bf16);
  static_assert(moss::dtype_of<std::int32_t> == moss::DType::i32);
  static_assert(moss::dtype_of<std::int64_t> == moss::DType::i64);
  static_assert(moss::dtype_of<std::uint8_t> == moss::DType::u8);
  static_assert(moss::StorageType<float> && moss::StorageType<f16> && moss::StorageType<bf16>);
  static_assert(!moss::StorageType<double> && !moss::StorageType<std::int32_t>);
  static_assert(std::is_same_v<decltype(moss::from_float<float>(1.0f)), float>);
  CHECK(moss::dtype_size(moss::DType::f32) == 4);
  CHECK(moss::dtype_size(moss::DType::f16) == 2);
  CHECK(moss::dtype_size(moss::DType::bf16) == 2);
  CHECK(moss::dtype_size(moss::DType::i32) == 4);
  CHECK(moss::dtype_size(moss::DType::i64) == 8);
  CHECK(moss::dtype_size(moss::DType::u8) == 1);
  CHECK(moss::dtype_name(moss::DType::f32) == "f32");
  CHECK(moss::dtype_name(moss::DType::f16) == "f16");
  CHECK(moss::dtype_name(moss::DType::bf16) == "bf16");
  CHECK(moss::dtype_name(moss::DType::i32) == "i32");
  CHECK(moss::dtype_name(moss::DType::i64) == "i64");
  CHECK(moss::dtype_name(moss::DType::u8) == "u8");
  CHECK(moss::to_float(2.5f) == 2.5f);
  CHECK(moss::from_float<float>(-3.0f) == -3.0f);
}
