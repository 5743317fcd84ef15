// moss/layers/mamba.hpp: the Mamba-1 mixer (REFERENCE.md §1), prefill and one-token decode.
//
// Dataflow of `forward` (tokens = batch · L; every arrow is one op, no transpose copies):
//   x (tokens, D) ─in_proj→ xz (tokens, 2·ED) ─┬─ u = xz[:, :ED] ─conv1d+SiLU→ v (tokens, ED)
//                                              └─ z = xz[:, ED:]  (the gate, read by the scan)
//   v ─x_proj→ x_dbl (tokens, R+2N) = [dt_low | B | C];  dt_low ─dt_proj→ delta (tokens, ED)
//   scan(u=v, delta, A, B, C, D, z, delta_bias, softplus) → y (tokens, ED) ─out_proj→ out (tokens, D)
// The scan and the conv read (batch, ED, L) views with unit stride along ED ("channel-last").
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/param_io.hpp"
#include "moss/core/tensor.hpp"
#include "moss/models/mamba_config.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/selective_scan.hpp"

namespace moss {

/// Sizes of one Mamba mixer, derived from a MambaConfig.
struct MambaDims {
  index_t d_model, d_inner, d_state, d_conv, dt_rank;
  bool use_bias, use_conv_bias;
  static MambaDims from(const MambaConfig& c) {
    return {c.d_model, c.d_inner(), c.d_state, c.d_conv, c.resolved_dt_rank(), c.use_bias, c.use_conv_bias};
  }
  index_t x_proj_out() const { return dt_rank + 2 * d_state; }
};

/// The weights every Mamba-style mixer shares: conv1d, x_proj, dt_proj, A and D (RoM keeps one
/// copy of these while its projections become experts).
/// @tparam T storage type of the conv and the projections; A, D and dt bias stay float32.
template <StorageType T>
struct MambaCoreParams {
  Buffer<T> conv_weight;  // (ED, W)
  Buffer<T> conv_bias;    // (ED) when use_conv_bias
  Buffer<T> x_proj;       // (R + 2N, ED)
  Buffer<T> dt_proj;      // (ED, R)
  Buffer<float> dt_bias;  // (ED)
  Buffer<float> A;        // (ED, N) = −exp(A_log), derived once at load time
  Buffer<float> A_log;    // (ED, N) as stored, kept for saving and training
  Buffer<float> D;        // (ED)
};

/// Owned weights of one Mamba mixer on one backend (names as in Hugging Face checkpoints).
template <StorageType T>
struct MambaParams : MambaCoreParams<T> {
  Buffer<T> in_proj;        // (2·ED, D)
  Buffer<T> in_proj_bias;   // (2·ED) when use_bias
  Buffer<T> out_proj;       // (D, ED)
  Buffer<T> out_proj_bias;  // (D) when use_bias
};

/// Decode state of one Mamba mixer for a batch of sequences (REFERENCE.md §1, "Decode").
template <StorageType T>
struct MambaCache {
  Buffer<T> conv_state;     // (batch, ED, W − 1): the last W − 1 conv inputs, oldest first
  Buffer<float> ssm_state;  // (batch, ED, N)
  index_t batch = 0;
};

namespace detail {

template <class U>
ConstView<U, 2> weight2(const Buffer<U>& b, index_t rows, index_t cols, const char* name) {
  return ConstView<U, 2>(b.data(), {rows, cols}, name);
}
template <class U>
ConstView<U, 1> bias1(const Buffer<U>& b, index_t n, const char* name) {
  if (!b.data()) return {};
  return ConstView<U, 1>(b.data(), {n}, name);
}

}  // namespace detail

/// The part of a Mamba mixer between its input and output projections:
///   u, z (the in_proj output's halves) → conv1d + SiLU → x_proj → dt_proj → selective scan,
/// gated by z, → y (tokens, ED). `Mamba` puts dense projections around it; `RoutedMamba`
/// routed ones. The decode state is the same for both.
template <StorageType T>
class MambaCore {
 public:
  using Params = MambaCoreParams<T>;
  using Cache = MambaCache<T>;

  explicit MambaCore(const MambaDims& dims) : dims_(dims) {}
  const MambaDims& dims() const { return dims_; }

  /// Random weights as Hugging Face's MambaPreTrainedModel draws them (see `Mamba::init`); the
  /// conv draws come first, then x_proj, dt_proj and dt bias.
  template <class Backend>
  void init(const Backend& backend, Rng& rng, Params& p) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    const double conv_bound = 1.0 / std::sqrt(static_cast<double>(W));
    p.conv_weight = upload_values<T>(backend, uniform_values(rng, ED * W, -conv_bound, conv_bound));
    if (dims_.use_conv_bias) p.conv_bias = upload_values<T>(backend, uniform_values(rng, ED, -conv_bound, conv_bound));
    p.x_proj = upload_values<T>(backend, normal_values(rng, dims_.x_proj_out() * ED, 0.02));
    const double dt_std = 1.0 / std::sqrt(static_cast<double>(R));
    p.dt_proj = upload_values<T>(backend, uniform_values(rng, ED * R, -dt_std, dt_std));
    std::vector<float> dt_bias(ED), a_log(ED * N), d(ED, 1.0f);
    for (auto& b : dt_bias) {
      const double dt = std::max(1e-4, std::exp(rng.uniform(std::log(1e-3), std::log(1e-1))));
      b = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹(dt)
    }
    for (index_t c = 0; c < ED; ++c)
      for (index_t n = 0; n < N; ++n) a_log[c * N + n] = static_cast<float>(std::log(static_cast<double>(n + 1)));
    p.dt_bias = upload_values<float>(backend, dt_bias);
    set_a_log(backend, p, a_log);
    p.D = upload_values<float>(backend, d);
  }

  /// Loads conv1d, x_proj, dt_proj, A_log and D under `prefix` (Hugging Face names).
  template <class Backend>
  void load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix, Params& p) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    p.conv_weight = load_param<T>(backend, ckpt, prefix + "conv1d.weight", {ED, 1, W});
    if (dims_.use_conv_bias) p.conv_bias = load_param<T>(backend, ckpt, prefix + "conv1d.bias", {ED});
    p.x_proj = load_param<T>(backend, ckpt, prefix + "x_proj.weight", {dims_.x_proj_out(), ED});
    p.dt_proj = load_param<T>(backend, ckpt, prefix + "dt_proj.weight", {ED, R});
    p.dt_bias = load_param<float>(backend, ckpt, prefix + "dt_proj.bias", {ED});
    set_a_log(backend, p, ckpt.read_as<float>(prefix + "A_log", {ED, N}));
    p.D = load_param<float>(backend, ckpt, prefix + "D", {ED});
  }

  /// Adds the shared weights to `w` under `prefix`.
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    save_param(backend, w, prefix + "conv1d.weight", p.conv_weight, {ED, 1, W});
    if (dims_.use_conv_bias) save_param(backend, w, prefix + "conv1d.bias", p.conv_bias, {ED});
    save_param(backend, w, prefix + "x_proj.weight", p.x_proj, {dims_.x_proj_out(), ED});
    save_param(backend, w, prefix + "dt_proj.weight", p.dt_proj, {ED, R});
    save_param(backend, w, prefix + "dt_proj.bias", p.dt_bias, {ED});
    save_param(backend, w, prefix + "A_log", p.A_log, {ED, N});
    save_param(backend, w, prefix + "D", p.D, {ED});
  }

  /// A zeroed decode cache for `batch` sequences on `backend`.
  template <class Backend>
  Cache make_cache(const Backend& backend, index_t batch) const {
    Cache c;
    c.batch = batch;
    c.conv_state = backend.template alloc<T>(batch * dims_.d_inner * (dims_.d_conv - 1));
    c.ssm_state = backend.template alloc<float>(batch * dims_.d_inner * dims_.d_state);
    fill_zero(backend, c.conv_state);
    fill_zero(backend, c.ssm_state);
    return c;
  }

  /// Checks that `cache` (when given) fits `batch` sequences of this layer.
  void check_cache(const char* where, const Cache* cache, index_t batch) const {
    if (!cache) return;
    MOSS_EXPECTS(cache->batch == batch, shape_error, where, ": the cache holds ", cache->batch,
                 " sequences but the input has batch ", batch);
    MOSS_EXPECTS(cache->ssm_state.size() == batch * dims_.d_inner * dims_.d_state &&
                     cache->conv_state.size() == batch * dims_.d_inner * (dims_.d_conv - 1),
                 shape_error, where, ": the cache was made for other layer sizes");
  }

  /// Full sequence: y (batch·L, ED) from the in_proj output `xz` (batch·L, 2·ED), u = its first
  /// ED columns and z the rest. With a cache, the conv and SSM start from its states and the
  /// cache is left holding the final states.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, const T* xz, index_t batch, index_t L, T* y,
               Cache* cache) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    const index_t tokens = batch * L;
    const index_t XP = dims_.x_proj_out();
    using detail::bias1;
    using detail::weight2;

    // u and z are column halves of xz, read as (batch, ED, L) channel-last views.
    const ConstView<T, 3> u(xz, {batch, ED, L}, {L * 2 * ED, 1, 2 * ED}, "u");
    const ConstView<T, 3> z(xz + ED, {batch, ED, L}, {L * 2 * ED, 1, 2 * ED}, "z");
    Buffer<T> v = backend.template alloc<T>(tokens * ED);  // (batch, L, ED)
    const TensorView<T, 3> v_cl(v.data(), {batch, ED, L}, {L * ED, 1, ED}, "conv_out");
    Buffer<T> conv_final;
    CausalConv1dArgs<T> conv{
        u, weight2(p.conv_weight, ED, W, "conv1d.weight"), bias1(p.conv_bias, ED, "conv1d.bias"), true, {}, v_cl, {}};
    if (cache) {
      conv_final = backend.template alloc<T>(batch * ED * (W - 1));
      conv.initial_state = ConstView<T, 3>(cache->conv_state.data(), {batch, ED, W - 1}, "conv_state");
      conv.final_state = TensorView<T, 3>(conv_final.data(), {batch, ED, W - 1}, "conv_state");
    }
    causal_conv1d(backend, conv);

    Buffer<T> x_dbl = backend.template alloc<T>(tokens * XP);  // (tokens, R + 2N) = [dt_low | B | C]
    linear(backend, LinearArgs<T>{ConstView<T, 2>(v.data(), {tokens, ED}, "conv_out"),
                                  weight2(p.x_proj, XP, ED, "x_proj.weight"),
                                  {},
                                  x_dbl.template view<2>({tokens, XP}, "x_dbl")});
    Buffer<T> delta = backend.template alloc<T>(tokens * ED);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(x_dbl.data(), {tokens, R}, {XP, 1}, "dt_low"),
                                  weight2(p.dt_proj, ED, R, "dt_proj.weight"),
                                  {},
                                  delta.template view<2>({tokens, ED}, "delta")});

    Buffer<float> ssm_final;
    SelectiveScanArgs<T> scan;
    scan.u = v_cl;
    scan.delta = ConstView<T, 3>(delta.data(), {batch, ED, L}, {L * ED, 1, ED}, "delta");
    scan.A = ConstView<float, 2>(p.A.data(), {ED, N}, "A");
    scan.B = ConstView<T, 4>(x_dbl.data() + R, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "B");
    scan.C = ConstView<T, 4>(x_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "C");
    scan.D = ConstView<float, 1>(p.D.data(), {ED}, "D");
    scan.z = z;
    scan.delta_bias = ConstView<float, 1>(p.dt_bias.data(), {ED}, "dt_proj.bias");
    scan.delta_softplus = true;
    scan.out = TensorView<T, 3>(y, {batch, ED, L}, {L * ED, 1, ED}, "y");
    if (cache) {
      ssm_final = backend.template alloc<float>(batch * ED * N);
      scan.initial_state = ConstView<float, 3>(cache->ssm_state.data(), {batch, ED, N}, "ssm_state");
      scan.final_state = TensorView<float, 3>(ssm_final.data(), {batch, ED, N}, "ssm_state");
    }
    selective_scan(backend, scan);
    if (cache) {
      cache->conv_state = std::move(conv_final);
      cache->ssm_state = std::move(ssm_final);
    }
  }

  /// One token per sequence: y (batch, ED) from `xz` (batch, 2·ED), updating the cache in place.
  template <class Backend>
  void step(const Backend& backend, const Params& p, const T* xz, index_t batch, T* y, Cache& cache) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    const index_t XP = dims_.x_proj_out();
    using detail::bias1;
    using detail::weight2;
    Buffer<T> v = backend.template alloc<T>(batch * ED);
    causal_conv1d_step(
        backend, CausalConv1dStepArgs<T>{
                     TensorView<T, 3>(cache.conv_state.data(), {batch, ED, W - 1}, "conv_state"),
                     ConstView<T, 2>(xz, {batch, ED}, {2 * ED, 1}, "u"), weight2(p.conv_weight, ED, W, "conv1d.weight"),
                     bias1(p.conv_bias, ED, "conv1d.bias"), true, v.template view<2>({batch, ED}, "conv_out")});
    Buffer<T> x_dbl = backend.template alloc<T>(batch * XP);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(v.data(), {batch, ED}, "conv_out"),
                                  weight2(p.x_proj, XP, ED, "x_proj.weight"),
                                  {},
                                  x_dbl.template view<2>({batch, XP}, "x_dbl")});
    Buffer<T> delta = backend.template alloc<T>(batch * ED);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(x_dbl.data(), {batch, R}, {XP, 1}, "dt_low"),
                                  weight2(p.dt_proj, ED, R, "dt_proj.weight"),
                                  {},
                                  delta.template view<2>({batch, ED}, "delta")});
    SelectiveScanStepArgs<T> s;
    s.state = TensorView<float, 3>(cache.ssm_state.data(), {batch, ED, N}, "ssm_state");
    s.u = ConstView<T, 2>(v.data(), {batch, ED}, "conv_out");
    s.delta = ConstView<T, 2>(delta.data(), {batch, ED}, "delta");
    s.A = ConstView<float, 2>(p.A.data(), {ED, N}, "A");
    s.B = ConstView<T, 3>(x_dbl.data() + R, {batch, 1, N}, {XP, 0, 1}, "B");
    s.C = ConstView<T, 3>(x_dbl.data() + R + N, {batch, 1, N}, {XP, 0, 1}, "C");
    s.D = ConstView<float, 1>(p.D.data(), {ED}, "D");
    s.z = ConstView<T, 2>(xz + ED, {batch, ED}, {2 * ED, 1}, "z");
    s.delta_bias = ConstView<float, 1>(p.dt_bias.data(), {ED}, "dt_proj.bias");
    s.delta_softplus = true;
    s.out = TensorView<T, 2>(y, {batch, ED}, "y");
    selective_scan_step(backend, s);
  }

 private:
  template <class Backend>
  static void set_a_log(const Backend& backend, Params& p, const std::vector<float>& a_log) {
    std::vector<float> a(a_log.size());
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = -std::exp(a_log[i]);
    p.A_log = upload_values<float>(backend, a_log);
    p.A = upload_values<float>(backend, a);
  }
  MambaDims dims_;
};

/// The Mamba-1 mixer. Sizes are runtime values; the storage type is the template parameter.
/// @tparam T storage type of weights and activations (float, f16 or bf16).
template <StorageType T>
class Mamba {
 public:
  using value_type = T;
  using Params = MambaParams<T>;
  using Cache = MambaCache<T>;
  /// The block's name in a moss config's `block_pattern`.
  static constexpr std::string_view block_name = "mamba";

  explicit Mamba(const MambaDims& dims) : dims_(dims), core_(dims) {}
  /// The mixer of a model with config `c`.
  static Mamba from(const MambaConfig& c) { return Mamba(MambaDims::from(c)); }
  const MambaDims& dims() const { return dims_; }

  /// Random weights initialised as Hugging Face's MambaPreTrainedModel does: projections
  /// N(0, 0.02) (out_proj scaled by 1/sqrt(n_layers)), A_log = log(1..N), D = 1, dt bias the
  /// inverse softplus of a log-uniform dt in [0.001, 0.1], conv U(±1/sqrt(W)).
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    Params p;
    p.in_proj = upload_values<T>(backend, normal_values(rng, 2 * ED * D, 0.02));
    if (dims_.use_bias) p.in_proj_bias = upload_values<T>(backend, std::vector<float>(2 * ED, 0.0f));
    core_.init(backend, rng, p);
    p.out_proj = upload_values<T>(backend, normal_values(rng, D * ED, 0.02 / std::sqrt(static_cast<double>(n_layers))));
    if (dims_.use_bias) p.out_proj_bias = upload_values<T>(backend, std::vector<float>(D, 0.0f));
    return p;
  }

  /// Loads the mixer's weights, Hugging Face names under `prefix` (e.g. "backbone.layers.3.mixer.").
  template <class Backend>
  Params load(const Backend& backend, const Checkpoint& ckpt, const std::string& prefix) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    Params p;
    p.in_proj = load_param<T>(backend, ckpt, prefix + "in_proj.weight", {2 * ED, D});
    if (dims_.use_bias) p.in_proj_bias = load_param<T>(backend, ckpt, prefix + "in_proj.bias", {2 * ED});
    core_.load(backend, ckpt, prefix, p);
    p.out_proj = load_param<T>(backend, ckpt, prefix + "out_proj.weight", {D, ED});
    if (dims_.use_bias) p.out_proj_bias = load_param<T>(backend, ckpt, prefix + "out_proj.bias", {D});
    return p;
  }

  /// Adds the mixer's weights to `w` under Hugging Face names.
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    save_param(backend, w, prefix + "in_proj.weight", p.in_proj, {2 * ED, D});
    if (dims_.use_bias) save_param(backend, w, prefix + "in_proj.bias", p.in_proj_bias, {2 * ED});
    core_.save(backend, p, w, prefix);
    save_param(backend, w, prefix + "out_proj.weight", p.out_proj, {D, ED});
    if (dims_.use_bias) save_param(backend, w, prefix + "out_proj.bias", p.out_proj_bias, {D});
  }

  /// A zeroed decode cache for `batch` sequences on `backend`.
  template <class Backend>
  Cache make_cache(const Backend& backend, index_t batch) const {
    return core_.make_cache(backend, batch);
  }

  /// Full-sequence forward: `out = mixer(x)`. With a cache, the conv and SSM start from its
  /// states (prefill that continues a sequence) and the cache is left holding the final states.
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out,
               Cache* cache = nullptr) const {
    const char* where = "Mamba::forward";
    const index_t batch = x.shape[0], L = x.shape[1];
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    expect_shape(where, x, {-1, -1, D}, "(batch, seqlen, d_model)");
    expect_shape(where, out, {batch, L, D}, "(batch, seqlen, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, cache, batch);
    const index_t tokens = batch * L;
    using detail::bias1;
    using detail::weight2;

    Buffer<T> xz = backend.template alloc<T>(tokens * 2 * ED);
    linear(backend,
           LinearArgs<T>{ConstView<T, 2>(x.data, {tokens, D}, "x"), weight2(p.in_proj, 2 * ED, D, "in_proj.weight"),
                         bias1(p.in_proj_bias, 2 * ED, "in_proj.bias"), xz.template view<2>({tokens, 2 * ED}, "xz")});
    Buffer<T> y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p, xz.data(), batch, L, y.data(), cache);
    linear(backend,
           LinearArgs<T>{ConstView<T, 2>(y.data(), {tokens, ED}, "y"), weight2(p.out_proj, D, ED, "out_proj.weight"),
                         bias1(p.out_proj_bias, D, "out_proj.bias"), TensorView<T, 2>(out.data, {tokens, D}, "out")});
  }

  /// One-token decode: `out = mixer(x)` for one new token per sequence, updating the cache.
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache& cache) const {
    const char* where = "Mamba::step";
    const index_t batch = x.shape[0];
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    expect_shape(where, x, {-1, D}, "(batch, d_model)");
    expect_shape(where, out, {batch, D}, "(batch, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, &cache, batch);
    using detail::bias1;
    using detail::weight2;
    Buffer<T> xz = backend.template alloc<T>(batch * 2 * ED);
    linear(backend,
           LinearArgs<T>{x, weight2(p.in_proj, 2 * ED, D, "in_proj.weight"),
                         bias1(p.in_proj_bias, 2 * ED, "in_proj.bias"), xz.template view<2>({batch, 2 * ED}, "xz")});
    Buffer<T> y = backend.template alloc<T>(batch * ED);
    core_.step(backend, p, xz.data(), batch, y.data(), cache);
    linear(backend,
           LinearArgs<T>{ConstView<T, 2>(y.data(), {batch, ED}, "y"), weight2(p.out_proj, D, ED, "out_proj.weight"),
                         bias1(p.out_proj_bias, D, "out_proj.bias"), out});
  }

 private:
  MambaDims dims_;
  MambaCore<T> core_;
};

}  // namespace moss
