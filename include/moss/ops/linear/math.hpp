// moss/ops/linear/math.hpp: the arithmetic of `linear`, written once.
//
// y[r,o] = Σ_k x[r,k] · W[o,k] + bias[o], accumulated in float32 (in double when the host op
// is instantiated with T = double, compute_t<T>; docs/training.md). The host sums each dot
// product in `kLinearLanes` interleaved partial sums (lane l takes k ≡ l mod kLinearLanes),
// then adds the lanes in order: a fixed, deterministic order that the compiler can turn into
// SIMD code without reassociating anything (-O2/-O3, no -ffast-math needed). cuBLAS sums in
// its own order; both stay within float32 rounding of the exact result.
#pragma once

#include <type_traits>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Sizes of one `linear` call, derived from its arguments.
struct LinearShape {
  index_t rows = 0;  // tokens
  index_t in = 0;    // input features
  index_t out = 0;   // output features

  /// Multiply-adds counted as two FLOPs each (the bias add is not counted).
  constexpr double flops() const { return 2.0 * double(rows) * double(in) * double(out); }
};

/// The shape of `a` (a `LinearArgs`).
template <class Args>
constexpr LinearShape linear_shape(const Args& a) {
  return {a.x.shape[0], a.x.shape[1], a.weight.shape[0]};
}

/// Partial sums per dot product; 8 floats fill one AVX register or two SSE registers.
inline constexpr index_t kLinearLanes = 8;

/// Dot products of one row `x` with `kRows` rows `w` (row stride `ldw`), all of length
/// `k_padded`, a multiple of `kLinearLanes` (callers zero-pad), in the arithmetic type `C`
/// (float; double for the host's T = double). Writes `kRows` sums.
template <int kRows, class C = float>
MOSS_HD void dot_rows(const C* x, const C* w, index_t ldw, index_t k_padded, C* sums) {
  C acc[kRows][kLinearLanes] = {};
  for (index_t k = 0; k < k_padded; k += kLinearLanes) {
    for (int j = 0; j < kRows; ++j) {
      for (index_t l = 0; l < kLinearLanes; ++l) acc[j][l] += x[k + l] * w[j * ldw + k + l];
    }
  }
  for (int j = 0; j < kRows; ++j) {
    C s = C(0);
    for (index_t l = 0; l < kLinearLanes; ++l) s += acc[j][l];
    sums[j] = s;
  }
}

}  // namespace moss
