// moss/ops/selective_scan/math.hpp: the selective-scan math, written once for host and device.
//
// The host oracle and the CUDA kernels both call these functions, in the same order, so the
// two backends differ only by the device's special-function-unit exp2 and reciprocal (a few
// ulp each) and the order of the y sum. The recurrence is docs/math.md §1; the segment pair at
// the end is what the chunked strategy (ChunkedScan) composes.
#pragma once

#include <cmath>

#include "moss/core/config.hpp"

namespace moss::detail::scan {

/// log2(e): A is pre-scaled by it once per channel so each state update needs one exp2.
inline constexpr float kLog2e = 1.4426950408889634f;

/// 2^x. On the device it is the special-function unit's ex2 (about 2 ulp, denormal results
/// flushed to zero: a decay below 2^-126 is zero for every practical purpose).
MOSS_HD float pow2(float x) {
#if MOSS_DEVICE_PASS
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return std::exp2(x);
#endif
}

/// softplus(x) = log(1 + e^x), and x itself for x > 20 (where the two agree in float32). The
/// device takes e^x from the SFU (relative error ≈ |x|·2^-24, below 1e-6 for x ≤ 20).
MOSS_HD float softplus(float x) {
#if MOSS_DEVICE_PASS
  return x > 20.0f ? x : ::log1pf(pow2(x * kLog2e));
#else
  return x > 20.0f ? x : std::log1p(std::exp(x));
#endif
}

/// SiLU(x) = x · sigmoid(x) = x / (1 + e^-x). The device uses the SFU's ex2 and reciprocal
/// (a few ulp; x < -88 gives -0 as the exact formula does).
MOSS_HD float silu(float x) {
#if MOSS_DEVICE_PASS
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + pow2(-x * kLog2e)));
  return x * r;
#else
  return x / (1.0f + std::exp(-x));
#endif
}

/// Δ = softplus?(delta + delta_bias); pass bias 0 when there is no delta_bias.
MOSS_HD float delta_value(float delta, float bias, bool use_softplus) {
  const float x = delta + bias;
  return use_softplus ? softplus(x) : x;
}

/// A[d,n] scaled for `update_state` (computed once per channel, not once per step).
MOSS_HD float a_log2e(float a) { return a * kLog2e; }

/// One discretised state update h ← exp(Δ·A)·h + Δ·B·u, with A given as A·log2(e) and
/// Δ·u precomputed once per (channel, step) for all states.
MOSS_HD float update_state(float h, float dt, float a_scaled, float dt_u, float b) {
  return pow2(dt * a_scaled) * h + dt_u * b;
}

/// y + D·u: the skip connection (only called when D is given).
MOSS_HD float add_skip(float y, float d_skip, float u) { return y + d_skip * u; }

/// y · SiLU(z): the output gate (only called when z is given).
MOSS_HD float gate(float y, float z) { return y * silu(z); }

// The same functions in double, for the host's double instantiation (moss::HostReal,
// docs/training.md): the same formulas and order of operations, evaluated in float64. Host only;
// the float overloads above are the exact matches for every float call, on host and device.

/// log2(e) in double.
inline constexpr double kLog2eF64 = 1.4426950408889634;
/// 2^x in double.
inline double pow2(double x) { return std::exp2(x); }
/// softplus in double: x itself for x > 20, as in float.
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
/// SiLU in double.
inline double silu(double x) { return x / (1.0 + std::exp(-x)); }
/// Δ = softplus?(delta + delta_bias) in double.
inline double delta_value(double delta, double bias, bool use_softplus) {
  const double x = delta + bias;
  return use_softplus ? softplus(x) : x;
}
/// A·log2(e) in double.
inline double a_log2e(double a) { return a * kLog2eF64; }
/// h ← exp(Δ·A)·h + Δ·B·u in double.
inline double update_state(double h, double dt, double a_scaled, double dt_u, double b) {
  return pow2(dt * a_scaled) * h + dt_u * b;
}
/// y + D·u in double.
inline double add_skip(double y, double d_skip, double u) { return y + d_skip * u; }
/// y · SiLU(z) in double.
inline double gate(double y, double z) { return y * silu(z); }

/// One time segment of the recurrence of one (batch, channel, state) as the affine map
/// h ↦ a·h + b (docs/math.md §1): `a` is the product of the segment's decays exp(Δ_t·A) and `b`
/// the state the segment ends in when it starts from h = 0. Segments compose in time order
/// (`combine`), so a chunked scan scans each segment from zero, then carries the true states
/// across segments with one pair per segment.
struct ScanPair {
  float a = 1.0f;  // Π_t exp(Δ_t·A[d,n]) over the segment
  float b = 0.0f;  // end state of the segment from a zero state
};

/// The state after segment `s` when `h` enters it: a·h + b.
MOSS_HD float apply(ScanPair s, float h) { return s.a * h + s.b; }

/// The pair of segment `first` followed by segment `second`.
MOSS_HD ScanPair combine(ScanPair first, ScanPair second) { return {second.a * first.a, apply(second, first.b)}; }

/// A segment's decay Π_t exp(Δ_t·A) = exp(A·Σ_t Δ_t), from A·log2(e) and the segment's Σ Δ: one
/// exp2 per (channel, state) and segment instead of one per step.
MOSS_HD float segment_decay(float a_scaled, float delta_sum) { return pow2(a_scaled * delta_sum); }

/// ScanPair in double (the host's double instantiation of the chunked scan).
struct ScanPairF64 {
  double a = 1.0;  // Π_t exp(Δ_t·A[d,n]) over the segment
  double b = 0.0;  // end state of the segment from a zero state
};
/// The state after segment `s` when `h` enters it, in double.
inline double apply(ScanPairF64 s, double h) { return s.a * h + s.b; }
/// A segment's decay in double.
inline double segment_decay(double a_scaled, double delta_sum) { return pow2(a_scaled * delta_sum); }

}  // namespace moss::detail::scan
