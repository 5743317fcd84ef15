// examples/train/moss_train.hpp: what moss-train's translation units share: the run's settings
// (saved in trainer.json so --resume continues the run), the training loop over any trainable
// `LanguageModel` on either backend, and one entry point per model family. Each family is
// compiled in its own file (mamba.cpp, moe_mamba.cpp, ...: f32 and bf16, host and CUDA), so the
// heavy instantiations build in parallel; examples/train.cpp parses the command line.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moss/io/checkpoint.hpp"
#include "moss/models/language_model.hpp"
#include "moss/models/variants.hpp"
#include "moss/train/data.hpp"
#include "moss/train/trainer.hpp"

namespace moss::train_cli {

namespace fs = std::filesystem;

/// Everything that defines a run (saved in trainer.json so --resume continues it).
struct RunSettings {
  std::vector<std::string> data;
  std::int64_t steps = 300, batch = 8, micro = 1, seq_len = 128, seed = 0;
  std::int64_t layers = 2, d_model = 128, d_state = 16, expand = 2;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, clip = 1.0, val_fraction = 0.05;
  std::int64_t warmup = 30;
  std::string activations = "keep";
  std::string model = "mamba";  ///< mamba, moe-mamba, blackmamba, rom or rom-moe
  std::string dtype = "f32";    ///< storage type of weights and activations: f32 or bf16 (float32 masters)
  std::int64_t experts = 8;     ///< experts per routed layer
  std::int64_t top_k = 1;       ///< experts per token (the papers' models route top-1)
  double capacity_factor = 0;   ///< 0: dropless
  double aux_coef = 0.01, z_coef = 0.001;

  io::Json to_json() const {
    io::Json j = io::Json::object();
    j["data"] = data;
    j["steps"] = steps;
    j["batch"] = batch;
    j["micro_batches"] = micro;
    j["seq_len"] = seq_len;
    j["seed"] = seed;
    j["layers"] = layers;
    j["d_model"] = d_model;
    j["d_state"] = d_state;
    j["expand"] = expand;
    j["lr"] = lr;
    j["min_lr"] = min_lr;
    j["warmup"] = warmup;
    j["weight_decay"] = weight_decay;
    j["clip"] = clip;
    j["val_fraction"] = val_fraction;
    j["activations"] = activations;
    j["model"] = model;
    j["dtype"] = dtype;
    j["experts"] = experts;
    j["top_k"] = top_k;
    j["capacity_factor"] = capacity_factor;
    j["aux_coef"] = aux_coef;
    j["z_coef"] = z_coef;
    return j;
  }
  static RunSettings from_json(const io::Json& doc, const std::string& where) {
    const io::JsonRef j(doc, where);
    RunSettings s;
    for (const auto& d : j.at("data").json()) s.data.push_back(d.get<std::string>());
    s.steps = j.at("steps").as_int();
    s.batch = j.at("batch").as_int();
    s.micro = j.at("micro_batches").as_int();
    s.seq_len = j.at("seq_len").as_int();
    s.seed = j.at("seed").as_int();
    s.layers = j.at("layers").as_int();
    s.d_model = j.at("d_model").as_int();
    s.d_state = j.at("d_state").as_int();
    s.expand = j.at("expand").as_int();
    s.lr = j.at("lr").as_double();
    s.min_lr = j.at("min_lr").as_double();
    s.warmup = j.at("warmup").as_int();
    s.weight_decay = j.at("weight_decay").as_double();
    s.clip = j.at("clip").as_double();
    s.val_fraction = j.at("val_fraction").as_double();
    s.activations = j.at("activations").as_string();
    s.model = j.at("model").as_string();
    s.dtype = j.at("dtype").as_string();
    s.experts = j.at("experts").as_int();
    // Keys added after the first moss-train: absent in older runs, which had their defaults.
    j.read("top_k", s.top_k);
    j.read("capacity_factor", s.capacity_factor);
    j.read("aux_coef", s.aux_coef);
    j.read("z_coef", s.z_coef);
    return s;
  }
};

/// The run's cadence and where it goes (not part of the run: may change on --resume).
struct Control {
  fs::path out;
  std::int64_t eval_every = 100, eval_batches = 8, save_every = 0, stop_at = 0;
  bool quiet = false, resume = false;
  fs::path resume_dir;
  io::Json resumed;  ///< trainer.json's extra section of the run resumed
};

/// One moss-train job: the run, its control, the model's config and the device ("cpu", "cuda").
struct Job {
  RunSettings s;
  Control c;
  MambaConfig cfg;
  std::string device;
};

/// The entry point of each model family (one translation unit each).
int train_mamba(const Job& job);
int train_moe_mamba(const Job& job);
int train_blackmamba(const Job& job);
int train_rom(const Job& job);
int train_rom_moe(const Job& job);

/// The text files named by `spec` (files, or folders whose *.txt files are read sorted), in order.
inline std::vector<fs::path> data_files(const std::vector<std::string>& spec) {
  std::vector<fs::path> files;
  for (const std::string& item : spec) {
    std::error_code ec;
    if (fs::is_directory(item, ec)) {
      std::vector<fs::path> in;
      for (const auto& e : fs::directory_iterator(item))
        if (e.is_regular_file() && e.path().extension() == ".txt") in.push_back(e.path());
      std::sort(in.begin(), in.end());
      MOSS_EXPECTS(!in.empty(), io_error, "--data: folder ", item,
                   " holds no .txt file (scripts/corpus writes the default corpus to data/corpus)");
      files.insert(files.end(), in.begin(), in.end());
    } else {
      MOSS_EXPECTS(fs::exists(item, ec), io_error, "--data: ", item,
                   " does not exist (scripts/corpus writes the default corpus to data/corpus)");
      files.emplace_back(item);
    }
  }
  return files;
}

/// Mean validation loss over the first `batches` validation batches (all when 0).
template <class Model, class Backend>
double evaluate(const Backend& backend, const Model& model, const typename Model::Params& p, const ByteCorpus& corpus,
                std::int64_t batches, std::int64_t seq_len) {
  const std::int64_t n =
      batches > 0 ? std::min<std::int64_t>(batches, corpus.num_val_batches()) : corpus.num_val_batches();
  double sum = 0;
  std::int64_t count = 0;
  typename Model::Grads g = model.make_grads(backend, p);  // the loss comes with gradients (not used)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::vector<std::int64_t> ids = corpus.val_batch(i);
    const auto rows = static_cast<index_t>(ids.size()) / (seq_len + 1);
    const auto r = model.loss_and_grads(
        backend, p, ConstView<std::int64_t, 2>(ids.data(), {rows, seq_len + 1}, "validation batch"), g);
    sum += static_cast<double>(r.loss) * static_cast<double>(r.count);
    count += r.count;
  }
  return count ? sum / static_cast<double>(count) : std::nan("");
}

/// `DIR/metrics.csv`: one row per step (losses in nats per byte; val_loss empty where not
/// evaluated; tokens_per_second: the training tokens of this session over its time spent in
/// training steps, evaluations and saves left out). A resumed run keeps the rows up to its step
/// and appends.
class Metrics {
 public:
  static constexpr const char* kHeader = "step,tokens,train_loss,val_loss,lr,grad_norm,aux_loss,tokens_per_second";

  Metrics(const fs::path& out, const fs::path& resumed_from, std::int64_t resumed_step) : path_(out / "metrics.csv") {
    std::vector<std::string> keep{kHeader};
    if (!resumed_from.empty()) {  // the earlier rows, up to the step the run resumes from
      std::ifstream in(resumed_from / "metrics.csv");
      std::string line;
      std::getline(in, line);
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        if (std::stoll(line.substr(0, line.find(','))) > resumed_step) break;
        keep.push_back(line);
      }
    }
    fs::create_directories(out);
    std::ofstream o(path_, std::ios::trunc);
    MOSS_EXPECTS(o.good(), io_error, "--out: cannot write ", path_.string());
    for (const auto& l : keep) o << l << '\n';
  }
  /// Appends one step's row (`val` NaN: not evaluated).
  void add(std::int64_t step, std::int64_t tokens, const TrainStepResult& r, double val, double tokens_per_second) {
    std::ofstream o(path_, std::ios::app);
    char row[256];
    char v[32] = "";
    if (!std::isnan(val)) std::snprintf(v, sizeof v, "%.6f", val);
    std::snprintf(row, sizeof row, "%lld,%lld,%.6f,%s,%.6g,%.6g,%.6g,%.1f\n", static_cast<long long>(step),
                  static_cast<long long>(tokens), r.loss, v, r.lr, r.grad_norm, r.aux_loss, tokens_per_second);
    o << row;
  }

 private:
  fs::path path_;
};

/// The console's report of progress: a bar redrawn in place on a terminal, plain lines (every
/// 10th step, the first and the last) otherwise, so logs and tests read the same lines.
class Progress {
 public:
  Progress(bool quiet, std::int64_t total) : quiet_(quiet), tty_(::isatty(::fileno(stdout)) != 0), total_(total) {}
  void step(std::int64_t done, std::int64_t first, const TrainStepResult& r, double tokens_per_second, double seconds) {
    if (quiet_) return;
    if (tty_) {
      const double frac = static_cast<double>(done) / static_cast<double>(total_);
      const int width = 24, filled = static_cast<int>(frac * width);
      const double per_step = seconds / static_cast<double>(std::max<std::int64_t>(1, done - first));
      const double eta = per_step * static_cast<double>(total_ - done);
      std::printf("\r[%-*s] step %lld/%lld  loss %.4f  aux %.4f  %.0f tokens/s  ETA %s   ", width,
                  std::string(static_cast<std::size_t>(filled), '#').c_str(), static_cast<long long>(done),
                  static_cast<long long>(total_), r.loss, r.aux_loss, tokens_per_second, clock(eta).c_str());
      std::fflush(stdout);
      open_ = true;
      return;
    }
    if (done % 10 == 0 || done == first + 1 || done == total_)
      std::printf("step %5lld  loss %.4f  aux %.4f  grad norm %.3f%s  lr %.2e  %.0f tokens/s\n",
                  static_cast<long long>(done), r.loss, r.aux_loss, r.grad_norm,
                  r.skipped ? " (not finite: skipped)" : "", r.lr, tokens_per_second);
    std::fflush(stdout);
  }
  /// A line of its own (ends a bar in progress).
  void line(const std::string& text) {
    if (quiet_) return;
    if (open_) std::printf("\n");
    open_ = false;
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }
  void finish() {
    if (open_) std::printf("\n");
    open_ = false;
  }

 private:
  static std::string clock(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    const auto t = static_cast<long long>(s + 0.5);
    char b[32];
    std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    return b;
  }
  bool quiet_, tty_, open_ = false;
  std::int64_t total_;
};

/// Parameters of a model: all of them, and those one token uses (an expert stack, a tensor
/// (X, ...) with X > 1, counts K/X of its values).
struct ParameterCounts {
  std::int64_t total = 0, active = 0;
};
template <class Model, class P>
ParameterCounts parameter_counts(const Model& model, P& params, std::int64_t k) {
  ParameterCounts c;
  model.visit_params(params, [&](const std::string&, auto& t) {
    const std::int64_t n = t.numel();
    c.total += n;
    const std::vector<index_t> dims = t.dims();
    c.active += dims.size() == 3 && dims[0] > 1 ? n / dims[0] * std::min<std::int64_t>(k, dims[0]) : n;
  });
  return c;
}

template <class Model, class Backend>
void save(const Backend& backend, const Model& model, const typename Model::Params& p,
          const Trainer<Model, Backend>& trainer, const ByteCorpus& corpus, const RunSettings& s, const fs::path& dir) {
  model.save(backend, p, dir);
  io::Json extra = io::Json::object();
  extra["data_state"] = corpus.state().to_json();
  extra["settings"] = s.to_json();
  trainer.save(dir, extra);
}

/// Trains `model` as `s` says (a fresh run, or the one in c.resume_dir) on `backend`.
template <class Model, class Backend>
int train(const Backend& backend, const Model& model, const RunSettings& s, const Control& c) {
  const std::vector<fs::path> files = data_files(s.data);
  ByteCorpus corpus({.files = files,
                     .val_fraction = s.val_fraction,
                     .batch = s.batch,
                     .seq_len = s.seq_len,
                     .seed = static_cast<std::uint64_t>(s.seed)});
  typename Model::Params params = c.resume ? model.load(backend, Checkpoint(c.resume_dir))
                                           : model.init(backend, static_cast<std::uint64_t>(s.seed));
  TrainerSettings ts;
  ts.schedule = {.lr = s.lr, .min_lr = s.min_lr, .warmup_steps = s.warmup, .total_steps = s.steps};
  ts.weight_decay = s.weight_decay;
  ts.clip_norm = s.clip;
  ts.activations = s.activations == "keep" ? ActivationPolicy::keep : ActivationPolicy::recompute;
  Trainer<Model, Backend> trainer(model, params, ts, backend);
  if (c.resume) {
    trainer.load(c.resume_dir);
    corpus.restore(ByteCorpusState::from_json(c.resumed.at("data_state")));
  }

  const ParameterCounts counts = parameter_counts(model, params, s.top_k);
  if (!c.quiet)
    std::printf(
        "moss-train: %s %s, %lld layers, d_model %lld, %.2f M parameters (%.2f M active per token); %lld training "
        "bytes in %zu files; batch %lld x %lld micro x %lld bytes; steps %lld to %lld\n",
        c.resume ? "resuming" : "training", s.model.c_str(), static_cast<long long>(s.layers),
        static_cast<long long>(s.d_model), static_cast<double>(counts.total) / 1e6,
        static_cast<double>(counts.active) / 1e6, static_cast<long long>(corpus.train_tokens()), files.size(),
        static_cast<long long>(s.batch), static_cast<long long>(s.micro), static_cast<long long>(s.seq_len),
        static_cast<long long>(trainer.steps()), static_cast<long long>(s.steps));
  std::fflush(stdout);  // a log file sees each line as it is printed

  Metrics metrics(c.out, c.resume ? c.resume_dir : fs::path(), trainer.steps());
  Progress progress(c.quiet, s.steps);
  const std::int64_t first = trainer.steps();
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t tokens = 0, total_tokens = first * s.batch * s.micro * s.seq_len;
  double last_loss = std::nan(""), val = std::nan(""), eval_secs = 0;
  while (trainer.steps() < c.stop_at) {
    std::vector<std::vector<std::int64_t>> batches;
    std::vector<ConstView<std::int64_t, 2>> views;
    for (std::int64_t m = 0; m < s.micro; ++m) batches.push_back(corpus.next_batch());
    for (const auto& b : batches) views.emplace_back(b.data(), Extents<2>{s.batch, s.seq_len + 1}, "batch");
    const TrainStepResult r = trainer.step(views);
    tokens += s.batch * s.micro * s.seq_len;
    total_tokens += s.batch * s.micro * s.seq_len;
    last_loss = r.loss;
    const std::int64_t done = trainer.steps();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double train_secs = secs - eval_secs;  // training throughput: evaluations and saves left out
    const double tps = train_secs > 0 ? static_cast<double>(tokens) / train_secs : 0.0;
    progress.step(done, first, r, tps, secs);
    double step_val = std::nan("");
    const auto e0 = std::chrono::steady_clock::now();
    if ((c.eval_every > 0 && done % c.eval_every == 0) || done == c.stop_at) {
      step_val = val = evaluate(backend, model, params, corpus, c.eval_batches, s.seq_len);
      char b[128];
      std::snprintf(b, sizeof b, "step %5lld  validation loss %.4f nats/byte (%.3f bits/byte)",
                    static_cast<long long>(done), val, val / std::log(2.0));
      progress.line(b);
    }
    metrics.add(done, total_tokens, r, step_val, tps);
    if ((c.save_every > 0 && done % c.save_every == 0) || done == c.stop_at)
      save(backend, model, params, trainer, corpus, s, c.out);
    eval_secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
  }
  progress.finish();
  if (std::isnan(val)) val = evaluate(backend, model, params, corpus, c.eval_batches, s.seq_len);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "moss-train: %lld steps, last training loss %.4f, validation loss %.4f nats/byte, %.1f s; "
      "checkpoint %s (try: moss-run --checkpoint %s --prompt \"And \")\n",
      static_cast<long long>(trainer.steps()), last_loss, val, secs, c.out.string().c_str(), c.out.string().c_str());
  return 0;
}

/// Builds the model of type `Model` for `job` (routed blocks get --experts, --capacity-factor,
/// --aux-coef and --z-coef; a resumed run reads its blocks from its config.json) and trains it
/// on the job's device (`on_host`: whether this instance may train on the CPU).
template <class Model, bool on_host>
int run(const Job& job) {
  const auto make = [&] {
    if (job.c.resume) return Model(job.cfg);
    auto blocks = Model::default_block_configs();
    Model::for_each_routing(blocks, [&](auto& routing) {
      routing.num_experts = job.s.experts;
      routing.settings.capacity_factor = job.s.capacity_factor;
      routing.settings.aux_loss_coef = static_cast<float>(job.s.aux_coef);
      routing.settings.z_loss_coef = static_cast<float>(job.s.z_coef);
    });
    return Model(job.cfg, blocks);
  };
  const Model model = make();
#if defined(__CUDACC__)
  if (job.device == "cuda") {
    CudaStream stream;
    return train(Cuda{stream.get()}, model, job.s, job.c);
  }
#endif
  if constexpr (on_host) {
    return train(Host{}, model, job.s, job.c);
  } else {
    MOSS_EXPECTS(false, config_error, "--dtype ", job.s.dtype, " trains on the GPU only (--device cuda)");
    return 1;
  }
}

/// `run` of the float32 (F32) or bf16 (BF16) instance of a model family. bf16 storage is the
/// GPU's training type; on the CPU moss trains in float32 (main() refuses bf16 there), so the
/// bf16 instance is compiled for CUDA builds only.
template <class F32, class BF16>
int run_family(const Job& job) {
#if defined(__CUDACC__)
  if (job.s.dtype == "bf16") return run<BF16, false>(job);
#endif
  return run<F32, true>(job);
}

/// `run_family` of a family routed with --top-k experts per token (main() allows 1 and 2).
template <template <StorageType, int> class Family>
int run_top_k_family(const Job& job) {
  if (job.s.top_k == 2) return run_family<Family<float, 2>, Family<bf16, 2>>(job);
  return run_family<Family<float, 1>, Family<bf16, 1>>(job);
}

}  // namespace moss::train_cli
