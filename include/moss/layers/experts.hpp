// moss/layers/experts.hpp: expert kinds (docs/math.md §2, "Experts"). An expert kind is one
// struct that carries everything about itself, so a new kind lives in the user's own file
// (examples/05_custom_expert.cpp writes a squared-ReLU MLP):
//
//   struct MyExpert {
//     static constexpr std::string_view name = "my_expert";   // its config name
//     template <StorageType T> struct Params { ... };          // Tensors, (X, ...) stacked
//     template <StorageType T, class Backend>
//     static Params<T> init(const Backend&, Rng&, const ExpertShape&, const std::string& base);
//     template <StorageType T, class Backend, WeightSource Source>
//     static Params<T> load(const Backend&, const Source&, const std::string& prefix,
//                           const std::string& base, const ExpertShape&);
//     template <class Backend, StorageType T>
//     static void save(const Backend&, const Params<T>&, const ExpertShape&, SafetensorsWriter&,
//                      const std::string& prefix);
//     template <class Backend, StorageType T>
//     static void apply(const Backend&, const Params<T>&, const Dispatch<T>&, ConstView<T, 2> x,
//                       TensorView<T, 2> out, ColumnWeighting);
//   };
// `apply` takes the un-gathered input x (tokens, in), the dispatch (a routing plan, or dense)
// and writes the combined output (tokens, out); it is written against moss/layers/dispatch.hpp
// so a fused grouped kernel can replace the gather and combine behind it.
//
// A kind that trains also provides (docs/training.md):
//     template <class P, class F> static void visit(P& p, F&& f);   // f(name, tensor), in save order
//     template <class Backend, StorageType T>
//     static Params<compute_t<T>> zero_grads(const Backend&, const Params<T>&);
//     template <class Backend, StorageType T>
//     static void backward(const Backend&, const Params<T>&, const Dispatch<T>&, ConstView<T, 2> x,
//                          ConstView<T, 2> dout, TensorView<T, 2> dx, Params<compute_t<T>>& grads,
//                          TensorView<float, 2> dgate, ColumnWeighting, bool accumulate);
// `backward` recomputes the forward's rows and hidden activations from x and the dispatch (an
// expert stack keeps nothing between its forward and backward), then writes dx, the weights'
// gradients (written, or added when `accumulate`) and, when `dgate` is given, the gradient of
// the combine weights. LinearExpert, Mlp and GatedMlp train.
//
// Checkpoint names, `base` being the stack's name inside its block ("experts." for MoE
// feed-forward blocks, "" for a dense FeedForward, "in_proj." for a RoM projection):
//   LinearExpert   {base}weight (X, out, in), {base}bias (X, out)
//   Mlp<Act>       {base}wi.weight (X, F, D), {base}wo.weight (X, D, F)
//   GatedMlp<Act>  {base}gate.weight (X, F, D), {base}up.weight (X, F, D), {base}down.weight (X, D, F)
// A dense stack (`ExpertShape::stacked` false) stores the same names without the expert axis.
// Loading a stacked MLP also accepts Hugging Face's per-expert names ({base}expert_{i}.wi.weight,
// (F, D) each, as SwitchTransformersSparseMLP writes them) and stacks them (expert i → index i).
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/layers/dispatch.hpp"
#include "moss/layers/params.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation_backward.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/policy/activation.hpp"

namespace moss {

/// The sizes of one stack of experts of one kind.
struct ExpertShape {
  index_t experts = 1;     ///< X
  index_t in = 0;          ///< input width (D)
  index_t hidden = 0;      ///< hidden width F of MLP kinds (unused by LinearExpert)
  index_t out = 0;         ///< output width
  bool stacked = true;     ///< checkpoints carry the leading expert axis (false: a dense block's (out, in))
  bool bias = false;       ///< a bias per expert (LinearExpert)
  double out_scale = 1.0;  ///< init: the output side's stddev is 0.02 · out_scale (1/sqrt(n_layers))

  /// Throws `config_error` naming `where` for an impossible size.
  void validate(const char* where) const {
    MOSS_EXPECTS(experts >= 1 && in >= 1 && out >= 1 && hidden >= 0, config_error, where, ": experts ", experts,
                 ", in ", in, ", hidden ", hidden, ", out ", out, " must be at least 1 (hidden ≥ 0)");
    MOSS_EXPECTS(stacked || experts == 1, config_error, where, ": a dense (unstacked) stack has one expert, not ",
                 experts);
  }
};

namespace detail {

/// The checkpoint shape of one (X, rows, cols) stacked weight: itself, or (rows, cols) when dense.
inline std::vector<index_t> stored_shape(const ExpertShape& s, index_t rows, index_t cols) {
  return s.stacked ? std::vector<index_t>{s.experts, rows, cols} : std::vector<index_t>{rows, cols};
}

/// Reads the (X, rows, cols) weight `{prefix}{base}{leaf}` into a tensor named `{base}{leaf}`.
/// A stacked stack also accepts Hugging Face's per-expert tensors `{prefix}{base}expert_{i}.{leaf}`
/// (rows, cols) each; a dense one reads (rows, cols). A missing tensor names the canonical name.
template <class T, class Backend, WeightSource Source>
Tensor<T, 3> load_expert_weight(const Backend& backend, const Source& src, const std::string& prefix,
                                const std::string& base, const std::string& leaf, const ExpertShape& s, index_t rows,
                                index_t cols) {
  const std::string name = base + leaf, full = prefix + name;
  const Extents<3> shape{s.experts, rows, cols};
  auto per_expert = [&](index_t i) { return prefix + base + "expert_" + std::to_string(i) + "." + leaf; };
  if (!s.stacked || src.contains(full) || !src.contains(per_expert(0)))
    return Tensor<T, 3>(load_param<T>(backend, src, full, stored_shape(s, rows, cols)), shape, name);
  std::vector<T> all;
  all.reserve(static_cast<std::size_t>(s.experts * rows * cols));
  for (index_t i = 0; i < s.experts; ++i) {
    const std::vector<T> one = src.template read_as<T>(per_expert(i), {rows, cols});
    all.insert(all.end(), one.begin(), one.end());
  }
  return Tensor<T, 3>(upload(backend, all.data(), static_cast<index_t>(all.size())), shape, name);
}

/// Writes a stacked weight under `prefix + t.name()` in the stack's stored shape.
template <class Backend, class T>
void save_expert_weight(const Backend& backend, SafetensorsWriter& w, const std::string& prefix, const Tensor<T, 3>& t,
                        const ExpertShape& s) {
  save_param(backend, w, prefix + t.name(), t.buffer(), stored_shape(s, t.size(1), t.size(2)));
}

/// Checks that a stack's tensor has the (X, rows, cols) the shape says.
template <class T>
void expect_expert_weight(const char* where, const Tensor<T, 3>& t, const Extents<3>& shape) {
  MOSS_EXPECTS(t.shape() == shape, shape_error, where, ": ", t.name(), " is ", shape_string(t.shape()),
               " (experts, out, in) but expected ", shape_string(shape));
}

/// The backward of a stack's last GEMM and of the combine, shared by LinearExpert, Mlp and
/// GatedMlp: from that GEMM's input rows h (rows, F), recomputes the expert outputs when `dgate`
/// needs them, runs the combine's backward (routed) and the GEMM's (its weight gradient into
/// `g_out`, its bias' into `g_bias` when the stack has one), and returns the gradient of h (rows, F).
template <class Backend, StorageType T>
Buffer<T> hidden_gradient(const Backend& backend, const Dispatch<T>& d, ConstView<std::type_identity_t<T>, 2> h,
                          const Tensor<T, 3>& w_out, ConstView<std::type_identity_t<T>, 2> b_out,
                          ConstView<std::type_identity_t<T>, 2> dout, Tensor<float, 3>& g_out,
                          TensorView<float, 2> g_bias, TensorView<float, 2> dgate, ColumnWeighting weighting,
                          bool accumulate) {
  const index_t R = h.shape[0], F = h.shape[1], out = dout.shape[1];
  Buffer<T> ys, dys;
  ConstView<T, 2> y;
  if (present(dgate)) {
    ys = backend.template alloc<T>(R * out);
    d.linear(backend, h, w_out, b_out, ys.template view<2>({R, out}, "expert_out"));
    y = ConstView<T, 2>(ys.data(), {R, out}, "expert_out");
  }
  ConstView<T, 2> dy = dout;
  if (!d.is_dense()) {
    dys = backend.template alloc<T>(R * out);
    d.combine_backward(backend, y, dout, dys.template view<2>({R, out}, "d expert_out"), dgate, weighting);
    dy = ConstView<T, 2>(dys.data(), {R, out}, "d expert_out");
  }
  Buffer<T> dh = backend.template alloc<T>(R * F);
  d.linear_backward(backend, h, w_out, dy, dh.template view<2>({R, F}, "d hidden"), g_out.view(), g_bias, accumulate);
  return dh;
}

}  // namespace detail

/// An expert kind whose `apply` only queues work on the stream (`static constexpr bool
/// capturable = true;`): a routed block over it can be captured in a CUDA graph.
template <class Expert>
concept CapturableExpert = requires {
  requires Expert::capturable;
};

/// A linear expert W_i x (+ b_i): RoM's projections. Weight (X, out, in), bias (X, out).
struct LinearExpert {
  static constexpr std::string_view name = "linear";
  /// `apply` only queues work (through Dispatch), so routed blocks over it are capturable.
  static constexpr bool capturable = true;

  template <StorageType T>
  struct Params {
    Tensor<T, 3> weight;  // (X, out, in)
    Tensor<T, 2> bias;    // (X, out), optional
  };

  /// Weight N(0, (0.02 · out_scale)²), bias 0.
  template <StorageType T, class Backend>
  static Params<T> init(const Backend& backend, Rng& rng, const ExpertShape& s, const std::string& base) {
    Params<T> p;
    p.weight = normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.out, s.in}, 0.02 * s.out_scale, base + "weight");
    if (s.bias) p.bias = constant_tensor<T>(backend, Extents<2>{s.experts, s.out}, 0.0f, base + "bias");
    return p;
  }
  template <StorageType T, class Backend, WeightSource Source>
  static Params<T> load(const Backend& backend, const Source& src, const std::string& prefix, const std::string& base,
                        const ExpertShape& s) {
    Params<T> p;
    p.weight = detail::load_expert_weight<T>(backend, src, prefix, base, "weight", s, s.out, s.in);
    if (s.bias) {
      const std::vector<index_t> stored =
          s.stacked ? std::vector<index_t>{s.experts, s.out} : std::vector<index_t>{s.out};
      p.bias =
          Tensor<T, 2>(load_param<T>(backend, src, prefix + base + "bias", stored), {s.experts, s.out}, base + "bias");
    }
    return p;
  }
  template <class Backend, StorageType T>
  static void save(const Backend& backend, const Params<T>& p, const ExpertShape& s, SafetensorsWriter& w,
                   const std::string& prefix) {
    detail::save_expert_weight(backend, w, prefix, p.weight, s);
    if (p.bias.present())
      save_param(backend, w, prefix + p.bias.name(), p.bias.buffer(),
                 s.stacked ? p.bias.dims() : std::vector<index_t>{s.out});
  }
  /// out = Σ_s (g ·) W_{e_s} x_t (+ b_{e_s}).
  template <class Backend, StorageType T>
  static void apply(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                    TensorView<T, 2> out, ColumnWeighting weighting) {
    Buffer<T> xs, ys;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const TensorView<T, 2> y = d.output_rows(backend, out, ys);
    d.linear(backend, rows, p.weight, p.bias, y);
    d.combine(backend, y, out, weighting);
  }

  /// Calls f(name, tensor) for the weight and the bias when present (Params or their gradients).
  template <class P, class F>
  static void visit(P& p, F&& f) {
    if (p.weight.present()) f(p.weight.name(), p.weight);
    if (p.bias.present()) f(p.bias.name(), p.bias);
  }
  /// Zeroed float32 gradients shaped and named like `p` (absent tensors stay absent).
  template <class Backend, StorageType T>
  static Params<compute_t<T>> zero_grads(const Backend& backend, const Params<T>& p) {
    return {zeros_like<float>(backend, p.weight), zeros_like<float>(backend, p.bias)};
  }
  /// Backward of `apply` (see the top of this file): the combine, the grouped GEMM, the gather.
  template <class Backend, StorageType T>
  static void backward(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                       ConstView<T, 2> dout, TensorView<T, 2> dx, Params<compute_t<T>>& g, TensorView<float, 2> dgate,
                       ColumnWeighting weighting, bool accumulate) {
    if (x.shape[0] == 0)
      return no_token_gradients(
          backend, g, [](auto& set, auto&& f) { visit(set, f); }, accumulate);
    Buffer<T> xs;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const Buffer<T> drows = detail::hidden_gradient(backend, d, rows, p.weight, ConstView<T, 2>(p.bias), dout, g.weight,
                                                    g.bias.view(), dgate, weighting, accumulate);
    d.gather_backward(backend, ConstView<T, 2>(drows.data(), {d.rows(), x.shape[1]}, "d rows"), dx);
  }
};

/// An MLP expert wo_i · act(wi_i · x) of hidden width F (MoE-Mamba: ReLU, F = 3·D).
template <Activation Act>
struct Mlp {
  using activation = Act;
  static constexpr std::string_view name = "mlp";
  /// `apply` only queues work (through Dispatch), so routed blocks over it are capturable.
  static constexpr bool capturable = true;

  template <StorageType T>
  struct Params {
    Tensor<T, 3> wi;  // (X, F, D)
    Tensor<T, 3> wo;  // (X, D, F)
  };

  /// wi N(0, 0.02²), wo N(0, (0.02 · out_scale)²).
  template <StorageType T, class Backend>
  static Params<T> init(const Backend& backend, Rng& rng, const ExpertShape& s, const std::string& base) {
    Params<T> p;
    p.wi = normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.hidden, s.in}, 0.02, base + "wi.weight");
    p.wo =
        normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.out, s.hidden}, 0.02 * s.out_scale, base + "wo.weight");
    return p;
  }
  template <StorageType T, class Backend, WeightSource Source>
  static Params<T> load(const Backend& backend, const Source& src, const std::string& prefix, const std::string& base,
                        const ExpertShape& s) {
    return {detail::load_expert_weight<T>(backend, src, prefix, base, "wi.weight", s, s.hidden, s.in),
            detail::load_expert_weight<T>(backend, src, prefix, base, "wo.weight", s, s.out, s.hidden)};
  }
  template <class Backend, StorageType T>
  static void save(const Backend& backend, const Params<T>& p, const ExpertShape& s, SafetensorsWriter& w,
                   const std::string& prefix) {
    detail::save_expert_weight(backend, w, prefix, p.wi, s);
    detail::save_expert_weight(backend, w, prefix, p.wo, s);
  }
  /// out = Σ_s (g ·) wo_e · act(wi_e · x_t).
  template <class Backend, StorageType T>
  static void apply(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                    TensorView<T, 2> out, ColumnWeighting weighting) {
    Buffer<T> xs, hs, ys;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const index_t R = d.rows(), F = p.wi.size(1);
    hs = backend.template alloc<T>(R * F);
    const TensorView<T, 2> h = hs.template view<2>({R, F}, "hidden");
    d.linear(backend, rows, p.wi, {}, h);
    const index_t kept = d.kept_rows(backend);
    const TensorView<T, 2> hk(h.data, {kept, F}, "hidden");
    moss::activation<Act>(backend, ActivationArgs<T>{hk, {}, hk});
    const TensorView<T, 2> y = d.output_rows(backend, out, ys);
    d.linear(backend, h, p.wo, {}, y);
    d.combine(backend, y, out, weighting);
  }

  /// Calls f(name, tensor) for wi and wo (Params or their float32 gradients).
  template <class P, class F>
  static void visit(P& p, F&& f) {
    f(p.wi.name(), p.wi);
    f(p.wo.name(), p.wo);
  }
  /// Zeroed float32 gradients shaped and named like `p`.
  template <class Backend, StorageType T>
  static Params<compute_t<T>> zero_grads(const Backend& backend, const Params<T>& p) {
    return {zeros_like<float>(backend, p.wi), zeros_like<float>(backend, p.wo)};
  }
  /// Backward of `apply` (see the top of this file): wo, then act, then wi, then the gather.
  template <class Backend, StorageType T>
  static void backward(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                       ConstView<T, 2> dout, TensorView<T, 2> dx, Params<compute_t<T>>& g, TensorView<float, 2> dgate,
                       ColumnWeighting weighting, bool accumulate) {
    // A static_assert rather than a requires-clause, and Params<compute_t<T>> rather than
    // Params<float> in the signatures: clang 14 crashes on either in this class template.
    static_assert(DifferentiableActivation<Act>,
                  "moss expert backward: the activation has no derivative (specialise moss::ActivationGrad)");
    if (x.shape[0] == 0)
      return no_token_gradients(
          backend, g, [](auto& set, auto&& f) { visit(set, f); }, accumulate);
    // Recompute: rows, pre-activation, activation (and y, when dgate needs it).
    Buffer<T> xs, pre_s, hs, dpre_s, drows_s;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const index_t R = d.rows(), F = p.wi.size(1), in = x.shape[1];
    pre_s = backend.template alloc<T>(R * F);
    hs = backend.template alloc<T>(R * F);
    const TensorView<T, 2> pre = pre_s.template view<2>({R, F}, "pre_activation");
    const TensorView<T, 2> h = hs.template view<2>({R, F}, "hidden");
    d.linear(backend, rows, p.wi, {}, pre);
    const index_t kept = d.kept_rows(backend);
    moss::activation<Act>(backend, ActivationArgs<T>{ConstView<T, 2>(pre.data, {kept, F}, "pre_activation"),
                                                     {},
                                                     TensorView<T, 2>(h.data, {kept, F}, "hidden")});
    const Buffer<T> dhs =
        detail::hidden_gradient(backend, d, h, p.wo, {}, dout, g.wo, {}, dgate, weighting, accumulate);
    dpre_s = backend.template alloc<T>(R * F);
    activation_backward<Act>(backend,
                             ActivationBackwardArgs<T>{.x = ConstView<T, 2>(pre.data, {kept, F}, "pre_activation"),
                                                       .up = {},
                                                       .dout = ConstView<T, 2>(dhs.data(), {kept, F}, "d hidden"),
                                                       .dx = TensorView<T, 2>(dpre_s.data(), {kept, F}, "d pre"),
                                                       .dup = {}});
    TensorView<T, 2> drows = dx;
    if (!d.is_dense()) {
      drows_s = backend.template alloc<T>(R * in);
      drows = drows_s.template view<2>({R, in}, "d rows");
    }
    d.linear_backward(backend, rows, p.wi, ConstView<T, 2>(dpre_s.data(), {R, F}, "d pre"), drows, g.wi.view(), {},
                      accumulate);
    d.gather_backward(backend, ConstView<T, 2>(drows), dx);
  }
};

/// A gated MLP expert down_i · (act(gate_i · x) ⊙ (up_i · x)); `GatedMlp<Silu>` is SwiGLU.
template <Activation Act>
struct GatedMlp {
  using activation = Act;
  static constexpr std::string_view name = "gated_mlp";
  /// `apply` only queues work (through Dispatch), so routed blocks over it are capturable.
  static constexpr bool capturable = true;

  template <StorageType T>
  struct Params {
    Tensor<T, 3> gate;  // (X, F, D)
    Tensor<T, 3> up;    // (X, F, D)
    Tensor<T, 3> down;  // (X, D, F)
  };

  /// gate and up N(0, 0.02²), down N(0, (0.02 · out_scale)²).
  template <StorageType T, class Backend>
  static Params<T> init(const Backend& backend, Rng& rng, const ExpertShape& s, const std::string& base) {
    Params<T> p;
    p.gate = normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.hidden, s.in}, 0.02, base + "gate.weight");
    p.up = normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.hidden, s.in}, 0.02, base + "up.weight");
    p.down = normal_tensor<T>(backend, rng, Extents<3>{s.experts, s.out, s.hidden}, 0.02 * s.out_scale,
                              base + "down.weight");
    return p;
  }
  template <StorageType T, class Backend, WeightSource Source>
  static Params<T> load(const Backend& backend, const Source& src, const std::string& prefix, const std::string& base,
                        const ExpertShape& s) {
    return {detail::load_expert_weight<T>(backend, src, prefix, base, "gate.weight", s, s.hidden, s.in),
            detail::load_expert_weight<T>(backend, src, prefix, base, "up.weight", s, s.hidden, s.in),
            detail::load_expert_weight<T>(backend, src, prefix, base, "down.weight", s, s.out, s.hidden)};
  }
  template <class Backend, StorageType T>
  static void save(const Backend& backend, const Params<T>& p, const ExpertShape& s, SafetensorsWriter& w,
                   const std::string& prefix) {
    detail::save_expert_weight(backend, w, prefix, p.gate, s);
    detail::save_expert_weight(backend, w, prefix, p.up, s);
    detail::save_expert_weight(backend, w, prefix, p.down, s);
  }
  /// out = Σ_s (g ·) down_e · (act(gate_e · x_t) ⊙ up_e · x_t).
  template <class Backend, StorageType T>
  static void apply(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                    TensorView<T, 2> out, ColumnWeighting weighting) {
    Buffer<T> xs, hs, us, ys;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const index_t R = d.rows(), F = p.gate.size(1);
    hs = backend.template alloc<T>(R * F);
    us = backend.template alloc<T>(R * F);
    const TensorView<T, 2> h = hs.template view<2>({R, F}, "hidden");
    const TensorView<T, 2> u = us.template view<2>({R, F}, "up");
    d.linear(backend, rows, p.gate, {}, h);
    d.linear(backend, rows, p.up, {}, u);
    const index_t kept = d.kept_rows(backend);
    const TensorView<T, 2> hk(h.data, {kept, F}, "hidden");
    moss::activation<Act>(backend, ActivationArgs<T>{hk, ConstView<T, 2>(u.data, {kept, F}, "up"), hk});
    const TensorView<T, 2> y = d.output_rows(backend, out, ys);
    d.linear(backend, h, p.down, {}, y);
    d.combine(backend, y, out, weighting);
  }

  /// Calls f(name, tensor) for gate, up and down (Params or their float32 gradients).
  template <class P, class F>
  static void visit(P& p, F&& f) {
    f(p.gate.name(), p.gate);
    f(p.up.name(), p.up);
    f(p.down.name(), p.down);
  }
  /// Zeroed float32 gradients shaped and named like `p`.
  template <class Backend, StorageType T>
  static Params<compute_t<T>> zero_grads(const Backend& backend, const Params<T>& p) {
    return {zeros_like<float>(backend, p.gate), zeros_like<float>(backend, p.up), zeros_like<float>(backend, p.down)};
  }
  /// Backward of `apply` (see the top of this file): down, then act ⊙ up, then gate and up
  /// (their input gradients summed), then the gather.
  template <class Backend, StorageType T>
  static void backward(const Backend& backend, const Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x,
                       ConstView<T, 2> dout, TensorView<T, 2> dx, Params<compute_t<T>>& g, TensorView<float, 2> dgate,
                       ColumnWeighting weighting, bool accumulate) {
    // A static_assert rather than a requires-clause, and Params<compute_t<T>> rather than
    // Params<float> in the signatures: clang 14 crashes on either in this class template.
    static_assert(DifferentiableActivation<Act>,
                  "moss expert backward: the activation has no derivative (specialise moss::ActivationGrad)");
    if (x.shape[0] == 0)
      return no_token_gradients(
          backend, g, [](auto& set, auto&& f) { visit(set, f); }, accumulate);
    Buffer<T> xs, pre_s, us, hs, dpre_s, dus, drows_s, drows2_s;
    const ConstView<T, 2> rows = d.gather(backend, x, xs);
    const index_t R = d.rows(), F = p.gate.size(1), in = x.shape[1];
    pre_s = backend.template alloc<T>(R * F);
    us = backend.template alloc<T>(R * F);
    hs = backend.template alloc<T>(R * F);
    const TensorView<T, 2> pre = pre_s.template view<2>({R, F}, "pre_activation");
    const TensorView<T, 2> u = us.template view<2>({R, F}, "up");
    const TensorView<T, 2> h = hs.template view<2>({R, F}, "hidden");
    d.linear(backend, rows, p.gate, {}, pre);
    d.linear(backend, rows, p.up, {}, u);
    const index_t kept = d.kept_rows(backend);
    const ConstView<T, 2> pre_k(pre.data, {kept, F}, "pre_activation"), u_k(u.data, {kept, F}, "up");
    moss::activation<Act>(backend, ActivationArgs<T>{pre_k, u_k, TensorView<T, 2>(h.data, {kept, F}, "hidden")});
    const Buffer<T> dhs =
        detail::hidden_gradient(backend, d, h, p.down, {}, dout, g.down, {}, dgate, weighting, accumulate);
    dpre_s = backend.template alloc<T>(R * F);
    dus = backend.template alloc<T>(R * F);
    activation_backward<Act>(backend,
                             ActivationBackwardArgs<T>{.x = pre_k,
                                                       .up = u_k,
                                                       .dout = ConstView<T, 2>(dhs.data(), {kept, F}, "d hidden"),
                                                       .dx = TensorView<T, 2>(dpre_s.data(), {kept, F}, "d pre"),
                                                       .dup = TensorView<T, 2>(dus.data(), {kept, F}, "d up")});
    drows_s = backend.template alloc<T>(R * in);
    drows2_s = backend.template alloc<T>(R * in);
    const TensorView<T, 2> drows = drows_s.template view<2>({R, in}, "d rows");
    d.linear_backward(backend, rows, p.gate, ConstView<T, 2>(dpre_s.data(), {R, F}, "d pre"), drows, g.gate.view(), {},
                      accumulate);
    d.linear_backward(backend, rows, p.up, ConstView<T, 2>(dus.data(), {R, F}, "d up"),
                      drows2_s.template view<2>({R, in}, "d rows (up)"), g.up.view(), {}, accumulate);
    // The kept rows are the first `kept` (the gather reads only them).
    add_into(backend, ConstView<T, 1>(drows2_s.data(), {kept * in}, "d rows (up)"),
             TensorView<T, 1>(drows_s.data(), {kept * in}, "d rows"));
    d.gather_backward(backend, ConstView<T, 2>(drows), dx);
  }
};

/// What every expert-kind struct provides (see the top of this file), checked for storage type T.
template <class E, class T>
concept ExpertKind = StorageType<T> && requires {
  typename E::template Params<T>;
} && requires(const Host& h, Rng& rng, const ExpertShape& s, const std::string& name,
              const typename E::template Params<T>& p, const Dispatch<T>& d, ConstView<T, 2> x, TensorView<T, 2> out,
              SafetensorsWriter& w, const WeightMap& src) {
  { E::name } -> std::convertible_to<std::string_view>;
  { E::template init<T>(h, rng, s, name) } -> std::same_as<typename E::template Params<T>>;
  { E::template load<T>(h, src, name, name, s) } -> std::same_as<typename E::template Params<T>>;
  E::save(h, p, s, w, name);
  E::apply(h, p, d, x, out, ColumnWeighting{});
};

/// An expert kind of a feed-forward block (D → F → D): one whose stack has a hidden width.
/// Every `ExpertKind` qualifies; LinearExpert (no hidden layer) is excluded by name only
/// because a feed-forward block of linear experts would have no nonlinearity.
template <class E, class T>
concept FeedForwardExpert = ExpertKind<E, T> && !std::same_as<E, LinearExpert>;

}  // namespace moss
