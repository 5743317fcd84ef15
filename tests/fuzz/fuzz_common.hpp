// tests/fuzz/fuzz_common.hpp: what the libFuzzer targets share.
//
// Each target writes the fuzzer's bytes to files in a scratch folder of its own and runs the
// public moss API on them, exactly as a user's program would. The contract under test: bad input
// ends in a moss::error (a typed, named error) or is read correctly; a crash, a sanitizer report,
// an uncaught foreign exception (std::bad_alloc, std::out_of_range, a JSON library exception) or
// a hang is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <unistd.h>

#include "moss/core/error.hpp"

namespace moss::fuzz {

/// A scratch folder unique to this process (libFuzzer may run several jobs side by side),
/// emptied when the process starts.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("moss-fuzz-" + std::to_string(::getpid()));
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

/// Writes `bytes` to `path` (replacing it).
inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Runs `body`; a moss::error is the expected outcome of bad input and is swallowed, anything
/// else propagates and libFuzzer reports it as a crash ("deadly signal" / uncaught exception).
template <class F>
void expect_moss_errors_only(F&& body) {
  try {
    body();
  } catch (const moss::error&) {
  }
}

}  // namespace moss::fuzz
