// moss/train/trainer.hpp: the training step of a language model (host, or CUDA under nvcc): gradient
// accumulation over micro-batches, global-norm clipping, AdamW with moss's weight-decay groups,
// the warmup + cosine schedule, and the optimiser state a checkpoint needs to resume exactly
// (docs/training.md).
//
// One `step(micro_batches)`:
//   1. for each of the M micro-batches: `loss_and_grads` with dloss = 1/M, accumulating after the
//      first (the gradient of the mean of the micro-batches' mean losses);
//   2. the global L2 norm of all gradients (float64, tensors in checkpoint order; on CUDA a
//      fixed-order parallel sum read back to the host); with `clip_norm` > 0 the gradients are
//      scaled by clip_norm / norm when norm > clip_norm; a non-finite norm skips the update (the
//      step still counts, so the schedule moves on);
//   3. AdamW on every trainable tensor at lr = schedule.lr_at(step), decay per `decays(name)`,
//      on float32 master weights (the parameters themselves when they are float32, else a
//      float32 copy rounded to the storage type after each update);
//   4. the derived weights (A = −exp(A_log)) are recomputed.
// Every sum runs in a fixed order, so the same model, data and settings give bitwise the same
// losses, and `save` + `load` continue a run bitwise as if it had never stopped.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/error.hpp"
#include "moss/io/json.hpp"
#include "moss/io/safetensors.hpp"
#include "moss/io/writer.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/routing.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/train/clip.hpp"
#include "moss/train/optimizer.hpp"
#include "moss/train/schedule.hpp"

namespace moss {

/// Settings of a `Trainer`.
struct TrainerSettings {
  CosineSchedule schedule{.lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 100, .total_steps = 1000};
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  ///< decoupled, for the tensors `decays(name)` selects
  double clip_norm = 1.0;     ///< global-norm clipping threshold; ≤ 0 turns clipping off
  ActivationPolicy activations = ActivationPolicy::keep;
  index_t chunk_rows = 1024;  ///< rows of the LM head's logits formed at once

  /// `config_error` naming the setting for a bad value (the schedule's own checks, betas in
  /// [0, 1), eps and weight_decay finite and ≥ 0, clip_norm finite, chunk_rows ≥ 1).
  void validate() const {
    schedule.validate();
    MOSS_EXPECTS(beta1 >= 0 && beta1 < 1, config_error, "TrainerSettings: beta1 is ", beta1, ", expected in [0, 1)");
    MOSS_EXPECTS(beta2 >= 0 && beta2 < 1, config_error, "TrainerSettings: beta2 is ", beta2, ", expected in [0, 1)");
    MOSS_EXPECTS(std::isfinite(eps) && eps >= 0, config_error, "TrainerSettings: eps is ", eps,
                 ", expected finite and >= 0");
    MOSS_EXPECTS(std::isfinite(weight_decay) && weight_decay >= 0, config_error, "TrainerSettings: weight_decay is ",
                 weight_decay, ", expected finite and >= 0");
    MOSS_EXPECTS(std::isfinite(clip_norm), config_error, "TrainerSettings: clip_norm is ", clip_norm,
                 ", expected finite (<= 0 turns clipping off)");
    MOSS_EXPECTS(chunk_rows >= 1, config_error, "TrainerSettings: chunk_rows is ", chunk_rows, ", expected >= 1");
  }
};

/// What one `Trainer::step` did.
struct TrainStepResult {
  double loss = 0;        ///< mean of the micro-batches' mean losses, nats per token
  index_t count = 0;      ///< targets counted over all micro-batches
  double grad_norm = 0;   ///< global gradient norm before clipping
  double lr = 0;          ///< the learning rate used
  double aux_loss = 0;    ///< mean over micro-batches of Σ over routers of α·aux + β·z (0 without routers)
  bool skipped = false;   ///< the norm was not finite: no update
  std::int64_t step = 0;  ///< the optimiser step just taken (0 for the first)
};

/// Trains the parameters of a `LanguageModel` on `Backend` (see the file comment): `Host`, or
/// `Cuda` under nvcc (the optimiser state then lives on the GPU; the global norm is read back,
/// one synchronisation per step).
/// @tparam Model a `LanguageModel` whose blocks can train (forward_train / backward).
/// @tparam Backend moss::Host or moss::Cuda.
template <class Model, class Backend = Host>
class Trainer {
 public:
  using Params = typename Model::Params;
  using Grads = typename Model::Grads;
  using T = typename Model::value_type;

  /// Trains `params` (kept by reference; they must outlive the trainer) of `model` on `backend`.
  Trainer(const Model& model, Params& params, TrainerSettings settings, Backend backend = {})
      : backend_(backend),
        model_(model),
        params_(params),
        settings_(settings),
        grads_(model.make_grads(backend, params)) {
    settings_.validate();
    model_.visit_params(params_, [&](const std::string& name, auto& t) {
      using E = typename std::remove_cvref_t<decltype(t)>::element_type;
      Slot s;
      s.name = name;
      s.n = t.numel();
      s.decay = decays(name);
      if constexpr (std::is_same_v<E, float>) {
        s.param = t.data();
      } else {
        s.narrowed = t.data();
        s.master = backend_.template alloc<float>(s.n);
        convert(backend_, ConstView<E, 1>(t.data(), {s.n}, "param"), s.master.flat("master"));
      }
      s.m = backend_.template alloc<float>(s.n);
      s.v = backend_.template alloc<float>(s.n);
      fill_zero(backend_, s.m);
      fill_zero(backend_, s.v);
      slots_.push_back(std::move(s));
    });
    std::size_t k = 0;
    model_.visit_params(grads_, [&](const std::string& name, auto& g) {
      MOSS_EXPECTS(k < slots_.size() && slots_[k].name == name, config_error, "Trainer: the gradient ", name,
                   " does not follow the parameters' order");
      slots_[k++].grad = g.data();
    });
  }

  /// The optimiser steps taken so far.
  std::int64_t steps() const { return step_; }
  const TrainerSettings& settings() const { return settings_; }
  /// The gradients of the last step (after clipping).
  const Grads& grads() const { return grads_; }

  /// One optimiser step over the micro-batches, each (batch, seq_len + 1) token ids in host
  /// memory (the model reads [:, :-1] and predicts [:, 1:]).
  TrainStepResult step(const std::vector<ConstView<std::int64_t, 2>>& micro_batches) {
    MOSS_EXPECTS(!micro_batches.empty(), config_error, "Trainer::step: no micro-batch given");
    TrainStepResult r;
    r.step = step_;
    const float dloss = 1.0f / static_cast<float>(micro_batches.size());
    RoutingReport report;  // the routed layers' auxiliary losses (their values; the gradients are in backward)
    for (std::size_t k = 0; k < micro_batches.size(); ++k) {
      typename Model::TrainOptions o;
      o.activations = settings_.activations;
      o.accumulate = k > 0;
      o.dloss = dloss;
      o.chunk_rows = settings_.chunk_rows;
      o.report = &report;
      const auto res = model_.loss_and_grads(backend_, params_, micro_batches[k], grads_, o);
      r.loss += static_cast<double>(res.loss) / static_cast<double>(micro_batches.size());
      r.count += res.count;
    }
    for (const RouterStats& st : report.read())
      r.aux_loss += (static_cast<double>(st.aux_loss) + st.z_loss) / static_cast<double>(micro_batches.size());
    std::vector<TensorView<float, 1>> views;
    for (const Slot& s : slots_) views.emplace_back(s.grad, Extents<1>{s.n}, "gradient");
    r.grad_norm = global_norm(backend_, views);
    r.lr = settings_.schedule.lr_at(step_);
    r.skipped = !std::isfinite(r.grad_norm);
    if (!r.skipped) {
      if (settings_.clip_norm > 0 && r.grad_norm > settings_.clip_norm) {
        const auto factor = static_cast<float>(settings_.clip_norm / r.grad_norm);
        for (const auto& g : views) scale(backend_, g, factor);
      }
      for (Slot& s : slots_) {
        float* master = s.param ? s.param : s.master.data();
        adamw_step(backend_, AdamWArgs<float>{.param = TensorView<float, 1>(master, {s.n}, "param"),
                                              .grad = ConstView<float, 1>(s.grad, {s.n}, "grad"),
                                              .m = s.m.flat("m"),
                                              .v = s.v.flat("v"),
                                              .lr = r.lr,
                                              .beta1 = settings_.beta1,
                                              .beta2 = settings_.beta2,
                                              .eps = settings_.eps,
                                              .weight_decay = settings_.weight_decay,
                                              .decay = s.decay,
                                              .step = ++s.updates});
        if (!s.param)
          convert(backend_, ConstView<float, 1>(s.master.flat("master")), TensorView<T, 1>(s.narrowed, {s.n}, "param"));
      }
      model_.refresh_derived(backend_, params_);
    }
    ++step_;
    return r;
  }

  /// Writes the optimiser state to `dir/optimizer.safetensors` ("m.<name>", "v.<name>",
  /// "master.<name>" for non-float32 parameters, "updates.<name>") and `dir/trainer.json`
  /// ({"step": steps(), plus `extra`'s keys, e.g. the data order's state}). The model itself is
  /// saved by the caller (`Model::save`, loadable by moss-run).
  void save(const std::filesystem::path& dir, const io::Json& extra = io::Json::object()) const {
    std::filesystem::create_directories(dir);
    SafetensorsWriter w;
    const auto host = [&](const Buffer<float>& b) {
      std::vector<float> v(static_cast<std::size_t>(b.size()));
      download(backend_, v.data(), b.data(), b.size());
      return v;
    };
    for (const Slot& s : slots_) {
      w.add("m." + s.name, {s.n}, host(s.m));
      w.add("v." + s.name, {s.n}, host(s.v));
      if (!s.param) w.add("master." + s.name, {s.n}, host(s.master));
      w.add("updates." + s.name, {1}, std::vector<std::int64_t>{s.updates});
    }
    w.write(dir / "optimizer.safetensors");
    io::Json j = extra;
    j["step"] = step_;
    std::ofstream out(dir / "trainer.json");
    out << io::dump_json(j) << "\n";
    MOSS_EXPECTS(out.good(), io_error, (dir / "trainer.json").string(), ": could not write the trainer state");
  }

  /// Reads what `save` wrote (after the parameters were loaded from the same folder) and returns
  /// trainer.json. `io_error` naming the file and tensor for a missing or misshapen entry.
  io::Json load(const std::filesystem::path& dir) {
    const SafetensorsFile f(dir / "optimizer.safetensors");
    const auto into = [&](Buffer<float>& b, const std::string& name, index_t n) {
      const std::vector<float> v = f.read_as<float>(name, {n});
      b = upload(backend_, v.data(), n);
    };
    for (Slot& s : slots_) {
      into(s.m, "m." + s.name, s.n);
      into(s.v, "v." + s.name, s.n);
      if (!s.param) {
        into(s.master, "master." + s.name, s.n);
        convert(backend_, ConstView<float, 1>(s.master.flat("master")), TensorView<T, 1>(s.narrowed, {s.n}, "param"));
      }
      s.updates = f.read_as<std::int64_t>("updates." + s.name, {1}).at(0);
    }
    const std::filesystem::path json = dir / "trainer.json";
    io::Json j = io::parse_json(io::read_text_file(json), json.string());
    const io::JsonRef r(j, json.string());
    const std::int64_t step = r.at("step").as_int();
    MOSS_EXPECTS(step >= 0, io_error, json.string(), ": step is ", step, ", expected >= 0");
    step_ = step;
    model_.refresh_derived(backend_, params_);
    return j;
  }

 private:
  struct Slot {
    std::string name;
    index_t n = 0;
    bool decay = true;
    float* param = nullptr;  // the float32 parameter (its own master), or null
    T* narrowed = nullptr;   // the stored parameter when it is not float32
    Buffer<float> master, m, v;
    float* grad = nullptr;
    std::int64_t updates = 0;  // AdamW steps applied (bias correction)
  };

  Backend backend_;
  const Model& model_;
  Params& params_;
  TrainerSettings settings_;
  Grads grads_;
  std::vector<Slot> slots_;
  std::int64_t step_ = 0;
};

}  // namespace moss
