// tests/fuzz/checkpoint_fuzz.cpp: libFuzzer target for a sharded checkpoint folder.
// The input is split into three parts: the index (model.safetensors.index.json) and two shards
// (model-00001-of-00002.safetensors, model-00002-of-00002.safetensors), each prefixed by a
// 4-byte little-endian length (the last part takes what is left). The folder is opened as a
// `Checkpoint` and every tensor read as float and int64. Seeds: tests/fuzz/corpus/checkpoint/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"
#include "moss/io/checkpoint.hpp"

namespace {

/// Takes the next length-prefixed part of `rest` (all of it when `last`).
std::string_view take(std::string_view& rest, bool last) {
  if (last || rest.size() < 4) {
    const std::string_view all = rest.size() >= 4 && !last ? rest.substr(4) : rest;
    rest = {};
    return all;
  }
  std::uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(rest[i])) << (8 * i);
  rest.remove_prefix(4);
  const std::size_t len = n < rest.size() ? n : rest.size();
  const std::string_view part = rest.substr(0, len);
  rest.remove_prefix(len);
  return part;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto dir = moss::fuzz::scratch() / "checkpoint";
  std::filesystem::create_directories(dir);
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  moss::fuzz::write_file(dir / "model.safetensors.index.json", take(rest, false));
  moss::fuzz::write_file(dir / "model-00001-of-00002.safetensors", take(rest, false));
  moss::fuzz::write_file(dir / "model-00002-of-00002.safetensors", take(rest, true));
  moss::fuzz::expect_moss_errors_only([&] {
    const moss::Checkpoint ckpt(dir);
    (void)ckpt.metadata();
    for (const std::string& name : ckpt.names()) {
      if (ckpt.info(name).numel() > (1 << 20)) continue;
      moss::fuzz::expect_moss_errors_only([&] { (void)ckpt.read_as<float>(name); });
      moss::fuzz::expect_moss_errors_only([&] { (void)ckpt.read_as<std::int64_t>(name); });
    }
  });
  return 0;
}
