// End-to-end tests of the moss-run command: the Hugging Face fixture's logits and greedy tokens
// come back through the files it writes, and bad arguments or files give a message and a
// non-zero exit.
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

struct Outcome {
  int status;
  std::string output;
};

Outcome run_moss(const std::string& args) {
  const auto log = std::filesystem::temp_directory_path() / ("moss_run_test_" + std::to_string(::getpid()) + ".log");
  const std::string cmd = std::string(MOSS_RUN_EXE) + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(cmd.c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  std::filesystem::remove(log);
  return {status, ss.str()};
}

}  // namespace

TEST_CASE("moss-run reproduces the fixture's logits and greedy tokens", "[host][models][cli]") {
  const std::string dir = test::data_dir() + "/hf_mamba_tiny";
  const auto out =
      std::filesystem::temp_directory_path() / ("moss_run_out_" + std::to_string(::getpid()) + ".safetensors");
  // The reference file holds input_ids (2, 33); greedy generation continues it by 3 tokens.
  const auto r = run_moss("--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output " +
                          out.string() + " --generate 3 --device cpu --dtype f32");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const SafetensorsFile got(out.string());
  const SafetensorsFile ref(dir + "/reference.safetensors");
  const auto logits = got.read_as<float>("logits", {2, 33, 256});
  CHECK(test::rel_l2(logits, ref.read_as<float>("logits", {2, 33, 256})) <= 1e-5);
  const auto gen = got.read_as<std::int64_t>("generated", {2, 36});
  const auto ids = ref.read_as<std::int64_t>("input_ids", {2, 33});
  for (int b = 0; b < 2; ++b) {
    CHECK(std::equal(ids.begin() + b * 33, ids.begin() + (b + 1) * 33, gen.begin() + b * 36));
    // The first generated token is the argmax of the last position's logits.
    CHECK(gen[b * 36 + 33] == argmax(logits.data() + (b * 33 + 32) * 256, 256));
  }
  std::filesystem::remove(out);
}

TEST_CASE("moss-run refuses bad arguments and files with a message", "[host][models][cli][errors]") {
  const std::string dir = test::data_dir() + "/hf_mamba_tiny";
  auto fails_with = [](const std::string& args, const std::string& text) {
    const auto r = run_moss(args);
    INFO(args << "\n" << r.output);
    CHECK(r.status != 0);
    CHECK_THAT(r.output, ContainsSubstring(text));
  };
  fails_with("", "--checkpoint, --inputs and --output are required");
  fails_with("--bogus 1", "unknown argument");
  fails_with(
      "--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output /tmp/x.safetensors --generate x",
      "needs an integer");
  fails_with("--checkpoint /nonexistent --inputs " + dir + "/reference.safetensors --output /tmp/x.safetensors",
             "/nonexistent");
  fails_with("--checkpoint " + dir + " --inputs " + dir + "/model.safetensors --output /tmp/x.safetensors",
             "input_ids");
  fails_with(
      "--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output /tmp/x.safetensors --dtype i8",
      "unknown dtype");
  fails_with(
      "--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output /tmp/x.safetensors --device tpu",
      "--device");
}

namespace {

/// Saves a seeded `Model` to a temporary folder, runs moss-run on it and compares its logits and
/// greedy tokens with the same model run in this process.
template <class Model>
void check_saved_variant(const char* variant) {
  INFO("variant " << variant);
  MambaConfig cfg;
  cfg.d_model = 32, cfg.n_layers = 4, cfg.vocab_size = 64;
  // every routed block (MoE or RoM) of the variant with 4 experts
  auto blocks = Model::default_block_configs();
  std::apply(
      [](auto&... b) {
        (
            [&] {
              if constexpr (requires { b.routing.num_experts; }) b.routing.num_experts = 4;
            }(),
            ...);
      },
      blocks);
  const Model model(cfg, blocks);
  const Host host;
  const auto params = model.init(host, 5);
  const auto tmp =
      std::filesystem::temp_directory_path() / ("moss_run_" + std::string(variant) + "_" + std::to_string(::getpid()));
  model.save(host, params, tmp / "model");
  std::vector<std::int64_t> ids(2 * 9);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 13 + 5) % 64);
  SafetensorsWriter in;
  in.add("input_ids", {2, 9}, ids);
  in.write(tmp / "inputs.safetensors");

  const auto r =
      run_moss("--checkpoint " + (tmp / "model").string() + " --inputs " + (tmp / "inputs.safetensors").string() +
               " --output " + (tmp / "out.safetensors").string() + " --generate 2 --device cpu");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const SafetensorsFile got((tmp / "out.safetensors").string());
  std::vector<float> want(2 * 9 * 64);
  model.forward(host, params, ConstView<std::int64_t, 2>(ids.data(), {2, 9}, "ids"),
                TensorView<float, 3>(want.data(), {2, 9, 64}, "logits"));
  CHECK(test::rel_l2(got.read_as<float>("logits", {2, 9, 64}), want) <= 1e-6);
  GenerateOptions opt;
  opt.max_new_tokens = 2;
  const auto gen = generate(host, model, params, ConstView<std::int64_t, 2>(ids.data(), {2, 9}, "ids"), opt);
  CHECK(got.read_as<std::int64_t>("generated", {2, 11}) == gen.tokens);
  std::filesystem::remove_all(tmp);
}

}  // namespace

TEST_CASE("moss-run runs every moss variant from a saved folder", "[host][models][cli]") {
  check_saved_variant<MoeMambaLM<float>>("moe-mamba");
  check_saved_variant<BlackMambaLM<float>>("blackmamba");
  check_saved_variant<RomLM<float>>("rom");
  check_saved_variant<RomMoeLM<float>>("rom-moe");
}

TEST_CASE("moss-run refuses a custom pattern, which has no built-in model type", "[host][models][cli][errors]") {
  using Custom = LanguageModel<Pattern<MambaBlock<float>, Residual<RmsNorm, FeedForward<Mlp<Gelu>, float>>>>;
  MambaConfig cfg;
  cfg.d_model = 32, cfg.n_layers = 2, cfg.vocab_size = 64;
  const Custom model(cfg);
  const auto tmp = std::filesystem::temp_directory_path() / ("moss_run_custom_" + std::to_string(::getpid()));
  model.save(Host{}, model.init(Host{}, 1), tmp / "model");
  SafetensorsWriter in;
  in.add("input_ids", {1, 3}, std::vector<std::int64_t>{1, 2, 3});
  in.write(tmp / "inputs.safetensors");
  const auto r =
      run_moss("--checkpoint " + (tmp / "model").string() + " --inputs " + (tmp / "inputs.safetensors").string() +
               " --output " + (tmp / "out.safetensors").string() + " --device cpu");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.output, ContainsSubstring("moss_variant \"custom\" has no built-in model type"));
  std::filesystem::remove_all(tmp);
}
