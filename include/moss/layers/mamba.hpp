// moss/layers/mamba.hpp: the Mamba-1 mixer (docs/math.md §1), prefill and one-token decode.
//
// Dataflow of `forward` (tokens = batch · L; every arrow is one op, no transpose copies):
//   x (tokens, D) ─in_proj→ xz (tokens, 2·ED) ─┬─ u = xz[:, :ED] ─conv1d+SiLU→ v (tokens, ED)
//                                              └─ z = xz[:, ED:]  (the gate, read by the scan)
//   v ─x_proj→ x_dbl (tokens, R+2N) = [dt_low | B | C];  dt_low ─dt_proj→ delta (tokens, ED)
//   scan(u=v, delta, A, B, C, D, z, delta_bias, softplus) → y (tokens, ED) ─out_proj→ out (tokens, D)
// The scan and the conv read (batch, ED, L) views with unit stride along ED ("channel-last").
//
// Training (docs/training.md): `forward_train` runs the same ops and keeps what `backward` needs
// (`Saved`); `backward` runs each op's backward in reverse order and writes the parameter
// gradients (`Grads`: the Params' tensors in float32, same names). What is kept is the
// `ActivationPolicy`: `keep` stores xz, v, x_dbl, delta and y ((5·ED + R + 2N) values per
// token); `recompute` stores xz and y (3·ED) and recomputes v, x_dbl and delta (the conv and two
// small GEMMs) in the backward pass.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moss/core/buffer.hpp"
#include "moss/core/checked.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/layers/block.hpp"
#include "moss/layers/params.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/causal_conv1d_backward.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/ops/linear.hpp"
#include "moss/ops/linear_backward.hpp"
#include "moss/ops/mamba_step.hpp"
#include "moss/ops/selective_scan.hpp"
#include "moss/ops/selective_scan_backward.hpp"

namespace moss {

/// The sizes of one Mamba mixer: the model's shared sizes (Hugging Face's config keys), which
/// every block of a model receives (models/ derives them from config.json). `validate` checks
/// that every size the mixer derives from them (x_proj's width, each weight's and each
/// per-sequence state's element count) fits, so the arithmetic of a validated mixer cannot wrap.
struct MambaDims {
  index_t d_model = 0, d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0;
  bool use_bias = false, use_conv_bias = true;
  /// Width of x_proj's output: [dt_low | B | C] (checked: `config_error` when it overflows).
  index_t x_proj_out() const {
    return checked_add(dt_rank, checked_mul(index_t{2}, d_state, "MambaDims: 2 × d_state"),
                       "MambaDims: dt_rank + 2 × d_state");
  }
  /// Throws `config_error` naming `where` for an impossible size: one below 1, or a derived size
  /// that overflows or exceeds `max_tensor_elements`.
  void validate(const char* where) const {
    MOSS_EXPECTS(d_model >= 1 && d_inner >= 1 && d_state >= 1 && d_conv >= 1 && dt_rank >= 1, config_error, where,
                 ": d_model ", d_model, ", d_inner ", d_inner, ", d_state ", d_state, ", d_conv ", d_conv, ", dt_rank ",
                 dt_rank, " must all be at least 1");
    const std::string w(where);
    const index_t xp = checked_add(dt_rank, checked_mul(index_t{2}, d_state, w + ": 2 × d_state"),
                                   w + ": x_proj width dt_rank + 2 × d_state");
    const index_t two_ed = checked_mul(index_t{2}, d_inner, w + ": 2 × d_inner");
    checked_elements(two_ed, d_model, w + ": in_proj.weight (2·d_inner × d_model)");
    checked_elements(d_inner, d_conv, w + ": conv1d.weight (d_inner × d_conv)");
    checked_elements(xp, d_inner, w + ": x_proj.weight ((dt_rank + 2·d_state) × d_inner)");
    checked_elements(d_inner, dt_rank, w + ": dt_proj.weight (d_inner × dt_rank)");
    checked_elements(d_inner, d_state, w + ": A_log (d_inner × d_state)");
  }
};

/// The weights every Mamba-style mixer shares: conv1d, x_proj, dt_proj, A and D (RoM keeps one
/// copy of these while its projections become experts). Names are Hugging Face's.
/// @tparam T storage type of the conv and the projections; A, D and dt bias stay float32.
template <StorageType T>
struct MambaCoreParams {
  Tensor<T, 2> conv_weight;  // (ED, W) "conv1d.weight", stored (ED, 1, W)
  Tensor<T, 1> conv_bias;    // (ED) "conv1d.bias" when use_conv_bias
  Tensor<T, 2> x_proj;       // (R + 2N, ED) "x_proj.weight"
  Tensor<T, 2> dt_proj;      // (ED, R) "dt_proj.weight"
  Tensor<float, 1> dt_bias;  // (ED) "dt_proj.bias"
  Tensor<float, 2> A;        // (ED, N) = −exp(A_log), derived once at load time (not saved)
  Tensor<float, 2> A_log;    // (ED, N) as stored, kept for saving and training
  Tensor<float, 1> D;        // (ED) "D"
};

/// Owned weights of one Mamba mixer on one backend (names as in Hugging Face checkpoints).
template <StorageType T>
struct MambaParams : MambaCoreParams<T> {
  Tensor<T, 2> in_proj;        // (2·ED, D) "in_proj.weight"
  Tensor<T, 1> in_proj_bias;   // (2·ED) "in_proj.bias" when use_bias
  Tensor<T, 2> out_proj;       // (D, ED) "out_proj.weight"
  Tensor<T, 1> out_proj_bias;  // (D) "out_proj.bias" when use_bias
};

/// Decode state of one Mamba mixer for a batch of sequences (docs/math.md §1, "Decode").
template <StorageType T>
struct MambaCache {
  Buffer<T> conv_state;     // (batch, ED, W − 1): the last W − 1 conv inputs, oldest first
  Buffer<float> ssm_state;  // (batch, ED, N)
  index_t batch = 0;
};

/// What a block keeps from its training forward for the backward pass: everything (`keep`) or
/// only what is costly to recompute (`recompute`: the rest is recomputed in `backward`).
enum class ActivationPolicy { keep, recompute };

/// The activations of `MambaCore::forward` between xz and y, kept for the backward pass.
template <StorageType T>
struct MambaCoreActivations {
  Buffer<T> v;      // (tokens, ED): conv1d + SiLU output, the scan's u
  Buffer<T> x_dbl;  // (tokens, R + 2N) = [dt_low | B | C]
  Buffer<T> delta;  // (tokens, ED): dt_proj output (before the scan's bias and softplus)
};

/// Calls f(name, tensor) for every parameter of `p` in checkpoint order (names relative to the
/// mixer), skipping absent tensors and the derived A. Works on a mixer's Params and on its
/// float32 gradients alike (the same names in the same order).
template <class P, class F>
void visit_mamba_core(P& p, F&& f) {
  const auto visit = [&](auto& t) {
    if (t.present()) f(t.name(), t);
  };
  visit(p.conv_weight);
  visit(p.conv_bias);
  visit(p.x_proj);
  visit(p.dt_proj);
  visit(p.dt_bias);
  visit(p.A_log);
  visit(p.D);
}

/// Zeroed float32 tensors shaped and named like every present tensor of `p`, except the derived A.
template <class Backend, StorageType T>
void zero_core_grads(const Backend& backend, const MambaCoreParams<T>& p, MambaCoreParams<float>& g) {
  g.conv_weight = zeros_like<float>(backend, p.conv_weight);
  g.conv_bias = zeros_like<float>(backend, p.conv_bias);
  g.x_proj = zeros_like<float>(backend, p.x_proj);
  g.dt_proj = zeros_like<float>(backend, p.dt_proj);
  g.dt_bias = zeros_like<float>(backend, p.dt_bias);
  g.A_log = zeros_like<float>(backend, p.A_log);
  g.D = zeros_like<float>(backend, p.D);
}

/// The config section of a block that has no settings of its own (its sizes are the model's
/// shared `MambaDims`): reads and writes nothing.
struct NoBlockConfig {
  static NoBlockConfig from_json(const io::JsonRef&) { return {}; }
  void to_json(io::Json&) const {}
};

/// The part of a Mamba mixer between its input and output projections:
///   u, z (the in_proj output's halves) → conv1d + SiLU → x_proj → dt_proj → selective scan,
/// gated by z, → y (tokens, ED). `Mamba` puts dense projections around it; `RoutedMamba`
/// routed ones. The decode state is the same for both.
/// @tparam T storage type.
/// @tparam Scan the selective-scan strategy (`AutoScan` picks one by shape; see
///         moss/ops/selective_scan.hpp for the strategies and how to write one's own).
template <StorageType T, class Scan = AutoScan>
class MambaCore {
  static_assert(ScanStrategy<Scan, T>, "moss::MambaCore: Scan is not a moss::ScanStrategy for this storage type");

 public:
  using Params = MambaCoreParams<T>;
  using Cache = MambaCache<T>;

  explicit MambaCore(const MambaDims& dims) : dims_(dims) { dims_.validate("MambaCore"); }
  const MambaDims& dims() const { return dims_; }

  /// Random weights as Hugging Face's MambaPreTrainedModel draws them (see `Mamba::init`); the
  /// conv draws come first, then x_proj, dt_proj and dt bias.
  template <class Backend>
  void init(const Backend& backend, Rng& rng, Params& p) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    const double conv_bound = 1.0 / std::sqrt(static_cast<double>(W));
    p.conv_weight = uniform_tensor<T>(backend, rng, Extents<2>{ED, W}, -conv_bound, conv_bound, "conv1d.weight");
    if (dims_.use_conv_bias)
      p.conv_bias = uniform_tensor<T>(backend, rng, Extents<1>{ED}, -conv_bound, conv_bound, "conv1d.bias");
    p.x_proj = normal_tensor<T>(backend, rng, Extents<2>{dims_.x_proj_out(), ED}, 0.02, "x_proj.weight");
    const double dt_std = 1.0 / std::sqrt(static_cast<double>(R));
    p.dt_proj = uniform_tensor<T>(backend, rng, Extents<2>{ED, R}, -dt_std, dt_std, "dt_proj.weight");
    std::vector<float> dt_bias(static_cast<std::size_t>(ED)), a_log(static_cast<std::size_t>(ED * N));
    for (auto& b : dt_bias) {
      const double dt = std::max(1e-4, std::exp(rng.uniform(std::log(1e-3), std::log(1e-1))));
      b = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹(dt)
    }
    for (index_t c = 0; c < ED; ++c)
      for (index_t n = 0; n < N; ++n) a_log[c * N + n] = static_cast<float>(std::log(static_cast<double>(n + 1)));
    p.dt_bias = tensor_of<float>(backend, Extents<1>{ED}, dt_bias, "dt_proj.bias");
    set_a_log(backend, p, a_log);
    p.D = constant_tensor<float>(backend, Extents<1>{ED}, 1.0f, "D");
  }

  /// Loads conv1d, x_proj, dt_proj, A_log and D under `prefix` (Hugging Face names).
  template <class Backend, WeightSource Source>
  void load(const Backend& backend, const Source& src, const std::string& prefix, Params& p) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    p.conv_weight =
        Tensor<T, 2>(load_param<T>(backend, src, prefix + "conv1d.weight", {ED, 1, W}), {ED, W}, "conv1d.weight");
    if (dims_.use_conv_bias) p.conv_bias = load_tensor<T>(backend, src, prefix, "conv1d.bias", Extents<1>{ED});
    p.x_proj = load_tensor<T>(backend, src, prefix, "x_proj.weight", Extents<2>{dims_.x_proj_out(), ED});
    p.dt_proj = load_tensor<T>(backend, src, prefix, "dt_proj.weight", Extents<2>{ED, R});
    p.dt_bias = load_tensor<float>(backend, src, prefix, "dt_proj.bias", Extents<1>{ED});
    set_a_log(backend, p, src.template read_as<float>(prefix + "A_log", {ED, N}));
    p.D = load_tensor<float>(backend, src, prefix, "D", Extents<1>{ED});
  }

  /// Adds the shared weights to `w` under `prefix`.
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_param(backend, w, prefix + "conv1d.weight", p.conv_weight.buffer(), {dims_.d_inner, 1, dims_.d_conv});
    save_tensor(backend, w, prefix, p.conv_bias);
    save_tensor(backend, w, prefix, p.x_proj);
    save_tensor(backend, w, prefix, p.dt_proj);
    save_tensor(backend, w, prefix, p.dt_bias);
    save_tensor(backend, w, prefix, p.A_log);
    save_tensor(backend, w, prefix, p.D);
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

  /// Recomputes the derived A = −exp(A_log) in place from `p.A_log` (after an optimiser step
  /// changed A_log; the tensors keep their memory), on the backend: no copy to the host.
  template <class Backend>
  void refresh_derived(const Backend& backend, Params& p) const {
    const index_t n = p.A_log.numel();
    negated_exp(backend, p.A_log.template view_as<1>({n}), p.A.template view_as<1>({n}));
  }

  /// Full sequence: y (batch·L, ED) from the in_proj output `xz` (batch·L, 2·ED), u = its first
  /// ED columns and z the rest. With a cache, the conv and SSM start from its states and the
  /// cache is left holding the final states. With `keep`, the activations between xz and y are
  /// moved there (for `backward`).
  template <class Backend>
  void forward(const Backend& backend, const Params& p, const T* xz, index_t batch, index_t L, T* y, Cache* cache,
               MambaCoreActivations<T>* keep = nullptr) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv, R = dims_.dt_rank;
    const index_t XP = dims_.x_proj_out();

    MambaCoreActivations<T> a;
    Buffer<T> conv_final;
    if (cache) conv_final = backend.template alloc<T>(batch * ED * (W - 1));
    project(backend, p, xz, batch, L, a, cache ? cache->conv_state.data() : nullptr,
            cache ? conv_final.data() : nullptr);

    Buffer<float> ssm_final;
    SelectiveScanArgs<T> scan;
    scan.u = ConstView<T, 3>(a.v.data(), {batch, ED, L}, {L * ED, 1, ED}, "conv_out");
    scan.delta = ConstView<T, 3>(a.delta.data(), {batch, ED, L}, {L * ED, 1, ED}, "delta");
    scan.A = p.A;
    scan.B = ConstView<T, 4>(a.x_dbl.data() + R, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "B");
    scan.C = ConstView<T, 4>(a.x_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "C");
    scan.D = p.D;
    scan.z = ConstView<T, 3>(xz + ED, {batch, ED, L}, {L * 2 * ED, 1, 2 * ED}, "z");
    scan.delta_bias = p.dt_bias;
    scan.delta_softplus = true;
    scan.out = TensorView<T, 3>(y, {batch, ED, L}, {L * ED, 1, ED}, "y");
    if (cache) {
      ssm_final = backend.template alloc<float>(batch * ED * N);
      scan.initial_state = ConstView<float, 3>(cache->ssm_state.data(), {batch, ED, N}, "ssm_state");
      scan.final_state = TensorView<float, 3>(ssm_final.data(), {batch, ED, N}, "ssm_state");
    }
    selective_scan<Scan>(backend, scan);
    if (cache) {
      cache->conv_state = std::move(conv_final);
      cache->ssm_state = std::move(ssm_final);
    }
    if (keep) *keep = std::move(a);
  }

  /// The activations between xz and the scan (conv1d + SiLU, x_proj, dt_proj) into `a`, from zero
  /// conv state: what `backward` recomputes under `ActivationPolicy::recompute`.
  template <class Backend>
  void recompute(const Backend& backend, const Params& p, const T* xz, index_t batch, index_t L,
                 MambaCoreActivations<T>& a) const {
    project(backend, p, xz, batch, L, a, nullptr, nullptr);
  }

  /// Backward of `forward` from zero states (training, no cache), docs/training.md: from dy
  /// (batch·L, ED), the activations `a` of the forward and its input `xz`, writes dxz (batch·L,
  /// 2·ED; both halves: du through the conv, dz through the scan's gate) and the gradients of
  /// the shared weights into `g` (written, or added when `accumulate`). Reverse order of the
  /// forward: scan → dt_proj → x_proj (its input gradient added to the scan's du) → conv.
  template <class Backend>
  void backward(const Backend& backend, const Params& p, const T* xz, index_t batch, index_t L,
                const MambaCoreActivations<T>& a, const T* dy, T* dxz, MambaCoreParams<float>& g,
                bool accumulate = false) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, R = dims_.dt_rank;
    const index_t XP = dims_.x_proj_out(), tokens = batch * L;
    const Extents<3> bel{batch, ED, L};
    const Extents<3> cl{L * ED, 1, ED};           // channel-last strides of a (tokens, ED) buffer
    const Extents<3> cl2{L * 2 * ED, 1, 2 * ED};  // ... of a half of a (tokens, 2·ED) buffer

    Buffer<T> dv = backend.template alloc<T>(tokens * ED);
    Buffer<T> ddelta = backend.template alloc<T>(tokens * ED);
    Buffer<T> dx_dbl = backend.template alloc<T>(tokens * XP);  // [d dt_low | dB | dC]
    Buffer<float> dA = backend.template alloc<float>(ED * N);
    if (accumulate) fill_zero(backend, dA);  // the scan adds into dA, dD and ddelta_bias alike
    SelectiveScanBackwardArgs<T> sb;
    sb.u = ConstView<T, 3>(a.v.data(), bel, cl, "conv_out");
    sb.delta = ConstView<T, 3>(a.delta.data(), bel, cl, "delta");
    sb.A = p.A;
    sb.B = ConstView<T, 4>(a.x_dbl.data() + R, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "B");
    sb.C = ConstView<T, 4>(a.x_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, 0, 1, XP}, "C");
    sb.D = p.D;
    sb.z = ConstView<T, 3>(xz + ED, bel, cl2, "z");
    sb.delta_bias = p.dt_bias;
    sb.delta_softplus = true;
    sb.dout = ConstView<T, 3>(dy, bel, cl, "dy");
    sb.du = TensorView<T, 3>(dv.data(), bel, cl, "d conv_out");
    sb.ddelta = TensorView<T, 3>(ddelta.data(), bel, cl, "d delta");
    sb.dA = dA.template view<2>({ED, N}, "dA");
    sb.dB = TensorView<T, 4>(dx_dbl.data() + R, {batch, 1, N, L}, {L * XP, N, 1, XP}, "dB");
    sb.dC = TensorView<T, 4>(dx_dbl.data() + R + N, {batch, 1, N, L}, {L * XP, N, 1, XP}, "dC");
    sb.dD = g.D.view();
    sb.dz = TensorView<T, 3>(dxz + ED, bel, cl2, "dz");
    sb.ddelta_bias = g.dt_bias.view();
    sb.accumulate = accumulate;
    selective_scan_backward(backend, sb);

    // A = −exp(A_log): dA_log = dA ⊙ A.
    const ConstView<float, 1> A_flat(p.A.data(), {ED * N}, "A");
    const TensorView<float, 1> dA_flat = dA.template view<1>({ED * N}, "dA");
    if (accumulate) {
      multiply(backend, ConstView<float, 1>(dA_flat), A_flat, dA_flat);
      add_into(backend, ConstView<float, 1>(dA_flat), g.A_log.template view_as<1>({ED * N}));
    } else {
      multiply(backend, ConstView<float, 1>(dA_flat), A_flat, g.A_log.template view_as<1>({ED * N}));
    }

    // delta = dt_low · dt_projᵀ (the bias is the scan's): d dt_low into dx_dbl's first R columns.
    linear_backward(backend,
                    LinearBackwardArgs<T>{.dy = ConstView<T, 2>(ddelta.data(), {tokens, ED}, "d delta"),
                                          .x = ConstView<T, 2>(a.x_dbl.data(), {tokens, R}, {XP, 1}, "dt_low"),
                                          .weight = p.dt_proj,
                                          .dx = TensorView<T, 2>(dx_dbl.data(), {tokens, R}, {XP, 1}, "d dt_low"),
                                          .dweight = g.dt_proj.view(),
                                          .dbias = {},
                                          .accumulate = accumulate});
    // x_dbl = v · x_projᵀ: v's second gradient, added to the scan's.
    Buffer<T> dv_proj = backend.template alloc<T>(tokens * ED);
    linear_backward(backend, LinearBackwardArgs<T>{.dy = ConstView<T, 2>(dx_dbl.data(), {tokens, XP}, "d x_dbl"),
                                                   .x = ConstView<T, 2>(a.v.data(), {tokens, ED}, "conv_out"),
                                                   .weight = p.x_proj,
                                                   .dx = dv_proj.template view<2>({tokens, ED}, "d conv_out (x_proj)"),
                                                   .dweight = g.x_proj.view(),
                                                   .dbias = {},
                                                   .accumulate = accumulate});
    add_into(backend, ConstView<T, 1>(dv_proj.flat()), dv.flat());

    // v = SiLU(conv(u) + bias): du into dxz's first ED columns.
    CausalConv1dBackwardArgs<T> cb;
    cb.x = ConstView<T, 3>(xz, bel, cl2, "u");
    cb.weight = p.conv_weight;
    cb.bias = p.conv_bias;
    cb.silu = true;
    cb.dout = ConstView<T, 3>(dv.data(), bel, cl, "d conv_out");
    cb.dx = TensorView<T, 3>(dxz, bel, cl2, "du");
    cb.dweight = g.conv_weight.view();
    cb.dbias = g.conv_bias.view();
    cb.accumulate = accumulate;
    causal_conv1d_backward(backend, cb);
  }

  /// One token per sequence: y (batch, ED) from `xz` (batch, 2·ED), updating the cache in place
  /// (the ops of moss/ops/mamba_step.hpp in turn: `mamba_step_composed`).
  template <class Backend>
  void step(const Backend& backend, const Params& p, const T* xz, index_t batch, T* y, Cache& cache) const {
    mamba_step_composed(backend, step_args(p, xz, batch, y, cache));
  }

  /// The arguments of `mamba_step` for one decode step of this core.
  MambaStepArgs<T> step_args(const Params& p, const T* xz, index_t batch, T* y, Cache& cache) const {
    const index_t ED = dims_.d_inner, N = dims_.d_state, W = dims_.d_conv;
    MambaStepArgs<T> a;
    a.xz = ConstView<T, 2>(xz, {batch, 2 * ED}, "xz");
    a.conv_state = TensorView<T, 3>(cache.conv_state.data(), {batch, ED, W - 1}, "conv_state");
    a.conv_weight = p.conv_weight;
    a.conv_bias = p.conv_bias;
    a.x_proj = p.x_proj;
    a.dt_proj = p.dt_proj;
    a.dt_bias = p.dt_bias;
    a.A = p.A;
    a.D = p.D;
    a.ssm_state = TensorView<float, 3>(cache.ssm_state.data(), {batch, ED, N}, "ssm_state");
    a.out = TensorView<T, 2>(y, {batch, ED}, "y");
    return a;
  }

 private:
  /// conv1d + SiLU (from `conv_state`, or zero when null; the final state into `conv_final` when
  /// not null), x_proj and dt_proj: v, x_dbl and delta of `a` from xz.
  template <class Backend>
  void project(const Backend& backend, const Params& p, const T* xz, index_t batch, index_t L,
               MambaCoreActivations<T>& a, const T* conv_state, T* conv_final) const {
    const index_t ED = dims_.d_inner, W = dims_.d_conv, R = dims_.dt_rank;
    const index_t tokens = batch * L;
    const index_t XP = dims_.x_proj_out();
    // u is the first column half of xz, read as a (batch, ED, L) channel-last view.
    const ConstView<T, 3> u(xz, {batch, ED, L}, {L * 2 * ED, 1, 2 * ED}, "u");
    a.v = backend.template alloc<T>(tokens * ED);  // (batch, L, ED)
    const TensorView<T, 3> v_cl(a.v.data(), {batch, ED, L}, {L * ED, 1, ED}, "conv_out");
    CausalConv1dArgs<T> conv{u, p.conv_weight, p.conv_bias, true, {}, v_cl, {}};
    if (conv_state) conv.initial_state = ConstView<T, 3>(conv_state, {batch, ED, W - 1}, "conv_state");
    if (conv_final) conv.final_state = TensorView<T, 3>(conv_final, {batch, ED, W - 1}, "conv_state");
    causal_conv1d(backend, conv);

    a.x_dbl = backend.template alloc<T>(tokens * XP);  // (tokens, R + 2N) = [dt_low | B | C]
    linear(backend, LinearArgs<T>{ConstView<T, 2>(a.v.data(), {tokens, ED}, "conv_out"),
                                  p.x_proj,
                                  {},
                                  a.x_dbl.template view<2>({tokens, XP}, "x_dbl")});
    a.delta = backend.template alloc<T>(tokens * ED);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(a.x_dbl.data(), {tokens, R}, {XP, 1}, "dt_low"),
                                  p.dt_proj,
                                  {},
                                  a.delta.template view<2>({tokens, ED}, "delta")});
  }

  template <class Backend>
  void set_a_log(const Backend& backend, Params& p, const std::vector<float>& a_log) const {
    std::vector<float> a(a_log.size());
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = -std::exp(a_log[i]);
    const Extents<2> shape{dims_.d_inner, dims_.d_state};
    p.A_log = tensor_of<float>(backend, shape, a_log, "A_log");
    p.A = tensor_of<float>(backend, shape, a, "A");
  }
  MambaDims dims_;
};

/// The Mamba-1 mixer (docs/math.md §1). Sizes are runtime values (the model's `MambaDims`); the
/// storage type and the scan strategy are template parameters.
/// @tparam T storage type of weights and activations (float, f16 or bf16).
/// @tparam Scan the selective-scan strategy (default `AutoScan`).
template <StorageType T, class Scan = AutoScan>
class Mamba {
 public:
  using value_type = T;
  using Params = MambaParams<T>;
  using Cache = MambaCache<T>;
  /// A dense mixer has no settings beyond the model's shared sizes.
  using Config = NoBlockConfig;
  /// The block's name in a moss config's `block_pattern`.
  static constexpr std::string_view block_name = "mamba";
  /// The step queues its kernels and GEMMs only (CapturableStep).
  static constexpr bool capturable_step = true;

  explicit Mamba(const MambaDims& dims, const Config& = {}) : dims_(dims), core_(dims) {}
  const MambaDims& dims() const { return dims_; }
  Config config() const { return {}; }

  /// Random weights initialised as Hugging Face's MambaPreTrainedModel does: projections
  /// N(0, 0.02) (out_proj scaled by 1/sqrt(n_layers)), A_log = log(1..N), D = 1, dt bias the
  /// inverse softplus of a log-uniform dt in [0.001, 0.1], conv U(±1/sqrt(W)).
  template <class Backend>
  Params init(const Backend& backend, Rng& rng, index_t n_layers) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    Params p;
    p.in_proj = normal_tensor<T>(backend, rng, Extents<2>{2 * ED, D}, 0.02, "in_proj.weight");
    if (dims_.use_bias) p.in_proj_bias = constant_tensor<T>(backend, Extents<1>{2 * ED}, 0.0f, "in_proj.bias");
    core_.init(backend, rng, p);
    p.out_proj = normal_tensor<T>(backend, rng, Extents<2>{D, ED}, 0.02 / std::sqrt(static_cast<double>(n_layers)),
                                  "out_proj.weight");
    if (dims_.use_bias) p.out_proj_bias = constant_tensor<T>(backend, Extents<1>{D}, 0.0f, "out_proj.bias");
    return p;
  }

  /// Loads the mixer's weights, Hugging Face names under `prefix` (e.g. "backbone.layers.3.mixer.").
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& src, const std::string& prefix) const {
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    Params p;
    p.in_proj = load_tensor<T>(backend, src, prefix, "in_proj.weight", Extents<2>{2 * ED, D});
    if (dims_.use_bias) p.in_proj_bias = load_tensor<T>(backend, src, prefix, "in_proj.bias", Extents<1>{2 * ED});
    core_.load(backend, src, prefix, p);
    p.out_proj = load_tensor<T>(backend, src, prefix, "out_proj.weight", Extents<2>{D, ED});
    if (dims_.use_bias) p.out_proj_bias = load_tensor<T>(backend, src, prefix, "out_proj.bias", Extents<1>{D});
    return p;
  }

  /// Adds the mixer's weights to `w` under Hugging Face names.
  template <class Backend>
  void save(const Backend& backend, const Params& p, SafetensorsWriter& w, const std::string& prefix) const {
    save_tensor(backend, w, prefix, p.in_proj);
    save_tensor(backend, w, prefix, p.in_proj_bias);
    core_.save(backend, p, w, prefix);
    save_tensor(backend, w, prefix, p.out_proj);
    save_tensor(backend, w, prefix, p.out_proj_bias);
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
    expect_shape(where, x, {any, any, D}, "(batch, seqlen, d_model)");
    expect_shape(where, out, {batch, L, D}, "(batch, seqlen, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, cache, batch);
    const index_t tokens = batch * L;

    Buffer<T> xz = backend.template alloc<T>(tokens * 2 * ED);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(x.data, {tokens, D}, "x"), p.in_proj, p.in_proj_bias,
                                  xz.template view<2>({tokens, 2 * ED}, "xz")});
    Buffer<T> y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p, xz.data(), batch, L, y.data(), cache);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(y.data(), {tokens, ED}, "y"), p.out_proj, p.out_proj_bias,
                                  TensorView<T, 2>(out.data, {tokens, D}, "out")});
  }

  /// One-token decode: `out = mixer(x)` for one new token per sequence, updating the cache.
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<T, 2> out, Cache& cache) const {
    const char* where = "Mamba::step";
    const index_t batch = x.shape[0];
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    expect_shape(where, x, {any, D}, "(batch, d_model)");
    expect_shape(where, out, {batch, D}, "(batch, d_model)");
    expect_contiguous(where, x);
    expect_contiguous(where, out);
    core_.check_cache(where, &cache, batch);
    Buffer<T> xz = backend.template alloc<T>(batch * 2 * ED);
    linear(backend, LinearArgs<T>{x, p.in_proj, p.in_proj_bias, xz.template view<2>({batch, 2 * ED}, "xz")});
    Buffer<T> y = backend.template alloc<T>(batch * ED);
    core_.step(backend, p, xz.data(), batch, y.data(), cache);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(y.data(), {batch, ED}, "y"), p.out_proj, p.out_proj_bias, out});
  }

  // ---- training (docs/training.md) ----

  /// Parameter gradients: the Params' tensors in float32, same names (the derived A is absent).
  using Grads = MambaParams<float>;
  /// What `forward_train` keeps for `backward` (the input x is the caller's and is passed again).
  struct Saved {
    Buffer<T> xz;                  // (tokens, 2·ED): in_proj output
    Buffer<T> y;                   // (tokens, ED): gated scan output, out_proj's input
    MambaCoreActivations<T> core;  // v, x_dbl, delta under `keep`; empty under `recompute`
    index_t batch = 0, L = 0;
  };

  /// Zeroed gradients for `p` (every present tensor but A).
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    Grads g;
    g.in_proj = zeros_like<float>(backend, p.in_proj);
    g.in_proj_bias = zeros_like<float>(backend, p.in_proj_bias);
    zero_core_grads(backend, p, g);
    g.out_proj = zeros_like<float>(backend, p.out_proj);
    g.out_proj_bias = zeros_like<float>(backend, p.out_proj_bias);
    return g;
  }

  /// Calls f(name, tensor) for every trainable tensor of `p` (Params or Grads) in checkpoint
  /// order, names relative to the mixer ("in_proj.weight", ...).
  template <class P, class F>
  static void visit_params(P& p, F&& f) {
    const auto visit = [&](auto& t) {
      if (t.present()) f(t.name(), t);
    };
    visit(p.in_proj);
    visit(p.in_proj_bias);
    visit_mamba_core(p, f);
    visit(p.out_proj);
    visit(p.out_proj_bias);
  }

  /// Recomputes the weights derived from trained ones (A from A_log) after an optimiser step.
  template <class Backend>
  void refresh_derived(const Backend& backend, Params& p) const {
    core_.refresh_derived(backend, p);
  }

  /// `forward` without a cache that keeps what `backward` needs in `saved`, as `policy` says.
  template <class Backend>
  void forward_train(const Backend& backend, const Params& p, ConstView<T, 3> x, TensorView<T, 3> out, Saved& saved,
                     ActivationPolicy policy = ActivationPolicy::keep) const {
    const char* where = "Mamba::forward_train";
    const index_t batch = x.shape[0], L = x.shape[1];
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    detail::expect_block_io(where, x, out, D);
    const index_t tokens = batch * L;
    saved = Saved{};
    saved.batch = batch;
    saved.L = L;
    saved.xz = backend.template alloc<T>(tokens * 2 * ED);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(x.data, {tokens, D}, "x"), p.in_proj, p.in_proj_bias,
                                  saved.xz.template view<2>({tokens, 2 * ED}, "xz")});
    saved.y = backend.template alloc<T>(tokens * ED);
    core_.forward(backend, p, saved.xz.data(), batch, L, saved.y.data(), nullptr,
                  policy == ActivationPolicy::keep ? &saved.core : nullptr);
    linear(backend, LinearArgs<T>{ConstView<T, 2>(saved.y.data(), {tokens, ED}, "y"), p.out_proj, p.out_proj_bias,
                                  TensorView<T, 2>(out.data, {tokens, D}, "out")});
  }

  /// Backward of `forward_train`: from dout (batch, L, D), the forward's input x and `saved`,
  /// writes dx and the parameter gradients into `g` (written, or added when `accumulate`).
  template <class Backend>
  void backward(const Backend& backend, const Params& p, ConstView<T, 3> x, const Saved& saved, ConstView<T, 3> dout,
                TensorView<T, 3> dx, Grads& g, bool accumulate = false) const {
    const char* where = "Mamba::backward";
    const index_t batch = x.shape[0], L = x.shape[1];
    const index_t D = dims_.d_model, ED = dims_.d_inner;
    detail::expect_block_io(where, x, dx, D);
    expect_shape(where, dout, {batch, L, D}, "(batch, seqlen, d_model), like x");
    expect_contiguous(where, dout);
    MOSS_EXPECTS(saved.batch == batch && saved.L == L && saved.xz.size() == batch * L * 2 * ED, shape_error, where,
                 ": the saved activations are of batch ", saved.batch, " and seqlen ", saved.L, " but x is ",
                 shape_string(x.shape), " (run forward_train on this input first)");
    const index_t tokens = batch * L;
    Buffer<T> dy = backend.template alloc<T>(tokens * ED);
    linear_backward(backend, LinearBackwardArgs<T>{.dy = ConstView<T, 2>(dout.data, {tokens, D}, "dout"),
                                                   .x = ConstView<T, 2>(saved.y.data(), {tokens, ED}, "y"),
                                                   .weight = p.out_proj,
                                                   .dx = dy.template view<2>({tokens, ED}, "dy"),
                                                   .dweight = g.out_proj.view(),
                                                   .dbias = g.out_proj_bias.view(),
                                                   .accumulate = accumulate});
    Buffer<T> dxz = backend.template alloc<T>(tokens * 2 * ED);
    if (saved.core.v.data()) {
      core_.backward(backend, p, saved.xz.data(), batch, L, saved.core, dy.data(), dxz.data(), g, accumulate);
    } else {
      MambaCoreActivations<T> a;
      core_.recompute(backend, p, saved.xz.data(), batch, L, a);
      core_.backward(backend, p, saved.xz.data(), batch, L, a, dy.data(), dxz.data(), g, accumulate);
    }
    linear_backward(backend, LinearBackwardArgs<T>{.dy = ConstView<T, 2>(dxz.data(), {tokens, 2 * ED}, "dxz"),
                                                   .x = ConstView<T, 2>(x.data, {tokens, D}, "x"),
                                                   .weight = p.in_proj,
                                                   .dx = TensorView<T, 2>(dx.data, {tokens, D}, "dx"),
                                                   .dweight = g.in_proj.view(),
                                                   .dbias = g.in_proj_bias.view(),
                                                   .accumulate = accumulate});
  }

 private:
  MambaDims dims_;
  MambaCore<T, Scan> core_;
};

}  // namespace moss
