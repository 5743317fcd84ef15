// moss/layers/residual.hpp: the pre-norm residual block `h = h + mixer(norm(h))` and the
// RmsNorm policy.
//
// The residual stream is float32 (tokens, D). A block does not add its output to the stream
// itself: it leaves it `pending`, and the next norm (the next block's, or the model's final
// norm) adds it while normalising, one pass over the stream instead of two.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"
#include "moss/layers/block.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/params.hpp"
#include "moss/layers/routing.hpp"
#include "moss/ops/rms_norm.hpp"
#include "moss/ops/rms_norm_backward.hpp"

namespace moss {

/// The float32 residual stream of a batch and the last block's output not yet added to it.
template <StorageType T>
struct ResidualStream {
  TensorView<float, 2> stream;  // (tokens, D)
  Buffer<T> pending;            // (tokens, D) or empty
};

/// The gradient of the residual stream in the backward pass, the mirror of `ResidualStream`:
/// walking the blocks in reverse, `dstream` is the gradient of the stream as the last norm
/// visited saw it (after its add), and `dpending` the gradient of the block output that norm
/// added (the next block back's output, in T; empty when that norm had nothing pending).
template <StorageType T>
struct ResidualGrad {
  TensorView<float, 2> dstream;  // (tokens, D)
  Buffer<T> dpending;            // (tokens, D) or empty
  bool started = false;          // dstream holds a gradient (false before the first norm's backward)
  float loss_scale = 1.0f;       // the objective's weight on the blocks' own losses (aux, z): the
                                 // language model's dloss (1 / micro-batches), as on its cross-entropy
};

/// The model-level settings of a norm: its width and epsilon, and whether the residual stream is
/// float32 (Hugging Face's `layer_norm_epsilon`, `residual_in_fp32`).
struct NormSettings {
  index_t dim = 0;
  float eps = 1e-5f;
  bool residual_in_fp32 = true;
};

/// RMS normalisation with a float32 weight (docs/math.md §1). A norm policy of `Residual`.
struct RmsNorm {
  /// The weight (D), named as its checkpoint entry ("norm.weight", "norm_f.weight").
  struct Params {
    Tensor<float, 1> weight;
  };
  float eps = 1e-5f;
  bool residual_in_fp32 = true;
  index_t dim = 0;

  RmsNorm() = default;
  explicit RmsNorm(const NormSettings& s) : eps(s.eps), residual_in_fp32(s.residual_in_fp32), dim(s.dim) {}

  template <class Backend>
  Params init(const Backend& backend, const std::string& name) const {
    return {constant_tensor<float>(backend, Extents<1>{dim}, 1.0f, name)};
  }
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix, const std::string& name) const {
    return {load_tensor<float>(backend, src, prefix, name, Extents<1>{dim})};
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_tensor(backend, w, prefix, p.weight);
  }

  /// Adds `rs.pending` to the stream (if any), then writes norm(stream) · weight to `out`.
  template <class Backend, StorageType T>
  void apply(const Backend& backend, const Params& p, ResidualStream<T>& rs, TensorView<T, 2> out) const {
    RmsNormArgs<T, T> a;
    a.residual = rs.stream;
    if (rs.pending.data()) a.delta = ConstView<T, 2>(rs.pending.data(), rs.stream.shape, "pending");
    a.residual_in_fp32 = residual_in_fp32;
    a.weight = p.weight;
    a.eps = eps;
    a.out = out;
    rms_norm(backend, a);
    rs.pending.reset();
  }

  /// Backward of `apply`: `stream` is the stream as `apply` left it (saved by the caller: later
  /// blocks change it in place), `dout` the gradient of its output. Adds the norm's gradient to
  /// `rg.dstream` (the stream's gradient from later blocks flows through the add unchanged),
  /// leaves in `rg.dpending` the gradient of the output `apply` added (when `had_pending`), and
  /// writes (or, with `accumulate`, adds) the weight's gradient to `g`.
  template <class Backend, StorageType T>
  void backward(const Backend& backend, const Params& p, ConstView<float, 2> stream, ConstView<T, 2> dout,
                ResidualGrad<T>& rg, bool had_pending, Params& g, bool accumulate = false) const {
    RmsNormBackwardArgs<T, T> a;
    a.residual = stream;
    a.weight = p.weight;
    a.eps = eps;
    a.dout = dout;
    if (rg.started) a.dresidual_out = rg.dstream;
    a.dresidual = rg.dstream;
    rg.dpending.reset();
    if (had_pending) {
      rg.dpending = backend.template alloc<T>(stream.shape[0] * stream.shape[1]);
      a.ddelta = rg.dpending.template view<2>(stream.shape, "d pending");
    }
    a.dweight = g.weight.view();
    a.accumulate = accumulate;
    rms_norm_backward(backend, a);
    rg.started = true;
  }
};

/// A pre-norm residual block: `h = h + mixer(norm(h))`.
/// @tparam Norm the norm policy (`RmsNorm`).
/// @tparam Mixer the mixer or feed-forward layer (`Mamba<T>`, `RoutedMamba<...>`,
///         `MoeFeedForward<...>`, `FeedForward<...>`). Layers that route take a `RoutingReport*`
///         and add their statistics to it.
template <class Norm, class Mixer>
class Residual {
 public:
  using value_type = typename Mixer::value_type;
  using Cache = typename Mixer::Cache;
  struct Params {
    typename Norm::Params norm;
    typename Mixer::Params mixer;
  };

  /// The block's config section is the mixer's.
  using Config = typename Mixer::Config;
  static_assert(BlockConfig<Config>, "moss::Residual: the mixer's Config must have from_json and to_json");

  Residual(Norm norm, Mixer mixer) : norm_(std::move(norm)), mixer_(std::move(mixer)) {}
  /// The block of a model with shared sizes `dims`, norm settings `norm` and mixer config `config`.
  Residual(const NormSettings& norm, const MambaDims& dims, const Config& config) : norm_(norm), mixer_(dims, config) {}
  /// The block's name in a config's `block_pattern` (the mixer's).
  static constexpr std::string_view block_name = Mixer::block_name;
  /// The norm and add queue kernels only, so the block's step is capturable when the mixer's is.
  static constexpr bool capturable_step = CapturableStep<Mixer>;
  /// The mixer's config (with what its types imply filled in).
  decltype(auto) config() const { return mixer_.config(); }

  const Mixer& mixer() const { return mixer_; }
  /// The mixer, e.g. to change a router's runtime mode.
  Mixer& mixer() { return mixer_; }
  const Norm& norm() const { return norm_; }

  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    return {norm_.init(backend, "norm.weight"), mixer_.init(backend, rng, n_layers)};
  }
  /// Loads `prefix` + "norm.weight" and the mixer under `prefix` + "mixer.".
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix) const {
    return {norm_.load(backend, src, prefix, "norm.weight"), mixer_.load(backend, src, prefix + "mixer.")};
  }
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    norm_.save(backend, p.norm, w, prefix);
    mixer_.save(backend, p.mixer, w, prefix + "mixer.");
  }
  template <class Backend>
  Cache make_cache(const Backend& backend, index_t batch) const {
    return mixer_.make_cache(backend, batch);
  }

  /// Full sequence: leaves mixer(norm(h)) pending on the stream. `rs.stream` is (batch·L, D).
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ResidualStream<value_type>& rs, index_t batch, index_t L,
               Cache* cache, RoutingReport* report = nullptr) const {
    using T = value_type;
    const index_t D = rs.stream.shape[1];
    Buffer<T> normed = backend.template alloc<T>(batch * L * D);
    norm_.apply(backend, p.norm, rs, normed.template view<2>({batch * L, D}, "normed"));
    Buffer<T> out = backend.template alloc<T>(batch * L * D);
    const ConstView<T, 3> in(normed.data(), {batch, L, D}, "normed");
    const TensorView<T, 3> o = out.template view<3>({batch, L, D}, "mixer_out");
    if constexpr (requires { mixer_.forward(backend, p.mixer, in, o, cache, report); }) {
      mixer_.forward(backend, p.mixer, in, o, cache, report);
    } else {
      mixer_.forward(backend, p.mixer, in, o, cache);
    }
    rs.pending = std::move(out);
  }

  /// One token per sequence: `rs.stream` is (batch, D).
  template <class Backend>
  void step(const Backend& backend, const Params& p, ResidualStream<value_type>& rs, Cache& cache,
            RoutingReport* report = nullptr) const {
    using T = value_type;
    const index_t batch = rs.stream.shape[0], D = rs.stream.shape[1];
    Buffer<T> normed = backend.template alloc<T>(batch * D);
    norm_.apply(backend, p.norm, rs, normed.template view<2>({batch, D}, "normed"));
    Buffer<T> out = backend.template alloc<T>(batch * D);
    const ConstView<T, 2> in(normed.data(), {batch, D}, "normed");
    const TensorView<T, 2> o = out.template view<2>({batch, D}, "mixer_out");
    if constexpr (requires { mixer_.step(backend, p.mixer, in, o, cache, report); }) {
      mixer_.step(backend, p.mixer, in, o, cache, report);
    } else {
      mixer_.step(backend, p.mixer, in, o, cache);
    }
    rs.pending = std::move(out);
  }

  // ---- training (docs/training.md; the mixer must have forward_train and backward) ----

  /// Parameter gradients: the norm's (float32 already) and the mixer's.
  struct Grads {
    typename Norm::Params norm;
    typename Mixer::Grads mixer;
  };
  /// What `forward_train` keeps: the stream after the norm's add, the norm's output (the mixer's
  /// input) and the mixer's own.
  struct Saved {
    Buffer<float> stream;  // (tokens, D)
    Buffer<value_type> normed;
    typename Mixer::Saved mixer;
    bool had_pending = false;
    index_t batch = 0, L = 0;
  };

  /// Zeroed gradients for `p`.
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    return {typename Norm::Params{zeros_like<float>(backend, p.norm.weight)}, mixer_.make_grads(backend, p.mixer)};
  }

  /// Calls f(name, tensor) for every trainable tensor of `p` (Params or Grads), names relative to
  /// the block ("norm.weight", "mixer.in_proj.weight", ...).
  template <class P, class F>
  static void visit_params(P& p, F&& f) {
    f(std::string("norm.weight"), p.norm.weight);
    Mixer::visit_params(p.mixer, [&](const std::string& name, auto& t) { f("mixer." + name, t); });
  }

  /// Recomputes the mixer's derived weights after an optimiser step (a mixer without any: nothing).
  template <class Backend>
  void refresh_derived(const Backend& backend, Params& p) const {
    if constexpr (requires { mixer_.refresh_derived(backend, p.mixer); }) mixer_.refresh_derived(backend, p.mixer);
  }

  /// `forward` without a cache that keeps what `backward` needs in `saved`; a routed mixer's
  /// statistics (with its auxiliary losses' values) go to `report` when given.
  template <class Backend>
  void forward_train(const Backend& backend, const Params& p, ResidualStream<value_type>& rs, index_t batch, index_t L,
                     Saved& saved, ActivationPolicy policy = ActivationPolicy::keep,
                     RoutingReport* report = nullptr) const {
    using T = value_type;
    const index_t D = rs.stream.shape[1], tokens = batch * L;
    saved = Saved{};
    saved.batch = batch;
    saved.L = L;
    saved.had_pending = rs.pending.data() != nullptr;
    saved.normed = backend.template alloc<T>(tokens * D);
    norm_.apply(backend, p.norm, rs, saved.normed.template view<2>({tokens, D}, "normed"));
    saved.stream = backend.template alloc<float>(tokens * D);
    copy(backend, saved.stream.template view<2>({tokens, D}, "saved stream"), ConstView<float, 2>(rs.stream));
    Buffer<T> out = backend.template alloc<T>(tokens * D);
    const ConstView<T, 3> in(saved.normed.data(), {batch, L, D}, "normed");
    const TensorView<T, 3> o = out.template view<3>({batch, L, D}, "mixer_out");
    if constexpr (requires { mixer_.forward_train(backend, p.mixer, in, o, saved.mixer, policy, report); }) {
      mixer_.forward_train(backend, p.mixer, in, o, saved.mixer, policy, report);
    } else {
      mixer_.forward_train(backend, p.mixer, in, o, saved.mixer, policy);
    }
    rs.pending = std::move(out);
  }

  /// Backward of `forward_train`: `rg.dpending` holds the gradient of this block's output; on
  /// return `rg` holds the stream's gradient before the block and the gradient of the output the
  /// block's norm added (the previous block's). Writes (or adds) the block's gradients to `g`.
  template <class Backend>
  void backward(const Backend& backend, const Params& p, const Saved& saved, ResidualGrad<value_type>& rg, Grads& g,
                bool accumulate = false) const {
    using T = value_type;
    const index_t batch = saved.batch, L = saved.L, D = rg.dstream.shape[1], tokens = batch * L;
    MOSS_EXPECTS(rg.dpending.size() == tokens * D && rg.dstream.shape[0] == tokens, shape_error,
                 "Residual::backward: the block's output gradient holds ", rg.dpending.size(),
                 " values and the stream ", shape_string(rg.dstream.shape), " but the saved forward was (", batch, ", ",
                 L, ", ", D, ")");
    Buffer<T> dnormed = backend.template alloc<T>(tokens * D);
    const ConstView<T, 3> in(saved.normed.data(), {batch, L, D}, "normed");
    const ConstView<T, 3> dout(rg.dpending.data(), {batch, L, D}, "d mixer_out");
    const TensorView<T, 3> din = dnormed.template view<3>({batch, L, D}, "d normed");
    if constexpr (requires {
                    mixer_.backward(backend, p.mixer, in, saved.mixer, dout, din, g.mixer, accumulate, 1.0f);
                  }) {
      mixer_.backward(backend, p.mixer, in, saved.mixer, dout, din, g.mixer, accumulate, rg.loss_scale);  // routed
    } else {
      mixer_.backward(backend, p.mixer, in, saved.mixer, dout, din, g.mixer, accumulate);
    }
    norm_.backward(backend, p.norm, ConstView<float, 2>(saved.stream.data(), {tokens, D}, "saved stream"),
                   ConstView<T, 2>(dnormed.data(), {tokens, D}, "d normed"), rg, saved.had_pending, g.norm, accumulate);
  }

 private:
  Norm norm_;
  Mixer mixer_;
};

}  // namespace moss
