// moss-demo: the main job on an embedded default. Builds a Mamba language model (Mamba-130M's
// shape with seeded random weights, or a Hugging Face checkpoint with --checkpoint DIR),
// prefills a prompt, generates tokens through the decode path and prints prefill and decode
// throughput — on the GPU when one is visible, else on the CPU.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "moss/moss.hpp"

namespace {

constexpr const char* kUsage =
    "usage: moss-demo [--checkpoint DIR] [--device cpu|cuda] [--dtype f32|bf16|f16]\n"
    "                 [--batch B] [--prompt-len L] [--generate N] [--layers N] [--seed S]\n"
    "                 [--temperature T --top-k K --top-p P]   (sampling; greedy by default)\n"
    "Defaults: Mamba-130M shape (d_model 768, 24 layers, vocab 50280) with seeded random weights;\n"
    "GPU: bf16, batch 8, prompt 512, 128 new tokens; CPU: f32, batch 1, prompt 64, 16 new tokens.\n";

struct Plan {
  moss::index_t batch, prompt_len, generate;
  std::uint64_t seed;
  moss::SamplingOptions sampling;
  std::string checkpoint;
};

template <class T, class Backend>
void run(const Backend& backend, const char* device, moss::MambaConfig cfg, const Plan& plan) {
  using clock = std::chrono::steady_clock;
  const moss::MambaLM<T> model(cfg);
  auto t0 = clock::now();
  const auto params = plan.checkpoint.empty() ? model.init(backend, plan.seed)
                                              : model.load(backend, moss::Checkpoint(plan.checkpoint));
  backend.synchronize();
  const double load_s = std::chrono::duration<double>(clock::now() - t0).count();

  // A seeded prompt of random token ids.
  moss::Rng rng(plan.seed + 1);
  std::vector<std::int64_t> prompt(static_cast<std::size_t>(plan.batch * plan.prompt_len));
  for (auto& id : prompt) id = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(cfg.vocab_size));
  moss::GenerateOptions opt;
  opt.max_new_tokens = plan.generate;
  opt.sampling = plan.sampling;
  const moss::ConstView<std::int64_t, 2> prompt_view(prompt.data(), {plan.batch, plan.prompt_len}, "prompt");

  moss::generate(backend, model, params, prompt_view, [&] {  // warm-up (kernel loading, handles)
    moss::GenerateOptions w = opt;
    w.max_new_tokens = std::min<moss::index_t>(2, opt.max_new_tokens);
    return w;
  }());
  const auto r = moss::generate(backend, model, params, prompt_view, opt);

  std::printf("moss-demo: Mamba LM, d_model %lld, %lld layers, vocab %lld, d_state %lld, %s weights (%s), on %s\n",
              static_cast<long long>(cfg.d_model), static_cast<long long>(cfg.n_layers),
              static_cast<long long>(cfg.vocab_size), static_cast<long long>(cfg.d_state),
              std::string(moss::dtype_name(moss::dtype_of<T>)).c_str(),
              plan.checkpoint.empty() ? "seeded random" : plan.checkpoint.c_str(), device);
  std::printf("  weights ready in %.2f s\n", load_s);
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
}

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(argc, argv,
                             {"--checkpoint", "--device", "--dtype", "--batch", "--prompt-len", "--generate", "--layers",
                              "--seed", "--temperature", "--top-k", "--top-p"},
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
  Plan plan{args.get_int("--batch", gpu ? 8 : 1), args.get_int("--prompt-len", gpu ? 512 : 64),
            args.get_int("--generate", gpu ? 128 : 16), static_cast<std::uint64_t>(args.get_int("--seed", 0)), {},
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
  if (!plan.checkpoint.empty()) cfg = moss::load_mamba_config(plan.checkpoint);
  if (args.has("--layers")) cfg.n_layers = args.get_int("--layers", cfg.n_layers);
  const moss::DType dtype = args.has("--dtype") ? moss::parse_storage_dtype(args.get("--dtype"), "--dtype")
                                                : (gpu ? moss::DType::bf16 : cfg.dtype.value_or(moss::DType::f32));
  return moss::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (device == "cpu") {
      run<T>(moss::Host{}, "cpu", cfg, plan);
      return 0;
    }
#if defined(__CUDACC__)
    if (device == "cuda") {
      MOSS_EXPECTS(moss::cuda_device_count() > 0, moss::unsupported_error, "--device cuda: no CUDA device is visible");
      moss::CudaStream stream;
      cudaDeviceProp prop{};
      MOSS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
      run<T>(moss::Cuda{stream.get()}, prop.name, cfg, plan);
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
