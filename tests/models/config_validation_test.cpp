// Host tests of config validation: a config.json (or a config built in code) that moss cannot
// run exactly as its author meant is a `config_error` naming the key, never a run with other
// numbers. Sizes whose products overflow or are absurd, capacity factors out of range, a
// hidden_act moss does not apply, an unknown or missing model_type, dtype and torch_dtype that
// disagree, a state-spaces/mamba_ssm config, a tokenizer other than "bytes" (or "bytes" with fewer
// than 256 tokens); and `expect_shape`'s one wildcard, `moss::any`.
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_exception.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::MessageMatches;

namespace {

/// A config.json text parsed as MambaConfig::from_json reads it.
MambaConfig parse(const std::string& text) {
  return MambaConfig::from_json(io::parse_json(text, "config.json"), "config.json");
}

/// A Hugging Face Mamba config with the JSON members `members` (sizes not given keep
/// transformers' defaults).
std::string hf_with(const std::string& members) {
  return R"({"model_type": "mamba", "num_hidden_layers": 2, )" + members + "}";
}

/// A Hugging Face Mamba config of tiny sizes (hidden 64, vocab 256, state 16) with `extra`
/// (JSON members) appended.
std::string hf(const std::string& extra = "") {
  return hf_with(R"("hidden_size": 64, "vocab_size": 256, "state_size": 16)" + (extra.empty() ? "" : ", " + extra));
}

constexpr index_t kMax = std::numeric_limits<index_t>::max();

}  // namespace

// ---------------------------------------------------------------------------------------------
// Checked arithmetic (moss/core/checked.hpp)

TEST_CASE("checked_add and checked_mul raise config_error naming the operands on overflow", "[host][core][config]") {
  CHECK(try_mul<index_t>(1LL << 31, 1LL << 31) == index_t{1} << 62);
  CHECK_FALSE(try_mul<index_t>(1LL << 32, 1LL << 31).has_value());
  CHECK_FALSE(try_add<index_t>(kMax, 1).has_value());
  CHECK(checked_mul<config_error>(index_t{64}, index_t{2}, "x") == 128);
  REQUIRE_THROWS_MATCHES(
      checked_mul(index_t{288230376151711746}, index_t{64}, "config.json: expand × hidden_size"), config_error,
      MessageMatches(ContainsSubstring("config.json: expand × hidden_size overflows (288230376151711746 × 64)")));
  REQUIRE_THROWS_MATCHES(checked_add(kMax, index_t{1}, "a + b"), config_error,
                         MessageMatches(ContainsSubstring("a + b overflows")));
  REQUIRE_THROWS_MATCHES(checked_elements(index_t{1} << 30, index_t{1} << 20, "big (a × b)"), config_error,
                         MessageMatches(ContainsSubstring("big (a × b) is 1073741824 × 1048576")));
  CHECK(checked_elements(index_t{1} << 24, index_t{1} << 24, "x") == max_tensor_elements);
}

// ---------------------------------------------------------------------------------------------
// 1. Sizes from config.json that overflow or are absurd

TEST_CASE("config.json: expand × hidden_size that wraps to intermediate_size is refused", "[host][models][config]") {
  // 64 · (2^58 + 2) = 2^64 + 128 wraps to 128 = intermediate_size: accepted before this check.
  REQUIRE_THROWS_MATCHES(parse(hf(R"("expand": 288230376151711746, "intermediate_size": 128)")), config_error,
                         MessageMatches(ContainsSubstring("config.json: expand × hidden_size overflows") &&
                                        ContainsSubstring("288230376151711746 × 64")));
  // Without intermediate_size, a d_inner that wraps negative (64 · (2^57 + 1) = 2^63 + 64).
  REQUIRE_THROWS_MATCHES(parse(hf(R"("expand": 144115188075855873)")), config_error,
                         MessageMatches(ContainsSubstring("expand × hidden_size overflows")));
  // intermediate_size that disagrees with a product that fits is still named.
  REQUIRE_THROWS_MATCHES(parse(hf(R"("expand": 2, "intermediate_size": 100)")), config_error,
                         MessageMatches(ContainsSubstring("intermediate_size is 100")));
}

TEST_CASE("config.json: time_step_rank + 2 × state_size that overflows is refused", "[host][models][config]") {
  REQUIRE_THROWS_MATCHES(parse(hf(R"("time_step_rank": 9223372036854775800)")), config_error,
                         MessageMatches(ContainsSubstring("config.json: time_step_rank + 2 × state_size overflows")));
}

TEST_CASE("config.json: \"auto\" time_step_rank of a huge hidden_size does not overflow", "[host][models][config]") {
  // ceil(D / 16) with D = 2^63 - 1 used to compute D + 15; the refusal names the real problem.
  REQUIRE_THROWS_MATCHES(parse(R"({"model_type": "mamba", "hidden_size": 9223372036854775807, "expand": 1,
                                   "time_step_rank": "auto"})"),
                         config_error, MessageMatches(ContainsSubstring("hidden_size")));
  MambaConfig c;
  c.d_model = kMax;
  c.dt_rank = 0;
  CHECK(c.resolved_dt_rank() == kMax / 16 + 1);
}

TEST_CASE("config.json: positive sizes whose tensors are absurd are refused naming the keys",
          "[host][models][config]") {
  // The embedding: 2^40 · 2^10 = 2^50 elements > 2^48.
  REQUIRE_THROWS_MATCHES(
      parse(hf_with(R"("vocab_size": 1099511627776, "hidden_size": 1024)")), config_error,
      MessageMatches(ContainsSubstring("vocab_size × hidden_size") && ContainsSubstring("1099511627776 × 1024")));
  // in_proj: 2 · 2^32 · 2^31 overflows int64.
  REQUIRE_THROWS_MATCHES(parse(hf_with(R"("hidden_size": 2147483648, "expand": 2, "vocab_size": 2)")), config_error,
                         MessageMatches(ContainsSubstring("in_proj.weight") && ContainsSubstring("hidden_size")));
  // conv1d: 128 · 2^42 = 2^49 > 2^48.
  REQUIRE_THROWS_MATCHES(parse(hf(R"("conv_kernel": 4398046511104)")), config_error,
                         MessageMatches(ContainsSubstring("conv_kernel")));
  // x_proj and dt_proj: (2^42 + 32) · 128 > 2^48.
  REQUIRE_THROWS_MATCHES(parse(hf(R"("time_step_rank": 4398046511104)")), config_error,
                         MessageMatches(ContainsSubstring("time_step_rank")));
}

TEST_CASE("A MambaConfig built in code with overflowing sizes is refused by the model", "[host][models][config]") {
  MambaConfig c;
  c.d_model = 64;
  c.n_layers = 2;
  c.vocab_size = 256;
  c.d_state = 16;
  c.expand = 288230376151711746;
  REQUIRE_THROWS_MATCHES(c.d_inner(), config_error, MessageMatches(ContainsSubstring("expand × hidden_size")));
  REQUIRE_THROWS_MATCHES(c.validate("LanguageModel"), config_error,
                         MessageMatches(ContainsSubstring("LanguageModel: expand × hidden_size overflows")));
  REQUIRE_THROWS_MATCHES(MambaLM<float>(c), config_error, MessageMatches(ContainsSubstring("expand")));
}

TEST_CASE("MambaDims::validate refuses derived sizes that overflow or are absurd", "[host][layers][config]") {
  MambaDims d;
  d.d_model = 64;
  d.d_inner = 128;
  d.d_state = 16;
  d.d_conv = 4;
  d.dt_rank = 4;
  REQUIRE_NOTHROW(d.validate("Mamba"));
  CHECK(d.x_proj_out() == 36);

  MambaDims x = d;
  x.dt_rank = kMax - 8;
  REQUIRE_THROWS_MATCHES(x.x_proj_out(), config_error, MessageMatches(ContainsSubstring("dt_rank + 2 × d_state")));
  REQUIRE_THROWS_MATCHES(x.validate("Mamba"), config_error,
                         MessageMatches(ContainsSubstring("Mamba: x_proj width dt_rank + 2 × d_state overflows")));
  MambaDims wide = d;
  wide.d_inner = index_t{1} << 62;
  REQUIRE_THROWS_MATCHES(wide.validate("Mamba"), config_error, MessageMatches(ContainsSubstring("2 × d_inner")));
  MambaDims absurd = d;
  absurd.d_inner = index_t{1} << 40;  // in_proj 2^41 · 64 = 2^47 and conv 2^42 fit;
  absurd.dt_rank = 1 << 10;           // x_proj (2^10 + 32) · 2^40 > 2^48 does not
  REQUIRE_THROWS_MATCHES(absurd.validate("Mamba"), config_error,
                         MessageMatches(ContainsSubstring("x_proj.weight ((dt_rank + 2·d_state) × d_inner)")));
  REQUIRE_THROWS_AS(Mamba<float>(absurd), config_error);
}

// ---------------------------------------------------------------------------------------------
// 2. capacity_factor

TEST_CASE("expert_capacity: a huge capacity factor keeps every pair instead of overflowing", "[host][ops][config]") {
  using detail::route::expert_capacity;
  CHECK(expert_capacity(1e308, 10, 2, 4) == 20);  // used to be -9223372036854775808
  CHECK(expert_capacity(std::numeric_limits<double>::max(), 3, 1, 1) == 3);
  CHECK(expert_capacity(1e18, 1000, 2, 1) == 2000);  // 2e21 ≥ 2^62
  CHECK(expert_capacity(1e308, 0, 2, 4) == 1);
  CHECK(expert_capacity(1.25, 10, 2, 4) == 7);  // unchanged below the bound
  CHECK(expert_capacity(0.0, 10, 2, 4) == 0);   // 0 = dropless
}

TEST_CASE("expert_capacity: NaN, infinite and negative capacity factors are config_errors", "[host][ops][config]") {
  using detail::route::expert_capacity;
  for (double cf : {std::nan(""), std::numeric_limits<double>::infinity(), -1.0, -1e-300}) {
    CAPTURE(cf);
    REQUIRE_THROWS_MATCHES(expert_capacity(cf, 10, 2, 4), config_error,
                           MessageMatches(ContainsSubstring("capacity_factor is")));
  }
  REQUIRE_THROWS_AS(expert_capacity(1.0, 10, 2, 0), shape_error);
}

TEST_CASE("config.json: a negative or non-finite capacity_factor is refused with its key path",
          "[host][layers][config]") {
  auto read = [](const std::string& text) {
    const io::Json doc = io::parse_json(text, "config.json");
    RouterConfig<Top1Switch, Experts<>> r;
    r.read(io::JsonRef::at_path(doc, "config.json: blocks[1]"));
    return r;
  };
  CHECK(read(R"({"num_experts": 4, "capacity_factor": 1e308})").settings.capacity_factor == 1e308);
  REQUIRE_THROWS_MATCHES(read(R"({"num_experts": 4, "capacity_factor": -1})"), config_error,
                         MessageMatches(ContainsSubstring("config.json: blocks[1].capacity_factor is -1")));
  // JSON text cannot hold NaN or infinities (1e999 is refused by the parser); a document built in
  // code can, and the key refuses them.
  REQUIRE_THROWS_AS(read(R"({"num_experts": 4, "capacity_factor": 1e999})"), moss::error);
  for (double cf : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    CAPTURE(cf);
    io::Json doc = io::Json::object();
    doc["num_experts"] = 4;
    doc["capacity_factor"] = cf;
    RouterConfig<Top1Switch, Experts<>> r;
    REQUIRE_THROWS_MATCHES(r.read(io::JsonRef::at_path(doc, "config.json: blocks[1]")), config_error,
                           MessageMatches(ContainsSubstring("config.json: blocks[1].capacity_factor is")));
  }
  // Through a whole moss config.json and the model built from it.
  const MambaConfig c = parse(R"({"model_type": "moss", "moss_variant": "moe-mamba", "hidden_size": 16,
      "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["mamba", "moe"],
      "blocks": [{}, {"num_experts": 4, "capacity_factor": -0.5}]})");
  REQUIRE_THROWS_MATCHES(MoeMambaLM<float>(c), config_error,
                         MessageMatches(ContainsSubstring("config.json: blocks[1].capacity_factor is -0.5")));
}

// ---------------------------------------------------------------------------------------------
// 3. Keys that used to be ignored

TEST_CASE("config.json: hidden_act other than silu is refused", "[host][models][config]") {
  REQUIRE_THROWS_MATCHES(
      parse(hf(R"("hidden_act": "gelu")")), config_error,
      MessageMatches(ContainsSubstring("config.json: hidden_act is \"gelu\"") && ContainsSubstring("\"silu\"")));
  REQUIRE_THROWS_MATCHES(parse(hf(R"("hidden_act": 1)")), config_error,
                         MessageMatches(ContainsSubstring("config.json: hidden_act is a number")));
  CHECK(parse(hf(R"("hidden_act": "silu")")).d_model == 64);
  CHECK(parse(hf(R"("hidden_act": "swish")")).d_model == 64);  // transformers' alias of SiLU
  CHECK(parse(hf()).d_model == 64);                            // absent: transformers' default, silu
}

TEST_CASE("config.json: a model_type other than mamba or moss, or none, is refused", "[host][models][config]") {
  REQUIRE_THROWS_MATCHES(
      parse(R"({"model_type": "mamba2", "hidden_size": 64})"), config_error,
      MessageMatches(ContainsSubstring("config.json: model_type is \"mamba2\"") && ContainsSubstring("\"mamba\"")));
  REQUIRE_THROWS_MATCHES(parse(R"({"model_type": "falcon_mamba", "hidden_size": 64})"), config_error,
                         MessageMatches(ContainsSubstring("model_type is \"falcon_mamba\"")));
  REQUIRE_THROWS_MATCHES(parse(R"({"hidden_size": 64})"), config_error,
                         MessageMatches(ContainsSubstring("config.json: model_type is missing")));
  REQUIRE_THROWS_MATCHES(parse(R"({"model_type": null, "hidden_size": 64})"), config_error,
                         MessageMatches(ContainsSubstring("model_type is missing")));
  REQUIRE_THROWS_MATCHES(parse(R"({"model_type": 7, "hidden_size": 64})"), config_error,
                         MessageMatches(ContainsSubstring("config.json: model_type is a number")));
}

TEST_CASE("config.json: moss keys under model_type mamba are refused", "[host][models][config]") {
  REQUIRE_THROWS_MATCHES(parse(hf(R"("block_pattern": ["mamba", "moe"])")), config_error,
                         MessageMatches(ContainsSubstring("config.json: block_pattern is a moss key") &&
                                        ContainsSubstring("model_type \"moss\"")));
  REQUIRE_THROWS_MATCHES(parse(hf(R"("moss_variant": "rom")")), config_error,
                         MessageMatches(ContainsSubstring("config.json: moss_variant is a moss key")));
  CHECK(parse(hf(R"("moss_variant": "mamba")")).moss_variant.empty());
}

TEST_CASE("config.json: dtype contradicting torch_dtype is refused", "[host][models][config]") {
  REQUIRE_THROWS_MATCHES(parse(hf(R"("dtype": "float16", "torch_dtype": "bfloat16")")), config_error,
                         MessageMatches(ContainsSubstring("config.json: torch_dtype is \"bfloat16\"") &&
                                        ContainsSubstring("config.json: dtype is \"float16\"")));
  CHECK(parse(hf(R"("dtype": "bfloat16", "torch_dtype": "bfloat16")")).dtype == DType::bf16);
  CHECK(parse(hf(R"("dtype": "float32", "torch_dtype": "float")")).dtype == DType::f32);  // same dtype, two spellings
  CHECK(parse(hf(R"("torch_dtype": "float16")")).dtype == DType::f16);
  REQUIRE_THROWS_MATCHES(parse(hf(R"("dtype": 16)")), config_error,
                         MessageMatches(ContainsSubstring("config.json: dtype is a number")));
}

TEST_CASE("config.json in the state-spaces/mamba_ssm layout gets a message saying what it is",
          "[host][models][config]") {
  // mamba_ssm's MambaConfig, as state-spaces/mamba-130m (not -hf) ships it.
  const std::string ssm = R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
      "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})";
  REQUIRE_THROWS_MATCHES(parse(ssm), config_error,
                         MessageMatches(ContainsSubstring("config.json is a state-spaces/mamba (mamba_ssm) config") &&
                                        ContainsSubstring("\"d_model\", \"n_layer\", \"ssm_cfg\"") &&
                                        ContainsSubstring("MambaForCausalLM") && ContainsSubstring("hidden_size")));
  // One of its keys is enough.
  REQUIRE_THROWS_MATCHES(parse(R"({"d_model": 64, "vocab_size": 256})"), config_error,
                         MessageMatches(ContainsSubstring("state-spaces/mamba")));
}

// ---------------------------------------------------------------------------------------------
// Valid configs still load

TEST_CASE("The fixture's config.json and moss-written configs still load", "[host][models][config]") {
  const MambaConfig c = load_mamba_config(test::data_dir() + "/hf_mamba_tiny");
  CHECK(c.d_model == 64);
  CHECK(c.d_inner() == 128);
  CHECK(c.dtype == DType::f32);
  CHECK(c.dims().x_proj_out() == 4 + 2 * 16);
  REQUIRE_NOTHROW(MambaLM<float>(c));

  // What moss writes says model_type and hidden_act and reads back as it was.
  const io::Json j = c.to_json();
  CHECK(j.at("model_type").get<std::string>() == "mamba");
  CHECK(j.at("hidden_act").get<std::string>() == "silu");
  const MambaConfig back = MambaConfig::from_json(io::parse_json(io::dump_json(j), "config.json"), "config.json");
  CHECK(back.d_model == c.d_model);
  CHECK(back.d_inner() == c.d_inner());
  CHECK(back.resolved_dt_rank() == c.resolved_dt_rank());
  CHECK(back.dtype == c.dtype);

  // A moss model's config too.
  const MoeMambaLM<float> model(parse(R"({"model_type": "moss", "moss_variant": "moe-mamba", "hidden_size": 16,
      "num_hidden_layers": 2, "vocab_size": 40, "state_size": 4, "block_pattern": ["mamba", "moe"],
      "blocks": [{}, {"num_experts": 4, "d_ff": 24, "capacity_factor": 1.25}]})"));
  const io::Json mj = model.config().to_json();
  CHECK(mj.at("model_type").get<std::string>() == "moss");
  const MambaConfig mback = MambaConfig::from_json(io::parse_json(io::dump_json(mj), "config.json"), "config.json");
  REQUIRE_NOTHROW(MoeMambaLM<float>(mback));

  // The largest sizes the bound allows are accepted (no tensor is allocated here).
  CHECK(parse(hf_with(R"("vocab_size": 4398046511104, "hidden_size": 64)")).vocab_size == index_t{1} << 42);
}

// ---------------------------------------------------------------------------------------------
// "tokenizer": "bytes" or no tokenizer

TEST_CASE("config.json: tokenizer bytes round-trips, an absent or null one is none", "[host][models][config]") {
  CHECK(parse(hf()).tokenizer.empty());
  CHECK(parse(hf(R"("tokenizer": null)")).tokenizer.empty());
  const MambaConfig c = parse(hf(R"("tokenizer": "bytes")"));
  CHECK(c.tokenizer == "bytes");
  // Written back only when set, and read back as it was.
  const io::Json j = c.to_json();
  CHECK(j.at("tokenizer").get<std::string>() == "bytes");
  CHECK(MambaConfig::from_json(io::parse_json(io::dump_json(j), "config.json"), "config.json").tokenizer == "bytes");
  CHECK_FALSE(parse(hf()).to_json().contains("tokenizer"));
  // A moss model reads it too.
  CHECK(parse(R"({"model_type": "moss", "moss_variant": "moe-mamba", "hidden_size": 16, "num_hidden_layers": 2,
      "vocab_size": 256, "state_size": 4, "block_pattern": ["mamba", "moe"], "tokenizer": "bytes"})")
            .tokenizer == "bytes");

  // A model built in code with the byte tokenizer saves it in config.json; loading gets it back.
  MambaConfig code;
  code.d_model = 16, code.n_layers = 1, code.vocab_size = 256, code.d_state = 4;
  code.tokenizer = "bytes";
  const MambaLM<float> model(code);
  const auto dir = std::filesystem::temp_directory_path() / ("moss_tokenizer_config_" + std::to_string(::getpid()));
  model.save(Host{}, model.init(Host{}, 3), dir);
  const MambaConfig loaded = load_mamba_config(dir.string());
  CHECK(loaded.tokenizer == "bytes");
  CHECK(loaded.vocab_size == 256);
  std::filesystem::remove_all(dir);
}

TEST_CASE("config.json: a tokenizer other than bytes, or bytes with fewer than 256 tokens, is refused",
          "[host][models][config]") {
  for (const char* bad : {R"("wordpiece")", R"("")", R"("Bytes")", R"("gpt2")"}) {
    INFO(bad);
    REQUIRE_THROWS_MATCHES(parse(hf(std::string(R"("tokenizer": )") + bad)), config_error,
                           MessageMatches(ContainsSubstring("config.json: tokenizer is \"") &&
                                          ContainsSubstring("moss accepts \"bytes\"") &&
                                          ContainsSubstring("no tokenizer key (token ids only)")));
  }
  REQUIRE_THROWS_MATCHES(
      parse(hf(R"("tokenizer": 5)")), config_error,
      MessageMatches(ContainsSubstring("config.json: tokenizer is a number") && ContainsSubstring("\"bytes\"")));
  REQUIRE_THROWS_MATCHES(parse(hf(R"("tokenizer": {"type": "bytes"})")), config_error,
                         MessageMatches(ContainsSubstring("config.json: tokenizer is an object")));
  REQUIRE_THROWS_MATCHES(parse(hf_with(R"("hidden_size": 64, "vocab_size": 255, "tokenizer": "bytes")")), config_error,
                         MessageMatches(ContainsSubstring("config.json: tokenizer \"bytes\" needs vocab_size ≥ 256") &&
                                        ContainsSubstring("but vocab_size is 255")));
  // A larger vocabulary is fine (ids above 255 are never produced by the tokenizer).
  CHECK(parse(hf_with(R"("hidden_size": 64, "vocab_size": 50280, "tokenizer": "bytes")")).tokenizer == "bytes");

  // The same checks for a config built in code, when the model is built.
  MambaConfig c;
  c.d_model = 16, c.n_layers = 1, c.vocab_size = 256, c.d_state = 4;
  c.tokenizer = "bpe";
  REQUIRE_THROWS_MATCHES(
      MambaLM<float>(c), config_error,
      MessageMatches(ContainsSubstring("tokenizer is \"bpe\"") && ContainsSubstring("moss accepts \"bytes\"")));
  c.tokenizer = "bytes";
  c.vocab_size = 64;
  REQUIRE_THROWS_MATCHES(MambaLM<float>(c), config_error,
                         MessageMatches(ContainsSubstring("tokenizer \"bytes\" needs vocab_size ≥ 256")));
}

// ---------------------------------------------------------------------------------------------
// expect_shape: moss::any is the one wildcard

TEST_CASE("expect_shape: moss::any matches any extent, a negative expected extent never matches",
          "[host][core][config]") {
  std::vector<float> buf(2 * 3 * 4);
  const ConstView<float, 3> x(buf.data(), {2, 3, 4}, "x");
  REQUIRE_NOTHROW(expect_shape("op", x, {any, any, 4}, "(a, b, c)"));
  REQUIRE_NOTHROW(expect_shape("op", x, {any, any, any}, "(a, b, c)"));
  REQUIRE_NOTHROW(expect_shape("op", x, {2, 3, 4}, "(a, b, c)"));
  REQUIRE_THROWS_MATCHES(expect_shape("op", x, {any, 5, any}, "(a, b, c)"), shape_error,
                         MessageMatches(ContainsSubstring("op: x is [2, 3, 4] (a, b, c) but expected [*, 5, *]")));
  // -1 is no longer a wildcard: a size computed as W - 1 with W = 0 is an invalid size.
  const index_t W = 0;
  REQUIRE_THROWS_MATCHES(
      expect_shape("op", x, {2, 3, W - 1}, "(a, b, W-1)"), shape_error,
      MessageMatches(ContainsSubstring("but expected [2, 3, -1]") && ContainsSubstring("negative expected extent")));
  // A wrapped product (what an unchecked d_inner used to be) matches nothing either.
  const index_t wrapped = static_cast<index_t>(std::uint64_t{64} * std::uint64_t{144115188075855873});  // 2^63 + 64
  REQUIRE(wrapped < 0);
  REQUIRE_THROWS_AS(expect_shape("op", x, {wrapped, 3, 4}, "(a, b, c)"), shape_error);
  // Even where every other extent matches and the view itself has that negative extent.
  const ConstView<float, 1> neg(buf.data(), {-3}, {1}, "neg");
  REQUIRE_THROWS_AS(expect_shape("op", neg, {-3}, "(a)"), shape_error);
}
