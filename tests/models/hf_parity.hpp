// tests/models/hf_parity.hpp: Hugging Face parity checks shared by the host and CUDA tests.
// The fixture (tests/data/hf_mamba_tiny, described in tests/data/README.md) was produced by
// transformers' MambaForCausalLM; a missing file fails the test.
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <filesystem>

#include "moss/moss.hpp"
#include "moss_test.hpp"

namespace moss::test {

inline std::string hf_mamba_dir() { return data_dir() + "/hf_mamba_tiny"; }

/// Tolerances of the end-to-end contract: logits of a whole model.
struct ParityTolerance {
  double logits;
};

/// Loads the fixture into a MambaLM<T> on `backend` and checks the full-sequence logits, the
/// decode path's per-step logits and the greedy generation against the fixture.
template <class T, class Backend>
void check_hf_mamba_parity(const Backend& backend, double logits_tol) {
  REQUIRE(std::filesystem::exists(hf_mamba_dir() + "/model.safetensors"));
  const MambaConfig cfg = load_mamba_config(hf_mamba_dir());
  const Checkpoint ckpt(hf_mamba_dir());
  const SafetensorsFile ref(hf_mamba_dir() + "/reference.safetensors");
  const MambaLM<T> model(cfg);
  const auto params = model.load(backend, ckpt);
  const index_t V = cfg.vocab_size;

  // Full-sequence logits.
  const auto ids = ref.read_as<std::int64_t>("input_ids", {2, 33});
  const auto want = ref.read_as<float>("logits", {2, 33, V});
  Buffer<float> logits = backend.template alloc<float>(2 * 33 * V);
  model.forward(backend, params, ConstView<std::int64_t, 2>(ids.data(), {2, 33}, "input_ids"),
                logits.template view<3>({2, 33, V}, "logits"));
  std::vector<float> got(want.size());
  download(backend, got.data(), logits.data(), logits.size());
  const double err = rel_l2(got, want);
  INFO("logits relative L2 error " << err);
  CHECK(err <= logits_tol);

  // Greedy generation through the decode path: per-step logits and tokens.
  const auto prompt = ref.read_as<std::int64_t>("gen_prompt", {2, 5});
  const auto gen_out = ref.read_as<std::int64_t>("gen_output", {2, 17});
  const auto step_logits = ref.read_as<float>("gen_step_logits", {2, 12, V});
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.record_logits = true;
  const auto r = generate(backend, model, params, ConstView<std::int64_t, 2>(prompt.data(), {2, 5}, "gen_prompt"), opt);
  REQUIRE(r.length == 17);
  CHECK(r.tokens == gen_out);
  // r.logits is (steps, batch, V); the fixture is (batch, steps, V).
  std::vector<float> got_steps(step_logits.size());
  for (index_t s = 0; s < 12; ++s)
    for (index_t b = 0; b < 2; ++b)
      std::copy_n(r.logits.begin() + (s * 2 + b) * V, V, got_steps.begin() + (b * 12 + s) * V);
  const double step_err = rel_l2(got_steps, step_logits);
  INFO("decode-path logits relative L2 error " << step_err);
  CHECK(step_err <= logits_tol);
}

}  // namespace moss::test
