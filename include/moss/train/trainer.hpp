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
//
// `step_resident` is the same step with the micro-batches in the backend's memory and every
// decision (norm, clipping, skipping, learning rate, update counts) left there too
// (moss/train/resident.hpp): it waits for nothing, so on CUDA `CapturedTrainStep`
// (moss/train/captured_step_cuda.cuh) captures it in one graph; `read_step` returns its result.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
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
#include "moss/train/resident.hpp"
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

  /// The optimiser steps taken so far (after resident steps: as of the last `read_step`).
  std::int64_t steps() const { return step_; }
  const TrainerSettings& settings() const { return settings_; }
  /// The backend the trainer runs on (on CUDA: its stream).
  const Backend& backend() const { return backend_; }
  /// Changes whenever `prepare_resident` remakes a buffer of the resident step (a graph captured
  /// before then holds stale addresses).
  std::uint64_t resident_layout() const { return resident_layout_; }
  /// The gradients of the last step (after clipping).
  const Grads& grads() const { return grads_; }

  /// One optimiser step over the micro-batches, each (batch, seq_len + 1) token ids in host
  /// memory (the model reads [:, :-1] and predicts [:, 1:]).
  TrainStepResult step(const std::vector<ConstView<std::int64_t, 2>>& micro_batches) {
    MOSS_EXPECTS(!micro_batches.empty(), config_error, "Trainer::step: no micro-batch given");
    pull_counters();
    counters_stale_ = true;  // the host counters move on: a later resident step uploads them
    TrainStepResult r;
    r.step = step_;
    const float dloss = 1.0f / static_cast<float>(micro_batches.size());
    RoutingReport report;  // the routed layers' auxiliary losses (their values; the gradients are in backward)
    for (std::size_t k = 0; k < micro_batches.size(); ++k) {
      typename Model::TrainOptions o = micro_batch_options(k, dloss);
      o.report = &report;
      const auto res = model_.loss_and_grads(backend_, params_, micro_batches[k], grads_, o);
      r.loss += static_cast<double>(res.loss) / static_cast<double>(micro_batches.size());
      r.count += res.count;
    }
    for (const RouterStats& st : report.read())
      r.aux_loss += (static_cast<double>(st.aux_loss) + st.z_loss) / static_cast<double>(micro_batches.size());
    const std::vector<TensorView<float, 1>> views = gradient_views();
    r.grad_norm = global_norm(backend_, views);
    r.lr = settings_.schedule.lr_at(step_);
    r.skipped = !std::isfinite(r.grad_norm);
    if (!r.skipped) {
      if (settings_.clip_norm > 0 && r.grad_norm > settings_.clip_norm) {
        const auto factor = static_cast<float>(settings_.clip_norm / r.grad_norm);
        for (const auto& g : views) scale(backend_, g, factor);
      }
      for (Slot& s : slots_) {
        adamw_step(backend_, adamw_args(s, r.lr, ++s.updates));
        narrow(s);
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
    // After resident steps the counters are the backend's (read here without changing the trainer).
    std::int64_t step = step_;
    std::vector<std::int64_t> updates;
    for (const Slot& s : slots_) updates.push_back(s.updates);
    if (pending_) download_counters(step, updates);
    std::filesystem::create_directories(dir);
    SafetensorsWriter w;
    const auto host = [&](const Buffer<float>& b) {
      std::vector<float> v(static_cast<std::size_t>(b.size()));
      download(backend_, v.data(), b.data(), b.size());
      return v;
    };
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      const Slot& s = slots_[k];
      w.add("m." + s.name, {s.n}, host(s.m));
      w.add("v." + s.name, {s.n}, host(s.v));
      if (!s.param) w.add("master." + s.name, {s.n}, host(s.master));
      w.add("updates." + s.name, {1}, std::vector<std::int64_t>{updates[k]});
    }
    w.write(dir / "optimizer.safetensors");
    io::Json j = extra;
    j["step"] = step;
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
    pending_ = false;
    counters_stale_ = true;
    model_.refresh_derived(backend_, params_);
    return j;
  }

  /// `step` with every micro-batch in the backend's memory ((batch, seq_len + 1) token ids) and
  /// nothing that waits for the device: the losses, the norm, the clipping decision, the learning
  /// rate and the update counts stay in the backend's memory (moss/train/resident.hpp), so on CUDA
  /// the whole step can be captured in a CUDA graph (`CapturedTrainStep`,
  /// moss/train/captured_step_cuda.cuh). `read_step` waits for it and returns what it did. The
  /// model's loss is `loss_and_grads_resident`'s. On the host the step gives the eager step's
  /// bits; on CUDA it agrees with it to rounding (the loss's own order and its factor folded into
  /// the logits' gradient; the rate and AdamW's scalars from the device's cos and pow). Routed
  /// layers' auxiliary losses are in the gradients but not reported (aux_loss is NaN).
  void step_resident(const std::vector<ConstView<std::int64_t, 2>>& micro_batches) {
    MOSS_EXPECTS(!micro_batches.empty(), config_error, "Trainer::step_resident: no micro-batch given");
    prepare_resident(micro_batches.size());
    fill_bytes(backend_, flags_, 0xff);
    const auto m = static_cast<index_t>(micro_batches.size());
    const float dloss = 1.0f / static_cast<float>(m);
    for (index_t k = 0; k < m; ++k)
      model_.loss_and_grads_resident(
          backend_, params_, micro_batches[static_cast<std::size_t>(k)], grads_,
          micro_batch_options(static_cast<std::size_t>(k), dloss),
          typename Model::ResidentLoss{mb_loss_.data() + k, mb_count_.data() + k, flags_.data(), flags_.data() + 1});
    const std::vector<TensorView<float, 1>> views = gradient_views();
    global_norm_sq_into(backend_, views, norm_sq_.data());
    StepControlParams c;
    c.schedule = settings_.schedule;
    c.clip_norm = settings_.clip_norm;
    c.beta1 = settings_.beta1;
    c.beta2 = settings_.beta2;
    c.eps = settings_.eps;
    c.weight_decay = settings_.weight_decay;
    c.mb_loss = mb_loss_.data();
    c.mb_count = mb_count_.data();
    c.micro_batches = m;
    c.norm_sq = norm_sq_.data();
    c.step = step_dev_.data();
    c.updates = updates_dev_.data();
    c.decay = decay_dev_.data();
    c.scalars = scalars_.data();
    c.tensors = static_cast<index_t>(slots_.size());
    c.clip_factor = clip_factor_.data();
    c.out = state_.data();
    step_control(backend_, c);
    if (settings_.clip_norm > 0)
      for (const auto& g : views) scale_by(backend_, g, clip_factor_.data());
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      // lr and the update count come from step_control (backend memory), not from these arguments.
      adamw_step_resident(backend_, adamw_args(slots_[k], 0.0, 1),
                          ResidentAdamW{state_.data(), updates_dev_.data() + k, scalars_.data() + k});
      narrow(slots_[k]);
    }
    model_.refresh_derived(backend_, params_);
    pending_ = true;
  }

  /// Waits for the last `step_resident` (queued or replayed in a graph) and returns what it did
  /// (aux_loss NaN: not measured). `shape_error` when a token of a micro-batch was outside
  /// [0, vocab): an input id (that step was skipped: its embedding rows and so its gradients were
  /// NaN) or a target (that row was counted as ignored), naming the flat position (row · seq_len
  /// + column of the micro-batch's inputs or targets).
  TrainStepResult read_step() {
    MOSS_EXPECTS(pending_, config_error, "Trainer::read_step: no resident step was queued");
    ResidentStepScalars st;
    unsigned long long flags[2] = {0, 0};
    download(backend_, &st, state_.data(), 1);
    download(backend_, flags, flags_.data(), 2);
    pull_counters();
    const auto where = "Trainer::step_resident";
    MOSS_EXPECTS(flags[0] == ~0ull, shape_error, where, ": an input token id outside [0, vocab) at flat position ",
                 flags[0], " of a micro-batch's inputs (the step was skipped: its gradients were NaN)");
    MOSS_EXPECTS(flags[1] == ~0ull, shape_error, where, ": a target token id outside [0, vocab) at flat position ",
                 flags[1], " of a micro-batch's targets (it was counted as ignored)");
    TrainStepResult r;
    r.loss = st.loss;
    r.count = st.count;
    r.grad_norm = st.grad_norm;
    r.lr = st.lr;
    r.aux_loss = std::numeric_limits<double>::quiet_NaN();
    r.skipped = st.skipped != 0;
    r.step = st.step;
    return r;
  }

  /// Makes the backend-memory state of the resident step for `micro_batches` micro-batches:
  /// buffers (made once; a captured graph keeps their addresses), and the step and update
  /// counters copied from the host's when those moved since (after an eager `step` or `load`;
  /// synchronises). `step_resident` calls it; `CapturedTrainStep` calls it before it captures and
  /// before every replay.
  void prepare_resident(std::size_t micro_batches) {
    const auto m = static_cast<index_t>(micro_batches);
    if (mb_loss_.size() < m) {  // grown only: a captured step keeps the addresses it was captured with
      mb_loss_ = backend_.template alloc<float>(m, "resident step losses");
      mb_count_ = backend_.template alloc<std::int64_t>(m, "resident step counts");
      ++resident_layout_;
    }
    if (!state_.data()) {
      flags_ = backend_.template alloc<unsigned long long>(2, "resident step flags");
      norm_sq_ = backend_.template alloc<double>(1, "resident step norm");
      clip_factor_ = backend_.template alloc<float>(1, "resident step clip factor");
      state_ = backend_.template alloc<ResidentStepScalars>(1, "resident step scalars");
      scalars_ = backend_.template alloc<AdamWScalars>(static_cast<index_t>(slots_.size()), "AdamW scalars");
      std::vector<std::uint8_t> decay;
      for (const Slot& sl : slots_) decay.push_back(sl.decay ? 1 : 0);
      decay_dev_ = upload(backend_, decay.data(), static_cast<index_t>(decay.size()));
    }
    if (counters_stale_) {
      pull_counters();
      std::vector<std::int64_t> updates;
      for (const Slot& sl : slots_) updates.push_back(sl.updates);
      const auto n = static_cast<index_t>(updates.size());
      if (!step_dev_.data()) {
        step_dev_ = backend_.template alloc<std::int64_t>(1, "resident step counter");
        updates_dev_ = backend_.template alloc<std::int64_t>(n, "resident update counts");
      }
      copy(backend_, step_dev_.flat("step counter"), ConstView<std::int64_t, 1>(&step_, {1}, "step"));
      copy(backend_, updates_dev_.flat("update counts"), ConstView<std::int64_t, 1>(updates.data(), {n}, "updates"));
      backend_.synchronize();  // the host copies are read before they go
      counters_stale_ = false;
    }
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

  /// After resident steps: the step and update counters back from the backend's memory
  /// (synchronises), so that the host's copies are current.
  void pull_counters() {
    if (!pending_) return;
    std::vector<std::int64_t> updates(slots_.size());
    download_counters(step_, updates);
    for (std::size_t k = 0; k < slots_.size(); ++k) slots_[k].updates = updates[k];
    pending_ = false;
  }
  /// The backend's step and update counters (synchronises); `updates` has one entry per tensor.
  void download_counters(std::int64_t& step, std::vector<std::int64_t>& updates) const {
    backend_.synchronize();
    download(backend_, &step, step_dev_.data(), 1);
    download(backend_, updates.data(), updates_dev_.data(), static_cast<index_t>(updates.size()));
  }
  /// The options of micro-batch k of a step whose objective is the mean over micro-batches
  /// (dloss = 1 / their count): the gradients are written by the first and added by the rest.
  typename Model::TrainOptions micro_batch_options(std::size_t k, float dloss) const {
    typename Model::TrainOptions o;
    o.activations = settings_.activations;
    o.accumulate = k > 0;
    o.dloss = dloss;
    o.chunk_rows = settings_.chunk_rows;
    return o;
  }
  /// 1-D views of every gradient, in checkpoint order.
  std::vector<TensorView<float, 1>> gradient_views() const {
    std::vector<TensorView<float, 1>> views;
    for (const Slot& s : slots_) views.emplace_back(s.grad, Extents<1>{s.n}, "gradient");
    return views;
  }
  /// AdamW's arguments for tensor `s` (its float32 master weights) at rate `lr` and update count `t`.
  AdamWArgs<float> adamw_args(Slot& s, double lr, std::int64_t t) const {
    float* master = s.param ? s.param : s.master.data();
    return AdamWArgs<float>{.param = TensorView<float, 1>(master, {s.n}, "param"),
                            .grad = ConstView<float, 1>(s.grad, {s.n}, "grad"),
                            .m = s.m.flat("m"),
                            .v = s.v.flat("v"),
                            .lr = lr,
                            .beta1 = settings_.beta1,
                            .beta2 = settings_.beta2,
                            .eps = settings_.eps,
                            .weight_decay = settings_.weight_decay,
                            .decay = s.decay,
                            .step = t};
  }
  /// Rounds tensor `s`'s master weights into its stored parameter when that is not float32.
  void narrow(Slot& s) const {
    if (!s.param)
      convert(backend_, ConstView<float, 1>(s.master.flat("master")), TensorView<T, 1>(s.narrowed, {s.n}, "param"));
  }

  Backend backend_;
  const Model& model_;
  Params& params_;
  TrainerSettings settings_;
  Grads grads_;
  std::vector<Slot> slots_;
  std::int64_t step_ = 0;
  // The resident step's state (backend memory; moss/train/resident.hpp), made by prepare_resident.
  Buffer<float> mb_loss_;
  Buffer<std::int64_t> mb_count_;
  Buffer<unsigned long long> flags_;  // the first bad input row, the first bad target row (~0: none)
  Buffer<double> norm_sq_;
  Buffer<float> clip_factor_;
  Buffer<ResidentStepScalars> state_;
  Buffer<AdamWScalars> scalars_;
  Buffer<std::uint8_t> decay_dev_;
  Buffer<std::int64_t> step_dev_, updates_dev_;
  std::uint64_t resident_layout_ = 0;  // bumped when a resident buffer is remade (its address changes)
  bool counters_stale_ = true;         // the host's step and update counters moved since the last upload
  bool pending_ = false;               // a resident step ran since the counters were last pulled
};

}  // namespace moss
