// Host tests of checkpoint validation: a checkpoint that moss cannot run exactly as its author
// meant is an error naming the tensor, never a silent run with other numbers. Tensors the model
// does not read (a layer beyond num_hidden_layers, a conv1d.bias under use_conv_bias false), a
// tied model's lm_head.weight that differs from the embeddings, NaN and ±Inf weights (f32 and
// bf16 as stored, and f32 values that overflow f16), the LoadOptions that turn the first two
// checks off, messages for missing folders and wrong dtypes, CheckedSource itself, and the
// error of generation on non-finite logits. Checkpoints are built here from a seeded tiny model.
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;
namespace fs = std::filesystem;

namespace {

/// A fresh, empty temporary folder, removed at the end of the scope.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("moss_ckpt_validation_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

MambaConfig tiny_config(index_t n_layers = 2) {
  MambaConfig c;
  c.d_model = 16;
  c.n_layers = n_layers;
  c.vocab_size = 40;
  c.d_state = 4;
  c.dt_rank = 2;
  return c;
}

/// Called on every tensor copied into a WeightMap: may change its values.
using Edit = std::function<void(const std::string& name, std::vector<float>& values)>;

/// The tensors of `model` with seeded weights, saved to `dir` and read back into a WeightMap
/// (as float), each passed through `edit` first.
template <class Model>
WeightMap saved_weights(const Model& model, const fs::path& dir, const Edit& edit = {}) {
  model.save(Host{}, model.init(Host{}, 7), dir);
  const Checkpoint ckpt(dir);
  WeightMap map("tiny");
  for (const std::string& name : ckpt.names()) {
    std::vector<float> v = ckpt.read_as<float>(name);
    if (edit) edit(name, v);
    map.add(name, ckpt.info(name).shape, std::move(v));
  }
  return map;
}

/// The message of the `moss::error` that `f` throws ("" when it throws none).
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const moss::error& e) {
    return e.what();
  }
  return {};
}

/// Rewrites `dir/model.safetensors` with every tensor in its stored dtype, calling `edit` on
/// the raw bytes of each (to plant values of the stored type, e.g. a bf16 Inf).
void rewrite_checkpoint(const fs::path& dir,
                        const std::function<void(const std::string&, DType, std::vector<std::byte>&)>& edit) {
  SafetensorsWriter w;
  {
    const SafetensorsFile f(dir / "model.safetensors");
    for (const std::string& name : f.names()) {
      const TensorInfo& ti = f.info(name);
      std::vector<std::byte> bytes(static_cast<std::size_t>(ti.nbytes()));
      f.read(name, ti.dtype, std::span<std::byte>(bytes));
      edit(name, ti.dtype, bytes);
      w.add(name, ti.dtype, ti.shape, std::span<const std::byte>(bytes));
    }
  }
  w.write(dir / "model.safetensors");
}

const std::string kInProj1 = "backbone.layers.1.mixer.in_proj.weight";

/// A weight source of the user's own with the three members of the concept and no names().
struct Bare {
  const WeightMap* m;
  bool contains(std::string_view n) const { return m->contains(n); }
  template <class T>
  std::vector<T> read_as(std::string_view n, const std::vector<index_t>& s) const {
    return m->read_as<T>(n, s);
  }
  std::string where() const { return "bare"; }
};

}  // namespace

TEST_CASE("A checkpoint with more layers than num_hidden_layers is refused, naming the extra tensors",
          "[host][models][checkpoint][errors]") {
  TempDir dir("extra_layer");
  const WeightMap two = saved_weights(MambaLM<float>(tiny_config(2)), dir.path);
  const MambaLM<float> one(tiny_config(1));
  REQUIRE_THROWS_AS(one.load(Host{}, two), io_error);
  const std::string msg = message_of([&] { one.load(Host{}, two); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring("tiny: 10 tensors are not used by the model"));
  CHECK_THAT(msg, ContainsSubstring("\"backbone.layers.1.mixer.A_log\""));
  CHECK_THAT(msg, ContainsSubstring("and 5 more"));  // five names are listed
  CHECK_THAT(msg, ContainsSubstring("num_hidden_layers 1 but the checkpoint also holds layer 1"));
  CHECK_THAT(msg, ContainsSubstring("allow_unused_tensors"));
  CHECK_THAT(msg, !ContainsSubstring("backbone.layers.0."));

  // The same through a Checkpoint folder.
  const Checkpoint ckpt(dir.path);
  REQUIRE_THROWS_AS(one.load(Host{}, ckpt), io_error);
  REQUIRE_THROWS_WITH(one.load(Host{}, ckpt),
                      ContainsSubstring(dir.path.string() + ": 10 tensors are not used by the model"));
}

TEST_CASE("One tensor the model does not know is refused by name", "[host][models][checkpoint][errors]") {
  TempDir dir("unknown_tensor");
  const MambaLM<float> model(tiny_config());
  WeightMap w = saved_weights(model, dir.path);
  w.add("backbone.layers.0.mixer.extra.weight", {2}, {1.0f, 2.0f});
  REQUIRE_THROWS_AS(model.load(Host{}, w), io_error);
  REQUIRE_THROWS_WITH(model.load(Host{}, w), ContainsSubstring("tiny: 1 tensor is not used by the model") &&
                                                 ContainsSubstring("\"backbone.layers.0.mixer.extra.weight\"") &&
                                                 !ContainsSubstring("more"));
}

TEST_CASE("A stored conv1d.bias under use_conv_bias false is refused", "[host][models][checkpoint][errors]") {
  TempDir dir("conv_bias");
  MambaConfig cfg = tiny_config();
  const WeightMap w = saved_weights(MambaLM<float>(cfg), dir.path);
  cfg.use_conv_bias = false;
  const MambaLM<float> model(cfg);
  REQUIRE_THROWS_AS(model.load(Host{}, w), io_error);
  const std::string msg = message_of([&] { model.load(Host{}, w); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring("2 tensors are not used"));
  CHECK_THAT(msg, ContainsSubstring("\"backbone.layers.0.mixer.conv1d.bias\""));
  CHECK_THAT(msg, ContainsSubstring("\"backbone.layers.1.mixer.conv1d.bias\""));
  CHECK_THAT(msg, ContainsSubstring("use_conv_bias false but the checkpoint holds conv1d.bias"));
  CHECK_THAT(msg, !ContainsSubstring("num_hidden_layers"));
}

TEST_CASE("Stored projection biases under use_bias false are refused", "[host][models][checkpoint][errors]") {
  TempDir dir("proj_bias");
  MambaConfig cfg = tiny_config();
  cfg.use_bias = true;
  const WeightMap w = saved_weights(MambaLM<float>(cfg), dir.path);
  cfg.use_bias = false;
  REQUIRE_THROWS_WITH(MambaLM<float>(cfg).load(Host{}, w),
                      ContainsSubstring("4 tensors are not used") &&
                          ContainsSubstring("\"backbone.layers.0.mixer.in_proj.bias\"") &&
                          ContainsSubstring("use_bias false but the checkpoint holds in_proj/out_proj biases"));
}

TEST_CASE("A tied model accepts a stored lm_head.weight only when it equals the embeddings",
          "[host][models][checkpoint][errors]") {
  TempDir dir("tied_head");
  const MambaLM<float> model(tiny_config());
  REQUIRE(model.config().tie_embeddings);
  const WeightMap base = saved_weights(model, dir.path);
  std::vector<float> emb = base.read_as<float>("backbone.embeddings.weight", {40, 16});

  SECTION("bit-equal: accepted") {
    WeightMap w = saved_weights(model, dir.path);
    w.add("lm_head.weight", {40, 16}, emb);
    CHECK_NOTHROW(model.load(Host{}, w));
  }
  SECTION("one element differs: io_error naming both tensors and the element") {
    WeightMap w = saved_weights(model, dir.path);
    std::vector<float> head = emb;
    head[37] = std::nextafter(head[37], 1.0f);  // one ulp
    w.add("lm_head.weight", {40, 16}, head);
    REQUIRE_THROWS_AS(model.load(Host{}, w), io_error);
    const std::string msg = message_of([&] { model.load(Host{}, w); });
    INFO(msg);
    CHECK_THAT(msg, ContainsSubstring("ties the LM head to the embeddings (tie_word_embeddings true)"));
    CHECK_THAT(msg, ContainsSubstring("the checkpoint holds a different \"lm_head.weight\""));
    CHECK_THAT(msg, ContainsSubstring("element 37 (flat index)"));
    CHECK_THAT(msg, ContainsSubstring("\"backbone.embeddings.weight\""));
  }
  SECTION("-0 against +0 is not bit-equal") {
    WeightMap w("zeros");
    const WeightMap full = saved_weights(model, dir.path, [](const std::string& name, std::vector<float>& v) {
      if (name == "backbone.embeddings.weight") v[3] = 0.0f;
    });
    for (const std::string& n : full.names()) w.add(n, full.shape(n), full.read_as<float>(n, full.shape(n)));
    std::vector<float> head = w.read_as<float>("backbone.embeddings.weight", {40, 16});
    head[3] = -0.0f;
    w.add("lm_head.weight", {40, 16}, head);
    REQUIRE_THROWS_WITH(model.load(Host{}, w), ContainsSubstring("element 3 (flat index)"));
  }
  SECTION("an untied model reads its head and needs no equality") {
    MambaConfig cfg = tiny_config();
    cfg.tie_embeddings = false;
    WeightMap w = saved_weights(model, dir.path);
    std::vector<float> head = emb;
    head[0] += 1.0f;
    w.add("lm_head.weight", {40, 16}, head);
    CHECK_NOTHROW(MambaLM<float>(cfg).load(Host{}, w));
  }
}

TEST_CASE("A NaN in in_proj is an io_error naming the tensor, the flat index and the value",
          "[host][models][checkpoint][errors]") {
  TempDir dir("nan_in_proj");
  const MambaLM<float> model(tiny_config());
  const WeightMap w = saved_weights(model, dir.path, [](const std::string& name, std::vector<float>& v) {
    if (name == kInProj1) {
      v[123] = std::numeric_limits<float>::quiet_NaN();
      v[200] = std::numeric_limits<float>::quiet_NaN();
    }
  });
  REQUIRE_THROWS_AS(model.load(Host{}, w), io_error);
  const std::string msg = message_of([&] { model.load(Host{}, w); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring("tiny: tensor \"" + kInProj1 + "\" holds a non-finite value"));
  CHECK_THAT(msg, ContainsSubstring("element 123 (flat index) is nan"));
  CHECK_THAT(msg, ContainsSubstring("2 non-finite values in all"));
  CHECK_THAT(msg, ContainsSubstring("check_finite = false"));

  // Every storage type checks: the NaN survives the conversion to bf16 and f16.
  REQUIRE_THROWS_WITH(MambaLM<bf16>(tiny_config()).load(Host{}, w), ContainsSubstring("element 123 (flat index)"));
  REQUIRE_THROWS_WITH(MambaLM<f16>(tiny_config()).load(Host{}, w), ContainsSubstring("element 123 (flat index)"));
}

TEST_CASE("An Inf stored in a bf16 checkpoint is an io_error saying it is stored as bf16",
          "[host][models][checkpoint][errors]") {
  TempDir dir("inf_bf16");
  const MambaLM<bf16> model(tiny_config());
  model.save(Host{}, model.init(Host{}, 3), dir.path);
  const std::string name = "backbone.layers.0.mixer.x_proj.weight";
  rewrite_checkpoint(dir.path, [&](const std::string& n, DType d, std::vector<std::byte>& bytes) {
    if (n != name) return;
    REQUIRE(d == DType::bf16);
    const bf16 inf = from_float<bf16>(-std::numeric_limits<float>::infinity());
    std::memcpy(bytes.data() + 5 * sizeof(bf16), &inf, sizeof(bf16));
  });
  const Checkpoint ckpt(dir.path);
  REQUIRE(ckpt.info(name).dtype == DType::bf16);
  REQUIRE_THROWS_AS(model.load(Host{}, ckpt), io_error);
  const std::string msg = message_of([&] { model.load(Host{}, ckpt); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring(dir.path.string() + ": tensor \"" + name + "\" holds a non-finite value"));
  CHECK_THAT(msg, ContainsSubstring("element 5 (flat index) is -inf (stored as bf16)"));
  // Read into another storage type the stored value is reported the same way.
  REQUIRE_THROWS_WITH(MambaLM<float>(tiny_config()).load(Host{}, ckpt),
                      ContainsSubstring("element 5 (flat index) is -inf (stored as bf16)"));
}

TEST_CASE("A finite f32 weight that overflows f16 is refused when the model stores f16",
          "[host][models][checkpoint][errors]") {
  TempDir dir("f16_overflow");
  const MambaLM<float> model(tiny_config());
  model.save(Host{}, model.init(Host{}, 3), dir.path);
  const std::string name = "backbone.layers.0.mixer.out_proj.weight";
  rewrite_checkpoint(dir.path, [&](const std::string& n, DType, std::vector<std::byte>& bytes) {
    if (n != name) return;
    const float big = 70000.0f;
    std::memcpy(bytes.data() + 9 * sizeof(float), &big, sizeof(float));
  });
  const Checkpoint ckpt(dir.path);
  CHECK_NOTHROW(MambaLM<float>(tiny_config()).load(Host{}, ckpt));
  CHECK_NOTHROW(MambaLM<bf16>(tiny_config()).load(Host{}, ckpt));
  REQUIRE_THROWS_AS(MambaLM<f16>(tiny_config()).load(Host{}, ckpt), io_error);
  REQUIRE_THROWS_WITH(MambaLM<f16>(tiny_config()).load(Host{}, ckpt),
                      ContainsSubstring("tensor \"" + name + "\" element 9 (flat index) is 70000 (stored as f32)") &&
                          ContainsSubstring("overflows f16 (largest finite 65504)"));
}

TEST_CASE("LoadOptions turn the unused-tensor and the finiteness checks off", "[host][models][checkpoint]") {
  TempDir dir("options");
  SECTION("allow_unused_tensors: the extra layer is ignored") {
    const WeightMap two = saved_weights(MambaLM<float>(tiny_config(2)), dir.path);
    const MambaLM<float> one(tiny_config(1));
    REQUIRE_THROWS_AS(one.load(Host{}, two), io_error);
    LoadOptions opt;
    opt.allow_unused_tensors = true;
    const auto p = one.load(Host{}, two, opt);
    CHECK(p.size() == 1);
    // The finiteness check stays on.
    WeightMap bad =
        saved_weights(MambaLM<float>(tiny_config(2)), dir.path, [](const std::string& n, std::vector<float>& v) {
          if (n == "backbone.norm_f.weight") v[2] = std::numeric_limits<float>::infinity();
        });
    REQUIRE_THROWS_WITH(one.load(Host{}, bad, opt),
                        ContainsSubstring("tensor \"backbone.norm_f.weight\" holds a non-finite value") &&
                            ContainsSubstring("element 2 (flat index) is inf"));
  }
  SECTION("check_finite false: the NaN weight loads as it is") {
    const MambaLM<float> model(tiny_config());
    const WeightMap w = saved_weights(model, dir.path, [](const std::string& n, std::vector<float>& v) {
      if (n == kInProj1) v[123] = std::numeric_limits<float>::quiet_NaN();
    });
    const auto p = model.load(Host{}, w, LoadOptions{.allow_unused_tensors = false, .check_finite = false});
    CHECK(p.size() == 2);
    // The unused-tensor check stays on.
    WeightMap extra = saved_weights(model, dir.path);
    extra.add("backbone.layers.5.norm.weight", {16}, std::vector<float>(16, 1.0f));
    REQUIRE_THROWS_WITH(
        model.load(Host{}, extra, LoadOptions{.check_finite = false}),
        ContainsSubstring("\"backbone.layers.5.norm.weight\"") &&
            ContainsSubstring(
                "num_hidden_layers 2 but the checkpoint holds layers up to 5 (layers 2 to 5 are unused)"));
  }
}

TEST_CASE("Generation raises an error on non-finite logits instead of emitting token 0",
          "[host][models][generation][errors]") {
  TempDir dir("nan_generate");
  const MambaLM<float> model(tiny_config());
  const WeightMap w = saved_weights(model, dir.path, [](const std::string& n, std::vector<float>& v) {
    if (n == kInProj1) v[123] = std::numeric_limits<float>::quiet_NaN();
  });
  const auto p = model.load(Host{}, w, LoadOptions{.check_finite = false});
  std::vector<std::int64_t> prompt = {1, 2, 3, 4, 5, 6};
  const ConstView<std::int64_t, 2> v(prompt.data(), {2, 3}, "prompt");
  GenerateOptions opt;
  opt.max_new_tokens = 4;
  REQUIRE_THROWS_AS(generate(Host{}, model, p, v, opt), moss::error);
  const std::string msg = message_of([&] { generate(Host{}, model, p, v, opt); });
  INFO(msg);
  CHECK_THAT(msg, ContainsSubstring("generate: the logits of sequence 0 for new token 0 (position 3) are not finite"));
  CHECK_THAT(msg, ContainsSubstring("logits[0, 0] = nan (40 of 40 non-finite)"));
  // Sampling refuses them too.
  opt.sampling.greedy = false;
  opt.sampling.top_k = 5;
  REQUIRE_THROWS_WITH(generate(Host{}, model, p, v, opt), ContainsSubstring("are not finite"));

  // The same model with finite weights generates.
  const auto good = model.load(Host{}, saved_weights(model, dir.path));
  CHECK(generate(Host{}, model, good, v, opt).steps == 4);
}

TEST_CASE("The non-finite logits check names the row, the step and the first bad index",
          "[host][models][generation][errors]") {
  std::vector<float> row(10, 0.5f);
  CHECK_NOTHROW(detail::expect_finite_logits(row.data(), 10, 1, 2, 7));
  row[3] = std::numeric_limits<float>::infinity();
  row[8] = -std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_AS(detail::expect_finite_logits(row.data(), 10, 1, 2, 7), moss::error);
  REQUIRE_THROWS_WITH(detail::expect_finite_logits(row.data(), 10, 1, 2, 7),
                      ContainsSubstring("sequence 1 for new token 2 (position 9)") &&
                          ContainsSubstring("logits[1, 3] = inf (2 of 10 non-finite)"));
}

TEST_CASE("A missing checkpoint folder or config.json says so", "[host][models][checkpoint][errors]") {
  TempDir dir("missing");
  const fs::path nowhere = dir.path / "nowhere";
  REQUIRE_THROWS_AS(load_mamba_config(nowhere), io_error);
  REQUIRE_THROWS_WITH(load_mamba_config(nowhere),
                      ContainsSubstring("checkpoint folder " + nowhere.string() + " does not exist"));
  REQUIRE_THROWS_WITH(load_mamba_config(dir.path / "config.json"),
                      ContainsSubstring("config file " + (dir.path / "config.json").string() + " does not exist"));
  REQUIRE_THROWS_WITH(load_mamba_config(dir.path),
                      ContainsSubstring("checkpoint folder " + dir.path.string() + " has no config.json"));
  REQUIRE_THROWS_AS(Checkpoint(nowhere), io_error);
  REQUIRE_THROWS_WITH(Checkpoint(nowhere), ContainsSubstring("checkpoint " + nowhere.string() + " does not exist"));
  REQUIRE_THROWS_WITH(Checkpoint(dir.path), ContainsSubstring("checkpoint folder " + dir.path.string() +
                                                              " holds neither model.safetensors nor"));
}

TEST_CASE("Dtype errors say which dtype was found and which are accepted", "[host][io][checkpoint][errors]") {
  TempDir dir("dtypes");
  SafetensorsWriter w;
  w.add("ids", {2}, std::vector<float>{1, 2});
  w.add("weight", {2}, std::vector<std::int64_t>{1, 2});
  w.write(dir.path / "x.safetensors");
  const SafetensorsFile f(dir.path / "x.safetensors");
  REQUIRE_THROWS_AS(f.read_as<float>("weight"), io_error);
  REQUIRE_THROWS_WITH(f.read_as<float>("weight"),
                      ContainsSubstring("tensor \"weight\" is i64 and cannot be read as f32") &&
                          ContainsSubstring("a f32 read accepts f32, f16 or bf16 data"));
  REQUIRE_THROWS_WITH(f.read_as<std::int64_t>("ids"),
                      ContainsSubstring("tensor \"ids\" is f32 and cannot be read as i64") &&
                          ContainsSubstring("accepts i32 or i64 data"));
  CHECK_NOTHROW(f.expect_dtype("weight", {DType::i64, DType::i32}));
  REQUIRE_THROWS_AS(f.expect_dtype("ids", {DType::i64, DType::i32}), io_error);
  REQUIRE_THROWS_WITH(f.expect_dtype("ids", {DType::i64, DType::i32}),
                      ContainsSubstring("tensor \"ids\" is f32 but expected i64 or i32"));
  REQUIRE_THROWS_WITH(f.expect_dtype("ids", {DType::i64}), ContainsSubstring("is f32 but expected i64"));
  REQUIRE_THROWS_WITH(f.expect_dtype("ids", {DType::i64, DType::i32, DType::bf16}),
                      ContainsSubstring("expected i64, i32 or bf16"));
  // A model reading an integer tensor as a weight says the same.
  WeightMap ok("ok");
  const MambaLM<float> model(tiny_config());
  TempDir mdir("dtypes_model");
  model.save(Host{}, model.init(Host{}, 1), mdir.path);
  rewrite_checkpoint(mdir.path, [](const std::string&, DType, std::vector<std::byte>&) {});
  {
    SafetensorsWriter m;
    const SafetensorsFile src(mdir.path / "model.safetensors");
    for (const std::string& n : src.names()) {
      if (n == "backbone.norm_f.weight") {
        m.add(n, {16}, std::vector<std::int32_t>(16, 1));
      } else {
        m.add(n, src.info(n).shape, src.read_as<float>(n));
      }
    }
    m.write(mdir.path / "model.safetensors");
  }
  REQUIRE_THROWS_WITH(model.load(Host{}, Checkpoint(mdir.path)),
                      ContainsSubstring("tensor \"backbone.norm_f.weight\" is i32 and cannot be read as f32"));
}

TEST_CASE("CheckedSource records reads, lists unread tensors and refuses sources it cannot list",
          "[host][io][checkpoint]") {
  WeightMap map("m");
  map.add("a", {2}, {1.0f, 2.0f});
  map.add("b", {1}, {3.0f});
  map.add("c", {1}, {std::numeric_limits<float>::quiet_NaN()});
  const CheckedSource src(map);
  static_assert(WeightSource<CheckedSource<WeightMap>>);
  CHECK(src.where() == "m");
  CHECK(src.contains("a"));
  CHECK(src.read_names().empty());  // contains is not a read
  CHECK(src.read_as<float>("a", {2}) == std::vector<float>{1.0f, 2.0f});
  CHECK(src.read_names() == std::vector<std::string>{"a"});
  CHECK(src.unread_names() == std::vector<std::string>{"b", "c"});
  REQUIRE_THROWS_AS(src.expect_all_read("the test"), io_error);
  REQUIRE_THROWS_WITH(src.expect_all_read("the test", [](const auto& u) { return "; " + std::to_string(u.size()); }),
                      ContainsSubstring("m: 2 tensors are not used by the test: \"b\", \"c\"; 2"));
  REQUIRE_THROWS_WITH(src.read_as<bf16>("c", {1}), ContainsSubstring("m: tensor \"c\" holds a non-finite value") &&
                                                       ContainsSubstring("element 0 (flat index) is nan"));
  CHECK(src.read_names() == std::vector<std::string>{"a", "c"});  // recorded before the check
  CHECK(src.read_as<float>("b", {1}) == std::vector<float>{3.0f});
  CHECK_NOTHROW(src.expect_all_read("the test"));

  const CheckedSource lax(map, LoadOptions{.allow_unused_tensors = true, .check_finite = false});
  CHECK(std::isnan(lax.read_as<float>("c", {1})[0]));
  CHECK_NOTHROW(lax.expect_all_read("the test"));

  // A source of the user's own without names(): the unused check cannot run.
  static_assert(WeightSource<Bare>);
  const Bare bare{&map};
  const CheckedSource<Bare> checked_bare(bare);
  static_assert(!CheckedSource<Bare>::lists_names);
  REQUIRE_THROWS_AS(checked_bare.expect_all_read("x"), unsupported_error);
  REQUIRE_THROWS_WITH(checked_bare.expect_all_read("x"), ContainsSubstring("bare: this weight source has no names()"));
  CHECK_NOTHROW(CheckedSource<Bare>(bare, LoadOptions{.allow_unused_tensors = true}).expect_all_read("x"));
}

TEST_CASE("A MoE-Mamba model loads back what it saved and refuses layers beyond its depth",
          "[host][models][checkpoint]") {
  TempDir dir("variants");
  MambaConfig cfg = tiny_config(4);
  auto blocks = MoeMambaLM<float>::default_block_configs();
  std::get<1>(blocks).routing.num_experts = 4;
  std::get<1>(blocks).d_ff = 24;
  const MoeMambaLM<float> model(cfg, blocks);
  const WeightMap w = saved_weights(model, dir.path);
  CHECK_NOTHROW(model.load(Host{}, w));
  CHECK_NOTHROW(MoeMambaLM<float>(load_mamba_config(dir.path)).load(Host{}, Checkpoint(dir.path)));
  cfg.n_layers = 2;
  REQUIRE_THROWS_WITH(MoeMambaLM<float>(cfg, blocks).load(Host{}, w),
                      ContainsSubstring("14 tensors are not used by the model: \"backbone.layers.2.mixer.A_log\"") &&
                          ContainsSubstring("num_hidden_layers 2 but the checkpoint holds layers up to 3 (layers 2 "
                                            "to 3 are unused)"));
}
