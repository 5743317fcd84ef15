// moss/layers/experts.hpp: expert containers, X experts of one kind with weights stacked on a
// leading expert axis (REFERENCE.md §2, "Experts"), applied to the rows of a permuted buffer.
//
// Checkpoint names (moss's scheme; `prefix` is the layer's, e.g. "backbone.layers.1.mixer."):
//   LinearExpert   {prefix}{name}.weight (X, out, in), {prefix}{name}.bias (X, out)
//   Mlp<Act>       {prefix}experts.wi.weight (X, F, D), {prefix}experts.wo.weight (X, D, F)
//   GatedMlp<Act>  {prefix}experts.gate.weight (X, F, D), {prefix}experts.up.weight (X, F, D),
//                  {prefix}experts.down.weight (X, D, F)
// Loading also accepts Hugging Face's per-expert names ({prefix}experts.expert_{i}.wi.weight,
// (F, D) each, as SwitchTransformersSparseMLP writes them) and stacks them (expert i → index i).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/param_io.hpp"
#include "moss/core/safetensors.hpp"
#include "moss/core/tensor.hpp"
#include "moss/ops/activation.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/linear.hpp"
#include "moss/policy/experts.hpp"

namespace moss {

namespace detail {

/// Reads the stacked tensor `stacked` (X, rows, cols), or else the per-expert tensors
/// `per_expert(i)` (rows, cols) stacked; an `io_error` names the stacked name when neither exists.
template <class T, class Backend, class Name>
Buffer<T> load_stacked(const Backend& backend, const Checkpoint& ckpt, const std::string& stacked, Name per_expert,
                       index_t X, index_t rows, index_t cols) {
  if (ckpt.contains(stacked) || !ckpt.contains(per_expert(0)))
    return load_param<T>(backend, ckpt, stacked, {X, rows, cols});
  std::vector<T> all;
  all.reserve(static_cast<std::size_t>(X * rows * cols));
  for (index_t i = 0; i < X; ++i) {
    const std::vector<T> one = ckpt.read_as<T>(per_expert(i), {rows, cols});
    all.insert(all.end(), one.begin(), one.end());
  }
  return upload(backend, all.data(), static_cast<index_t>(all.size()));
}

}  // namespace detail

/// A stack of X linear experts W_i x (+ b_i), (X, out, in): RoM's projections.
template <StorageType T>
struct LinearExperts {
  struct Params {
    Buffer<T> weight;  // (X, out, in)
    Buffer<T> bias;    // (X, out), optional
  };
  index_t num_experts = 0, in = 0, out = 0;
  bool bias = false;

  /// Weights N(0, stddev²) per expert; biases 0.
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, double stddev) const {
    Params p;
    p.weight = upload_values<T>(backend, normal_values(rng, num_experts * out * in, stddev));
    if (bias) p.bias = upload_values<T>(backend, std::vector<float>(static_cast<std::size_t>(num_experts * out), 0.0f));
    return p;
  }
  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& name) const {
    Params p;
    p.weight = load_param<T>(backend, ckpt, name + ".weight", {num_experts, out, in});
    if (bias) p.bias = load_param<T>(backend, ckpt, name + ".bias", {num_experts, out});
    return p;
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& name) const {
    save_param(backend, w, name + ".weight", p.weight, {num_experts, out, in});
    if (bias) save_param(backend, w, name + ".bias", p.bias, {num_experts, out});
  }
  /// y[rows of expert e] = x[rows of e] · W_eᵀ (+ b_e) over the plan's segments.
  template <class Backend>
  void apply(const Backend& backend, const Params& p, const PermutePlan& plan, const std::vector<std::int32_t>& offsets,
             ConstView<T, 2> x, TensorView<T, 2> y) const {
    GroupedLinearArgs<T> g;
    g.x = x;
    g.weight = ConstView<T, 3>(p.weight.data(), {num_experts, out, in}, "experts.weight");
    if (bias) g.bias = ConstView<T, 2>(p.bias.data(), {num_experts, out}, "experts.bias");
    g.offsets = plan.offsets_view();
    g.host_offsets = offsets.data();
    g.y = y;
    grouped_linear(backend, g);
  }
};

/// A stack of X feed-forward experts of kind `Expert` (Mlp<Act> or GatedMlp<Act>), hidden width F.
template <FeedForwardExpert Expert, StorageType T>
struct FeedForwardExperts {
  static constexpr bool gated = Expert::kind == ExpertKind::gated_mlp;
  using Act = typename Expert::activation;
  struct Params {
    Buffer<T> wi;  // (X, F, D): Mlp's wi, GatedMlp's gate
    Buffer<T> up;  // (X, F, D): GatedMlp only
    Buffer<T> wo;  // (X, D, F): Mlp's wo, GatedMlp's down
  };
  index_t num_experts = 0, d_model = 0, d_ff = 0;

  /// The input-side weights N(0, 0.02²), the output side N(0, (0.02 / sqrt(n_layers))²).
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    const index_t X = num_experts, D = d_model, F = d_ff;
    Params p;
    p.wi = upload_values<T>(backend, normal_values(rng, X * F * D, 0.02));
    if constexpr (gated) p.up = upload_values<T>(backend, normal_values(rng, X * F * D, 0.02));
    p.wo = upload_values<T>(backend, normal_values(rng, X * D * F, 0.02 / std::sqrt(static_cast<double>(n_layers))));
    return p;
  }
  /// Loads `{prefix}experts.*` (stacked, or Hugging Face's per-expert names).
  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix) const {
    const index_t X = num_experts, D = d_model, F = d_ff;
    auto name = [&](const char* w) { return prefix + "experts." + w + ".weight"; };
    auto per = [&](const char* w) {
      return [&prefix, w](index_t i) { return prefix + "experts.expert_" + std::to_string(i) + "." + w + ".weight"; };
    };
    Params p;
    if constexpr (gated) {
      p.wi = detail::load_stacked<T>(backend, ckpt, name("gate"), per("gate"), X, F, D);
      p.up = detail::load_stacked<T>(backend, ckpt, name("up"), per("up"), X, F, D);
      p.wo = detail::load_stacked<T>(backend, ckpt, name("down"), per("down"), X, D, F);
    } else {
      p.wi = detail::load_stacked<T>(backend, ckpt, name("wi"), per("wi"), X, F, D);
      p.wo = detail::load_stacked<T>(backend, ckpt, name("wo"), per("wo"), X, D, F);
    }
    return p;
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    const index_t X = num_experts, D = d_model, F = d_ff;
    auto name = [&](const char* n) { return prefix + "experts." + n + ".weight"; };
    save_param(backend, w, name(gated ? "gate" : "wi"), p.wi, {X, F, D});
    if constexpr (gated) save_param(backend, w, name("up"), p.up, {X, F, D});
    save_param(backend, w, name(gated ? "down" : "wo"), p.wo, {X, D, F});
  }
  /// y = expert_e(x) for the rows of each expert e (x, y: (rows, D); rows past offsets[X] untouched).
  template <class Backend>
  void apply(const Backend& backend, const Params& p, const PermutePlan& plan, const std::vector<std::int32_t>& offsets,
             ConstView<T, 2> x, TensorView<T, 2> y) const {
    const index_t X = num_experts, D = d_model, F = d_ff;
    const index_t kept = offsets.back();
    if (kept == 0) return;
    Buffer<T> h = backend.template alloc<T>(kept * F);
    const ConstView<T, 2> xk(x.data, {kept, D}, x.stride, x.name);
    GroupedLinearArgs<T> g;
    g.x = xk;
    g.weight = ConstView<T, 3>(p.wi.data(), {X, F, D}, gated ? "experts.gate.weight" : "experts.wi.weight");
    g.offsets = plan.offsets_view();
    g.host_offsets = offsets.data();
    g.y = h.template view<2>({kept, F}, "hidden");
    grouped_linear(backend, g);
    ActivationArgs<T> act;
    act.x = ConstView<T, 2>(h.data(), {kept, F}, "hidden");
    act.out = h.template view<2>({kept, F}, "hidden");
    Buffer<T> u;
    if constexpr (gated) {
      u = backend.template alloc<T>(kept * F);
      GroupedLinearArgs<T> gu = g;
      gu.weight = ConstView<T, 3>(p.up.data(), {X, F, D}, "experts.up.weight");
      gu.y = u.template view<2>({kept, F}, "up");
      grouped_linear(backend, gu);
      act.up = ConstView<T, 2>(u.data(), {kept, F}, "up");
    }
    activation<Act>(backend, act);
    GroupedLinearArgs<T> go;
    go.x = ConstView<T, 2>(h.data(), {kept, F}, "hidden");
    go.weight = ConstView<T, 3>(p.wo.data(), {X, D, F}, gated ? "experts.down.weight" : "experts.wo.weight");
    go.offsets = plan.offsets_view();
    go.host_offsets = offsets.data();
    go.y = TensorView<T, 2>(y.data, {kept, D}, y.stride, y.name);
    grouped_linear(backend, go);
  }
};

}  // namespace moss
