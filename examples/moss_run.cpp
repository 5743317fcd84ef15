// moss-run: run a checkpoint folder on token ids from a file: a Hugging Face MambaForCausalLM,
// or any moss model variant (MoE-Mamba, BlackMamba, RoM, RoM + MoE) saved by moss.
//
//   moss-run --checkpoint DIR --inputs FILE --output FILE [--generate N]
//            [--device cpu|cuda] [--dtype f32|bf16|f16] [--chunk-len L] [--quiet]
//
// Reads int64 `input_ids` (batch, seqlen) from the safetensors FILE, writes float32 `logits`
// (batch, seqlen, vocab) and, with --generate N, exactly N greedy tokens per row through the
// decode path as int64 `generated` (batch, seqlen + N). The input runs through the model in
// chunks of positions that continue from the decode cache, and each chunk's logits go straight
// into the output file, so the (batch, seqlen, vocab) logits are never held in memory whole.
// Prints a summary with timings on stdout (not with --quiet). Built as CUDA when nvcc is present.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <new>
#include <span>

#include "cli.hpp"
#include "moss/moss.hpp"

namespace {

constexpr const char* kUsage =
    "usage: moss-run --checkpoint DIR --inputs FILE --output FILE [--generate N]\n"
    "                [--device cpu|cuda] [--dtype f32|bf16|f16] [--chunk-len L] [--quiet]\n"
    "  --checkpoint DIR  a Hugging Face MambaForCausalLM folder (config.json, model.safetensors\n"
    "                    or a sharded model.safetensors.index.json), or a moss model folder\n"
    "                    (config.json with model_type \"moss\": moe-mamba, blackmamba, rom, rom-moe)\n"
    "  --inputs FILE     safetensors file with int64 input_ids (batch, seqlen)\n"
    "  --output FILE     safetensors file to write: float32 logits (batch, seqlen, vocab) and,\n"
    "                    with --generate, int64 generated (batch, seqlen + N)\n"
    "  --generate N      also generate N greedy tokens per row through the decode path\n"
    "  --device          cpu or cuda (default: cuda when a GPU is visible, else cpu)\n"
    "  --dtype           storage dtype of the model (default: the checkpoint's, else f32)\n"
    "  --chunk-len L     positions per forward pass; each pass continues from the previous one's\n"
    "                    state and its logits go straight to the file (default: as many as keep\n"
    "                    one pass's logits within 512 MiB; routed layers with a capacity factor\n"
    "                    apply their capacity per pass)\n"
    "  --quiet           print nothing on success (errors still go to stderr)\n";

/// Bytes of logits one forward pass may produce when --chunk-len is not given.
constexpr std::uint64_t kChunkLogitsBytes = std::uint64_t(512) << 20;

struct Job {
  std::string checkpoint, inputs, output;
  std::int64_t generate = 0;
  std::int64_t chunk_len = 0;  ///< 0: from kChunkLogitsBytes
  bool quiet = false;
};

/// The greedy token from the V logits of `row` for new token `k` (position `pos`); `moss::error`
/// when one is NaN or ±Inf (no token picked from them would mean anything), as `generate` does.
std::int64_t pick_token(const float* logits, moss::index_t V, moss::index_t row, moss::index_t k, moss::index_t pos) {
  for (moss::index_t v = 0; v < V; ++v)
    if (!std::isfinite(logits[v]))
      moss::raise<moss::error>("--generate: the logits of row ", row, " for new token ", k, " (position ", pos,
                               ") are not finite: logits[", v, "] = ", logits[v],
                               "; no token can be picked from them (the weights or the computation produced NaN or "
                               "Inf; an f16 model may overflow where bf16 or f32 does not)");
  return moss::argmax(logits, V);
}

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

template <class Model, class Backend>
void run(const Backend& backend, const char* device, const moss::MambaConfig& cfg, const Job& job) {
  using moss::index_t;
  const auto t_start = clock_type::now();

  const moss::cli::InputIds input = moss::cli::read_input_ids(job.inputs, cfg.vocab_size);
  const index_t batch = input.batch, L = input.length, V = cfg.vocab_size, N = job.generate;
  const std::vector<std::int64_t>& ids = input.ids;

  // Positions per forward pass: --chunk-len, else as many as keep one pass's logits in budget.
  const std::uint64_t row_bytes = static_cast<std::uint64_t>(batch) * static_cast<std::uint64_t>(V) * sizeof(float);
  const index_t chunk = std::min<index_t>(
      L, job.chunk_len > 0 ? job.chunk_len : std::max<index_t>(1, static_cast<index_t>(kChunkLogitsBytes / row_bytes)));
  const index_t chunks = (L + chunk - 1) / chunk;

  // The output file is created (and a bad --output refused) before any work is done.
  std::vector<moss::cli::StreamedTensor> tensors;
  if (N > 0) tensors.push_back({"generated", moss::DType::i64, {batch, L + N}});  // 8-byte elements first
  tensors.push_back({"logits", moss::DType::f32, {batch, L, V}});
  moss::cli::SafetensorsStream out(job.output, tensors);

  auto t0 = clock_type::now();
  const moss::Checkpoint ckpt(job.checkpoint);
  const Model model(cfg);
  const auto params = model.load(backend, ckpt);
  backend.synchronize();
  const double load_s = seconds_since(t0);

  // Forward pass over the input, `chunk` positions at a time; each chunk's logits are written
  // to the file before the next is computed. The cache carries the state across chunks and
  // into the decode steps.
  const bool use_cache = chunks > 1 || N > 0;
  auto cache = use_cache ? model.make_cache(backend, batch) : typename Model::Cache{};
  moss::Buffer<float> logits = backend.template alloc<float>(batch * chunk * V, "the logits of one chunk");
  std::vector<float> host_logits;  // the device's logits, copied to the host (CUDA only)
  if constexpr (Backend::device != moss::Device::host) host_logits.resize(static_cast<std::size_t>(batch * chunk * V));
  auto on_host = [&](index_t n) -> const float* {
    if constexpr (Backend::device == moss::Device::host) {
      (void)n;
      return logits.data();
    } else {
      moss::download(backend, host_logits.data(), logits.data(), n);
      return host_logits.data();
    }
  };
  std::vector<std::int64_t> chunk_ids(static_cast<std::size_t>(batch * chunk));
  std::vector<std::int64_t> next(static_cast<std::size_t>(batch));  // the token each row generates next
  std::vector<std::int64_t> generated(N > 0 ? static_cast<std::size_t>(batch * (L + N)) : 0);
  double forward_s = 0, write_s = 0;
  for (index_t c0 = 0; c0 < L; c0 += chunk) {
    const index_t n = std::min(chunk, L - c0);
    for (index_t b = 0; b < batch; ++b) std::copy_n(ids.begin() + b * L + c0, n, chunk_ids.begin() + b * n);
    t0 = clock_type::now();
    model.forward(backend, params, moss::ConstView<std::int64_t, 2>(chunk_ids.data(), {batch, n}, "input_ids"),
                  logits.template view<3>({batch, n, V}, "logits"), use_cache ? &cache : nullptr);
    const float* h = on_host(batch * n * V);
    forward_s += seconds_since(t0);
    if (N > 0 && c0 + n == L)
      for (index_t b = 0; b < batch; ++b) next[b] = pick_token(h + (b * n + n - 1) * V, V, b, 0, L);
    t0 = clock_type::now();
    for (index_t b = 0; b < batch; ++b)
      out.write<float>("logits", static_cast<std::uint64_t>((b * L + c0) * V),
                       std::span<const float>(h + b * n * V, static_cast<std::size_t>(n * V)));
    write_s += seconds_since(t0);
  }

  // Greedy generation: the first token comes from the last position's logits, each further one
  // from a decode step.
  double decode_s = 0;
  if (N > 0) {
    for (index_t b = 0; b < batch; ++b) {
      std::copy_n(ids.begin() + b * L, L, generated.begin() + b * (L + N));
      generated[b * (L + N) + L] = next[b];
    }
    t0 = clock_type::now();
    for (index_t k = 1; k < N; ++k) {
      model.step(backend, params, moss::ConstView<std::int64_t, 1>(next.data(), {batch}, "next_ids"),
                 logits.template view<2>({batch, V}, "logits"), cache);
      const float* h = on_host(batch * V);
      for (index_t b = 0; b < batch; ++b) {
        next[b] = pick_token(h + b * V, V, b, k, L + k);
        generated[b * (L + N) + L + k] = next[b];
      }
    }
    decode_s = seconds_since(t0);
    t0 = clock_type::now();
    out.write<std::int64_t>("generated", 0, generated);
    write_s += seconds_since(t0);
  }
  t0 = clock_type::now();
  out.commit();
  write_s += seconds_since(t0);
  if (job.quiet) return;

  const std::string variant = cfg.moss_variant.empty() ? "mamba" : cfg.moss_variant;
  const double tokens = static_cast<double>(batch * L);
  std::printf("moss-run: %s, %s on %s: %lld x %lld tokens, vocab %lld, %s -> %s\n", variant.c_str(),
              std::string(moss::dtype_name(moss::dtype_of<typename Model::value_type>)).c_str(), device,
              static_cast<long long>(batch), static_cast<long long>(L), static_cast<long long>(V), job.inputs.c_str(),
              job.output.c_str());
  std::printf("  load:    %.3f s\n", load_s);
  std::printf("  forward: %.0f tokens in %.3f s (%lld pass%s of ≤ %lld positions) -> %.0f tokens/s\n", tokens,
              forward_s, static_cast<long long>(chunks), chunks == 1 ? "" : "es", static_cast<long long>(chunk),
              tokens / std::max(forward_s, 1e-9));
  if (N > 1)
    std::printf("  decode:  %lld steps x batch %lld in %.3f s -> %.3f ms/step, %.0f tokens/s\n",
                static_cast<long long>(N - 1), static_cast<long long>(batch), decode_s, decode_s * 1e3 / (N - 1),
                static_cast<double>((N - 1) * batch) / std::max(decode_s, 1e-9));
  if (N > 0)
    std::printf("  generated %lld token%s per row (the first from the forward pass's last logits)\n",
                static_cast<long long>(N), N == 1 ? "" : "s");
  std::printf("  output:  %s in %.3f s; %.3f s in all\n", moss::byte_size_text(out.file_bytes(), false).c_str(),
              write_s, seconds_since(t_start));
}

template <class Model>
int run_on(const std::string& device, const moss::MambaConfig& cfg, const Job& job) {
  if (device == "cpu") {
    run<Model>(moss::Host{}, "cpu", cfg, job);
    return 0;
  }
#if defined(__CUDACC__)
  if (device == "cuda") {
    MOSS_EXPECTS(moss::cuda_device_count() > 0, moss::unsupported_error, "--device cuda: no CUDA device is visible");
    moss::CudaStream stream;
    run<Model>(moss::Cuda{stream.get()}, "cuda", cfg, job);
    return 0;
  }
  moss::raise<moss::config_error>("--device is \"", device, "\"; expected cpu or cuda");
#else
  moss::raise<moss::unsupported_error>("--device is \"", device,
                                       "\"; this moss-run was built without CUDA and supports only cpu");
#endif
}

int main_checked(int argc, char** argv) {
  const moss::cli::Args args(
      argc, argv, {"--checkpoint", "--inputs", "--output", "--generate", "--device", "--dtype", "--chunk-len"},
      {"--help", "-h", "--quiet"});
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  Job job{args.get("--checkpoint"),      args.get("--inputs"),           args.get("--output"),
          args.get_int("--generate", 0), args.get_int("--chunk-len", 0), args.has("--quiet")};
  MOSS_EXPECTS(!job.checkpoint.empty() && !job.inputs.empty() && !job.output.empty(), moss::config_error,
               "--checkpoint, --inputs and --output are required\n", kUsage);
  MOSS_EXPECTS(job.generate >= 0, moss::config_error, "--generate is ", job.generate, ", expected ≥ 0");
  MOSS_EXPECTS(!args.has("--chunk-len") || job.chunk_len >= 1, moss::config_error, "--chunk-len is ", job.chunk_len,
               ", expected ≥ 1");
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
  } catch (const std::bad_alloc&) {
    // moss's own buffers raise out_of_memory_error; this is a std::vector or std::string.
    std::fprintf(stderr,
                 "moss-run: error: out of host memory (std::bad_alloc from a standard container); try a smaller "
                 "--chunk-len or a smaller input\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moss-run: error: %s\n", e.what());
    return 1;
  }
}
