// tests/fuzz/safetensors_fuzz.cpp: libFuzzer target for one safetensors file.
// The input is the file's bytes. Every tensor that opens is read as every type moss reads
// (float, bf16, f16, int32, int64) through `read_as`, so header validation, dtype conversion and
// the short-read checks all run. Seeds: tests/fuzz/corpus/safetensors/.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.hpp"
#include "moss/io/safetensors.hpp"

namespace {

template <class T>
void read_every_tensor(const moss::SafetensorsFile& file) {
  for (const std::string& name : file.names()) {
    // Tensors over 1M elements are skipped: reading them would only measure memory, not find bugs.
    if (file.info(name).numel() > (1 << 20)) continue;
    moss::fuzz::expect_moss_errors_only([&] { (void)file.read_as<T>(name); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = moss::fuzz::scratch() / "input.safetensors";
  moss::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  moss::fuzz::expect_moss_errors_only([&] {
    const moss::SafetensorsFile file(path);
    (void)file.metadata();
    (void)file.data_size();
    read_every_tensor<float>(file);
    read_every_tensor<moss::bf16>(file);
    read_every_tensor<moss::f16>(file);
    read_every_tensor<std::int32_t>(file);
    read_every_tensor<std::int64_t>(file);
  });
  return 0;
}
