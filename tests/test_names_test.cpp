// tests/test_names_test.cpp: every Catch2 test case name can be one ctest entry.
//
// cmake/MossTesting.cmake turns each test case into a ctest entry named after it, and ctest runs
// the case by passing its name back to the binary as a Catch2 test spec. Two characters break
// that round trip: ';' (CMake's list separator: the name is split, or neighbouring names are
// glued into one entry) and '[' / ']' (CMake's bracket grouping inside lists, and a tag in a
// Catch2 spec). This test scans the sources of every test and names the offending case.
#include <catch2/catch_test_macros.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "moss_test.hpp"

TEST_CASE("test names: no semicolon or square bracket in any Catch2 test case name", "[host][meta]") {
  namespace fs = std::filesystem;
  const fs::path tests = fs::path(moss::test::data_dir()).parent_path();
  REQUIRE(fs::is_directory(tests / "ops"));
  const std::regex test_case(R"re((?:TEMPLATE_LIST_|TEMPLATE_)?TEST_CASE\(\s*"([^"]*)")re");
  int files = 0, cases = 0;
  for (const auto& entry : fs::recursive_directory_iterator(tests)) {
    const auto ext = entry.path().extension();
    if (!entry.is_regular_file() || (ext != ".cpp" && ext != ".cu")) continue;
    if (entry.path().parent_path().filename() == "compile_fail") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    ++files;
    for (std::sregex_iterator it(s.begin(), s.end(), test_case), end; it != end; ++it) {
      const std::string name = (*it)[1].str();
      ++cases;
      INFO(entry.path().string() << ": TEST_CASE(\"" << name << "\")");
      CHECK(name.find_first_of(";[]") == std::string::npos);
    }
  }
  CHECK(files > 20);
  CHECK(cases > 100);
}
