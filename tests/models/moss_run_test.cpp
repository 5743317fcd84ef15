// End-to-end tests of the moss-run command: the Hugging Face fixture's logits and greedy tokens
// come back through the files it writes, and bad arguments or files give a message and a
// non-zero exit. Also --prompt TEXT of moss-run and moss-demo on a saved byte-tokenizer model.
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "moss/moss.hpp"
#include "moss_test.hpp"
#include "run_program.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;
using moss::test::Outcome;
using moss::test::run_program;
using moss::test::slurp;

namespace {

Outcome run_moss(const std::string& args) { return run_program(MOSS_RUN_EXE, args); }

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
  // The summary: what ran, and the throughput of each phase.
  CHECK_THAT(r.out, ContainsSubstring("moss-run: mamba, f32 on cpu: 2 x 33 tokens, vocab 256"));
  CHECK_THAT(r.out, ContainsSubstring("forward: 66 tokens in "));
  CHECK_THAT(r.out, ContainsSubstring("decode:  2 steps x batch 2 in "));
  CHECK_THAT(r.out, ContainsSubstring("tokens/s"));
  CHECK(r.err.empty());
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

  // In passes of 5 positions (33 = 6 · 5 + 3), each continuing from the last one's state, the
  // file holds the same logits and tokens; --quiet prints nothing.
  const auto chunked =
      std::filesystem::temp_directory_path() / ("moss_run_chunked_" + std::to_string(::getpid()) + ".safetensors");
  const auto q = run_moss("--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output " +
                          chunked.string() + " --generate 3 --device cpu --dtype f32 --chunk-len 5 --quiet");
  INFO(q.output);
  REQUIRE(q.status == 0);
  CHECK(q.out.empty());
  CHECK(q.err.empty());
  const SafetensorsFile got_chunked(chunked.string());
  CHECK(test::rel_l2(got_chunked.read_as<float>("logits", {2, 33, 256}), logits) <= 1e-6);
  CHECK(got_chunked.read_as<std::int64_t>("generated", {2, 36}) == gen);
  CHECK(!std::filesystem::exists(chunked.string() + ".partial"));
  std::filesystem::remove(out);
  std::filesystem::remove(chunked);
}

TEST_CASE("moss-run names the real reason an output cannot be written", "[host][models][cli][errors]") {
  const std::string dir = test::data_dir() + "/hf_mamba_tiny";
  const auto tmp = std::filesystem::temp_directory_path() / ("moss_run_outdir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp / "taken");
  const std::string common = "--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --device cpu ";
  // A directory as --output: refused before the model runs, with the system's reason.
  auto r = run_moss(common + "--output " + (tmp / "taken").string());
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.err, ContainsSubstring((tmp / "taken").string()));
  CHECK_THAT(r.err, ContainsSubstring("Is a directory"));
  CHECK_THAT(r.err, !ContainsSubstring("Success"));
  CHECK(r.out.empty());
  // A missing folder.
  r = run_moss(common + "--output " + (tmp / "missing" / "out.safetensors").string());
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.err, ContainsSubstring("No such file or directory"));
  CHECK(std::filesystem::is_empty(tmp / "taken"));
  std::filesystem::remove_all(tmp);
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
  fails_with(
      "--checkpoint " + dir + " --inputs " + dir + "/reference.safetensors --output /tmp/x.safetensors --chunk-len 0",
      "--chunk-len is 0, expected ≥ 1");
}

namespace {

/// Saves a seeded `Model` to a temporary folder, runs moss-run on it and compares its logits and
/// greedy tokens with the same model run in this process.
template <class Model>
void check_saved_variant(const char* variant) {
  INFO("variant " << variant);
  MambaConfig cfg;
  cfg.d_model = 32, cfg.n_layers = 4, cfg.vocab_size = 64;
  const Model model(cfg, moss::test::blocks_with_experts<Model>(4));  // every routed block with 4 experts
  const Host host;
  const auto params = model.init(host, 5);
  const auto tmp =
      std::filesystem::temp_directory_path() / ("moss_run_" + std::string(variant) + "_" + std::to_string(::getpid()));
  model.save(host, params, tmp / "model");
  // config.json writes float settings in their shortest round-trip form: 1e-05, not
  // 9.999999747378752e-06 (the float widened to double).
  const std::string config = slurp(tmp / "model" / "config.json");
  INFO(config);
  CHECK_THAT(config, ContainsSubstring("\"layer_norm_epsilon\": 1e-05"));
  CHECK_THAT(config, ContainsSubstring("\"aux_loss_coef\": 0.01"));
  CHECK_THAT(config, ContainsSubstring("\"z_loss_coef\": 0.001"));
  CHECK(!std::regex_search(config, std::regex(R"([0-9]\.[0-9]{10,})")));  // no float → double digits
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

// ---------------------------------------------------------------------------------------------
// --prompt TEXT: a model whose config.json says "tokenizer": "bytes"

namespace {

/// A tiny seeded dense Mamba with the byte tokenizer (vocab 256), saved to a temporary folder.
struct ByteModel {
  MambaConfig cfg;
  MambaLM<float> model;
  MambaLM<float>::Params params;
  std::filesystem::path dir;

  static MambaConfig config() {
    MambaConfig c;
    c.d_model = 32, c.n_layers = 2, c.vocab_size = 256, c.d_state = 8;
    c.tokenizer = "bytes";
    return c;
  }
  ByteModel()
      : cfg(config()),
        model(cfg),
        params(model.init(Host{}, 11)),
        dir(std::filesystem::temp_directory_path() / ("moss_run_bytes_" + std::to_string(::getpid()))) {
    model.save(Host{}, params, dir / "model");
  }
  ~ByteModel() { std::filesystem::remove_all(dir); }

  /// The model's greedy tokens after `prompt` (its bytes), n of them, run in this process.
  std::vector<std::int64_t> greedy(const std::string& prompt, index_t n) const {
    const std::vector<std::int64_t> ids = encode_bytes(prompt);
    GenerateOptions opt;
    opt.max_new_tokens = n;
    const auto r = generate(Host{}, model, params,
                            ConstView<std::int64_t, 2>(ids.data(), {1, static_cast<index_t>(ids.size())}, "ids"), opt);
    return {r.tokens.begin() + static_cast<std::ptrdiff_t>(ids.size()), r.tokens.end()};
  }
};

}  // namespace

TEST_CASE("moss-run --prompt prints the continuation of a byte-tokenizer model as text", "[host][models][cli]") {
  const ByteModel m;
  const std::string config = slurp(m.dir / "model" / "config.json");
  INFO(config);
  CHECK_THAT(config, ContainsSubstring("\"tokenizer\": \"bytes\""));
  const std::string model = "--checkpoint " + (m.dir / "model").string() + " --device cpu ";

  // The summary, then the 12 greedy bytes as printable text, as this process generates them.
  const std::string want = printable_text(decode_bytes(m.greedy("hello", 12)));
  REQUIRE(!want.empty());
  auto r = run_moss(model + "--prompt hello --generate 12");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());
  CHECK_THAT(r.out, ContainsSubstring("moss-run: mamba, f32 on cpu: 1 x 5 tokens, vocab 256, --prompt -> stdout"));
  CHECK_THAT(r.out, ContainsSubstring("  prompt:  \"hello\" (5 bytes, tokenizer \"bytes\")"));
  CHECK_THAT(r.out, ContainsSubstring("generated 12 tokens per row"));
  CHECK_THAT(r.out, ContainsSubstring("--- the 12 generated bytes after the prompt, as text"));
  CHECK(r.out.ends_with("---\n" + want + "\n"));

  // --quiet: the text alone. Without --generate: 64 bytes.
  r = run_moss(model + "--prompt hello --generate 12 --quiet");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.out == want + "\n");
  r = run_moss(model + "--prompt hello --quiet");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.out == printable_text(decode_bytes(m.greedy("hello", 64))) + "\n");

  // A prompt of several words and UTF-8 characters is its bytes; --output also writes the file,
  // whose generated row is the prompt's bytes and then the printed ones.
  const std::string prompt = "h\xC3\xA9llo, w\xC3\xB6rld";  // héllo, wörld: 14 bytes
  const auto gen = m.greedy(prompt, 5);
  r = run_moss(model + "--prompt '" + prompt + "' --generate 5 --output " + (m.dir / "out.safetensors").string());
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.out, ContainsSubstring("  prompt:  \"" + prompt + "\" (14 bytes"));
  CHECK_THAT(r.out, ContainsSubstring("-> " + (m.dir / "out.safetensors").string()));
  CHECK(r.out.ends_with("---\n" + printable_text(decode_bytes(gen)) + "\n"));
  const SafetensorsFile got((m.dir / "out.safetensors").string());
  std::vector<std::int64_t> row = encode_bytes(prompt);
  row.insert(row.end(), gen.begin(), gen.end());
  CHECK(got.read_as<std::int64_t>("generated", {1, 19}) == row);
  CHECK(got.read_as<float>("logits", {1, 14, 256}).size() == 14 * 256);
}

TEST_CASE("moss-run --prompt on a model without a tokenizer says to pass token ids", "[host][models][cli][errors]") {
  const std::string dir = test::data_dir() + "/hf_mamba_tiny";  // vocab 256, no "tokenizer" key
  auto r = run_moss("--checkpoint " + dir + " --prompt hello --device cpu");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.out.empty());
  CHECK_THAT(r.err, ContainsSubstring("--prompt: the model has no tokenizer"));
  CHECK_THAT(r.err, ContainsSubstring(dir + "/config.json does not say \"tokenizer\": \"bytes\""));
  CHECK_THAT(r.err, ContainsSubstring("pass token ids instead: --inputs FILE"));

  // Bad combinations, on a model that has the tokenizer.
  const ByteModel m;
  auto fails_with = [](const std::string& args, const std::string& text) {
    const auto f = run_moss(args);
    INFO(args << "\n" << f.output);
    CHECK(f.status != 0);
    CHECK_THAT(f.err, ContainsSubstring(text));
  };
  const std::string model = "--checkpoint " + (m.dir / "model").string() + " --device cpu ";
  fails_with(model + "--prompt hello --inputs " + dir + "/reference.safetensors", "--prompt and --inputs both");
  fails_with(model + "--prompt ''", "--prompt is empty");
  fails_with(model + "--prompt hello --generate 0", "--prompt prints the generated text: expected ≥ 1");
  fails_with("--prompt hello", "--checkpoint is required");
}

TEST_CASE("moss-demo --prompt prints row 0's continuation as text, and refuses a seeded model", "[host][models][cli]") {
  const ByteModel m;
  const std::string want = printable_text(decode_bytes(m.greedy("hello", 8)));
  auto r = run_program(MOSS_DEMO_EXE,
                       "--checkpoint " + (m.dir / "model").string() + " --device cpu --prompt hello --generate 8");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.out, ContainsSubstring("  prompt:  \"hello\" (5 bytes, tokenizer \"bytes\")"));
  CHECK_THAT(r.out, ContainsSubstring("--- row 0: the 8 generated bytes after the prompt, as text"));
  CHECK_THAT(r.out, ContainsSubstring("---\n" + want + "\n"));

  // The seeded model (no --checkpoint) has no tokenizer.
  r = run_program(MOSS_DEMO_EXE, "--device cpu --layers 1 --prompt hello");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.err, ContainsSubstring("--prompt: the model has no tokenizer"));
  CHECK_THAT(r.err, ContainsSubstring("a seeded model never has one"));
  r = run_program(MOSS_DEMO_EXE,
                  "--checkpoint " + (m.dir / "model").string() + " --device cpu --prompt hello --prompt-len 4");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.err, ContainsSubstring("--prompt and --prompt-len both"));
}
