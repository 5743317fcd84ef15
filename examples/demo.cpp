// moss-demo: the main job on an embedded default. Builds a language model (Mamba-130M's shape
// with seeded random weights; --model picks the variant: dense Mamba, MoE-Mamba, BlackMamba,
// RoM or RoM + MoE; or a checkpoint folder with --checkpoint DIR), prefills a prompt, generates
// tokens through the decode path and prints prefill and decode throughput and, for routed
// models, how the first routed layer spread the prompt over its experts — on the GPU when one
// is visible, else on the CPU.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "cli.hpp"
#include "moss/moss.hpp"

namespace {

constexpr const char* kUsage =
    "usage: moss-demo [--model mamba|moe-mamba|blackmamba|rom|rom-moe] [--experts X]\n"
    "                 [--checkpoint DIR] [--device cpu|cuda] [--dtype f32|bf16|f16]\n"
    "                 [--batch B] [--prompt-len L] [--generate N] [--layers N] [--seed S]\n"
    "                 [--temperature T --top-k K --top-p P]   (sampling; greedy by default)\n"
    "Defaults: dense Mamba, Mamba-130M shape (d_model 768, 24 layers, vocab 50280) with seeded\n"
    "random weights (routed variants: 8 experts, top-1);\n"
    "GPU: bf16, batch 8, prompt 512, 128 new tokens; CPU: f32, batch 1, prompt 64, 16 new tokens.\n";

/// `x` with `digits` decimals.
std::string fixed(double x, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, x);
  return text;
}

/// A line on stderr saying what the demo is doing while it does it. On a terminal the line
/// counts the seconds (rewritten in place every second) until the next stage replaces it or
/// `done` ends it; elsewhere (a log) it is printed once, and `done`'s text on a line of its own.
/// A stage that ends by an exception says "failed".
class Progress {
 public:
  explicit Progress(std::string what)
      : what_(std::move(what)), tty_(::isatty(::fileno(stderr)) != 0), exceptions_(std::uncaught_exceptions()) {
    std::fprintf(stderr, "[moss-demo] %s...%s", what_.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
    if (tty_) {
      try {
        ticker_ = std::thread([this] { tick(); });
      } catch (const std::system_error&) {  // no threads here: no counter, the line stays
      }
    }
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { stop(std::uncaught_exceptions() > exceptions_ ? "failed" : ""); }
  /// Ends the line with `result` ("weights ready in 3.2 s").
  void done(const std::string& result) { stop(result); }

 private:
  void tick() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (int s = 1; !cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stopped_; }); ++s) {
      std::fprintf(stderr, "\r[moss-demo] %s... %d s", what_.c_str(), s);
      std::fflush(stderr);
    }
  }
  void stop(const std::string& result) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (stopped_) return;
      stopped_ = true;
    }
    cv_.notify_all();
    if (ticker_.joinable()) ticker_.join();
    if (tty_)
      std::fprintf(stderr, "\r[moss-demo] %s... %s\033[K\n", what_.c_str(), result.empty() ? "done" : result.c_str());
    else if (!result.empty())
      std::fprintf(stderr, "[moss-demo] %s\n", result.c_str());
    std::fflush(stderr);
  }

  std::string what_;
  bool tty_;
  int exceptions_;  // in flight when the stage began: more at its end means it failed
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopped_ = false;
  std::thread ticker_;
};

struct Plan {
  moss::index_t batch, prompt_len, generate;
  std::uint64_t seed;
  moss::SamplingOptions sampling;
  std::string checkpoint;
  moss::index_t experts = 8;  ///< of every routed block of a seeded model
};

/// The block configs of a seeded `Model`: every routed block (MoE or RoM) with `experts` experts.
template <class Model>
typename Model::BlockConfigs seeded_blocks(moss::index_t experts) {
  auto blocks = Model::default_block_configs();
  std::apply(
      [&](auto&... b) {
        (
            [&] {
              if constexpr (requires { b.routing.num_experts; }) b.routing.num_experts = experts;
            }(),
            ...);
      },
      blocks);
  return blocks;
}

template <class Model, class Backend>
void run(const Backend& backend, const char* device, moss::MambaConfig cfg, const Plan& plan) {
  using T = typename Model::value_type;
  using clock = std::chrono::steady_clock;
  // A checkpoint's config.json carries each block's section; a seeded model takes --experts.
  const Model model = plan.checkpoint.empty() ? Model(cfg, seeded_blocks<Model>(plan.experts)) : Model(cfg);
  const std::string variant = model.config().moss_variant.empty() ? "mamba" : model.config().moss_variant;
  auto t0 = clock::now();
  std::optional<Progress> progress;
  if (plan.checkpoint.empty()) {
    progress.emplace(moss::cat("initialising ", cfg.n_layers, " ", variant, " layers (d_model ", cfg.d_model,
                               ", vocab ", cfg.vocab_size, ") with seeded random weights"));
  } else {
    progress.emplace(moss::cat("loading ", cfg.n_layers, " ", variant, " layers from ", plan.checkpoint));
  }
  const auto params =
      plan.checkpoint.empty() ? model.init(backend, plan.seed) : model.load(backend, moss::Checkpoint(plan.checkpoint));
  backend.synchronize();
  const double load_s = std::chrono::duration<double>(clock::now() - t0).count();
  progress->done(moss::cat("weights ready in ", fixed(load_s, 1), " s"));

  // A seeded prompt of random token ids.
  moss::Rng rng(plan.seed + 1);
  std::vector<std::int64_t> prompt(static_cast<std::size_t>(plan.batch * plan.prompt_len));
  for (auto& id : prompt) id = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(cfg.vocab_size));
  moss::GenerateOptions opt;
  opt.max_new_tokens = plan.generate;
  opt.sampling = plan.sampling;
  const moss::ConstView<std::int64_t, 2> prompt_view(prompt.data(), {plan.batch, plan.prompt_len}, "prompt");

  progress.emplace(moss::cat("warm-up: prefill ", plan.batch, " x ", plan.prompt_len, " tokens, 2 new tokens per row"));
  moss::generate(backend, model, params, prompt_view, [&] {  // warm-up (kernel loading, handles)
    moss::GenerateOptions w = opt;
    w.max_new_tokens = std::min<moss::index_t>(2, opt.max_new_tokens);
    return w;
  }());
  progress.emplace(moss::cat("timed run: prefill ", plan.batch, " x ", plan.prompt_len, " tokens, then ", plan.generate,
                             " new tokens per row"));
  const auto r = moss::generate(backend, model, params, prompt_view, opt);
  progress.reset();

  std::printf("moss-demo: %s LM, d_model %lld, %lld layers, vocab %lld, d_state %lld, %s weights (%s), on %s\n",
              variant.c_str(), static_cast<long long>(cfg.d_model), static_cast<long long>(cfg.n_layers),
              static_cast<long long>(cfg.vocab_size), static_cast<long long>(cfg.d_state),
              std::string(moss::dtype_name(moss::dtype_of<T>)).c_str(),
              plan.checkpoint.empty() ? "seeded random" : plan.checkpoint.c_str(), device);
  std::printf("  weights ready in %.2f s\n", load_s);
  if (plan.checkpoint.empty())
    std::printf("  seeded random weights: the tokens are meaningless (--checkpoint DIR runs trained weights)\n");
  std::printf("  prefill: %lld x %lld tokens in %.3f ms -> %.0f tokens/s\n", static_cast<long long>(plan.batch),
              static_cast<long long>(plan.prompt_len), r.prefill_seconds * 1e3,
              plan.batch * plan.prompt_len / r.prefill_seconds);
  const moss::index_t decode_steps = r.steps > 0 ? r.steps - 1 : 0;
  if (decode_steps > 0)
    std::printf("  decode:  %lld steps x batch %lld in %.3f ms -> %.3f ms/step, %.0f tokens/s\n",
                static_cast<long long>(decode_steps), static_cast<long long>(plan.batch), r.decode_seconds * 1e3,
                r.decode_seconds * 1e3 / decode_steps, decode_steps * plan.batch / r.decode_seconds);
  std::printf("  row 0 generated:");
  for (moss::index_t i = plan.prompt_len; i < r.length; ++i) std::printf(" %lld", static_cast<long long>(r.tokens[i]));
  std::printf("\n");

  // How the routed layers spread the prompt over their experts (one more prefill, with a report).
  moss::RoutingReport report;
  moss::Buffer<float> last = backend.template alloc<float>(plan.batch * cfg.vocab_size);
  model.forward(backend, params, prompt_view, last.template view<3>({plan.batch, 1, cfg.vocab_size}, "logits"), nullptr,
                &report);
  const std::vector<moss::RouterStats> stats = report.read();
  if (!stats.empty()) {
    const moss::RouterStats& s = stats.front();
    float aux = 0.0f;
    std::int64_t dropped = 0;
    for (const auto& e : stats) {
      aux += e.aux_loss;
      dropped += e.dropped;
    }
    std::printf("  routing: %zu routed layers, aux loss %.4f in all, %lld pairs dropped; %s tokens per expert:",
                stats.size(), aux, static_cast<long long>(dropped), s.layer.c_str());
    for (std::int64_t k : s.kept) std::printf(" %lld", static_cast<long long>(k));
    std::printf("\n");
  }
}

template <class Model>
int run_on(const std::string& device, const moss::MambaConfig& cfg, const Plan& plan) {
  if (device == "cpu") {
    run<Model>(moss::Host{}, "cpu", cfg, plan);
    return 0;
  }
#if defined(__CUDACC__)
  if (device == "cuda") {
    MOSS_EXPECTS(moss::cuda_device_count() > 0, moss::unsupported_error, "--device cuda: no CUDA device is visible");
    moss::CudaStream stream;
    cudaDeviceProp prop{};
    MOSS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    run<Model>(moss::Cuda{stream.get()}, prop.name, cfg, plan);
    return 0;
  }
#endif
  moss::raise<moss::config_error>("--device is \"", device, "\"; supported here: cpu",
#if defined(__CUDACC__)
                                  ", cuda"
#else
                                  " (built without CUDA)"
#endif
  );
}

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(argc, argv,
                             {"--model", "--experts", "--checkpoint", "--device", "--dtype", "--batch", "--prompt-len",
                              "--generate", "--layers", "--seed", "--temperature", "--top-k", "--top-p"},
                             {"--help", "-h"});
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  std::string device = args.get("--device", "auto");
#if defined(__CUDACC__)
  if (device == "auto") device = moss::cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  if (device == "auto") device = "cpu";
#endif
  const bool gpu = device == "cuda";
  Plan plan{args.get_int("--batch", gpu ? 8 : 1),
            args.get_int("--prompt-len", gpu ? 512 : 64),
            args.get_int("--generate", gpu ? 128 : 16),
            static_cast<std::uint64_t>(args.get_int("--seed", 0)),
            {},
            args.get("--checkpoint")};
  MOSS_EXPECTS(plan.batch >= 1 && plan.prompt_len >= 1 && plan.generate >= 1, moss::config_error,
               "--batch, --prompt-len and --generate must be ≥ 1");
  if (args.has("--temperature") || args.has("--top-k") || args.has("--top-p")) {
    plan.sampling.greedy = false;
    plan.sampling.temperature = static_cast<float>(args.get_double("--temperature", 1.0));
    plan.sampling.top_k = args.get_int("--top-k", 0);
    plan.sampling.top_p = static_cast<float>(args.get_double("--top-p", 1.0));
    plan.sampling.seed = plan.seed;
  }
  moss::MambaConfig cfg;  // Mamba-130M's shape
  if (!plan.checkpoint.empty()) {
    cfg = moss::load_mamba_config(plan.checkpoint);
    MOSS_EXPECTS(!args.has("--model") && !args.has("--experts"), moss::config_error,
                 "--model and --experts describe a seeded model; a checkpoint's config.json names its own");
  } else {
    const std::string model = args.get("--model", "mamba");
    cfg.moss_variant = model == "mamba" ? "" : model;
    plan.experts = args.get_int("--experts", 8);
  }
  if (args.has("--layers")) cfg.n_layers = args.get_int("--layers", cfg.n_layers);
  const moss::DType dtype = args.has("--dtype") ? moss::parse_storage_dtype(args.get("--dtype"), "--dtype")
                                                : (gpu ? moss::DType::bf16 : cfg.dtype.value_or(moss::DType::f32));
  return moss::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return moss::dispatch_variant<T>(
        cfg, [&](auto model_tag) { return run_on<typename decltype(model_tag)::type>(device, cfg, plan); });
  });
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_checked(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moss-demo: error: %s\n", e.what());
    return 1;
  }
}
