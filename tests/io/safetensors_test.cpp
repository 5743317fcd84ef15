// Tests of moss/io/safetensors.hpp, checkpoint.hpp and writer.hpp: writer → reader round trips
// for every dtype, dtype conversion, the byte layout, sharded checkpoints, the Hugging Face
// fixtures, and every class of malformed file (each must raise io_error naming the file and the
// tensor, never crash).
#include <algorithm>
#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "moss/io/checkpoint.hpp"
#include "moss/io/json.hpp"
#include "moss/io/safetensors.hpp"
#include "moss/io/writer.hpp"
#include "moss_test.hpp"

using Catch::Matchers::ContainsSubstring;
namespace fs = std::filesystem;
namespace io = moss::io;
using moss::DType;
using moss::index_t;

namespace {

/// A fresh directory under the system temp dir, removed with its content at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("moss_safetensors_test_" + std::to_string(std::random_device{}()) + "_" +
                                        std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
                                        "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xffu);
  return s;
}

/// A safetensors file built by hand: length prefix (the header's size unless overridden),
/// header text, then `data_bytes` bytes of a fixed pattern.
std::string raw_file(const std::string& header, std::size_t data_bytes, std::optional<std::uint64_t> length = {}) {
  std::string s = le64(length.value_or(header.size())) + header;
  for (std::size_t i = 0; i < data_bytes; ++i) s += static_cast<char>(i * 37 + 11);
  return s;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <class T>
std::vector<std::uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<std::uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return bytes_of(a) == bytes_of(b);
}

/// Values that f16 and bf16 both represent exactly: m · 2^e with |m| < 256, e in [-14, 7].
std::vector<float> representable_in_both() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -2.5f, 0.5f, 3.0f, 255.0f, -32640.0f};
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    const int m = static_cast<int>(rng() % 511) - 255;
    const int e = static_cast<int>(rng() % 22) - 14;
    v.push_back(std::ldexp(static_cast<float>(m), e));
  }
  return v;
}

}  // namespace

TEST_CASE("safetensors: every dtype round-trips bit-exactly through write and read", "[host]") {
  TempDir dir;
  const auto f32 = moss::test::randn(6, 1);
  const auto f16 = moss::test::to_storage<moss::f16>(moss::test::randn(12, 2));
  const auto bf16 = moss::test::to_storage<moss::bf16>(moss::test::randn(5, 3));
  const std::vector<std::int32_t> i32 = {std::numeric_limits<std::int32_t>::min(), -1, 0, 1,
                                         std::numeric_limits<std::int32_t>::max(), 7};
  const std::vector<std::int64_t> i64 = {std::numeric_limits<std::int64_t>::min(), -1, 0,
                                         std::numeric_limits<std::int64_t>::max()};
  const std::vector<float> scalar = {3.25f};
  const std::vector<float> empty;

  moss::SafetensorsWriter w;
  w.add("w.f32", {2, 3}, f32);
  w.add("w.f16", {3, 2, 2}, f16);
  w.add("w.bf16", {5}, bf16);
  w.add("ids.i32", {6}, i32);
  w.add("ids.i64", {2, 2}, i64);
  w.add("scalar", {}, scalar);
  w.add("empty", {0, 3}, empty);
  w.set_metadata("format", "pt");
  w.set_metadata("note", "moss \"test\"");
  REQUIRE(w.size() == 7);
  const fs::path file = dir / "all.safetensors";
  w.write(file);

  const moss::SafetensorsFile f(file);
  CHECK(f.path() == file);
  CHECK(f.names() == std::vector<std::string>{"empty", "ids.i32", "ids.i64", "scalar", "w.bf16", "w.f16", "w.f32"});
  CHECK(f.size() == 7);
  CHECK(f.contains("w.f32"));
  CHECK_FALSE(f.contains("w.f64"));
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "moss \"test\""}});

  CHECK(f.info("w.f32").dtype == DType::f32);
  CHECK(f.info("w.f32").shape == std::vector<index_t>{2, 3});
  CHECK(f.info("w.f16").dtype == DType::f16);
  CHECK(f.info("w.bf16").dtype == DType::bf16);
  CHECK(f.info("ids.i32").dtype == DType::i32);
  CHECK(f.info("ids.i64").dtype == DType::i64);
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.info("scalar").numel() == 1);
  CHECK(f.info("empty").numel() == 0);
  CHECK(f.info("empty").nbytes() == 0);

  CHECK(same_bits(f.read_as<float>("w.f32", {2, 3}), f32));
  CHECK(same_bits(f.read_as<moss::f16>("w.f16", {3, 2, 2}), f16));
  CHECK(same_bits(f.read_as<moss::bf16>("w.bf16", {5}), bf16));
  CHECK(f.read_as<std::int32_t>("ids.i32", {6}) == i32);
  CHECK(f.read_as<std::int64_t>("ids.i64", {2, 2}) == i64);
  CHECK(f.read_as<float>("scalar", {}) == scalar);
  CHECK(f.read_as<float>("empty", {0, 3}).empty());
  CHECK(f.read_as<float>("empty").empty());

  // The raw-byte API and read_into agree with read_as.
  std::vector<float> out(6, std::nanf(""));
  f.read("w.f32", DType::f32, out.data(), out.size() * sizeof(float));
  CHECK(same_bits(out, f32));
  std::fill(out.begin(), out.end(), std::nanf(""));
  f.read_into("w.f32", std::span<float>(out), {2, -1});
  CHECK(same_bits(out, f32));
}

TEST_CASE("safetensors: the writer produces the reference byte layout", "[host]") {
  TempDir dir;
  moss::SafetensorsWriter w;
  w.add("w", {2}, std::vector<float>{1.0f, -2.0f});
  w.set_metadata("format", "pt");
  w.write(dir / "one.safetensors");

  // Written by hand from the format description: u64 length, header padded with spaces to a
  // multiple of 8, little-endian data.
  std::string header = R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string data("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);  // 1.0f, -2.0f
  CHECK(read_bytes(dir / "one.safetensors") == le64(header.size()) + header + data);

  // Order: 8-byte elements first, then 4, then 2, by name inside each size; every tensor starts
  // at a multiple of its element size (the header is padded to 8).
  moss::SafetensorsWriter m;
  m.add("c16", {3}, moss::test::to_storage<moss::f16>({1, 2, 3}));
  m.add("a16", {1}, moss::test::to_storage<moss::bf16>({1}));
  m.add("b32", {1}, std::vector<std::int32_t>{5});
  m.add("a32", {3}, std::vector<float>{1, 2, 3});
  m.add("z64", {1}, std::vector<std::int64_t>{9});
  m.write(dir / "mixed.safetensors");
  const moss::SafetensorsFile f(dir / "mixed.safetensors");
  const std::vector<std::string> expected_order = {"z64", "a32", "b32", "a16", "c16"};
  std::uint64_t expected_begin = 0;
  for (const auto& name : expected_order) {
    INFO(name);
    const auto& ti = f.info(name);
    CHECK(ti.begin == expected_begin);
    CHECK(ti.begin % moss::dtype_size(ti.dtype) == 0);
    expected_begin = ti.end;
  }
  const std::string bytes = read_bytes(dir / "mixed.safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + expected_begin);
  CHECK(f.metadata().empty());  // no metadata given: no __metadata__ key
  CHECK(bytes.find("__metadata__") == std::string::npos);

  // A writer with nothing in it still writes a valid file.
  moss::SafetensorsWriter none;
  none.write(dir / "none.safetensors");
  CHECK(moss::SafetensorsFile(dir / "none.safetensors").names().empty());
  // Only the final files remain (the temporary ".partial" files were renamed).
  std::vector<std::string> listed;
  for (const auto& e : fs::directory_iterator(dir.path)) listed.push_back(e.path().filename().string());
  std::sort(listed.begin(), listed.end());
  CHECK(listed == std::vector<std::string>{"mixed.safetensors", "none.safetensors", "one.safetensors"});
}

TEST_CASE("safetensors: reads convert among f32, f16 and bf16 and between i32 and i64", "[host]") {
  TempDir dir;
  const std::vector<float> exact = representable_in_both();
  const index_t n = static_cast<index_t>(exact.size());
  // Larger than the reader's 65536-element staging chunk, so the chunk loop runs more than once.
  const std::size_t big = 70001;
  const auto random = moss::test::randn(big, 11, 3.0f);
  std::vector<std::int32_t> ids(big);
  for (std::size_t i = 0; i < big; ++i) ids[i] = static_cast<std::int32_t>(i * 2654435761u);
  moss::SafetensorsWriter w;
  w.add("exact.f32", {n}, exact);
  w.add("exact.f16", {n}, moss::test::to_storage<moss::f16>(exact));
  w.add("exact.bf16", {n}, moss::test::to_storage<moss::bf16>(exact));
  w.add("random.f32", {static_cast<index_t>(big)}, random);
  w.add("ids.i32", {static_cast<index_t>(big)}, ids);
  w.add("small.i64", {3}, std::vector<std::int64_t>{-5, 0, 2147483647});
  w.add("wide.i64", {3}, std::vector<std::int64_t>{0, 1, 2147483648LL});
  const fs::path file = dir / "conv.safetensors";
  w.write(file);
  const moss::SafetensorsFile f(file);

  SECTION("representable values convert exactly in every direction") {
    for (const char* src : {"exact.f32", "exact.f16", "exact.bf16"}) {
      INFO(src);
      CHECK(f.read_as<float>(src) == exact);
      CHECK(same_bits(f.read_as<moss::f16>(src), moss::test::to_storage<moss::f16>(exact)));
      CHECK(same_bits(f.read_as<moss::bf16>(src), moss::test::to_storage<moss::bf16>(exact)));
      CHECK(moss::test::to_double(f.read_as<moss::bf16>(src)) == moss::test::to_double(exact));
    }
  }
  SECTION("other values round once, to nearest even, exactly as from_float does") {
    const auto as_bf16 = f.read_as<moss::bf16>("random.f32");
    const auto as_f16 = f.read_as<moss::f16>("random.f32");
    REQUIRE(as_bf16.size() == big);
    CHECK(same_bits(as_bf16, moss::test::to_storage<moss::bf16>(random)));
    CHECK(same_bits(as_f16, moss::test::to_storage<moss::f16>(random)));
    CHECK_FALSE(same_bits(moss::test::to_double(as_bf16), moss::test::to_double(random)));  // it did round
  }
  SECTION("integers widen and narrow with a range check") {
    const auto wide = f.read_as<std::int64_t>("ids.i32");
    REQUIRE(wide.size() == big);
    bool all = true;
    for (std::size_t i = 0; i < big; ++i) all = all && wide[i] == ids[i];
    CHECK(all);
    CHECK(f.read_as<std::int32_t>("small.i64") == std::vector<std::int32_t>{-5, 0, 2147483647});
    REQUIRE_THROWS_AS(f.read_as<std::int32_t>("wide.i64"), moss::io_error);
    REQUIRE_THROWS_WITH(f.read_as<std::int32_t>("wide.i64"),
                        ContainsSubstring(file.string()) &&
                            ContainsSubstring("tensor \"wide.i64\" element 2 = 2147483648") &&
                            ContainsSubstring("does not fit i32"));
  }
  SECTION("floats and integers do not convert into each other") {
    REQUIRE_THROWS_AS(f.read_as<std::int32_t>("exact.f32"), moss::io_error);
    REQUIRE_THROWS_WITH(f.read_as<std::int32_t>("exact.f32"), ContainsSubstring(file.string()) &&
                                                                  ContainsSubstring("tensor \"exact.f32\" is f32") &&
                                                                  ContainsSubstring("cannot be read as i32"));
    REQUIRE_THROWS_WITH(f.read_as<float>("small.i64"),
                        ContainsSubstring("tensor \"small.i64\" is i64 and cannot be read as f32"));
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(n));
    REQUIRE_THROWS_AS(f.read("exact.f32", DType::u8, bytes.data(), bytes.size()), moss::io_error);
  }
  SECTION("a wrong output size is a shape_error; a wrong shape an io_error naming both shapes") {
    std::vector<float> out(static_cast<std::size_t>(n) - 1);
    REQUIRE_THROWS_AS(f.read("exact.f32", DType::f32, out.data(), out.size() * sizeof(float)), moss::shape_error);
    REQUIRE_THROWS_WITH(f.read("exact.f32", DType::f32, out.data(), out.size() * sizeof(float)),
                        ContainsSubstring("tensor \"exact.f32\"") && ContainsSubstring("bytes but the output holds"));
    REQUIRE_THROWS_AS(f.read_as<float>("exact.f32", {n + 1}), moss::io_error);
    REQUIRE_THROWS_WITH(f.read_as<float>("small.i64", {3, 1}),
                        ContainsSubstring(file.string() + ": tensor \"small.i64\" is [3] but expected [3, 1]"));
    REQUIRE_THROWS_WITH(f.read_as<float>("exact.f32", {7}),
                        ContainsSubstring("is [" + std::to_string(n) + "] but expected [7]"));
    CHECK(f.read_as<float>("exact.f32", {-1}).size() == exact.size());  // a negative extent matches anything
    REQUIRE_THROWS_WITH(f.read_as<float>("missing"), ContainsSubstring(file.string() + ": missing tensor \"missing\""));
  }
}

TEST_CASE("safetensors: sharded checkpoints round-trip through write_sharded and Checkpoint", "[host]") {
  TempDir dir;
  moss::SafetensorsWriter w;
  std::map<std::string, std::vector<float>> values;
  for (int i = 0; i < 6; ++i) {
    const std::string name = "t" + std::to_string(i);
    values[name] = moss::test::randn(100, 20 + static_cast<std::uint64_t>(i));  // 400 bytes
    w.add(name, {10, 10}, values[name]);
  }
  values["big"] = moss::test::randn(600, 30);  // 2400 bytes: more than a shard, so alone in one
  w.add("big", {600}, values["big"]);
  w.set_metadata("format", "pt");
  const fs::path out = dir / "sharded";
  const auto shards = w.write_sharded(out, 1000);

  // Tensors in writer order (by name: big, t0..t5), packed greedily: [big] [t0 t1] [t2 t3] [t4 t5].
  REQUIRE(shards.size() == 4);
  for (std::size_t k = 0; k < 4; ++k)
    CHECK(shards[k] == out / ("model-0000" + std::to_string(k + 1) + "-of-00004.safetensors"));
  const io::Json index_doc =
      io::parse_json(io::read_text_file(out / "model.safetensors.index.json"), "model.safetensors.index.json");
  const io::JsonRef index(index_doc, "model.safetensors.index.json");
  CHECK(index.keys() == std::vector<std::string>{"metadata", "weight_map"});
  CHECK(index.at("metadata").at("total_size").as_int() == 6 * 400 + 2400);
  CHECK(index.at("metadata").at("format").as_string() == "pt");
  CHECK(index.at("weight_map").size() == 7);
  CHECK(index.at("weight_map").at("big").as_string() == "model-00001-of-00004.safetensors");
  CHECK(index.at("weight_map").at("t3").as_string() == "model-00003-of-00004.safetensors");
  CHECK(index.at("weight_map").at("t5").as_string() == "model-00004-of-00004.safetensors");

  for (const fs::path& opened : {out, out / "model.safetensors.index.json"}) {
    INFO(opened.string());
    const moss::Checkpoint ckpt(opened);
    CHECK(ckpt.sharded());
    CHECK(ckpt.files().size() == 4);
    CHECK(ckpt.names() == std::vector<std::string>{"big", "t0", "t1", "t2", "t3", "t4", "t5"});
    CHECK(ckpt.metadata().at("total_size") == "4800");
    CHECK(ckpt.metadata().at("format") == "pt");
    CHECK(ckpt.file_of("t2").path().filename() == "model-00003-of-00004.safetensors");
    CHECK(ckpt.info("t4").shape == std::vector<index_t>{10, 10});
    for (const auto& [name, v] : values) CHECK(ckpt.read_as<float>(name) == v);
    CHECK(ckpt.read_as<float>("t0", {10, 10}) == values["t0"]);
    CHECK(same_bits(ckpt.read_as<moss::bf16>("t1", {10, -1}), moss::test::to_storage<moss::bf16>(values["t1"])));
    REQUIRE_THROWS_AS(ckpt.info("t9"), moss::io_error);
    REQUIRE_THROWS_WITH(ckpt.read_as<float>("t9"),
                        ContainsSubstring(opened.string()) && ContainsSubstring("missing tensor \"t9\""));
    REQUIRE_THROWS_WITH(
        ckpt.read_as<float>("t1", {100}),
        ContainsSubstring("model-00002-of-00004.safetensors: tensor \"t1\" is [10, 10] but expected [100]"));
  }

  // A single file: in a folder as model.safetensors, or opened directly under any name.
  const fs::path single = dir / "single";
  fs::create_directories(single);
  w.write(single / "model.safetensors");
  w.write(dir / "weights.safetensors");
  for (const fs::path& opened : {single, single / "model.safetensors", dir / "weights.safetensors"}) {
    INFO(opened.string());
    const moss::Checkpoint ckpt(opened);
    CHECK_FALSE(ckpt.sharded());
    CHECK(ckpt.files().size() == 1);
    CHECK(ckpt.names().size() == 7);
    CHECK(ckpt.metadata().at("format") == "pt");
    for (const auto& [name, v] : values) CHECK(ckpt.read_as<float>(name) == v);
  }
  // With both present, the single file wins (as in transformers).
  w.write(out / "model.safetensors");
  CHECK_FALSE(moss::Checkpoint(out).sharded());

  // An empty writer shards into one empty shard and a valid index.
  moss::SafetensorsWriter none;
  CHECK(none.write_sharded(dir / "empty", 100).size() == 1);
  CHECK(moss::Checkpoint(dir / "empty").names().empty());
}

TEST_CASE("safetensors: the Hugging Face Mamba and Switch fixtures open with the expected tensors", "[host]") {
  const fs::path mamba = fs::path(moss::test::data_dir()) / "hf_mamba_tiny";
  const moss::Checkpoint ckpt(mamba);
  CHECK_FALSE(ckpt.sharded());
  std::vector<std::pair<std::string, std::vector<index_t>>> expected = {{"backbone.embeddings.weight", {256, 64}},
                                                                        {"backbone.norm_f.weight", {64}}};
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "backbone.layers." + std::to_string(layer) + ".";
    expected.push_back({p + "mixer.A_log", {128, 16}});
    expected.push_back({p + "mixer.D", {128}});
    expected.push_back({p + "mixer.conv1d.bias", {128}});
    expected.push_back({p + "mixer.conv1d.weight", {128, 1, 4}});
    expected.push_back({p + "mixer.dt_proj.bias", {128}});
    expected.push_back({p + "mixer.dt_proj.weight", {128, 4}});
    expected.push_back({p + "mixer.in_proj.weight", {256, 64}});
    expected.push_back({p + "mixer.out_proj.weight", {64, 128}});
    expected.push_back({p + "mixer.x_proj.weight", {36, 128}});
    expected.push_back({p + "norm.weight", {64}});
  }
  std::vector<std::string> expected_names;
  for (const auto& [name, shape] : expected) {
    INFO(name);
    expected_names.push_back(name);
    REQUIRE(ckpt.contains(name));
    CHECK(ckpt.info(name).dtype == DType::f32);
    CHECK(ckpt.info(name).shape == shape);
  }
  std::sort(expected_names.begin(), expected_names.end());
  CHECK(ckpt.names() == expected_names);  // exactly these 22, no lm_head (tied embeddings)
  CHECK(ckpt.metadata().at("format") == "pt");

  // The embeddings against an independent read of the raw bytes (they are first in the data).
  const std::string raw = read_bytes(mamba / "model.safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[static_cast<std::size_t>(i)]);
  std::vector<float> direct(256 * 64);
  REQUIRE(raw.size() >= 8 + n + direct.size() * 4);
  std::memcpy(direct.data(), raw.data() + 8 + n, direct.size() * 4);
  const auto emb = ckpt.read_as<float>("backbone.embeddings.weight", {256, 64});
  CHECK(same_bits(emb, direct));
  CHECK(same_bits(ckpt.read_as<moss::bf16>("backbone.embeddings.weight"), moss::test::to_storage<moss::bf16>(direct)));
  // A_log rows hold log(1..16) plus noise in the fixture: all finite.
  for (float a : ckpt.read_as<float>("backbone.layers.1.mixer.A_log", {128, 16})) REQUIRE(std::isfinite(a));

  const moss::SafetensorsFile ref(mamba / "reference.safetensors");
  CHECK(ref.info("input_ids").dtype == DType::i64);
  const auto ids64 = ref.read_as<std::int64_t>("input_ids", {2, 33});
  const auto ids32 = ref.read_as<std::int32_t>("input_ids", {2, 33});
  for (std::size_t i = 0; i < ids64.size(); ++i) {
    REQUIRE(ids64[i] >= 0);
    REQUIRE(ids64[i] < 256);
    REQUIRE(ids32[i] == ids64[i]);
  }
  CHECK(ref.info("logits").shape == std::vector<index_t>{2, 33, 256});
  CHECK(ref.info("gen_output").shape == std::vector<index_t>{2, 17});

  const io::Json cfg_doc = io::parse_json(io::read_text_file(mamba / "config.json"), "config.json");
  const io::JsonRef cfg(cfg_doc, "config.json");
  CHECK(cfg.at("hidden_size").as_int() == 64);
  CHECK(cfg.at("state_size").as_int() == 16);
  CHECK(cfg.at("num_hidden_layers").as_int() == 2);
  CHECK(cfg.at("vocab_size").as_int() == 256);
  CHECK(cfg.at("layer_norm_epsilon").as_double() == 1e-5);
  CHECK(cfg.at("tie_word_embeddings").as_bool());
  CHECK(cfg.at("architectures").at(std::size_t{0}).as_string() == "MambaForCausalLM");

  const moss::Checkpoint sw(fs::path(moss::test::data_dir()) / "hf_switch_tiny" / "switch.safetensors");
  CHECK(sw.names().size() == 2 + 1 + 2 * 8);
  CHECK(sw.info("w.router.classifier.weight").shape == std::vector<index_t>{8, 32});
  CHECK(sw.info("x").shape == std::vector<index_t>{2, 20, 32});
  CHECK(sw.info("out0").shape == std::vector<index_t>{2, 20, 32});
  for (int e = 0; e < 8; ++e) {
    CHECK(sw.read_as<float>("w.experts.expert_" + std::to_string(e) + ".wi.weight", {64, 32}).size() == 64 * 32);
    CHECK(sw.info("w.experts.expert_" + std::to_string(e) + ".wo.weight").shape == std::vector<index_t>{32, 64});
  }
}

TEST_CASE("safetensors: malformed files raise io_error naming the file and the tensor", "[host]") {
  TempDir dir;
  const auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                        const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
  };
  struct Case {
    std::string label;
    std::string bytes;
    std::vector<std::string> message;  // substrings the message must contain besides the file name
  };
  const std::vector<Case> cases = {
      {"too_short", "abc", {"3 bytes, too short"}},
      {"empty_file", "", {"0 bytes, too short"}},
      {"header_len_zero", raw_file("", 16, 0), {"header length is 0"}},
      {"header_len_one", raw_file("{", 16), {"header length is 1"}},
      {"header_len_past_end", raw_file("{}", 4, 1000), {"header length 1000 exceeds the file"}},
      {"header_len_huge", raw_file("{}", 4, 1ull << 63), {"exceeds the limit"}},
      {"header_len_max", raw_file("{}", 4, ~0ull), {"exceeds the limit"}},
      {"header_len_over_limit", raw_file("{}", 4, 100'000'001), {"exceeds the limit of 100000000"}},
      {"header_not_json", raw_file("{not json}", 0), {"invalid JSON", "safetensors header"}},
      {"header_truncated_json", raw_file("{\"w\":{\"dtype\":\"F32\"", 0), {"invalid JSON"}},
      {"header_array", raw_file("[]", 0), {"expected a JSON object"}},
      {"header_duplicate_tensor",
       raw_file("{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[1]", "[4,8]") + "}", 8),
       {"duplicate key \"w\""}},
      {"truncated_data",
       raw_file("{" + entry("w", "F32", "[4]", "[0,16]") + "}", 8),
       {"tensor \"w\"", "run past the data section (8 bytes"}},
      {"offsets_outside",
       raw_file("{" + entry("w", "F32", "[2]", "[100,108]") + "}", 16),
       {"tensor \"w\"", "run past the data section"}},
      {"begin_after_end", raw_file("{" + entry("w", "F32", "[0]", "[8,0]") + "}", 16), {"tensor \"w\"", "begin > end"}},
      {"overlap",
       raw_file("{" + entry("a", "F32", "[4]", "[0,16]") + "," + entry("b", "F32", "[2]", "[8,16]") + "}", 16),
       {"tensors \"a\"", "\"b\"", "overlap"}},
      {"overlap_past_an_empty_tensor",
       raw_file("{" + entry("a", "F32", "[4]", "[0,16]") + "," + entry("e", "F32", "[0]", "[4,4]") + "," +
                    entry("b", "F32", "[1]", "[8,12]") + "}",
                16),
       {"tensors \"a\"", "\"b\"", "overlap"}},
      {"same_range_twice",
       raw_file("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "I32", "[2]", "[0,8]") + "}", 8),
       {"overlap"}},
      {"unknown_dtype_f64",
       raw_file("{" + entry("w", "F64", "[1]", "[0,8]") + "}", 8),
       {"tensor \"w\"", "unknown dtype \"F64\"", "F32, F16, BF16, I32 and I64"}},
      {"unknown_dtype_u8", raw_file("{" + entry("w", "U8", "[1]", "[0,1]") + "}", 8), {"unknown dtype \"U8\""}},
      {"unknown_dtype_bool", raw_file("{" + entry("w", "BOOL", "[1]", "[0,1]") + "}", 8), {"unknown dtype \"BOOL\""}},
      {"unknown_dtype_lowercase",
       raw_file("{" + entry("w", "f32", "[1]", "[0,4]") + "}", 8),
       {"unknown dtype \"f32\""}},
      {"shape_bytes_mismatch",
       raw_file("{" + entry("w", "F32", "[3]", "[0,8]") + "}", 16),
       {"tensor \"w\"", "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"}},
      {"shape_bytes_mismatch_bf16",
       raw_file("{" + entry("w", "BF16", "[2, 2]", "[0,16]") + "}", 16),
       {"tensor \"w\"", "needs 8 bytes"}},
      {"shape_not_integer",
       raw_file("{" + entry("w", "F32", "[2.5]", "[0,10]") + "}", 16),
       {"tensor \"w\"", "\"shape\" entry 2.5 is not a non-negative integer"}},
      {"shape_float_integral",
       raw_file("{" + entry("w", "F32", "[2.0]", "[0,8]") + "}", 16),
       {"tensor \"w\"", "\"shape\" entry 2.0 is not a non-negative integer"}},
      {"shape_string",
       raw_file("{" + entry("w", "F32", "[\"2\"]", "[0,8]") + "}", 16),
       {"tensor \"w\"", "\"shape\" entry"}},
      {"shape_negative", raw_file("{" + entry("w", "F32", "[-1]", "[0,0]") + "}", 16), {"tensor \"w\"", "entry -1"}},
      {"shape_not_array",
       raw_file("{" + entry("w", "F32", "4", "[0,16]") + "}", 16),
       {"tensor \"w\"", "\"shape\" is a number"}},
      {"shape_overflow",
       raw_file("{" + entry("w", "F32", "[4611686018427387904, 4]", "[0,16]") + "}", 16),
       {"tensor \"w\"", "more elements than an int64"}},
      {"shape_bytes_overflow",
       raw_file("{" + entry("w", "I64", "[4611686018427387904]", "[0,16]") + "}", 16),
       {"tensor \"w\"", "too large to address"}},
      {"shape_huge_product_of_zero",
       raw_file("{" + entry("w", "F32", "[4611686018427387904, 4, 0]", "[0,1]") + "}", 16),
       {"tensor \"w\"", "needs 0 bytes"}},
      {"missing_data_offsets",
       raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8),
       {"tensor \"w\"", "missing \"data_offsets\""}},
      {"missing_dtype",
       raw_file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 8),
       {"tensor \"w\"", "missing \"dtype\""}},
      {"missing_shape",
       raw_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 8),
       {"tensor \"w\"", "missing \"shape\""}},
      {"offsets_three",
       raw_file("{" + entry("w", "F32", "[1]", "[0,4,8]") + "}", 8),
       {"tensor \"w\"", "\"data_offsets\" is [0,4,8], expected [begin, end]"}},
      {"offsets_not_array",
       raw_file("{" + entry("w", "F32", "[1]", "\"0-4\"") + "}", 8),
       {"tensor \"w\"", "expected [begin, end]"}},
      {"offsets_negative",
       raw_file("{" + entry("w", "F32", "[1]", "[-4,0]") + "}", 8),
       {"tensor \"w\"", "entry -4 is not a non-negative integer"}},
      {"offsets_beyond_int64",
       raw_file("{" + entry("w", "F32", "[1]", "[18446744073709551612,18446744073709551616]") + "}", 8),
       {"tensor \"w\"", "not a non-negative integer"}},
      {"dtype_not_string",
       raw_file("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 8),
       {"tensor \"w\"", "\"dtype\" is a number"}},
      {"entry_not_object", raw_file("{\"w\":5}", 8), {"tensor \"w\"", "entry is a number"}},
      {"metadata_not_string",
       raw_file("{\"__metadata__\":{\"format\":1}}", 0),
       {"__metadata__ entry \"format\"", "expected a string"}},
      {"metadata_not_object", raw_file("{\"__metadata__\":[\"pt\"]}", 0), {"__metadata__ is an array"}},
  };
  for (const auto& c : cases) {
    INFO("case " << c.label);
    const fs::path file = dir / (c.label + ".safetensors");
    write_bytes(file, c.bytes);
    REQUIRE_THROWS_AS(moss::SafetensorsFile(file), moss::io_error);
    REQUIRE_THROWS_WITH(moss::SafetensorsFile(file), ContainsSubstring(file.string()));
    for (const auto& part : c.message) REQUIRE_THROWS_WITH(moss::SafetensorsFile(file), ContainsSubstring(part));
    REQUIRE_THROWS_AS(moss::Checkpoint(file), moss::io_error);  // the same through Checkpoint
  }

  // A header padded with spaces and tensors leaving gaps are valid.
  const fs::path padded = dir / "padded.safetensors";
  write_bytes(padded, raw_file("{" + entry("w", "F32", "[1]", "[8,12]") + "}    ", 16));
  CHECK(moss::SafetensorsFile(padded).read_as<float>("w", {1}).size() == 1);

  // Opening a folder or a missing path as a file.
  REQUIRE_THROWS_WITH(moss::SafetensorsFile(dir.path), ContainsSubstring("is a directory"));
  REQUIRE_THROWS_WITH(moss::SafetensorsFile(dir / "absent.safetensors"),
                      ContainsSubstring((dir / "absent.safetensors").string() + ": no such file"));
}

TEST_CASE("safetensors: a file truncated or removed after opening fails the read, not the process", "[host]") {
  TempDir dir;
  const fs::path file = dir / "t.safetensors";
  moss::SafetensorsWriter w;
  w.add("a", {4}, std::vector<float>{1, 2, 3, 4});
  w.add("b", {100}, moss::test::randn(100, 5));
  w.write(file);
  const moss::SafetensorsFile f(file);
  fs::resize_file(file, fs::file_size(file) - 10);
  CHECK(f.read_as<float>("a", {4}) == std::vector<float>{1, 2, 3, 4});  // "a" comes first and is whole
  REQUIRE_THROWS_AS(f.read_as<float>("b"), moss::io_error);
  REQUIRE_THROWS_WITH(f.read_as<float>("b"), ContainsSubstring(file.string()) &&
                                                 ContainsSubstring("short read of tensor \"b\": got 390 of 400 bytes"));
  REQUIRE_THROWS_WITH(f.read_as<moss::bf16>("b"), ContainsSubstring("short read of tensor \"b\""));
  fs::remove(file);
  REQUIRE_THROWS_WITH(f.read_as<float>("a"),
                      ContainsSubstring(file.string()) && ContainsSubstring("cannot open file to read tensor \"a\""));
}

TEST_CASE("safetensors: broken sharded checkpoints raise io_error naming index, shard and tensor", "[host]") {
  TempDir dir;
  moss::SafetensorsWriter w;
  w.add("a", {2}, std::vector<float>{1, 2});
  w.write(dir / "s1.safetensors");
  const auto index = [&](const std::string& name, const std::string& text) {
    const fs::path folder = dir / name;
    fs::create_directories(folder);
    fs::copy_file(dir / "s1.safetensors", folder / "s1.safetensors");
    write_bytes(folder / "model.safetensors.index.json", text);
    return folder;
  };

  const fs::path ok = index("ok", R"({"metadata": {"total_size": 8}, "weight_map": {"a": "s1.safetensors"}})");
  CHECK(moss::Checkpoint(ok).read_as<float>("a", {2}) == std::vector<float>{1, 2});

  const fs::path missing_shard =
      index("missing_shard", R"({"weight_map": {"a": "s1.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  REQUIRE_THROWS_AS(moss::Checkpoint(missing_shard), moss::io_error);
  REQUIRE_THROWS_WITH(
      moss::Checkpoint(missing_shard),
      ContainsSubstring((missing_shard / "model.safetensors.index.json").string()) &&
          ContainsSubstring("shard \"model-00002-of-00002.safetensors\" (holding tensor \"b\") is missing"));

  const fs::path missing_tensor =
      index("missing_tensor", R"({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}})");
  REQUIRE_THROWS_AS(moss::Checkpoint(missing_tensor), moss::io_error);
  REQUIRE_THROWS_WITH(moss::Checkpoint(missing_tensor),
                      ContainsSubstring("tensor \"ghost\" is mapped to shard \"s1.safetensors\"") &&
                          ContainsSubstring((missing_tensor / "s1.safetensors").string() + " does not contain it"));

  const fs::path bad_json = index("bad_json", R"({"weight_map": {"a": "s1.safetensors",}})");
  REQUIRE_THROWS_WITH(
      moss::Checkpoint(bad_json),
      ContainsSubstring((bad_json / "model.safetensors.index.json").string()) && ContainsSubstring("invalid JSON"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("no_map", R"({"metadata": {}})")),
                      ContainsSubstring("has no \"weight_map\""));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("map_array", R"({"weight_map": ["a"]})")),
                      ContainsSubstring("\"weight_map\" is an array"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("shard_number", R"({"weight_map": {"a": 1}})")),
                      ContainsSubstring("weight_map entry for tensor \"a\" is a number"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("meta_string", R"({"metadata": "x", "weight_map": {}})")),
                      ContainsSubstring("\"metadata\" is a string"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("escape", R"({"weight_map": {"a": "../s1.safetensors"}})")),
                      ContainsSubstring("shard \"../s1.safetensors\" of tensor \"a\" must be a file name relative"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("absolute", R"({"weight_map": {"a": "/etc/passwd"}})")),
                      ContainsSubstring("must be a file name relative"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(index("not_object", R"([1])")), ContainsSubstring("expected a JSON object"));

  // A malformed shard is reported under the shard's own name.
  const fs::path bad_shard = index("bad_shard", R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  write_bytes(bad_shard / "s2.safetensors",
              raw_file("{\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8));
  REQUIRE_THROWS_WITH(moss::Checkpoint(bad_shard), ContainsSubstring((bad_shard / "s2.safetensors").string()) &&
                                                       ContainsSubstring("tensor \"b\": unknown dtype"));

  // Folders without a checkpoint, and paths that do not exist.
  fs::create_directories(dir / "empty");
  REQUIRE_THROWS_WITH(moss::Checkpoint(dir / "empty"),
                      ContainsSubstring("holds neither model.safetensors nor model.safetensors.index.json"));
  REQUIRE_THROWS_WITH(moss::Checkpoint(dir / "nowhere"),
                      ContainsSubstring("checkpoint " + (dir / "nowhere").string() + " does not exist"));
}

TEST_CASE("safetensors: the writer refuses bad tensors and reports failed writes", "[host]") {
  TempDir dir;
  moss::SafetensorsWriter w;
  w.add("a", {2}, std::vector<float>{1, 2});
  REQUIRE_THROWS_AS(w.add("a", {1}, std::vector<float>{3}), moss::config_error);
  REQUIRE_THROWS_WITH(w.add("a", {1}, std::vector<float>{3}), ContainsSubstring("tensor \"a\" was already added"));
  REQUIRE_THROWS_AS(w.add("__metadata__", {1}, std::vector<float>{3}), moss::config_error);
  REQUIRE_THROWS_AS(w.add("b", {3}, std::vector<float>{1, 2}), moss::shape_error);
  REQUIRE_THROWS_WITH(w.add("b", {3}, std::vector<float>{1, 2}),
                      ContainsSubstring("tensor \"b\" [3] of f32 needs 12 bytes but 8 were given"));
  REQUIRE_THROWS_AS(w.add("c", {-1}, std::vector<float>{}), moss::shape_error);
  const std::vector<std::byte> one(1);
  REQUIRE_THROWS_AS(w.add("u", DType::u8, {1}, one), moss::unsupported_error);
  REQUIRE_THROWS_WITH(w.add("u", DType::u8, {1}, one), ContainsSubstring("supported: f32, f16, bf16, i32, i64"));
  CHECK(w.size() == 1);  // failed adds leave nothing behind

  REQUIRE_THROWS_AS(w.write(dir / "no_such_dir" / "x.safetensors"), moss::io_error);
  REQUIRE_THROWS_WITH(w.write(dir / "no_such_dir" / "x.safetensors"), ContainsSubstring("cannot create file"));
  REQUIRE_THROWS_AS(w.write_sharded(dir / "s", 0), moss::config_error);
}

TEST_CASE("safetensors: corrupted and truncated files fail with io_error or read back, never anything else", "[host]") {
  TempDir dir;
  moss::SafetensorsWriter w;
  w.add("a", {3, 2}, moss::test::randn(6, 40));
  w.add("b", {4}, moss::test::to_storage<moss::bf16>(moss::test::randn(4, 41)));
  w.add("c", {2}, std::vector<std::int64_t>{1, -1});
  w.set_metadata("format", "pt");
  w.write(dir / "good.safetensors");
  const std::string good = read_bytes(dir / "good.safetensors");
  const fs::path file = dir / "bad.safetensors";
  // Opens, and reads every tensor in its own dtype and as f32/i64; io_error is the only failure.
  const auto exercise = [&](const std::string& bytes) {
    write_bytes(file, bytes);
    try {
      const moss::SafetensorsFile f(file);
      for (const auto& name : f.names()) {
        const auto& ti = f.info(name);
        std::vector<std::byte> out(static_cast<std::size_t>(ti.numel()) * moss::dtype_size(ti.dtype));
        f.read(name, ti.dtype, out);
        if (ti.dtype == DType::f16 || ti.dtype == DType::bf16) (void)f.read_as<float>(name);
        if (ti.dtype == DType::i32) (void)f.read_as<std::int64_t>(name);
      }
      return 0;
    } catch (const moss::io_error& e) {
      REQUIRE_THAT(e.what(), ContainsSubstring(file.string()));
      return 1;
    }
  };
  std::mt19937 rng(99);
  int failures = 0;
  for (int i = 0; i < 400; ++i) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly the length prefix and header, where the structure lives.
      const std::size_t at = rng() % 4 == 0 ? rng() % bytes.size() : rng() % std::min<std::size_t>(bytes.size(), 200);
      bytes[at] =
          static_cast<char>(rng() % 4 == 0 ? static_cast<int>(rng() & 0xff) : "0123456789[]{},:\"-.e "[rng() % 21]);
    }
    failures += exercise(bytes);
  }
  for (std::size_t len = 0; len < good.size(); len += 1 + rng() % 7) failures += exercise(good.substr(0, len));
  CHECK(failures > 300);  // most corruptions are caught (a few flips land in data and are harmless)
  CHECK(exercise(good) == 0);
}
