// moss/ops/linear/backward_host.hpp: `linear_backward` on the CPU.
//
// Single-threaded, in compute_t<T> (float; double for T = double). Rows are taken in blocks
// widened once; each product is a sequence of row updates `acc[:] += a · row[:]` whose inner loop
// runs along a contiguous feature axis and vectorises without reassociating anything, so every
// element of a gradient is summed in one fixed order, independent of the blocking:
//   dW[o, :] and db[o]  over rows r = 0, 1, … (ascending),
//   dX[r, :]            over output features o = 0, 1, … (ascending).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/linear/math.hpp"
#include "moss/ops/linear_backward.hpp"

namespace moss {

namespace detail {

/// Rows of x and dy widened at once by `linear_backward`: the dW accumulator (out, in) is swept
/// once per block, the dX accumulator of a block is (block, in).
inline constexpr index_t kLinearBackwardRowBlock = 32;

/// `n` elements of `src` widened to `C` into `dst`.
template <class T, class C>
void linear_widen_row(const T* src, index_t n, C* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = moss::widen(src[i]);
}

/// dst = src (`accumulate` false) or dst += src, elementwise over `n` elements.
template <class C>
void linear_store_gradient(const C* src, index_t n, bool accumulate, C* dst) {
  if (accumulate) {
    for (index_t i = 0; i < n; ++i) dst[i] += src[i];
  } else {
    std::copy(src, src + n, dst);
  }
}

}  // namespace detail

/// The gradients of `linear` on the CPU: dX = dY · W (rounded once to T), dW = dYᵀ · X and
/// db = Σ_rows dY (written, or added when `a.accumulate`), each only when its view is present.
/// Zero rows give dW = 0 and db = 0 (unchanged when accumulating). Deterministic: see the file
/// comment for the order of every sum.
template <class T, class Tout>
void linear_backward(const Host&, const LinearBackwardArgs<T, Tout>& a) {
  validate(a, "linear_backward");
  using C = compute_t<T>;
  const index_t rows = a.x.shape[0];
  const index_t in = a.x.shape[1];
  const index_t out = a.weight.shape[0];
  const bool want_dw = present(a.dweight);
  const bool want_db = present(a.dbias);
  const bool want_dx = present(a.dx) && rows > 0;
  if (!want_dw && !want_db && !want_dx) return;

  const index_t block = std::max<index_t>(1, std::min(detail::kLinearBackwardRowBlock, rows));
  std::vector<C> dyb(static_cast<std::size_t>(block * out));  // (block, out), widened dy rows
  std::vector<C> xb;                                          // (block, in), widened x rows (dW)
  std::vector<C> dw;                                          // (out, in), the dW sum
  std::vector<C> db;                                          // (out), the db sum
  std::vector<C> w;                                           // (out, in), widened weight (dX)
  std::vector<C> dxb;                                         // (block, in), the dX sums of a block
  if (want_dw) {
    xb.resize(static_cast<std::size_t>(block * in));
    dw.assign(static_cast<std::size_t>(out * in), C(0));
  }
  if (want_db) db.assign(static_cast<std::size_t>(out), C(0));
  if (want_dx) {
    w.resize(static_cast<std::size_t>(out * in));
    detail::linear_widen_row(a.weight.data, out * in, w.data());
    dxb.resize(static_cast<std::size_t>(block * in));
  }

  for (index_t r0 = 0; r0 < rows; r0 += block) {
    const index_t nr = std::min(block, rows - r0);
    for (index_t i = 0; i < nr; ++i) {
      detail::linear_widen_row(a.dy.data + (r0 + i) * a.dy.stride[0], out, dyb.data() + i * out);
    }
    if (want_db) {
      for (index_t i = 0; i < nr; ++i) {
        const C* g = dyb.data() + i * out;
        for (index_t o = 0; o < out; ++o) db[o] += g[o];
      }
    }
    if (want_dw) {
      for (index_t i = 0; i < nr; ++i) {
        detail::linear_widen_row(a.x.data + (r0 + i) * a.x.stride[0], in, xb.data() + i * in);
      }
      // dW[o, :] += dy[r, o] · x[r, :] for the rows of the block in order.
      for (index_t o = 0; o < out; ++o) {
        C* acc = dw.data() + o * in;
        for (index_t i = 0; i < nr; ++i) {
          const C g = dyb[static_cast<std::size_t>(i * out + o)];
          const C* xr = xb.data() + i * in;
          for (index_t k = 0; k < in; ++k) acc[k] += g * xr[k];
        }
      }
    }
    if (want_dx) {
      // dX[r, :] = Σ_o dy[r, o] · W[o, :], o ascending.
      std::fill(dxb.begin(), dxb.begin() + nr * in, C(0));
      for (index_t o = 0; o < out; ++o) {
        const C* wr = w.data() + o * in;
        for (index_t i = 0; i < nr; ++i) {
          const C g = dyb[static_cast<std::size_t>(i * out + o)];
          C* acc = dxb.data() + i * in;
          for (index_t k = 0; k < in; ++k) acc[k] += g * wr[k];
        }
      }
      for (index_t i = 0; i < nr; ++i) {
        const C* acc = dxb.data() + i * in;
        T* dst = a.dx.data + (r0 + i) * a.dx.stride[0];
        for (index_t k = 0; k < in; ++k) dst[k] = moss::narrow<T>(acc[k]);
      }
    }
  }

  if (want_dw) detail::linear_store_gradient(dw.data(), out * in, a.accumulate, a.dweight.data);
  if (want_db) detail::linear_store_gradient(db.data(), out, a.accumulate, a.dbias.data);
}

}  // namespace moss
