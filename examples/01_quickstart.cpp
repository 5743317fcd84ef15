// 01_quickstart: a Mamba language model as a type, run on the CPU (and on the GPU under nvcc).
// This is the README's example.
#include <cstdio>
#include <vector>

#include "moss/moss.hpp"

template <class Backend>
void demo(const Backend& backend, const char* where) {
  moss::MambaConfig cfg;  // sizes are runtime values (default: Mamba-130M)
  cfg.d_model = 256, cfg.n_layers = 4, cfg.vocab_size = 1000;
  moss::MambaLM<float> model(cfg);                 // = LanguageModel<Residual<RmsNorm, Mamba<float>>>
  auto params = model.init(backend, /*seed=*/42);  // or model.load(backend, moss::Checkpoint("dir"))

  std::vector<std::int64_t> ids = {1, 17, 42, 7, 99, 3};  // (batch 2, seqlen 3), host memory
  moss::ConstView<std::int64_t, 2> prompt(ids.data(), {2, 3}, "prompt");
  auto logits = backend.template alloc<float>(2 * 3 * cfg.vocab_size);
  model.forward(backend, params, prompt, logits.template view<3>({2, 3, cfg.vocab_size}, "logits"));

  moss::GenerateOptions opt;  // greedy; see SamplingOptions for sampling
  opt.max_new_tokens = 8;
  auto out = moss::generate(backend, model, params, prompt, opt);  // prefill + one-token decode steps
  std::printf("%s: row 0 ->", where);
  for (moss::index_t i = 0; i < out.length; ++i) std::printf(" %lld", static_cast<long long>(out.tokens[i]));
  std::printf("\n");
}

int main() {
  demo(moss::Host{}, "cpu");
#if defined(__CUDACC__)
  if (moss::cuda_device_count() > 0) demo(moss::Cuda{}, "cuda");
#endif
}
