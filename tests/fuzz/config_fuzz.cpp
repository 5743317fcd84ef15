// tests/fuzz/config_fuzz.cpp: libFuzzer target for config.json → model config → model.
// The input is a config.json. `load_mamba_config` parses and validates it; when it loads, the
// built-in model type it names is constructed (which reads every block's section), and when its
// sizes are small, the model is initialised and runs a forward pass over a few tokens on the CPU,
// so every size the config implies is exercised. Seeds: tests/fuzz/corpus/config/.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "moss/moss.hpp"

namespace {

/// True when every number in `j` (a block section) is at most `limit` in magnitude.
bool small_numbers(const moss::io::Json& j, double limit) {
  if (j.is_number()) return std::abs(j.get<double>()) <= limit;
  if (j.is_structured())
    return std::all_of(j.begin(), j.end(), [&](const moss::io::Json& v) { return small_numbers(v, limit); });
  return true;
}

/// Sizes for which building and running the model takes milliseconds, not memory.
bool small(const moss::MambaConfig& c) {
  if (c.d_model > 64 || c.vocab_size > 512 || c.n_layers > 4 || c.d_state > 32 || c.expand > 4 || c.d_conv > 8 ||
      c.resolved_dt_rank() > 64)
    return false;
  return std::all_of(c.blocks.begin(), c.blocks.end(), [](const moss::io::Json& b) { return small_numbers(b, 256); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto dir = moss::fuzz::scratch() / "model";
  std::filesystem::create_directories(dir);
  moss::fuzz::write_file(dir / "config.json", {reinterpret_cast<const char*>(data), size});
  moss::fuzz::expect_moss_errors_only([&] {
    const moss::MambaConfig cfg = moss::load_mamba_config(dir);
    (void)cfg.to_json();
    moss::dispatch_variant<float>(cfg, [&](auto tag) {
      using Model = typename decltype(tag)::type;
      const Model model(cfg);
      if (!small(cfg)) return;
      const auto params = model.init(moss::Host{}, 1);
      const moss::index_t L = 3, V = cfg.vocab_size;
      std::vector<std::int64_t> ids(L);
      for (moss::index_t i = 0; i < L; ++i) ids[i] = i % V;
      std::vector<float> logits(static_cast<std::size_t>(L * V));
      model.forward(moss::Host{}, params, moss::ConstView<std::int64_t, 2>(ids.data(), {1, L}, "input_ids"),
                    moss::TensorView<float, 3>(logits.data(), {1, L, V}, "logits"));
    });
  });
  return 0;
}
