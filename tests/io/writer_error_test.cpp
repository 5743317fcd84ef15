// tests/io/writer_error_test.cpp: SafetensorsWriter's failures name the system's reason (the
// error code of a failed rename was once overwritten by the clean-up and read "Success").
#include <unistd.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "moss/io/writer.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

TEST_CASE("SafetensorsWriter::write names the real reason it cannot replace a directory", "[host][io][errors]") {
  const auto tmp = std::filesystem::temp_directory_path() / ("moss_writer_dir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp / "taken");
  SafetensorsWriter w;
  w.add("x", {2}, std::vector<float>{1, 2});
  REQUIRE_THROWS_AS(w.write(tmp / "taken"), io_error);
  REQUIRE_THROWS_WITH(w.write(tmp / "taken"), ContainsSubstring("Is a directory"));
  REQUIRE_THROWS_WITH(w.write(tmp / "taken"), !ContainsSubstring("Success"));
  CHECK(!std::filesystem::exists(tmp / "taken.partial"));
  std::filesystem::remove_all(tmp);
}
