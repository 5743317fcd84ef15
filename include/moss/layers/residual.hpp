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

namespace moss {

/// The float32 residual stream of a batch and the last block's output not yet added to it.
template <StorageType T>
struct ResidualStream {
  TensorView<float, 2> stream;  // (tokens, D)
  Buffer<T> pending;            // (tokens, D) or empty
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

 private:
  Norm norm_;
  Mixer mixer_;
};

}  // namespace moss
