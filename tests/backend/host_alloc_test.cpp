// tests/backend/host_alloc_test.cpp: host allocation (moss/backend/host.hpp) and its failure:
// a request the host cannot serve raises out_of_memory_error with the byte count, the device
// and the buffer's name, never a bare std::bad_alloc. The absurd sizes below fail at once
// (beyond the address space): no memory is exhausted.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdint>
#include <limits>
#include <string>

#include "moss/backend/host.hpp"

using Catch::Matchers::ContainsSubstring;

TEST_CASE("Host::alloc gives aligned memory and an empty buffer for zero elements", "[host][backend][alloc]") {
  const moss::Host host;
  const moss::Buffer<float> b = host.alloc<float>(1000, "scratch");
  REQUIRE(b.data() != nullptr);
  CHECK(b.size() == 1000);
  CHECK(b.device() == moss::Device::host);
  CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
  const moss::Buffer<float> e = host.alloc<float>(0);
  CHECK(e.data() == nullptr);
  CHECK(e.size() == 0);
}

TEST_CASE("Host::alloc raises out_of_memory_error with the bytes, the device and the buffer",
          "[host][backend][alloc][errors]") {
  const moss::Host host;
  const moss::index_t n = moss::index_t{1} << 60;  // 2^62 bytes of float: beyond any address space
  try {
    (void)host.alloc<float>(n, "logits");
    FAIL("Host::alloc of 2^62 bytes returned");
  } catch (const moss::out_of_memory_error& e) {
    CHECK(e.bytes() == std::uint64_t{1} << 62);
    const std::string what = e.what();
    CHECK_THAT(what, ContainsSubstring("Host::alloc: out of memory"));
    CHECK_THAT(what, ContainsSubstring("4611686018427387904 bytes"));
    CHECK_THAT(what, ContainsSubstring("4.00 EiB"));
    CHECK_THAT(what, ContainsSubstring("host memory"));
    CHECK_THAT(what, ContainsSubstring("for logits"));
  }
  // Unnamed, it says so; it is a moss::error (one catch clause serves every moss failure).
  REQUIRE_THROWS_AS(host.alloc<float>(n), moss::error);
  REQUIRE_THROWS_WITH(host.alloc<float>(n), ContainsSubstring("buffer not named by the caller"));
  // alloc_pinned is alloc on the host.
  REQUIRE_THROWS_AS(host.alloc_pinned<float>(n, "pinned logits"), moss::out_of_memory_error);
}

TEST_CASE("Host::alloc refuses an element count whose bytes overflow, and a negative count",
          "[host][backend][alloc][errors]") {
  const moss::Host host;
  const moss::index_t huge = std::numeric_limits<moss::index_t>::max();
  try {
    (void)host.alloc<double>(huge, "cache");
    FAIL("Host::alloc of 2^63 doubles returned");
  } catch (const moss::out_of_memory_error& e) {
    CHECK(e.bytes() == std::numeric_limits<std::uint64_t>::max());
    CHECK_THAT(std::string(e.what()), ContainsSubstring("more than 2^64 bytes"));
    CHECK_THAT(std::string(e.what()), ContainsSubstring("9223372036854775807 elements of 8 bytes"));
  }
  REQUIRE_THROWS_AS(host.alloc<float>(-1), moss::config_error);
  REQUIRE_THROWS_WITH(host.alloc<float>(-1, "x"), ContainsSubstring("negative element count -1 for x"));
}

TEST_CASE("byte_size_text writes sizes as people read them", "[host][backend][alloc]") {
  CHECK(moss::byte_size_text(0) == "0 bytes");
  CHECK(moss::byte_size_text(1023) == "1023 bytes");
  CHECK(moss::byte_size_text(1024) == "1.00 KiB (1024 bytes)");
  CHECK(moss::byte_size_text(1610612736) == "1.50 GiB (1610612736 bytes)");
  CHECK(moss::byte_size_text(1610612736, false) == "1.50 GiB");
  CHECK(moss::byte_size_text(std::numeric_limits<std::uint64_t>::max(), false) == "16.00 EiB");
}
