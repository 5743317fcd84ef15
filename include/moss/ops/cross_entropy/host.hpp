// moss/ops/cross_entropy/host.hpp: `cross_entropy` on the CPU.
//
// Single-threaded, in compute_t<T> (float; double for T = double). W is widened once, zero-padded
// to a multiple of kLinearLanes per row; each chunk of rows is widened the same way. Per chunk:
//   1. logits of the counted rows with `dot_rows`, the same lane-interleaved sums as the host LM
//      head (`linear`), blocked like it (a block of rows against a tile of W);
//   2. per counted row: m = max, e_v = exp(l_v − m) in place, s = Σ_v e_v (v ascending),
//      loss_r = log s − (l_t − m), then dlogits_v = e_v · (dloss / N / s), minus dloss / N at t;
//   3. dH[r, :] = Σ_v dlogits[r, v] · W[v, :] (v ascending), rounded once to T;
//   4. dW[v, :] += dlogits[r, v] · H[r, :] for the counted rows in ascending order.
// Steps 3 and 4 are row updates along the contiguous d_model axis, so they vectorise without
// reassociating; their blocking does not change any sum's order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/cross_entropy.hpp"
#include "moss/ops/linear/math.hpp"

namespace moss {

namespace detail {

/// Rows of a chunk run together against one tile of W (logits, dH) or one sweep of dW.
inline constexpr index_t kCrossEntropyRowBlock = 16;
/// Elements of W in one tile of the logits loop (64 KiB of floats: stays in L2).
inline constexpr index_t kCrossEntropyTileElems = 16384;

/// The error of a target outside the vocabulary (the same message on every backend).
[[noreturn]] inline void raise_bad_cross_entropy_target(const char* where, index_t row, std::int64_t id, index_t vocab,
                                                        std::int64_t ignore_index) {
  raise<shape_error>(where, ": targets[", row, "] = ", id, " is outside the vocabulary [0, ", vocab,
                     ") and is not ignore_index (", ignore_index, ")");
}

}  // namespace detail

/// The mean cross-entropy loss of the LM head over the counted rows, and in the same pass
/// dhidden (written) and dweight (written, or added when `a.accumulate`), each only when its view
/// is present; see moss/ops/cross_entropy.hpp for the math. Every target is checked first: one
/// that is neither ignore_index nor in [0, vocab) throws `shape_error` naming the first bad
/// position, with nothing written. Returns the loss and the count.
template <class T>
CrossEntropyResult<compute_t<T>> cross_entropy(const Host&, const CrossEntropyArgs<T>& a) {
  validate(a, "cross_entropy");
  using C = compute_t<T>;
  const index_t tokens = a.hidden.shape[0];
  const index_t d = a.hidden.shape[1];
  const index_t vocab = a.weight.shape[0];

  index_t count = 0;
  for (index_t r = 0; r < tokens; ++r) {
    const std::int64_t t = a.targets(r);
    if (t == a.ignore_index) continue;
    if (t < 0 || t >= vocab) detail::raise_bad_cross_entropy_target("cross_entropy", r, t, vocab, a.ignore_index);
    ++count;
  }

  const bool want_dh = present(a.dhidden);
  const bool want_dw = present(a.dweight);
  std::vector<C> dw_sum;  // (vocab, d): the dW sum when it is added to dweight at the end
  C* dw = nullptr;        // where dW is summed
  if (want_dw) {
    if (a.accumulate) {
      dw_sum.assign(static_cast<std::size_t>(vocab * d), C(0));
      dw = dw_sum.data();
    } else {
      std::fill_n(a.dweight.data, vocab * d, C(0));
      dw = a.dweight.data;
    }
  }
  if (count == 0) {
    if (want_dh) {
      for (index_t r = 0; r < tokens; ++r) std::fill_n(a.dhidden.data + r * a.dhidden.stride[0], d, T{});
    }
    return {C(0), 0};
  }

  const index_t kp = ceil_div(d, kLinearLanes) * kLinearLanes;
  std::vector<C> w(static_cast<std::size_t>(vocab * kp));  // (vocab, kp), widened and zero-padded
  for (index_t v = 0; v < vocab; ++v) {
    const T* src = a.weight.data + v * d;
    C* dst = w.data() + v * kp;
    for (index_t k = 0; k < d; ++k) dst[k] = moss::widen(src[k]);
    std::fill(dst + d, dst + kp, C(0));
  }
  const index_t chunk = std::min(a.chunk_rows, tokens);
  const index_t group = 4;  // W rows per dot_rows call, as in `linear`
  const index_t tile = std::min(vocab, std::max(group, detail::kCrossEntropyTileElems / kp / group * group));
  std::vector<C> h(static_cast<std::size_t>(chunk * kp));          // (chunk, kp): the chunk's H
  std::vector<C> logits(static_cast<std::size_t>(chunk * vocab));  // (chunk, vocab): logits, then dlogits
  std::vector<index_t> rows;                                       // the chunk's counted rows (chunk-relative)
  std::vector<C> dh;                                               // (row block, d): dH sums
  if (want_dh) dh.resize(static_cast<std::size_t>(detail::kCrossEntropyRowBlock * d));
  rows.reserve(static_cast<std::size_t>(chunk));

  const C scale = a.dloss / C(count);
  C loss_sum = C(0);
  for (index_t c0 = 0; c0 < tokens; c0 += chunk) {
    const index_t nc = std::min(chunk, tokens - c0);
    rows.clear();
    for (index_t i = 0; i < nc; ++i) {
      if (a.targets(c0 + i) != a.ignore_index) rows.push_back(i);
    }
    const index_t nrows = static_cast<index_t>(rows.size());
    for (index_t i : rows) {
      const T* src = a.hidden.data + (c0 + i) * a.hidden.stride[0];
      C* dst = h.data() + i * kp;
      for (index_t k = 0; k < d; ++k) dst[k] = moss::widen(src[k]);
      std::fill(dst + d, dst + kp, C(0));
    }

    // 1. logits[i, :] = H_i · Wᵀ: a block of counted rows against one tile of W at a time.
    for (index_t b0 = 0; b0 < nrows; b0 += detail::kCrossEntropyRowBlock) {
      const index_t b1 = std::min(nrows, b0 + detail::kCrossEntropyRowBlock);
      for (index_t v0 = 0; v0 < vocab; v0 += tile) {
        const index_t nv = std::min(tile, vocab - v0);
        for (index_t q = b0; q < b1; ++q) {
          const index_t i = rows[static_cast<std::size_t>(q)];
          const C* hr = h.data() + i * kp;
          C* lr = logits.data() + i * vocab + v0;
          const C* wt = w.data() + v0 * kp;
          index_t j = 0;
          for (; j + group <= nv; j += group) dot_rows<4>(hr, wt + j * kp, kp, kp, lr + j);
          for (; j < nv; ++j) dot_rows<1>(hr, wt + j * kp, kp, kp, lr + j);
        }
      }
    }

    // 2. the loss and dlogits, row by row in ascending order.
    for (index_t i : rows) {
      C* lr = logits.data() + i * vocab;
      const index_t t = static_cast<index_t>(a.targets(c0 + i));
      C m = -std::numeric_limits<C>::infinity();
      for (index_t v = 0; v < vocab; ++v) m = lr[v] > m ? lr[v] : m;
      const C lt = lr[t];
      C s = C(0);
      for (index_t v = 0; v < vocab; ++v) {
        lr[v] = std::exp(lr[v] - m);
        s += lr[v];
      }
      loss_sum += std::log(s) - (lt - m);
      const C f = scale / s;
      for (index_t v = 0; v < vocab; ++v) lr[v] *= f;
      lr[t] -= scale;
    }

    // 3. dH[i, :] = Σ_v dlogits[i, v] · W[v, :], v ascending; ignored rows get zero.
    if (want_dh) {
      for (index_t i = 0; i < nc; ++i) {
        if (a.targets(c0 + i) == a.ignore_index) std::fill_n(a.dhidden.data + (c0 + i) * a.dhidden.stride[0], d, T{});
      }
      for (index_t b0 = 0; b0 < nrows; b0 += detail::kCrossEntropyRowBlock) {
        const index_t nb = std::min(nrows - b0, detail::kCrossEntropyRowBlock);
        std::fill(dh.begin(), dh.begin() + nb * d, C(0));
        for (index_t v = 0; v < vocab; ++v) {
          const C* wr = w.data() + v * kp;
          for (index_t q = 0; q < nb; ++q) {
            const C g = logits[static_cast<std::size_t>(rows[static_cast<std::size_t>(b0 + q)] * vocab + v)];
            C* acc = dh.data() + q * d;
            for (index_t k = 0; k < d; ++k) acc[k] += g * wr[k];
          }
        }
        for (index_t q = 0; q < nb; ++q) {
          const index_t r = c0 + rows[static_cast<std::size_t>(b0 + q)];
          const C* acc = dh.data() + q * d;
          T* dst = a.dhidden.data + r * a.dhidden.stride[0];
          for (index_t k = 0; k < d; ++k) dst[k] = moss::narrow<T>(acc[k]);
        }
      }
    }

    // 4. dW[v, :] += dlogits[i, v] · H[i, :], counted rows ascending (a block of rows per sweep).
    if (want_dw) {
      for (index_t b0 = 0; b0 < nrows; b0 += detail::kCrossEntropyRowBlock) {
        const index_t b1 = std::min(nrows, b0 + detail::kCrossEntropyRowBlock);
        for (index_t v = 0; v < vocab; ++v) {
          C* acc = dw + v * d;
          for (index_t q = b0; q < b1; ++q) {
            const index_t i = rows[static_cast<std::size_t>(q)];
            const C g = logits[static_cast<std::size_t>(i * vocab + v)];
            const C* hr = h.data() + i * kp;
            for (index_t k = 0; k < d; ++k) acc[k] += g * hr[k];
          }
        }
      }
    }
  }

  if (want_dw && a.accumulate) {
    for (index_t i = 0; i < vocab * d; ++i) a.dweight.data[i] += dw_sum[static_cast<std::size_t>(i)];
  }
  return {loss_sum / C(count), count};
}

/// `cross_entropy` with its targets in the backend's memory and its results left there (the
/// form a captured training step uses; see moss/ops/cross_entropy/cuda.cuh). A target that is
/// neither ignore_index nor in [0, vocab) does not throw: its row counts as ignored and lowers
/// `out.bad_row` (when given) to its index, as on CUDA, so the caller reports it when it reads
/// the results. On the host the targets are host memory and the results are written at once.
template <class T>
void cross_entropy_resident(const Host& host, const CrossEntropyArgs<T>& a, const CrossEntropyOutputs& out) {
  validate(a, "cross_entropy_resident");
  validate(out, "cross_entropy_resident");
  const index_t tokens = a.hidden.shape[0], vocab = a.weight.shape[0];
  std::vector<std::int64_t> targets(static_cast<std::size_t>(tokens));
  for (index_t r = 0; r < tokens; ++r) {
    const std::int64_t t = a.targets(r);
    const bool bad = t != a.ignore_index && (t < 0 || t >= vocab);
    if (bad && out.bad_row && static_cast<unsigned long long>(r) < *out.bad_row)
      *out.bad_row = static_cast<unsigned long long>(r);
    targets[static_cast<std::size_t>(r)] = bad ? a.ignore_index : t;
  }
  CrossEntropyArgs<T> b = a;
  b.targets = ConstView<std::int64_t, 1>(targets.data(), {tokens}, a.targets.name);
  const auto r = cross_entropy(host, b);
  *out.loss = static_cast<float>(r.loss);
  *out.count = r.count;
}

}  // namespace moss
