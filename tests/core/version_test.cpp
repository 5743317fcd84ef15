// Tests of moss/version.hpp: the macros agree with each other and with the CMake project's
// version (MOSS_PROJECT_VERSION, passed by tests/CMakeLists.txt from project(moss VERSION ...)).
#include <catch2/catch_test_macros.hpp>
#include <string>

#include "moss/version.hpp"

#ifndef MOSS_PROJECT_VERSION
#error "tests/CMakeLists.txt passes MOSS_PROJECT_VERSION to version_test"
#endif

TEST_CASE("version: MOSS_VERSION_STRING spells the three numbers", "[host][core]") {
  const std::string numbers = std::to_string(MOSS_VERSION_MAJOR) + "." + std::to_string(MOSS_VERSION_MINOR) + "." +
                              std::to_string(MOSS_VERSION_PATCH);
  CHECK(std::string(MOSS_VERSION_STRING) == numbers);
}

TEST_CASE("version: the header and the CMake project agree", "[host][core]") {
  CHECK(std::string(MOSS_VERSION_STRING) == std::string(MOSS_PROJECT_VERSION));
}

TEST_CASE("version: MOSS_VERSION orders releases as integers", "[host][core]") {
  STATIC_REQUIRE(MOSS_VERSION == MOSS_VERSION_MAJOR * 10000 + MOSS_VERSION_MINOR * 100 + MOSS_VERSION_PATCH);
  // Each part must stay below 100 for the encoding to order versions.
  STATIC_REQUIRE(MOSS_VERSION_MINOR < 100 && MOSS_VERSION_PATCH < 100);
}
