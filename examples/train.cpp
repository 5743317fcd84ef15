// moss-train: trains a byte-level language model (dense Mamba, MoE-Mamba, BlackMamba, RoM or
// RoM + MoE) on text files, on the CPU or (built with nvcc) the GPU, float32 or bf16 with float32
// master weights, with AdamW, clipping, warmup + cosine decay and gradient accumulation;
// evaluates on each file's held-out tail; writes DIR/metrics.csv; saves a checkpoint moss-run
// loads (config.json says "tokenizer": "bytes", so `moss-run --prompt TEXT` prints generated
// text) plus the optimiser and data state, from which --resume continues exactly as if the run
// had never stopped.
//
//   moss-train --data PATH[,PATH...] [--model mamba|moe-mamba|blackmamba|rom|rom-moe] [--out DIR] [...]
//   moss-train --resume DIR [--stop-at N] [...]
//
// Same seed, data and settings give bitwise the same loss curve (docs/training.md). This file is
// the command line; the loop is examples/train/moss_train.hpp, one model family per file there.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "train/moss_train.hpp"

namespace fs = std::filesystem;
using moss::train_cli::Job;
using moss::train_cli::RunSettings;

namespace {

constexpr const char* kUsage =
    "usage: moss-train --data PATH[,PATH...] [--out DIR] [options]\n"
    "       moss-train --resume DIR [--stop-at N] [--out DIR] [--quiet]\n"
    "  --data PATHS      text files, or folders whose *.txt files are read (sorted), comma-separated;\n"
    "                    each file's last --val-fraction is held out for validation\n"
    "  --out DIR         where the checkpoint and metrics.csv go (default runs/moss-train; with --resume:\n"
    "                    DIR itself)\n"
    "  --resume DIR      continue the run saved in DIR (its settings, model, optimiser and data order)\n"
    "  --steps N         optimiser steps in total: the schedule's length (default 300)\n"
    "  --stop-at N       stop (and save) after step N < --steps; --resume continues from there\n"
    "  --batch B         sequences per micro-batch (default 8)\n"
    "  --micro-batches M micro-batches per step, gradients accumulated (default 1; also --grad-accum)\n"
    "  --seq-len L       bytes per sequence (default 128)\n"
    "  --model M         mamba (default), moe-mamba (Mamba and Switch-MoE layers alternating, ReLU\n"
    "                    MLP experts of width 3 x d_model), blackmamba (Mamba and Sinkhorn-routed\n"
    "                    SwiGLU experts alternating), rom (Routing Mamba: Conv, Gate and Out\n"
    "                    projections routed by one shared top-1 decision) or rom-moe (RoM and\n"
    "                    Switch-MoE layers alternating); the alternating ones need --layers even\n"
    "  --experts X       experts per routed layer (default 8; moe-mamba with 1 is its dense twin)\n"
    "  --top-k K         experts per token, 1 (default: the papers' routing) or 2 (moe-mamba, rom and\n"
    "                    rom-moe: the top-2 by router softmax, weighted by their probabilities)\n"
    "  --capacity-factor F   expert capacity as a multiple of the fair share (default 0: dropless)\n"
    "  --aux-coef A --z-coef Z   load-balancing and router z-loss weights (default 0.01, 0.001)\n"
    "  --dtype f32|bf16  storage type of weights and activations (default f32; bf16, on the GPU only,\n"
    "                    keeps float32 master weights for the optimiser)\n"
    "  --device cpu|cuda where to train (default: cuda when built with nvcc and a GPU is visible)\n"
    "  --layers N --d-model D --d-state N --expand E   model size (default 2, 128, 16, 2)\n"
    "  --lr X --min-lr X --warmup N   peak rate, final rate, warmup steps (default 3e-3, 3e-4, 30)\n"
    "  --weight-decay X  AdamW decoupled decay (default 0.1; none on norms, biases, A_log, D, routers)\n"
    "  --clip X          global gradient-norm clipping (default 1.0; 0 turns it off)\n"
    "  --activations keep|recompute   what the blocks keep for the backward pass (default keep)\n"
    "  --seed S          initial weights and data order (default 0)\n"
    "  --val-fraction X  held-out fraction of each file (default 0.05)\n"
    "  --eval-every N    validation every N steps and at the end (default 100; 0: only at the end)\n"
    "  --eval-batches N  validation batches per evaluation (default 8; 0: all)\n"
    "  --save-every N    checkpoint every N steps and at the end (default 0: only at the end)\n"
    "  --quiet           print only the final summary\n";

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

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(
      argc, argv,
      {"--data",       "--out",          "--resume",     "--steps",           "--batch",      "--micro-batches",
       "--grad-accum", "--seq-len",      "--layers",     "--d-model",         "--d-state",    "--expand",
       "--lr",         "--min-lr",       "--warmup",     "--weight-decay",    "--clip",       "--activations",
       "--seed",       "--val-fraction", "--eval-every", "--eval-batches",    "--save-every", "--stop-at",
       "--model",      "--experts",      "--top-k",      "--capacity-factor", "--aux-coef",   "--z-coef",
       "--dtype",      "--device"},
      {"--help", "-h", "--quiet"});
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  Job job;
  RunSettings& s = job.s;
  moss::train_cli::Control& c = job.c;
  c.resume = args.has("--resume");
  if (c.resume) {
    c.resume_dir = args.get("--resume");
    const fs::path json = c.resume_dir / "trainer.json";
    MOSS_EXPECTS(fs::exists(json), moss::io_error, "--resume: ", c.resume_dir.string(),
                 " holds no trainer.json (is it a moss-train checkpoint?)");
    c.resumed = moss::io::parse_json(moss::io::read_text_file(json), json.string());
    s = RunSettings::from_json(c.resumed.at("settings"), json.string() + ": settings");
    for (const char* fixed :
         {"--data",        "--steps",  "--model",        "--experts", "--top-k",         "--capacity-factor",
          "--aux-coef",    "--z-coef", "--dtype",        "--batch",   "--micro-batches", "--grad-accum",
          "--seq-len",     "--layers", "--d-model",      "--d-state", "--expand",        "--lr",
          "--min-lr",      "--warmup", "--weight-decay", "--clip",    "--activations",   "--seed",
          "--val-fraction"})
      MOSS_EXPECTS(!args.has(fixed), moss::config_error, "--resume continues a run with its own settings; ", fixed,
                   " cannot change (only --stop-at, --out, --eval-every, --eval-batches, --save-every, --quiet, "
                   "--device)");
  } else {
    MOSS_EXPECTS(args.has("--data"), moss::config_error, "--data (or --resume) is required\n", kUsage);
    s.data = split(args.get("--data"));
    MOSS_EXPECTS(!s.data.empty(), moss::config_error, "--data is empty: name text files or folders");
    s.steps = args.get_int("--steps", s.steps);
    s.batch = args.get_int("--batch", s.batch);
    MOSS_EXPECTS(!(args.has("--micro-batches") && args.has("--grad-accum")), moss::config_error,
                 "--micro-batches and --grad-accum are the same setting: give one");
    s.micro = args.get_int("--micro-batches", args.get_int("--grad-accum", s.micro));
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
    s.top_k = args.get_int("--top-k", s.top_k);
    s.capacity_factor = args.get_double("--capacity-factor", s.capacity_factor);
    s.aux_coef = args.get_double("--aux-coef", s.aux_coef);
    s.z_coef = args.get_double("--z-coef", s.z_coef);
  }
  MOSS_EXPECTS(s.micro >= 1, moss::config_error, "--micro-batches is ", s.micro, ", expected >= 1");
  MOSS_EXPECTS(s.activations == "keep" || s.activations == "recompute", moss::config_error, "--activations is \"",
               s.activations, "\", expected keep or recompute");
  MOSS_EXPECTS(s.seed >= 0, moss::config_error, "--seed is ", s.seed, ", expected >= 0");
  c.out = args.get("--out", c.resume ? args.get("--resume") : "runs/moss-train");
  c.eval_every = args.get_int("--eval-every", 100);
  c.eval_batches = args.get_int("--eval-batches", 8);
  c.save_every = args.get_int("--save-every", 0);
  c.quiet = args.has("--quiet");
  c.stop_at = args.get_int("--stop-at", s.steps);
  MOSS_EXPECTS(c.stop_at >= 1 && c.stop_at <= s.steps, moss::config_error, "--stop-at is ", c.stop_at,
               ", expected in [1, ", s.steps, "] (the run's --steps)");
  MOSS_EXPECTS(c.eval_every >= 0 && c.eval_batches >= 0 && c.save_every >= 0, moss::config_error,
               "--eval-every, --eval-batches and --save-every must be >= 0");

  const bool alternating = s.model == "moe-mamba" || s.model == "blackmamba" || s.model == "rom-moe";
  MOSS_EXPECTS(s.model == "mamba" || s.model == "rom" || alternating, moss::config_error, "--model is \"", s.model,
               "\", expected mamba, moe-mamba, blackmamba, rom or rom-moe");
  MOSS_EXPECTS(!alternating || s.layers % 2 == 0, moss::config_error, "--layers is ", s.layers, " but ", s.model,
               " alternates two kinds of layers: expected an even number");
  MOSS_EXPECTS(s.experts >= 1, moss::config_error, "--experts is ", s.experts, ", expected >= 1");
  MOSS_EXPECTS(s.top_k == 1 || s.top_k == 2, moss::config_error, "--top-k is ", s.top_k,
               ": moss-train builds K = 1 (the papers' models) and 2; other K are library types to instantiate in "
               "C++ (moss::RomLM<T, K>, moss::MoeMambaLM<T, K>, moss::RomMoeLM<T, K>)");
  MOSS_EXPECTS(s.top_k == 1 || s.model != "blackmamba", moss::config_error, "--top-k is ", s.top_k,
               " but blackmamba's Sinkhorn routing picks one expert per token");
  MOSS_EXPECTS(s.top_k <= s.experts || s.model == "mamba", moss::config_error, "--top-k is ", s.top_k,
               " but --experts is ", s.experts, ": a token cannot use more experts than there are");
  MOSS_EXPECTS(s.capacity_factor >= 0 && s.capacity_factor <= 1e6, moss::config_error, "--capacity-factor is ",
               s.capacity_factor, ", expected 0 (dropless) or a positive factor <= 1e6");
  MOSS_EXPECTS(s.aux_coef >= 0 && s.z_coef >= 0, moss::config_error, "--aux-coef is ", s.aux_coef, " and --z-coef is ",
               s.z_coef, ": expected finite values >= 0");
  MOSS_EXPECTS(s.dtype == "f32" || s.dtype == "bf16", moss::config_error, "--dtype is \"", s.dtype,
               "\", expected f32 or bf16");
  moss::MambaConfig& cfg = job.cfg;
  cfg.d_model = s.d_model;
  cfg.n_layers = s.layers;
  cfg.vocab_size = 256;
  cfg.d_state = s.d_state;
  cfg.expand = s.expand;
  cfg.tokenizer = "bytes";
  if (c.resume) {
    cfg = moss::load_mamba_config(c.resume_dir);
    const std::string want = s.model == "mamba" ? "" : s.model;
    MOSS_EXPECTS(cfg.moss_variant == want || (want.empty() && cfg.moss_variant == "mamba"), moss::config_error,
                 "--resume: ", c.resume_dir.string(), "/trainer.json trains --model ", s.model,
                 " but its config.json holds a \"", cfg.moss_variant.empty() ? "mamba" : cfg.moss_variant, "\" model");
  }
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
  MOSS_EXPECTS(s.dtype == "f32" || device == "cuda", moss::config_error, "--dtype ", s.dtype,
               " trains on the GPU (--device cuda, moss-train built with the cuda preset); on the CPU moss trains "
               "in float32 (--dtype f32)");
  job.device = device;
  if (!c.quiet) std::printf("moss-train: device %s, dtype %s\n", device.c_str(), s.dtype.c_str());
  if (s.model == "moe-mamba") return moss::train_cli::train_moe_mamba(job);
  if (s.model == "blackmamba") return moss::train_cli::train_blackmamba(job);
  if (s.model == "rom") return moss::train_cli::train_rom(job);
  if (s.model == "rom-moe") return moss::train_cli::train_rom_moe(job);
  return moss::train_cli::train_mamba(job);
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
