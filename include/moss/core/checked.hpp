// moss/core/checked.hpp: overflow-checked integer arithmetic for sizes that come from outside
// (config.json, checkpoint headers, command lines).
//
// A size computed from a config with plain `*` or `+` wraps silently (signed overflow is even
// undefined behaviour), and a wrapped size can pass later checks by accident: 64 · expand with
// expand = 2^58 + 2 is 128. Every size moss derives from a config goes through these helpers,
// and the raising forms name what overflowed:
//   const index_t d_inner = checked_mul(expand, d_model, "config.json: expand × hidden_size");
//   → config_error "config.json: expand × hidden_size overflows (288230376151711746 × 64)"
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <string_view>

#include "moss/core/error.hpp"

namespace moss {

/// The most elements moss accepts in one tensor whose size a config determines: 2^48 (1 PiB of
/// float32 weights), far beyond any machine. A config that asks for more is a typo or a size
/// that overflowed somewhere; refusing it leaves every byte count (elements · 8) and index
/// (elements · a few) of such a tensor comfortably inside int64.
inline constexpr std::int64_t max_tensor_elements = std::int64_t{1} << 48;

/// a + b, or std::nullopt when the exact sum does not fit in I.
template <std::integral I>
constexpr std::optional<I> try_add(I a, I b) noexcept {
  I r{};
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a · b, or std::nullopt when the exact product does not fit in I.
template <std::integral I>
constexpr std::optional<I> try_mul(I a, I b) noexcept {
  I r{};
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a + b; throws `Error` (default `config_error`) "<what> overflows (a + b)" when the exact sum
/// does not fit in I. `what` names the operands as the user wrote them ("config.json:
/// time_step_rank + 2 × state_size").
template <class Error = config_error, std::integral I>
I checked_add(I a, I b, std::string_view what) {
  const std::optional<I> r = try_add(a, b);
  if (!r) raise<Error>(what, " overflows (", +a, " + ", +b, ")");
  return *r;
}

/// a · b; throws `Error` (default `config_error`) "<what> overflows (a × b)" when the exact
/// product does not fit in I.
template <class Error = config_error, std::integral I>
I checked_mul(I a, I b, std::string_view what) {
  const std::optional<I> r = try_mul(a, b);
  if (!r) raise<Error>(what, " overflows (", +a, " × ", +b, ")");
  return *r;
}

/// The element count a · b of a tensor sized by a config; throws `Error` (default
/// `config_error`) when the product overflows or exceeds `max_tensor_elements`:
/// "config.json: the embedding (vocab_size × hidden_size) is 1099511627776 × 1024 =
/// 1125899906842624 elements, more than the 281474976710656 (2^48) moss accepts in one tensor".
template <class Error = config_error>
std::int64_t checked_elements(std::int64_t a, std::int64_t b, std::string_view what) {
  const std::int64_t n = checked_mul<Error>(a, b, what);
  if (n > max_tensor_elements)
    raise<Error>(what, " is ", a, " × ", b, " = ", n, " elements, more than the ", max_tensor_elements,
                 " (2^48) moss accepts in one tensor");
  return n;
}

}  // namespace moss
