// Host tests of the Mamba language model: Hugging Face parity (logits, decode-path logits,
// greedy generation), checkpoint save/load round trips, config parsing, sampling, errors.
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>

#include "models/hf_parity.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moss_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

MambaConfig tiny_config() {
  MambaConfig c;
  c.d_model = 16;
  c.n_layers = 2;
  c.vocab_size = 40;
  c.d_state = 4;
  c.dt_rank = 2;
  return c;
}

}  // namespace

TEST_CASE("Hugging Face MambaForCausalLM parity on the host, f32", "[host][models][hf]") {
  test::check_hf_mamba_parity<float>(Host{}, 1e-5);
}

TEST_CASE("Hugging Face MambaForCausalLM parity on the host, bf16 and f16", "[host][models][hf]") {
  test::check_hf_mamba_parity<bf16>(Host{}, 3e-2);
  test::check_hf_mamba_parity<f16>(Host{}, 1e-2);
}

TEST_CASE("config.json of the fixture is read as transformers wrote it", "[host][models]") {
  const MambaConfig c = load_mamba_config(test::hf_mamba_dir());
  CHECK(c.d_model == 64);
  CHECK(c.d_state == 16);
  CHECK(c.n_layers == 2);
  CHECK(c.expand == 2);
  CHECK(c.d_conv == 4);
  CHECK(c.resolved_dt_rank() == 4);
  CHECK(c.vocab_size == 256);
  CHECK_FALSE(c.use_bias);
  CHECK(c.use_conv_bias);
  CHECK(c.tie_embeddings);
  CHECK(c.residual_in_fp32);
  CHECK(c.eps == 1e-5f);
}

TEST_CASE("config.json accepts torch_dtype and dtype and rejects bad values", "[host][models][errors]") {
  auto parse = [](const std::string& text) {  // text: a JSON object; model_type "mamba" is put in front
    return MambaConfig::from_json(io::parse_json(R"({"model_type": "mamba", )" + text.substr(1), "config.json"),
                                  "config.json");
  };
  CHECK(parse(R"({"hidden_size": 32, "torch_dtype": "bfloat16"})").dtype == DType::bf16);
  CHECK(parse(R"({"hidden_size": 32, "dtype": "float16"})").dtype == DType::f16);
  CHECK(parse(R"({"hidden_size": 32, "time_step_rank": "auto"})").resolved_dt_rank() == 2);
  REQUIRE_THROWS_AS(parse(R"({"hidden_size": 0})"), config_error);
  REQUIRE_THROWS_WITH(parse(R"({"hidden_size": 32, "state_size": 512})"), ContainsSubstring("state_size up to 256"));
  REQUIRE_THROWS_WITH(parse(R"({"hidden_size": 32, "time_step_rank": "big"})"), ContainsSubstring("time_step_rank"));
  REQUIRE_THROWS_WITH(parse(R"({"hidden_size": 32, "dtype": "int8"})"), ContainsSubstring("unknown dtype"));
  REQUIRE_THROWS_WITH(parse(R"({"hidden_size": 32, "expand": 2, "intermediate_size": 100})"),
                      ContainsSubstring("intermediate_size is 100"));
  REQUIRE_THROWS(parse(R"({"hidden_size": "wide"})"));
}

TEST_CASE("A saved model loads back bit for bit and computes the same logits", "[host][models]") {
  const auto dir = temp_dir("roundtrip");
  MambaConfig cfg = tiny_config();
  cfg.use_bias = true;
  cfg.tie_embeddings = false;
  const MambaLM<bf16> model(cfg);
  const auto p = model.init(Host{}, 3);
  model.save(Host{}, p, dir);
  const MambaConfig cfg2 = load_mamba_config(dir);
  CHECK(cfg2.dtype == DType::bf16);
  CHECK_FALSE(cfg2.tie_embeddings);
  const MambaLM<bf16> model2(cfg2);
  const auto p2 = model2.load(Host{}, Checkpoint(dir));
  std::vector<std::int64_t> ids = {1, 2, 3, 39, 0, 5};
  const ConstView<std::int64_t, 2> v(ids.data(), {2, 3}, "ids");
  std::vector<float> a(2 * 3 * 40), b(2 * 3 * 40);
  model.forward(Host{}, p, v, TensorView<float, 3>(a.data(), {2, 3, 40}, "logits"));
  model2.forward(Host{}, p2, v, TensorView<float, 3>(b.data(), {2, 3, 40}, "logits"));
  CHECK(a == b);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A tied checkpoint that also stores lm_head.weight is accepted", "[host][models]") {
  const auto dir = temp_dir("tied_head");
  const MambaConfig cfg = load_mamba_config(test::hf_mamba_dir());
  const MambaLM<float> model(cfg);
  const Checkpoint src(test::hf_mamba_dir());
  SafetensorsWriter w;
  for (const auto& name : src.names()) {
    const auto info = src.info(name);
    const auto data = src.read_as<float>(name, info.shape);
    w.add(name, info.shape, data);
  }
  const auto emb = src.read_as<float>("backbone.embeddings.weight", {256, 64});
  w.add("lm_head.weight", {256, 64}, emb);
  w.write(dir / "model.safetensors");
  std::filesystem::copy_file(test::hf_mamba_dir() + "/config.json", dir / "config.json");
  CHECK_NOTHROW(model.load(Host{}, Checkpoint(dir)));
  std::filesystem::remove_all(dir);
}

TEST_CASE("Loading a checkpoint that does not fit the config is an io_error naming the tensor",
          "[host][models][errors]") {
  MambaConfig cfg = load_mamba_config(test::hf_mamba_dir());
  const Checkpoint ckpt(test::hf_mamba_dir());
  SECTION("wrong d_state") {
    cfg.d_state = 8;
    REQUIRE_THROWS_WITH(MambaLM<float>(cfg).load(Host{}, ckpt), ContainsSubstring("x_proj.weight"));
  }
  SECTION("more layers than stored") {
    cfg.n_layers = 3;
    REQUIRE_THROWS_AS(MambaLM<float>(cfg).load(Host{}, ckpt), io_error);
    REQUIRE_THROWS_WITH(MambaLM<float>(cfg).load(Host{}, ckpt), ContainsSubstring("backbone.layers.2."));
  }
  SECTION("untied model without lm_head.weight") {
    cfg.tie_embeddings = false;
    REQUIRE_THROWS_WITH(MambaLM<float>(cfg).load(Host{}, ckpt), ContainsSubstring("lm_head.weight"));
  }
}

TEST_CASE("Token ids outside the vocabulary are refused, never read", "[host][models][errors]") {
  const MambaLM<float> model(tiny_config());
  const auto p = model.init(Host{}, 1);
  std::vector<std::int64_t> ids = {1, 40};
  std::vector<float> logits(2 * 40);
  REQUIRE_THROWS_WITH(model.forward(Host{}, p, ConstView<std::int64_t, 2>(ids.data(), {1, 2}, "ids"),
                                    TensorView<float, 3>(logits.data(), {1, 2, 40}, "logits")),
                      ContainsSubstring("token id 40"));
  ids[1] = -1;
  REQUIRE_THROWS_AS(model.forward(Host{}, p, ConstView<std::int64_t, 2>(ids.data(), {1, 2}, "ids"),
                                  TensorView<float, 3>(logits.data(), {1, 2, 40}, "logits")),
                    shape_error);
  // The decode steps too: `step` and, on the CPU, `step_resident` (ids in backend memory).
  auto cache = model.make_cache(Host{}, 2);
  const TensorView<float, 2> step_logits(logits.data(), {2, 40}, "logits");
  REQUIRE_THROWS_WITH(model.step(Host{}, p, ConstView<std::int64_t, 1>(ids.data(), {2}, "ids"), step_logits, cache),
                      ContainsSubstring("token id -1 at flat position 1"));
  ids[1] = 40;
  REQUIRE_THROWS_WITH(
      model.step_resident(Host{}, p, ConstView<std::int64_t, 1>(ids.data(), {2}, "ids"), step_logits, cache),
      ContainsSubstring("token id 40 at flat position 1 is outside the vocabulary [0, 40)"));
  CHECK(cache.length == 0);
}

TEST_CASE("Last-position logits equal the last row of the full logits", "[host][models]") {
  const MambaLM<float> model(tiny_config());
  const auto p = model.init(Host{}, 9);
  std::vector<std::int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  const ConstView<std::int64_t, 2> v(ids.data(), {2, 4}, "ids");
  std::vector<float> all(2 * 4 * 40), last(2 * 40);
  model.forward(Host{}, p, v, TensorView<float, 3>(all.data(), {2, 4, 40}, "logits"));
  model.forward(Host{}, p, v, TensorView<float, 3>(last.data(), {2, 1, 40}, "logits"));
  for (int b = 0; b < 2; ++b)
    CHECK(std::equal(last.begin() + b * 40, last.begin() + (b + 1) * 40, all.begin() + (b * 4 + 3) * 40));
}

TEST_CASE("Sampling: greedy, top-k 1, tiny top-p agree, seeds reproduce, eos stops", "[host][models][sampling]") {
  const std::vector<float> logits = {0.1f, 2.0f, NAN, 2.0f, -1.0f};
  CHECK(argmax(logits.data(), 5) == 1);  // tie → lowest index, NaN never chosen
  const std::vector<float> nans = {NAN, NAN};
  CHECK(argmax(nans.data(), 2) == 0);
  Rng rng(1);
  SamplingOptions s;
  s.greedy = false;
  s.top_k = 1;
  CHECK(sample_token(logits.data(), 5, s, rng) == 1);
  s.top_k = 0;
  s.top_p = 1e-6f;
  CHECK(sample_token(logits.data(), 5, s, rng) == 1);
  // A fair two-way choice is sampled roughly evenly and never picks the excluded tokens.
  const std::vector<float> two = {5.0f, 5.0f, -50.0f};
  s.top_p = 1.0f;
  s.top_k = 2;
  int counts[3] = {0, 0, 0};
  Rng r2(123);
  for (int i = 0; i < 4000; ++i) ++counts[sample_token(two.data(), 3, s, r2)];
  CHECK(counts[2] == 0);
  CHECK(counts[0] > 1800);
  CHECK(counts[1] > 1800);
  // Temperature sharpens: at T = 0.05 a logit gap of 1 makes the top token ~all of the mass.
  const std::vector<float> gap = {1.0f, 0.0f};
  s.top_k = 0;
  s.temperature = 0.05f;
  int top = 0;
  for (int i = 0; i < 1000; ++i) top += sample_token(gap.data(), 2, s, r2) == 0;
  CHECK(top >= 995);
  s.temperature = 0.0f;
  REQUIRE_THROWS_AS(s.validate(), config_error);

  const MambaLM<float> model(tiny_config());
  const auto p = model.init(Host{}, 4);
  std::vector<std::int64_t> ids = {1, 2, 3, 4};
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  opt.sampling.greedy = false;
  opt.sampling.seed = 77;
  const ConstView<std::int64_t, 2> v(ids.data(), {2, 2}, "ids");
  const auto a = generate(Host{}, model, p, v, opt);
  const auto b = generate(Host{}, model, p, v, opt);
  CHECK(a.tokens == b.tokens);
  CHECK(a.length == 8);

  // Stop at eos: with eos set to the greedy first token of row 0, row 0 stops at once.
  opt.sampling.greedy = true;
  opt.max_new_tokens = 5;
  const auto greedy = generate(Host{}, model, p, v, opt);
  MambaConfig cfg = tiny_config();
  cfg.eos_token_id = greedy.tokens[2];
  const MambaLM<float> model_eos(cfg);
  opt.stop_at_eos = true;
  const auto stopped = generate(Host{}, model_eos, p, v, opt);
  CHECK(stopped.tokens[2] == cfg.eos_token_id);
  for (index_t i = 3; i < stopped.length; ++i) CHECK(stopped.tokens[i] == cfg.eos_token_id);
}
