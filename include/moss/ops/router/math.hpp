// moss/ops/router/math.hpp: the router's arithmetic, written once for host and device.
//
// The dot products x[t] · weight[i] are summed in the order of the CUDA kernel's warp: lane l
// (of 32) accumulates, with fused multiply-adds, the 16-byte chunks l, l + 32, l + 64, ... of
// the row (chunk c = elements [c·V, c·V + V), V = 16 / sizeof(T)); the 32 partial sums are then
// added by an xor butterfly (offsets 16, 8, 4, 2, 1). The host oracle replays exactly this, so
// the float32 logits are bit-identical on both backends and so is every selection.
#pragma once

#include <cmath>
#include <limits>

#include "moss/core/checked.hpp"
#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/policy/router.hpp"

namespace moss::detail::route {

/// Lanes of the dot product's partial sums (one warp).
inline constexpr int kDotLanes = 32;

/// a·b + c, rounded once (the device's FFMA, the host's std::fma).
MOSS_HD float fma_f32(float a, float b, float c) {
#if MOSS_DEVICE_PASS
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

/// Elements per 16-byte chunk of storage type T.
template <class T>
constexpr int chunk_elems() {
  return static_cast<int>(16 / sizeof(T));
}

/// Lane `lane`'s partial sum of x · w over the row (length D), in the kernel's order.
template <class T>
MOSS_HD float lane_partial(const T* x, const float* w, long long D, int lane) {
  constexpr int V = chunk_elems<T>();
  float acc = 0.0f;
  for (long long c = lane; c * V < D; c += kDotLanes)
    for (int j = 0; j < V; ++j) {
      const long long i = c * V + j;
      if (i < D) acc = fma_f32(to_float(x[i]), w[i], acc);
    }
  return acc;
}

/// Adds 32 partial sums in the order of the warp's xor butterfly (every lane ends with this).
MOSS_HD float butterfly_sum(float (&p)[kDotLanes]) {
  for (int off = kDotLanes / 2; off > 0; off >>= 1) {
    float next[kDotLanes];
    for (int l = 0; l < kDotLanes; ++l) next[l] = p[l] + p[l ^ off];
    for (int l = 0; l < kDotLanes; ++l) p[l] = next[l];
  }
  return p[0];
}

/// x · w in the kernel's order (host side of the bit-exact contract).
template <class T>
inline float dot_in_kernel_order(const T* x, const float* w, long long D) {
  float p[kDotLanes];
  for (int l = 0; l < kDotLanes; ++l) p[l] = lane_partial(x, w, D, l);
  return butterfly_sum(p);
}

/// Capacity of each expert for T tokens, K slots, X experts and capacity factor cf > 0:
/// max(1, ceil(cf · T · K / X)), computed in double (docs/math.md §2). 0 for cf = 0 (dropless).
/// A capacity too large for 62 bits (cf · T · K / X ≥ 2^62, e.g. cf = 1e308) exceeds T · K,
/// so it keeps every pair just as T · K does, and max(1, T · K) is returned: the same plan,
/// without a float-to-integer overflow. `config_error` naming capacity_factor for a negative,
/// NaN or infinite cf; `shape_error` for T < 0, K < 1 or X < 1.
inline long long expert_capacity(double capacity_factor, long long tokens, long long k, long long experts) {
  MOSS_EXPECTS(std::isfinite(capacity_factor) && capacity_factor >= 0, config_error,
               "expert_capacity: capacity_factor is ", capacity_factor,
               ", expected a finite number >= 0 (0 = dropless)");
  MOSS_EXPECTS(tokens >= 0 && k >= 1 && experts >= 1, shape_error, "expert_capacity: ", tokens, " tokens, k ", k,
               " and ", experts, " experts; expected tokens >= 0, k >= 1 and experts >= 1");
  if (capacity_factor == 0) return 0;
  const double c =
      std::ceil(capacity_factor * static_cast<double>(tokens) * static_cast<double>(k) / static_cast<double>(experts));
  if (!(c < 0x1p62)) {
    const long long pairs = try_mul(tokens, k).value_or(std::numeric_limits<long long>::max());
    return pairs < 1 ? 1 : pairs;
  }
  return c < 1 ? 1 : static_cast<long long>(c);
}

/// log Σ exp(logits) of one token (max-shifted; NaN when a logit is NaN).
MOSS_HD float log_sum_exp(const float* logits, int num_experts) {
  const float m = max_logit(logits, num_experts);
  const float s = sum_exp(logits, num_experts, m);
#if MOSS_DEVICE_PASS
  return m + ::logf(s);
#else
  return m + std::log(s);
#endif
}

}  // namespace moss::detail::route
