// moss-run: run a checkpoint folder on token ids from a file: a Hugging Face MambaForCausalLM,
// or any moss model variant (MoE-Mamba, BlackMamba, RoM, RoM + MoE) saved by moss.
//
//   moss-run --checkpoint DIR --inputs FILE --output FILE [--generate N]
//            [--device cpu|cuda] [--dtype f32|bf16|f16]
//
// Reads int64 `input_ids` (batch, seqlen) from the safetensors FILE, writes float32 `logits`
// (batch, seqlen, vocab) and, with --generate N, exactly N greedy tokens per row through the
// decode path as int64 `generated` (batch, seqlen + N). Built as CUDA when nvcc is present.
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "moss/moss.hpp"

namespace {

constexpr const char* kUsage =
    "usage: moss-run --checkpoint DIR --inputs FILE --output FILE [--generate N]\n"
    "                [--device cpu|cuda] [--dtype f32|bf16|f16]\n"
    "  --checkpoint DIR  a Hugging Face MambaForCausalLM folder (config.json, model.safetensors\n"
    "                    or a sharded model.safetensors.index.json), or a moss model folder\n"
    "                    (config.json with model_type \"moss\": moe-mamba, blackmamba, rom, rom-moe)\n"
    "  --inputs FILE     safetensors file with int64 input_ids (batch, seqlen)\n"
    "  --output FILE     safetensors file to write: float32 logits (batch, seqlen, vocab) and,\n"
    "                    with --generate, int64 generated (batch, seqlen + N)\n"
    "  --generate N      also generate N greedy tokens per row through the decode path\n"
    "  --device          cpu or cuda (default: cuda when a GPU is visible, else cpu)\n"
    "  --dtype           storage dtype of the model (default: the checkpoint's, else f32)\n";

struct Job {
  std::string checkpoint, inputs, output;
  std::int64_t generate = 0;
};

template <class Model, class Backend>
void run(const Backend& backend, const moss::MambaConfig& cfg, const Job& job) {
  const moss::Checkpoint ckpt(job.checkpoint);
  const Model model(cfg);
  const auto params = model.load(backend, ckpt);

  const moss::SafetensorsFile in(job.inputs);
  MOSS_EXPECTS(in.contains("input_ids"), moss::io_error, job.inputs, ": has no tensor input_ids");
  const auto info = in.info("input_ids");
  MOSS_EXPECTS(info.shape.size() == 2 && info.dtype == moss::DType::i64, moss::io_error, job.inputs,
               ": input_ids must be int64 (batch, seqlen)");
  const moss::index_t batch = info.shape[0], L = info.shape[1], V = cfg.vocab_size;
  MOSS_EXPECTS(batch >= 1 && L >= 1, moss::io_error, job.inputs, ": input_ids is [", batch, ", ", L,
               "] but needs batch ≥ 1 and seqlen ≥ 1");
  const std::vector<std::int64_t> ids = in.read_as<std::int64_t>("input_ids", {batch, L});
  const moss::ConstView<std::int64_t, 2> ids_view(ids.data(), {batch, L}, "input_ids");

  moss::Buffer<float> logits = backend.template alloc<float>(batch * L * V);
  model.forward(backend, params, ids_view, logits.template view<3>({batch, L, V}, "logits"));
  std::vector<float> host_logits(static_cast<std::size_t>(batch * L * V));
  download(backend, host_logits.data(), logits.data(), logits.size());

  moss::SafetensorsWriter out;
  out.add("logits", {batch, L, V}, host_logits);
  if (job.generate > 0) {
    moss::GenerateOptions opt;
    opt.max_new_tokens = job.generate;
    const auto r = moss::generate(backend, model, params, ids_view, opt);
    out.add("generated", {batch, r.length}, r.tokens);
  }
  out.write(job.output);
  std::printf("moss-run: %lld x %lld tokens, vocab %lld, %s -> %s\n", static_cast<long long>(batch),
              static_cast<long long>(L), static_cast<long long>(V), job.inputs.c_str(), job.output.c_str());
}

template <class Model>
int run_on(const std::string& device, const moss::MambaConfig& cfg, const Job& job) {
  if (device == "cpu") {
    run<Model>(moss::Host{}, cfg, job);
    return 0;
  }
#if defined(__CUDACC__)
  if (device == "cuda") {
    MOSS_EXPECTS(moss::cuda_device_count() > 0, moss::unsupported_error, "--device cuda: no CUDA device is visible");
    moss::CudaStream stream;
    run<Model>(moss::Cuda{stream.get()}, cfg, job);
    return 0;
  }
  moss::raise<moss::config_error>("--device is \"", device, "\"; expected cpu or cuda");
#else
  moss::raise<moss::unsupported_error>("--device is \"", device,
                                       "\"; this moss-run was built without CUDA and supports only cpu");
#endif
}

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(argc, argv, {"--checkpoint", "--inputs", "--output", "--generate", "--device", "--dtype"},
                             {"--help", "-h"});
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  Job job{args.get("--checkpoint"), args.get("--inputs"), args.get("--output"), args.get_int("--generate", 0)};
  MOSS_EXPECTS(!job.checkpoint.empty() && !job.inputs.empty() && !job.output.empty(), moss::config_error,
               "--checkpoint, --inputs and --output are required\n", kUsage);
  MOSS_EXPECTS(job.generate >= 0, moss::config_error, "--generate is ", job.generate, ", expected ≥ 0");
  const moss::MambaConfig cfg = moss::load_mamba_config(job.checkpoint);
  const moss::DType dtype = args.has("--dtype") ? moss::parse_storage_dtype(args.get("--dtype"), "--dtype")
                                                : cfg.dtype.value_or(moss::DType::f32);
  std::string device = args.get("--device", "auto");
#if defined(__CUDACC__)
  if (device == "auto") device = moss::cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  if (device == "auto") device = "cpu";
#endif
  return moss::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return moss::dispatch_variant<T>(cfg, [&](auto model_tag) {
      using Model = typename decltype(model_tag)::type;
      return run_on<Model>(device, cfg, job);
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_checked(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moss-run: error: %s\n", e.what());
    return 1;
  }
}
