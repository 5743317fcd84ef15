// tests/backend/async_read_test.cpp: the host backend's asynchronous-read primitives
// (`alloc_pinned`, `download_async`, `record` → HostEvent), through the same generic code a
// CUDA caller writes.
#include <catch2/catch_test_macros.hpp>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"

namespace {

/// Starts reading `n` elements of backend memory into pinned host memory and returns the copy
/// with the event that says when it is there: the pattern of a report read later.
template <class T, class Backend>
struct PendingRead {
  moss::Buffer<T> host;
  typename Backend::Event done;
};

template <class T, class Backend>
PendingRead<T, Backend> start_read(const Backend& backend, const T* src, moss::index_t n) {
  PendingRead<T, Backend> r{backend.template alloc_pinned<T>(n), {}};
  download_async(backend, r.host.data(), src, n);
  r.done = backend.record();
  return r;
}

TEST_CASE("Host::alloc_pinned gives ordinary host memory of the asked size", "[backend]") {
  const moss::Host host;
  moss::Buffer<float> b = host.alloc_pinned<float>(1000);
  REQUIRE(b.size() == 1000);
  CHECK(b.device() == moss::Device::host);
  REQUIRE(b.data() != nullptr);
  for (int i = 0; i < 1000; ++i) b.data()[i] = float(i);
  CHECK(b.data()[999] == 999.0f);
  CHECK(host.alloc_pinned<double>(0).size() == 0);
  CHECK(host.alloc_pinned<double>(0).data() == nullptr);
  CHECK_THROWS_AS(host.alloc_pinned<float>(-1), moss::config_error);
}

TEST_CASE("Host download_async copies at once and its event is already complete", "[backend]") {
  const moss::Host host;
  std::vector<std::int32_t> src(777);
  std::iota(src.begin(), src.end(), -300);
  auto read = start_read(host, src.data(), static_cast<moss::index_t>(src.size()));
  static_assert(std::is_same_v<decltype(read.done), moss::HostEvent>);
  CHECK(read.done.ready());
  read.done.wait();
  REQUIRE(read.host.size() == 777);
  CHECK(std::vector<std::int32_t>(read.host.data(), read.host.data() + 777) == src);

  auto empty = start_read(host, src.data(), 0);  // nothing to copy, nothing to touch
  CHECK(empty.host.size() == 0);
  CHECK(empty.done.ready());
}

}  // namespace
