// Tests of moss/io/weights.hpp: the WeightSource concept (Checkpoint, SafetensorsFile and
// WeightMap satisfy it; other types do not) and WeightMap's reads, conversions and messages,
// which match Checkpoint's for the same tensors.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "moss/io/checkpoint.hpp"
#include "moss/io/weights.hpp"
#include "moss/io/writer.hpp"
#include "moss_test.hpp"

using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::Equals;
namespace fs = std::filesystem;
using moss::index_t;

namespace {

/// Reads `name` through any weight source, as a layer's load does.
template <moss::WeightSource S>
std::vector<float> load(const S& source, const std::string& name, const std::vector<index_t>& shape) {
  if (!source.contains(name)) return {};
  return source.template read_as<float>(name, shape);
}

/// A type with the names but not the shape of a weight source.
struct NotASource {
  bool contains(const std::string&) const { return false; }
  std::string where() const { return "x"; }
};

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const moss::error& e) {
    return e.what();
  }
  return {};
}

}  // namespace

static_assert(moss::WeightSource<moss::WeightMap>);
static_assert(moss::WeightSource<moss::Checkpoint>);
static_assert(moss::WeightSource<moss::SafetensorsFile>);
static_assert(!moss::WeightSource<NotASource>);
static_assert(!moss::WeightSource<moss::SafetensorsWriter>);

TEST_CASE("weights: WeightMap reads back what was added, converted and shape-checked", "[host][io]") {
  const auto w = moss::test::randn(6, 1);
  moss::WeightMap map;
  map.add("layer.weight", {2, 3}, w);
  map.add("layer.bias", {3}, {0.5f, -1.0f, 3.0f});
  map.add("scalar", {}, {2.0f});
  map.add("empty", {0, 4}, {});
  CHECK(map.where() == "weights");
  CHECK(map.size() == 4);
  CHECK(map.names() == std::vector<std::string>{"empty", "layer.bias", "layer.weight", "scalar"});
  CHECK(map.contains("layer.bias"));
  CHECK_FALSE(map.contains("layer.gamma"));
  CHECK(map.shape("layer.weight") == std::vector<index_t>{2, 3});

  CHECK(map.read_as<float>("layer.weight", {2, 3}) == w);
  CHECK(map.read_as<float>("layer.weight", {-1, 3}) == w);  // a negative extent matches anything
  CHECK(map.read_as<float>("scalar", {}) == std::vector<float>{2.0f});
  CHECK(map.read_as<float>("empty", {0, 4}).empty());
  const auto as_bf16 = map.read_as<moss::bf16>("layer.weight", {2, 3});
  const auto as_f16 = map.read_as<moss::f16>("layer.weight", {2, 3});
  const auto want_bf16 = moss::test::to_storage<moss::bf16>(w);
  const auto want_f16 = moss::test::to_storage<moss::f16>(w);
  REQUIRE(as_bf16.size() == 6);
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(as_bf16[i].bits == want_bf16[i].bits);
    CHECK(as_f16[i].bits == want_f16[i].bits);
  }
  CHECK(load(map, "layer.bias", {3}) == std::vector<float>{0.5f, -1.0f, 3.0f});
  CHECK(load(map, "layer.gamma", {3}).empty());
}

TEST_CASE("weights: WeightMap refuses bad tensors and names itself in messages", "[host][io]") {
  moss::WeightMap map("test weights");
  map.add("a", {2}, {1.0f, 2.0f});
  REQUIRE_THROWS_AS(map.add("a", {1}, {3.0f}), moss::config_error);
  CHECK_THAT(message_of([&] { map.add("a", {1}, {3.0f}); }),
             Equals("WeightMap::add: test weights: tensor \"a\" was already added"));
  REQUIRE_THROWS_AS(map.add("b", {3}, {1.0f, 2.0f}), moss::shape_error);
  CHECK_THAT(message_of([&] {
               map.add("b", {3}, {1.0f, 2.0f});
             }),
             Equals("WeightMap::add: test weights: tensor \"b\" [3] needs 3 values but 2 were given"));
  CHECK_THAT(message_of([&] { map.add("c", {-1}, {}); }), ContainsSubstring("negative extent in [*]"));
  CHECK(map.size() == 1);  // failed adds leave nothing behind
  REQUIRE_THROWS_AS(map.read_as<float>("z", {2}), moss::io_error);
  CHECK_THAT(message_of([&] { (void)map.read_as<float>("z", {2}); }),
             Equals("test weights: missing tensor \"z\" (the map holds 1 tensors)"));
  REQUIRE_THROWS_AS(map.read_as<float>("a", {2, 1}), moss::io_error);
  CHECK_THAT(message_of([&] {
               (void)map.read_as<moss::bf16>("a", {2, 1});
             }),
             Equals("test weights: tensor \"a\" is [2] but expected [2, 1]"));
  CHECK_THAT(message_of([&] { (void)map.shape("z"); }), ContainsSubstring("missing tensor \"z\""));
}

TEST_CASE("weights: a Checkpoint and a WeightMap of the same tensors read and fail alike", "[host][io]") {
  const fs::path dir =
      fs::temp_directory_path() / ("moss_weights_test_" + std::to_string(std::random_device{}()) + "_" +
                                   std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  fs::create_directories(dir);
  const auto w = moss::test::randn(12, 3);
  moss::SafetensorsWriter writer;
  writer.add("w", {3, 4}, w);
  writer.write(dir / "model.safetensors");
  moss::WeightMap map(dir.string());
  map.add("w", {3, 4}, w);
  {
    const moss::Checkpoint ckpt(dir);
    CHECK(ckpt.where() == dir.string());
    CHECK(moss::SafetensorsFile(dir / "model.safetensors").where() == (dir / "model.safetensors").string());
    CHECK(load(ckpt, "w", {3, 4}) == load(map, "w", {3, 4}));
    CHECK(load(ckpt, "v", {3, 4}).empty());
    const auto bad_shape = [](const auto& source) {
      return message_of([&] { (void)source.template read_as<float>("w", {4, 3}); });
    };
    CHECK_THAT(bad_shape(ckpt), ContainsSubstring("tensor \"w\" is [3, 4] but expected [4, 3]"));
    CHECK_THAT(bad_shape(map), Equals(dir.string() + ": tensor \"w\" is [3, 4] but expected [4, 3]"));
  }
  fs::remove_all(dir);
}
