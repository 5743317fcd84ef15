// moss/layers/dispatch.hpp: the one path by which rows reach an expert stack (docs/math.md §2,
// "Dispatch and combine"), used by every routed block (MoE feed-forward, RoM projections) and
// by the dense ones (a dense block is one expert over one segment).
//
//   routed:  x (tokens, in) ─gather→ rows (rows, in), sorted by expert
//            rows ─grouped GEMM, one segment per expert→ y (rows, out)
//            y ─combine: out[t] = Σ_s (g[t,s] ·) y[row(t, s)], slot order→ out (tokens, out)
//   dense:   rows = x, the GEMM is one `linear` with expert 0's matrix written straight to
//            `out`, and there is nothing to combine.
// An expert kind's `apply` is written once against this interface: `gather`, then its GEMMs
// (`linear`) and activations on the rows, then `combine`. So a later grouped kernel that reads
// the expert offsets on the device can fuse the gather into its loads and the combine into its
// epilogue behind the same three calls.
//
// Training: `gather_backward`, `linear_backward` and `combine_backward` are the backward passes
// of the three calls (over the same plan; an expert kind's `backward` is written once against them).
// A resident decision's backward GEMMs read the offsets on the device too (moss's sync-free dX,
// dW and db kernels, whatever the forward's strategy), so the whole backward of such a block
// waits for nothing either.
//
// With the default strategy (SegmentGemms) the routed GEMMs need the per-expert row offsets on
// the host: the first `linear` of a plan reads them (on CUDA: the decision's one host
// synchronisation, queued after the gather) and the plan caches them for every later GEMM over
// it. A resident decision never reads them there: a decode step's (its few rows go through the
// grouped matrix-vector kernel), and every decision of a block with `Experts<N, SyncFreeGemm>`
// (moss's sync-free grouped GEMM), so such a block waits for nothing and can be captured in a
// CUDA graph. A user's own strategy (`RoutingDecision::grouped_gemm`) runs the GEMMs itself.
#pragma once

#include <cstdint>

#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/layers/routing.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear_backward.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/linear_backward.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute_backward.hpp"

namespace moss {

/// Which output columns the combine weight g multiplies: [begin, end); empty = none.
struct ColumnWeighting {
  index_t begin = 0, end = 0;
  /// Every column of a `width`-wide output.
  static ColumnWeighting all(index_t width) { return {0, width}; }
  /// No column (experts are summed unweighted).
  static ColumnWeighting none() { return {}; }
  bool any() const { return end > begin; }
};

/// How the rows of one call reach an expert stack: densely (every token is one row of the only
/// expert) or through a routing decision.
/// @tparam T storage type of the activations.
template <StorageType T>
class Dispatch {
 public:
  /// Every one of `tokens` tokens is a row of the single expert; no gather, no combine.
  static Dispatch dense(index_t tokens) {
    Dispatch d;
    d.tokens_ = tokens;
    return d;
  }
  /// The rows of `decision`'s plan (its gate weights the combine). The decision must outlive
  /// the dispatch; its plan caches the host offsets the GEMMs read.
  static Dispatch routed(RoutingDecision& decision) {
    Dispatch d;
    d.decision_ = &decision;
    d.tokens_ = decision.plan.tokens;
    return d;
  }

  bool is_dense() const { return decision_ == nullptr; }
  /// Tokens of the call.
  index_t tokens() const { return tokens_; }
  /// Rows the experts see: tokens (dense) or tokens·K (routed; rows past the kept ones unused).
  index_t rows() const { return is_dense() ? tokens_ : decision_->plan.rows(); }
  /// Experts the rows are spread over (1 when dense).
  index_t experts() const { return is_dense() ? 1 : decision_->plan.num_experts; }

  /// Rows the experts actually process: every token (dense), or the plan's kept pairs (which
  /// reads the plan's host offsets: on CUDA the decision's one synchronisation, cached).
  template <class Backend>
  index_t kept_rows(const Backend& backend) const {
    if (is_dense()) return tokens_;
    if (decision_->resident) return rows();  // dropless: every row is kept (the GEMM zeroes any other)
    return read_offsets(backend, decision_->plan).back();
  }

  /// The expert input rows (rows, in): `x` itself when dense, else x's rows gathered into
  /// `scratch` in expert order. The view lives as long as `x` and `scratch`.
  template <class Backend>
  ConstView<T, 2> gather(const Backend& backend, ConstView<T, 2> x, Buffer<T>& scratch) const {
    if (is_dense()) return x;
    const index_t in = x.shape[1], R = rows();
    scratch = backend.template alloc<T>(R * in);
    const PermutePlan& plan = decision_->plan;
    gather_rows(backend, GatherRowsArgs<T>{x, plan.row_pair_view(), plan.offsets_view(), plan.k,
                                           scratch.template view<2>({R, in}, "dispatched_x")});
    return ConstView<T, 2>(scratch.data(), {R, in}, "dispatched_x");
  }

  /// y = rows · W_eᵀ (+ b_e) over each expert's segment. `weight` is (X, out, in) with X the
  /// dispatch's expert count; `bias` (X, out) is optional. Rows past the kept ones are untouched.
  template <class Backend>
  void linear(const Backend& backend, ConstView<T, 2> rows, ConstView<T, 3> weight, ConstView<T, 2> bias,
              TensorView<T, 2> y) const {
    expect_experts("Dispatch::linear", weight);
    if (is_dense()) {
      moss::linear(backend, LinearArgs<T>{rows, only_expert(weight), only_expert(bias), y});
      return;
    }
    PermutePlan& plan = decision_->plan;
    GroupedLinearArgs<T> g;
    g.x = rows;
    g.weight = weight;
    g.bias = bias;
    g.offsets = plan.offsets_view();
    g.y = y;
    if (decision_->resident)
      g.resident_offsets = true;
    else
      g.host_offsets = read_offsets(backend, plan).data();
    if (decision_->grouped_gemm)  // a user's own strategy, bound to this backend and T when routing
      decision_->run_grouped_gemm(backend, g);
    else
      grouped_linear(backend, g);
  }

  /// Where an expert's last GEMM writes its (rows, width) output: `out` itself when dense (the
  /// combine is then nothing), else rows allocated in `scratch`.
  template <class Backend>
  TensorView<T, 2> output_rows(const Backend& backend, TensorView<T, 2> out, Buffer<T>& scratch) const {
    if (is_dense()) return out;
    const index_t width = out.shape[1], R = rows();
    scratch = backend.template alloc<T>(R * width);
    return scratch.template view<2>({R, width}, "expert_out");
  }

  /// out[t] = Σ_s y[row(t, s)], multiplied by g[t, s] in the columns `weighting` names, summed
  /// in slot order (deterministic); a dropped pair contributes 0. Nothing to do when dense
  /// (`y` is `out`); a dense dispatch has no g, so it refuses a weighting.
  template <class Backend>
  void combine(const Backend& backend, ConstView<T, 2> y, TensorView<T, 2> out, ColumnWeighting weighting) const {
    if (is_dense()) {
      MOSS_EXPECTS(!weighting.any(), config_error,
                   "Dispatch::combine: a dense dispatch has no router weight to multiply columns [", weighting.begin,
                   ", ", weighting.end, ") by");
      return;
    }
    CombineRowsArgs<T> c;
    c.y = y;
    c.pair_row = decision_->plan.pair_row_view();
    if (weighting.any()) {
      c.gate = decision_->gate_view();
      c.weight_begin = weighting.begin;
      c.weight_end = weighting.end;
    }
    c.out = out;
    combine_rows(backend, c);
  }

  // ---- backward (docs/training.md) ----

  /// Backward of `gather`: dx (tokens, in) = Σ over each token's kept rows of drows (written).
  /// Dense: `drows` is the gradient of x itself and is copied unless it already is `dx`.
  template <class Backend>
  void gather_backward(const Backend& backend, ConstView<T, 2> drows, TensorView<T, 2> dx) const {
    if (is_dense()) {
      if (drows.data != dx.data) copy(backend, dx, drows);
      return;
    }
    gather_rows_backward(backend, GatherRowsBackwardArgs<T>{drows, decision_->plan.pair_row_view(), dx});
  }
  /// Backward of `linear`: from dy (rows, out) the gradients of the rows (optional), of the
  /// (X, out, in) weight and of the (X, out) bias (optional), over the same segments.
  template <class Backend>
  void linear_backward(const Backend& backend, ConstView<T, 2> rows, ConstView<T, 3> weight, ConstView<T, 2> dy,
                       TensorView<T, 2> drows, TensorView<float, 3> dweight, TensorView<float, 2> dbias,
                       bool accumulate) const {
    expect_experts("Dispatch::linear_backward", weight);
    if (is_dense()) {
      moss::linear_backward(backend, LinearBackwardArgs<T>{.dy = dy,
                                                           .x = rows,
                                                           .weight = only_expert(weight),
                                                           .dx = drows,
                                                           .dweight = only_expert(dweight),
                                                           .dbias = only_expert(dbias),
                                                           .accumulate = accumulate});
      return;
    }
    PermutePlan& plan = decision_->plan;
    GroupedLinearBackwardArgs<T> g;
    g.dy = dy;
    g.x = rows;
    g.weight = weight;
    g.offsets = plan.offsets_view();
    if (decision_->resident)
      g.resident_offsets = true;  // moss's sync-free backward kernels, whatever the forward's strategy
    else
      g.host_offsets = read_offsets(backend, plan).data();
    g.dx = drows;
    g.dweight = dweight;
    g.dbias = dbias;
    g.accumulate = accumulate;
    grouped_linear_backward(backend, g);
  }
  /// Backward of `combine`: from dout (tokens, out) the gradient of the expert outputs dy (rows,
  /// out; dense: dout itself, nothing to do) and of the combine weights dgate (tokens, K,
  /// optional: needs the weighting). `y` is the forward's expert output.
  template <class Backend>
  void combine_backward(const Backend& backend, ConstView<T, 2> y, ConstView<T, 2> dout, TensorView<T, 2> dy,
                        TensorView<float, 2> dgate, ColumnWeighting weighting) const {
    if (is_dense()) {
      MOSS_EXPECTS(!present(dgate), config_error, "Dispatch::combine_backward: a dense dispatch has no gate");
      if (dy.data != dout.data) copy(backend, dy, dout);
      return;
    }
    CombineRowsBackwardArgs<T> c;
    c.dout = dout;
    c.y = y;
    c.pair_row = decision_->plan.pair_row_view();
    if (weighting.any()) {
      c.gate = decision_->gate_view();
      c.weight_begin = weighting.begin;
      c.weight_end = weighting.end;
    }
    c.dy = dy;
    c.dgate = dgate;
    combine_rows_backward(backend, c);
  }

 private:
  /// Checks that a stacked (experts, out, in) weight has the dispatch's expert count.
  template <class V>
  void expect_experts(const char* where, const V& weight) const {
    MOSS_EXPECTS(weight.shape[0] == experts(), shape_error, where, ": ", weight.name, " is ",
                 shape_string(weight.shape), " (experts, out, in) but the rows are dispatched to ", experts(),
                 " expert(s)");
  }
  /// A dense dispatch's one expert: a contiguous stacked (1, ...) view without its expert axis
  /// (an absent view stays absent).
  template <class V, std::size_t R>
  static TensorView<V, R - 1> only_expert(const TensorView<V, R>& v) {
    if (!present(v)) return {};
    Extents<R - 1> shape{};
    for (std::size_t i = 0; i + 1 < R; ++i) shape[i] = v.shape[i + 1];
    return TensorView<V, R - 1>(v.data, shape, v.name);
  }

  RoutingDecision* decision_ = nullptr;
  index_t tokens_ = 0;
};

}  // namespace moss
