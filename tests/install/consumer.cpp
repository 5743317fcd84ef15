// The packaging tests' consumer: a small program as a user writes one, built by add_subdirectory,
// by find_package and by a plain compiler (see CMakeLists.txt beside this file). It uses real
// moss code and returns non-zero on any wrong value, so a broken package fails the test.
#include <cstdio>
#include <string>
#include <vector>

#include <moss/io/json.hpp>
#include <moss/io/weights.hpp>
#include <moss/moss.hpp>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "moss consumer: FAILED %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  moss::Host cpu;
  moss::Buffer<float> buffer = cpu.alloc<float>(12);
  check(buffer.size() == 12 && buffer.data() != nullptr, "Host::alloc gives 12 floats");

  auto x = buffer.view(moss::Extents<2>{3, 4}, "x");  // (rows, cols)
  for (moss::index_t i = 0; i < 3; ++i)
    for (moss::index_t j = 0; j < 4; ++j) x(i, j) = static_cast<float>(10 * i + j);
  check(buffer.data()[6] == 12.0f, "row-major view writes x(1, 2) to element 6");
  check(x.is_contiguous() && x.numel() == 12, "a fresh view is contiguous with 12 elements");

  // bf16 keeps 8 significant bits: exact values survive, halfway cases round to even.
  check(moss::to_float(moss::from_float<moss::bf16>(1.5f)) == 1.5f, "bf16 round-trip of 1.5");
  check(moss::from_float<moss::bf16>(1.5f).bits == 0x3fc0, "bf16 bits of 1.5");
  check(moss::to_float(moss::from_float<moss::bf16>(1.00390625f)) == 1.0f, "bf16 1 + 2^-8 ties to 1");
  check(moss::to_float(moss::from_float<moss::bf16>(1.01171875f)) == 1.015625f, "bf16 1 + 3*2^-8 ties to 1 + 2^-6");
  check(moss::to_float(moss::from_float<moss::f16>(-2.5f)) == -2.5f, "f16 round-trip of -2.5");

  // Errors are typed and name the numbers.
  bool threw = false;
  try {
    (void)buffer.view(moss::Extents<2>{4, 4}, "too_big");
  } catch (const moss::shape_error& e) {
    threw = std::string(e.what()).find("needs 16") != std::string::npos;
  }
  check(threw, "an oversized view throws moss::shape_error naming 16 elements");

  // moss/io: JSON through nlohmann-json (found through moss::io, or the plain compiler's -I),
  // path-aware accessors, and an in-memory weight source.
  const moss::io::Json doc = moss::io::parse_json(R"({"d_model": 64, "eps": 1e-05})", "config.json");
  const moss::io::JsonRef cfg(doc, "config.json");
  check(cfg.at("d_model").as_int() == 64, "parse_json reads d_model = 64");
  check(moss::io::dump_json(doc, -1) == R"({"d_model":64,"eps":1e-05})", "dump_json keeps key order and 1e-05");
  threw = false;
  try {
    (void)cfg.at("eps").as_int();
  } catch (const moss::config_error& e) {
    threw = std::string(e.what()).find("config.json: eps is 1e-05, expected an integer") != std::string::npos;
  }
  check(threw, "as_int on 1e-05 throws moss::config_error naming config.json: eps");
  moss::WeightMap weights("consumer");
  weights.add("w", {2}, {1.5f, -2.0f});
  check(weights.read_as<float>("w", {2}) == std::vector<float>{1.5f, -2.0f}, "WeightMap reads back w");

  if (failures == 0) std::printf("moss consumer: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
