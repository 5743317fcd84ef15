// 03_moe_mamba: MoE-Mamba (Pióro et al. 2024): Mamba mixers alternating with Switch MoE
// feed-forward blocks (top-1, ReLU experts of width 3 · d_model, capacity factor 1.0), saved
// and loaded back through the moss checkpoint format that moss-run reads.
#include <cstdio>
#include <filesystem>
#include <vector>

#include "moss/moss.hpp"

template <class Backend>
void demo(const Backend& backend, const char* where) {
  moss::MambaConfig cfg;
  cfg.d_model = 128, cfg.n_layers = 6, cfg.vocab_size = 512;
  using Model = moss::MoeMambaLM<float>;  // Pattern<Mamba block, Switch MoE block>
  auto blocks = Model::default_block_configs();
  std::get<1>(blocks).routing.num_experts = 8;  // the MoE block's section of config.json
  std::get<1>(blocks).routing.settings.capacity_factor = 1.0;
  const Model model(cfg, blocks);
  const auto params = model.init(backend, /*seed=*/3);

  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moss_moe_mamba_example";
  model.save(backend, params, dir);                 // config.json (model_type "moss", "blocks") + model.safetensors
  const Model again(moss::load_mamba_config(dir));  // the expert count comes back from "blocks"
  const auto loaded = again.load(backend, moss::Checkpoint(dir));

  std::vector<std::int64_t> ids = {5, 9, 2, 77, 301, 4, 8, 15};
  const moss::ConstView<std::int64_t, 2> prompt(ids.data(), {1, 8}, "prompt");
  moss::RoutingReport report;
  auto logits = backend.template alloc<float>(8 * cfg.vocab_size);
  again.forward(backend, loaded, prompt, logits.template view<3>({1, 8, cfg.vocab_size}, "logits"), nullptr, &report);
  float aux = 0;
  for (const auto& s : report.read()) aux += s.aux_loss;
  std::printf("%s: %zu MoE layers, total load-balancing loss %.5f (saved to %s)\n", where, report.size(), aux,
              dir.string().c_str());
}

int main() {
  demo(moss::Host{}, "cpu");
#if defined(__CUDACC__)
  if (moss::cuda_device_count() > 0) demo(moss::Cuda{}, "cuda");
#endif
}
