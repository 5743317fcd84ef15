// 02_rom_model: a Routing Mamba model assembled as a type. Every mixer is a RoM layer whose Conv,
// Gate and Out projections are 8 linear experts sharing one top-2 routing decision, with the
// router weight on every projection; a MoE feed-forward block follows each mixer (the paper's
// hybrid). Runs on the CPU, and on the GPU too under nvcc.
#include <cstdio>
#include <vector>

#include "moss/moss.hpp"

using Rom = moss::RoutedMamba<moss::TopK<2>, moss::SharedRouting, moss::Experts<8>, float,
                              moss::RomVariant<moss::Routed<moss::Conv, moss::Gate, moss::Out>, moss::WeightAll>>;
using Ffn = moss::MoeFeedForward<moss::Top1Switch, moss::Experts<8>, moss::Mlp<moss::Relu>, float>;
using Model =
    moss::LanguageModel<moss::Pattern<moss::Residual<moss::RmsNorm, Rom>, moss::Residual<moss::RmsNorm, Ffn>>>;

template <class Backend>
void demo(const Backend& backend, const char* where) {
  moss::MambaConfig cfg;
  cfg.d_model = 128, cfg.n_layers = 4, cfg.vocab_size = 512;    // 2 × (RoM block, MoE block)
  auto blocks = Model::default_block_configs();                 // one config per pattern position
  std::get<0>(blocks).routing.router.renormalize = true;        // TopK<2>: weights sum to 1
  std::get<1>(blocks).routing.settings.capacity_factor = 1.25;  // Switch capacity, overflow dropped
  const Model model(cfg, blocks);
  const auto params = model.init(backend, /*seed=*/7);

  std::vector<std::int64_t> ids(2 * 16);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 37) % 512);
  const moss::ConstView<std::int64_t, 2> prompt(ids.data(), {2, 16}, "prompt");
  auto logits = backend.template alloc<float>(2 * 16 * cfg.vocab_size);
  moss::RoutingReport report;
  model.forward(backend, params, prompt, logits.template view<3>({2, 16, cfg.vocab_size}, "logits"), nullptr, &report);
  for (const moss::RouterStats& s : report.read()) {
    std::printf("%s %s: aux %.4f z %.4f dropped %lld, tokens per expert", where, s.layer.c_str(), s.aux_loss, s.z_loss,
                static_cast<long long>(s.dropped));
    for (auto k : s.kept) std::printf(" %lld", static_cast<long long>(k));
    std::printf("\n");
  }
  moss::GenerateOptions opt;
  opt.max_new_tokens = 6;
  const auto out = moss::generate(backend, model, params, prompt, opt);  // decode state = dense Mamba's
  std::printf("%s: row 0 continues with", where);
  for (moss::index_t i = 16; i < out.length; ++i) std::printf(" %lld", static_cast<long long>(out.tokens[i]));
  std::printf("\n");
}

int main() {
  demo(moss::Host{}, "cpu");
#if defined(__CUDACC__)
  if (moss::cuda_device_count() > 0) demo(moss::Cuda{}, "cuda");
#endif
}
