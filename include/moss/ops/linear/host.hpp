// moss/ops/linear/host.hpp: `linear` on the CPU, the oracle of the CUDA path and the CPU path
// of the whole model.
//
// Single-threaded and cache-blocked: a block of x rows is widened to float once and reused
// against every output feature; the weight is widened one tile of output features at a time,
// small enough to stay in L1/L2 while the row block runs over it. Both tiles are zero-padded
// to a multiple of `kLinearLanes`, so the inner loop (`dot_rows`) has no tail and vectorises.
// With T = double (host only) the same loops run in double (compute_t<T>) instead of float.
#pragma once

#include <algorithm>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/linear/math.hpp"

namespace moss {

namespace detail {

/// x rows widened at once: the weight tile is widened once per row block, so this bounds the
/// widening overhead to 1 / kLinearRowBlock of the multiply-adds.
inline constexpr index_t kLinearRowBlock = 16;
/// Elements in one widened weight tile (64 KiB of floats: stays in L2 next to the row block).
inline constexpr index_t kLinearTileFloats = 16384;
/// Output features per `dot_rows` call: 4 weight rows share each load of x.
inline constexpr int kLinearOutGroup = 4;

/// Widens `n` elements of `src` to the arithmetic type `C` (float, or double for T = double)
/// into `dst` and zeroes `dst[n, padded)`.
template <class T, class C>
void widen_padded(const T* src, index_t n, index_t padded, C* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = moss::widen(src[i]);
  for (index_t i = n; i < padded; ++i) dst[i] = C(0);
}

}  // namespace detail

/// y = x · Wᵀ (+ bias) on the CPU: float32 accumulation (double for T = double), y rounded
/// once to Tout.
template <class T, class Tout>
void linear(const Host&, const LinearArgs<T, Tout>& a) {
  validate(a, "linear");
  using C = compute_t<T>;
  const LinearShape s = linear_shape(a);
  if (s.rows == 0) return;

  const index_t kp = ceil_div(s.in, kLinearLanes) * kLinearLanes;
  const index_t row_block = std::min(detail::kLinearRowBlock, s.rows);
  // Output features per weight tile: a multiple of the out group, at least one group.
  const index_t group = detail::kLinearOutGroup;
  const index_t tile = std::min(s.out, std::max(group, detail::kLinearTileFloats / kp / group * group));

  std::vector<C> xt(static_cast<std::size_t>(row_block * kp));  // (row_block, kp)
  std::vector<C> wt(static_cast<std::size_t>(tile * kp));       // (tile, kp)
  std::vector<C> bias(static_cast<std::size_t>(s.out), C(0));   // (out)
  if (present(a.bias)) {
    for (index_t o = 0; o < s.out; ++o) bias[o] = moss::widen(a.bias.data[o]);
  }

  for (index_t r0 = 0; r0 < s.rows; r0 += row_block) {
    const index_t nr = std::min(row_block, s.rows - r0);
    for (index_t i = 0; i < nr; ++i) {
      detail::widen_padded(a.x.data + (r0 + i) * a.x.stride[0], s.in, kp, xt.data() + i * kp);
    }
    for (index_t o0 = 0; o0 < s.out; o0 += tile) {
      const index_t no = std::min(tile, s.out - o0);
      for (index_t j = 0; j < no; ++j) {
        detail::widen_padded(a.weight.data + (o0 + j) * s.in, s.in, kp, wt.data() + j * kp);
      }
      for (index_t i = 0; i < nr; ++i) {
        const C* xr = xt.data() + i * kp;
        Tout* yr = a.y.data + (r0 + i) * a.y.stride[0] + o0;
        const C* br = bias.data() + o0;
        index_t j = 0;
        for (; j + group <= no; j += group) {
          C sums[detail::kLinearOutGroup];
          dot_rows<detail::kLinearOutGroup>(xr, wt.data() + j * kp, kp, kp, sums);
          for (index_t q = 0; q < group; ++q) yr[j + q] = moss::narrow<Tout>(sums[q] + br[j + q]);
        }
        for (; j < no; ++j) {
          C sum;
          dot_rows<1>(xr, wt.data() + j * kp, kp, kp, &sum);
          yr[j] = moss::narrow<Tout>(sum + br[j]);
        }
      }
    }
  }
}

}  // namespace moss
