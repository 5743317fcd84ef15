// moss-train: trains a byte-level Mamba (or MoE-Mamba) language model on text files, on the CPU
// or (built with nvcc) the GPU, float32 or bf16 with float32 master weights, with AdamW, clipping, warmup + cosine
// decay and gradient accumulation; evaluates on each file's held-out tail; saves a checkpoint moss-run loads
// (config.json says "tokenizer": "bytes", so `moss-run --prompt TEXT` prints generated text) plus the optimiser and
// data state, from which --resume continues exactly as if the run had never stopped.
//
//   moss-train --data PATH[,PATH...] [--model mamba|moe-mamba] [--out DIR] [--steps N] [...]
//   moss-train --resume DIR [--stop-at N] [...]
//
// Same seed, data and settings give bitwise the same loss curve (docs/training.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "moss/io/checkpoint.hpp"
#include "moss/models/language_model.hpp"
#include "moss/models/variants.hpp"
#include "moss/train/data.hpp"
#include "moss/train/trainer.hpp"

namespace fs = std::filesystem;

namespace {

constexpr const char* kUsage =
    "usage: moss-train --data PATH[,PATH...] [--out DIR] [options]\n"
    "       moss-train --resume DIR [--stop-at N] [--out DIR] [--quiet]\n"
    "  --data PATHS      text files, or folders whose *.txt files are read (sorted), comma-separated;\n"
    "                    each file's last --val-fraction is held out for validation\n"
    "  --out DIR         where the checkpoint goes (default runs/moss-train; with --resume: DIR itself)\n"
    "  --resume DIR      continue the run saved in DIR (its settings, model, optimiser and data order)\n"
    "  --steps N         optimiser steps in total: the schedule's length (default 300)\n"
    "  --stop-at N       stop (and save) after step N < --steps; --resume continues from there\n"
    "  --batch B         sequences per micro-batch (default 8)\n"
    "  --micro-batches M micro-batches per step, gradients accumulated (default 1)\n"
    "  --seq-len L       bytes per sequence (default 128)\n"
    "  --model M         mamba (default) or moe-mamba (Mamba and Switch-MoE layers alternating:\n"
    "                    --layers even; ReLU MLP experts of width 3 x d_model, top-1)\n"
    "  --experts X       experts per MoE layer (default 8)\n"
    "  --dtype f32|bf16  storage type of weights and activations (default f32; bf16 keeps float32\n"
    "                    master weights for the optimiser)\n"
    "  --device cpu|cuda where to train (default: cuda when built with nvcc and a GPU is visible)\n"
    "  --layers N --d-model D --d-state N --expand E   model size (default 2, 128, 16, 2)\n"
    "  --lr X --min-lr X --warmup N   peak rate, final rate, warmup steps (default 3e-3, 3e-4, 30)\n"
    "  --weight-decay X  AdamW decoupled decay (default 0.1; none on norms, biases, A_log, D)\n"
    "  --clip X          global gradient-norm clipping (default 1.0; 0 turns it off)\n"
    "  --activations keep|recompute   what the blocks keep for the backward pass (default keep)\n"
    "  --seed S          initial weights and data order (default 0)\n"
    "  --val-fraction X  held-out fraction of each file (default 0.05)\n"
    "  --eval-every N    validation every N steps and at the end (default 100; 0: only at the end)\n"
    "  --eval-batches N  validation batches per evaluation (default 8; 0: all)\n"
    "  --save-every N    checkpoint every N steps and at the end (default 0: only at the end)\n"
    "  --quiet           print only the final summary\n";

/// Everything that defines a run (saved in trainer.json so --resume continues it).
struct RunSettings {
  std::vector<std::string> data;
  std::int64_t steps = 300, batch = 8, micro = 1, seq_len = 128, seed = 0;
  std::int64_t layers = 2, d_model = 128, d_state = 16, expand = 2;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, clip = 1.0, val_fraction = 0.05;
  std::int64_t warmup = 30;
  std::string activations = "keep";
  std::string model = "mamba";  ///< mamba or moe-mamba
  std::string dtype = "f32";    ///< storage type of weights and activations: f32 or bf16 (float32 masters)
  std::int64_t experts = 8;     ///< moe-mamba: experts per MoE layer (Switch top-1, ReLU MLP, d_ff 3·d_model)

  moss::io::Json to_json() const {
    moss::io::Json j = moss::io::Json::object();
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
    return j;
  }
  static RunSettings from_json(const moss::io::Json& doc, const std::string& where) {
    const moss::io::JsonRef j(doc, where);
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
    s.lr = j.at("lr").json().get<double>();
    s.min_lr = j.at("min_lr").json().get<double>();
    s.warmup = j.at("warmup").as_int();
    s.weight_decay = j.at("weight_decay").json().get<double>();
    s.clip = j.at("clip").json().get<double>();
    s.val_fraction = j.at("val_fraction").json().get<double>();
    s.activations = j.at("activations").as_string();
    s.model = j.at("model").as_string();
    s.dtype = j.at("dtype").as_string();
    s.experts = j.at("experts").as_int();
    return s;
  }
};

/// The text files named by `spec` (comma-separated files or folders of *.txt), in order.
std::vector<fs::path> data_files(const std::vector<std::string>& spec) {
  std::vector<fs::path> files;
  for (const std::string& item : spec) {
    std::error_code ec;
    if (fs::is_directory(item, ec)) {
      std::vector<fs::path> in;
      for (const auto& e : fs::directory_iterator(item))
        if (e.is_regular_file() && e.path().extension() == ".txt") in.push_back(e.path());
      std::sort(in.begin(), in.end());
      MOSS_EXPECTS(!in.empty(), moss::io_error, "--data: folder ", item,
                   " holds no .txt file (scripts/corpus writes the default corpus to data/corpus)");
      files.insert(files.end(), in.begin(), in.end());
    } else {
      MOSS_EXPECTS(fs::exists(item, ec), moss::io_error, "--data: ", item,
                   " does not exist (scripts/corpus writes the default corpus to data/corpus)");
      files.emplace_back(item);
    }
  }
  return files;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

/// Mean validation loss over the first `batches` validation batches (all when 0).
template <class Model, class Backend>
double evaluate(const Backend& backend, const Model& model, const typename Model::Params& p,
                const moss::ByteCorpus& corpus, std::int64_t batches, std::int64_t seq_len) {
  const std::int64_t n =
      batches > 0 ? std::min<std::int64_t>(batches, corpus.num_val_batches()) : corpus.num_val_batches();
  double sum = 0;
  std::int64_t count = 0;
  typename Model::Grads g = model.make_grads(backend, p);  // the loss comes with gradients (not used)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::vector<std::int64_t> ids = corpus.val_batch(i);
    const auto rows = static_cast<moss::index_t>(ids.size()) / (seq_len + 1);
    const auto r = model.loss_and_grads(
        backend, p, moss::ConstView<std::int64_t, 2>(ids.data(), {rows, seq_len + 1}, "validation batch"), g);
    sum += static_cast<double>(r.loss) * static_cast<double>(r.count);
    count += r.count;
  }
  return count ? sum / static_cast<double>(count) : std::nan("");
}

template <class Model, class Backend>
void save(const Backend& backend, const Model& model, const typename Model::Params& p,
          const moss::Trainer<Model, Backend>& trainer, const moss::ByteCorpus& corpus, const RunSettings& s,
          const fs::path& dir) {
  model.save(backend, p, dir);
  moss::io::Json extra = moss::io::Json::object();
  extra["data_state"] = corpus.state().to_json();
  extra["settings"] = s.to_json();
  trainer.save(dir, extra);
}

/// The run's cadence and where it goes (not part of the run: may change on --resume).
struct Control {
  fs::path out;
  std::int64_t eval_every, eval_batches, save_every, stop_at;
  bool quiet, resume;
  fs::path resume_dir;
  moss::io::Json resumed;
};

/// Trains `model` as `s` says (a fresh run, or the one in c.resume_dir).
template <class Model, class Backend>
int train(const Backend& backend, const Model& model, const RunSettings& s, const Control& c) {
  const fs::path& out = c.out;
  const std::int64_t eval_every = c.eval_every, eval_batches = c.eval_batches, save_every = c.save_every,
                     stop_at = c.stop_at;
  const bool quiet = c.quiet, resume = c.resume;
  const std::vector<fs::path> files = data_files(s.data);
  moss::ByteCorpus corpus({.files = files,
                           .val_fraction = s.val_fraction,
                           .batch = s.batch,
                           .seq_len = s.seq_len,
                           .seed = static_cast<std::uint64_t>(s.seed)});
  typename Model::Params params = resume ? model.load(backend, moss::Checkpoint(c.resume_dir))
                                         : model.init(backend, static_cast<std::uint64_t>(s.seed));
  moss::TrainerSettings ts;
  ts.schedule = {.lr = s.lr, .min_lr = s.min_lr, .warmup_steps = s.warmup, .total_steps = s.steps};
  ts.weight_decay = s.weight_decay;
  ts.clip_norm = s.clip;
  ts.activations = s.activations == "keep" ? moss::ActivationPolicy::keep : moss::ActivationPolicy::recompute;
  moss::Trainer<Model, Backend> trainer(model, params, ts, backend);
  if (resume) {
    trainer.load(c.resume_dir);
    corpus.restore(moss::ByteCorpusState::from_json(c.resumed.at("data_state")));
  }

  std::int64_t params_count = 0;
  model.visit_params(params, [&](const std::string&, auto& t) { params_count += t.numel(); });
  if (!quiet)
    std::printf(
        "moss-train: %s %s, %lld layers, d_model %lld, %.2f M parameters; %lld training bytes in %zu files; "
        "batch %lld x %lld micro x %lld bytes; steps %lld to %lld\n",
        resume ? "resuming" : "training", s.model.c_str(), static_cast<long long>(s.layers),
        static_cast<long long>(s.d_model), static_cast<double>(params_count) / 1e6,
        static_cast<long long>(corpus.train_tokens()), files.size(), static_cast<long long>(s.batch),
        static_cast<long long>(s.micro), static_cast<long long>(s.seq_len), static_cast<long long>(trainer.steps()),
        static_cast<long long>(s.steps));

  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t tokens = 0;
  double last_loss = std::nan(""), val = std::nan("");
  while (trainer.steps() < stop_at) {
    std::vector<std::vector<std::int64_t>> batches;
    std::vector<moss::ConstView<std::int64_t, 2>> views;
    for (std::int64_t m = 0; m < s.micro; ++m) batches.push_back(corpus.next_batch());
    for (const auto& b : batches) views.emplace_back(b.data(), moss::Extents<2>{s.batch, s.seq_len + 1}, "batch");
    const moss::TrainStepResult r = trainer.step(views);
    tokens += s.batch * s.micro * s.seq_len;
    last_loss = r.loss;
    const std::int64_t done = trainer.steps();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!quiet && (done % 10 == 0 || done == 1 || done == s.steps))
      std::printf("step %5lld  loss %.4f  grad norm %.3f%s  lr %.2e  %.0f tokens/s\n", static_cast<long long>(done),
                  r.loss, r.grad_norm, r.skipped ? " (not finite: skipped)" : "", r.lr,
                  secs > 0 ? static_cast<double>(tokens) / secs : 0.0);
    if ((eval_every > 0 && done % eval_every == 0) || done == stop_at) {
      val = evaluate(backend, model, params, corpus, eval_batches, s.seq_len);
      if (!quiet)
        std::printf("step %5lld  validation loss %.4f nats/byte (%.3f bits/byte)\n", static_cast<long long>(done), val,
                    val / std::log(2.0));
    }
    if ((save_every > 0 && done % save_every == 0) || done == stop_at)
      save(backend, model, params, trainer, corpus, s, out);
  }
  if (std::isnan(val)) val = evaluate(backend, model, params, corpus, eval_batches, s.seq_len);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "moss-train: %lld steps, last training loss %.4f, validation loss %.4f nats/byte, %.1f s; "
      "checkpoint %s (try: moss-run --checkpoint %s --prompt \"And \")\n",
      static_cast<long long>(trainer.steps()), last_loss, val, secs, out.string().c_str(), out.string().c_str());
  return 0;
}

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(
      argc, argv,
      {"--data",         "--out",        "--resume",       "--steps",      "--batch",       "--micro-batches",
       "--seq-len",      "--layers",     "--d-model",      "--d-state",    "--expand",      "--lr",
       "--min-lr",       "--warmup",     "--weight-decay", "--clip",       "--activations", "--seed",
       "--val-fraction", "--eval-every", "--eval-batches", "--save-every", "--stop-at",     "--model",
       "--experts",      "--dtype",      "--device"},
      {"--help", "-h", "--quiet"});
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  const bool resume = args.has("--resume");
  RunSettings s;
  moss::io::Json resumed;
  if (resume) {
    const fs::path dir = args.get("--resume");
    const fs::path json = dir / "trainer.json";
    MOSS_EXPECTS(fs::exists(json), moss::io_error, "--resume: ", dir.string(),
                 " holds no trainer.json (is it a moss-train checkpoint?)");
    resumed = moss::io::parse_json(moss::io::read_text_file(json), json.string());
    s = RunSettings::from_json(resumed.at("settings"), json.string() + ": settings");
    for (const char* fixed :
         {"--data",    "--steps",        "--model",   "--experts",     "--dtype",  "--batch",       "--micro-batches",
          "--seq-len", "--layers",       "--d-model", "--d-state",     "--expand", "--lr",          "--min-lr",
          "--warmup",  "--weight-decay", "--clip",    "--activations", "--seed",   "--val-fraction"})
      MOSS_EXPECTS(!args.has(fixed), moss::config_error, "--resume continues a run with its own settings; ", fixed,
                   " cannot change (only --stop-at, --out, --eval-every, --eval-batches, --save-every, --quiet)");
  } else {
    MOSS_EXPECTS(args.has("--data"), moss::config_error, "--data (or --resume) is required\n", kUsage);
    s.data = split(args.get("--data"));
    s.steps = args.get_int("--steps", s.steps);
    s.batch = args.get_int("--batch", s.batch);
    s.micro = args.get_int("--micro-batches", s.micro);
    s.seq_len = args.get_int("--seq-len", s.seq_len);
    s.layers = args.get_int("--layers", s.layers);
    s.d_model = args.get_int("--d-model", s.d_model);
    s.d_state = args.get_int("--d-state", s.d_state);
    s.expand = args.get_int("--expand", s.expand);
    s.lr = args.get_double("--lr", s.lr);
    s.min_lr = args.get_double("--min-lr", s.min_lr);
    s.warmup = args.get_int("--warmup", std::min(s.warmup, s.steps));
    s.weight_decay = args.get_double("--weight-decay", s.weight_decay);
    s.clip = args.get_double("--clip", s.clip);
    s.activations = args.get("--activations", s.activations);
    s.seed = args.get_int("--seed", s.seed);
    s.val_fraction = args.get_double("--val-fraction", s.val_fraction);
    s.model = args.get("--model", s.model);
    s.dtype = args.get("--dtype", s.dtype);
    s.experts = args.get_int("--experts", s.experts);
  }
  MOSS_EXPECTS(s.micro >= 1, moss::config_error, "--micro-batches is ", s.micro, ", expected >= 1");
  MOSS_EXPECTS(s.activations == "keep" || s.activations == "recompute", moss::config_error, "--activations is \"",
               s.activations, "\", expected keep or recompute");
  MOSS_EXPECTS(s.seed >= 0, moss::config_error, "--seed is ", s.seed, ", expected >= 0");
  const fs::path out = args.get("--out", resume ? args.get("--resume") : "runs/moss-train");
  const std::int64_t eval_every = args.get_int("--eval-every", 100);
  const std::int64_t eval_batches = args.get_int("--eval-batches", 8);
  const std::int64_t save_every = args.get_int("--save-every", 0);
  const bool quiet = args.has("--quiet");
  const std::int64_t stop_at = args.get_int("--stop-at", s.steps);
  MOSS_EXPECTS(stop_at >= 1 && stop_at <= s.steps, moss::config_error, "--stop-at is ", stop_at, ", expected in [1, ",
               s.steps, "] (the run's --steps)");
  MOSS_EXPECTS(eval_every >= 0 && eval_batches >= 0 && save_every >= 0, moss::config_error,
               "--eval-every, --eval-batches and --save-every must be >= 0");

  MOSS_EXPECTS(s.model == "mamba" || s.model == "moe-mamba", moss::config_error, "--model is \"", s.model,
               "\", expected mamba or moe-mamba");
  MOSS_EXPECTS(s.model != "moe-mamba" || s.layers % 2 == 0, moss::config_error, "--layers is ", s.layers,
               " but moe-mamba alternates Mamba and MoE layers: expected an even number");
  MOSS_EXPECTS(s.experts >= 1, moss::config_error, "--experts is ", s.experts, ", expected >= 1");
  Control c{out,     eval_every, eval_batches, save_every,
            stop_at, quiet,      resume,       resume ? fs::path(args.get("--resume")) : fs::path(),
            resumed};
  moss::MambaConfig cfg;
  cfg.d_model = s.d_model;
  cfg.n_layers = s.layers;
  cfg.vocab_size = 256;
  cfg.d_state = s.d_state;
  cfg.expand = s.expand;
  cfg.tokenizer = "bytes";
  if (resume) cfg = moss::load_mamba_config(args.get("--resume"));
  MOSS_EXPECTS(s.dtype == "f32" || s.dtype == "bf16", moss::config_error, "--dtype is \"", s.dtype,
               "\", expected f32 or bf16");
  std::string device = args.get("--device", "auto");
#if defined(__CUDACC__)
  if (device == "auto") device = moss::cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  if (device == "auto") device = "cpu";
  MOSS_EXPECTS(device == "cpu", moss::config_error, "--device ", device,
               ": this moss-train was compiled without CUDA (build it with the cuda preset)");
#endif
  MOSS_EXPECTS(device == "cpu" || device == "cuda", moss::config_error, "--device is \"", device,
               "\", expected cpu or cuda");
  if (!c.quiet) std::printf("moss-train: device %s, dtype %s\n", device.c_str(), s.dtype.c_str());
  // The model type by --model and --dtype, then the backend by --device.
  const auto run = [&](auto model_tag) {
    using Model = typename decltype(model_tag)::type;
    auto make = [&] {
      if constexpr (std::tuple_size_v<typename Model::BlockConfigs> == 2) {  // MoE-Mamba: [mamba, moe]
        auto blocks = Model::default_block_configs();
        std::get<1>(blocks).routing.num_experts = s.experts;
        return resume ? Model(cfg) : Model(cfg, blocks);
      } else {
        return Model(cfg);
      }
    };
    const Model model = make();
#if defined(__CUDACC__)
    if (device == "cuda") {
      moss::CudaStream stream;
      return train(moss::Cuda{stream.get()}, model, s, c);
    }
#endif
    return train(moss::Host{}, model, s, c);
  };
  const bool bf = s.dtype == "bf16";
  if (s.model == "moe-mamba")
    return bf ? run(moss::type_tag<moss::MoeMambaLM<moss::bf16>>{}) : run(moss::type_tag<moss::MoeMambaLM<float>>{});
  return bf ? run(moss::type_tag<moss::MambaLM<moss::bf16>>{}) : run(moss::type_tag<moss::MambaLM<float>>{});
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_checked(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moss-train: %s\n", e.what());
    return 1;
  }
}
