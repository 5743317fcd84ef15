// tests/backend/async_read_cuda_test.cu: the CUDA backend's asynchronous-read primitives:
// page-locked `alloc_pinned`, stream-ordered `download_async`, and `record` → CudaEvent
// (wait, ready, moves), against the work queued before them.
#include <catch2/catch_test_macros.hpp>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/cuda/launch.cuh"
#include "moss_test.hpp"

namespace async_read_test {

using moss::index_t;

/// Keeps the stream busy for about `cycles` clock cycles.
__global__ void spin_kernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

/// out[i] = 3 · i + seed.
__global__ void iota_kernel(std::int32_t* out, index_t n, std::int32_t seed) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<std::int32_t>(3 * i) + seed;
}

/// Clock cycles of about `ms` milliseconds on the current device.
long long cycles_for_ms(int ms) {
  int khz = 0;
  REQUIRE(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, moss::cuda::current_device()) == cudaSuccess);
  return static_cast<long long>(khz) * ms;
}

TEST_CASE("Cuda::alloc_pinned gives page-locked host memory", "[cuda][backend]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  moss::Buffer<float> b = gpu.alloc_pinned<float>(4096);
  REQUIRE(b.size() == 4096);
  CHECK(b.device() == moss::Device::host);
  cudaPointerAttributes attr{};
  REQUIRE(cudaPointerGetAttributes(&attr, b.data()) == cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeHost);
  b.data()[4095] = 1.5f;  // host-writable
  CHECK(b.data()[4095] == 1.5f);
  CHECK(gpu.alloc_pinned<float>(0).data() == nullptr);
  CHECK_THROWS_AS(gpu.alloc_pinned<float>(-1), moss::config_error);
  b.reset();  // cudaFreeHost
  CHECK(b.data() == nullptr);
}

TEST_CASE("download_async lands after the work before it, once the recorded event completes", "[cuda][backend]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  constexpr index_t n = 1 << 20;
  auto dev = gpu.alloc<std::int32_t>(n);
  auto host = gpu.alloc_pinned<std::int32_t>(n);
  for (index_t i = 0; i < n; ++i) host.data()[i] = -1;

  // The copy is queued behind a slow kernel and the kernel that writes the data.
  moss::cuda::launch("spin_kernel", spin_kernel, 1, 1, 0, gpu.stream, cycles_for_ms(200));
  moss::cuda::launch("iota_kernel", iota_kernel, moss::cuda::grid_blocks(n, 256), 256, 0, gpu.stream, dev.data(), n,
                     11);
  download_async(gpu, host.data(), dev.data(), n);
  moss::Cuda::Event done = gpu.record();
  static_assert(std::is_same_v<decltype(done), moss::CudaEvent>);
  CHECK_FALSE(done.ready());  // the spin has ~200 ms left
  CHECK(host.data()[n - 1] == -1);
  CHECK(cudaGetLastError() == cudaSuccess);  // "not ready" is left behind for no later check
  done.wait();
  CHECK(done.ready());
  bool ok = true;
  for (index_t i = 0; i < n; ++i) ok = ok && host.data()[i] == static_cast<std::int32_t>(3 * i + 11);
  CHECK(ok);

  download_async(gpu, host.data(), dev.data(), 0);  // nothing to copy
  gpu.record().wait();
}

TEST_CASE("CudaEvent is move-only and owns its event", "[cuda][backend]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  static_assert(!std::is_copy_constructible_v<moss::CudaEvent> && !std::is_copy_assignable_v<moss::CudaEvent>);
  static_assert(std::is_nothrow_move_constructible_v<moss::CudaEvent>);
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};

  const moss::CudaEvent empty;  // complete by definition
  CHECK(empty.get() == nullptr);
  CHECK(empty.ready());
  empty.wait();

  moss::cuda::launch("spin_kernel", spin_kernel, 1, 1, 0, gpu.stream, cycles_for_ms(100));
  moss::CudaEvent first = gpu.record();
  const cudaEvent_t raw = first.get();
  REQUIRE(raw != nullptr);
  moss::CudaEvent second(std::move(first));
  CHECK(first.get() == nullptr);  // NOLINT(bugprone-use-after-move): the moved-from event is empty
  CHECK(first.ready());
  CHECK(second.get() == raw);
  CHECK_FALSE(second.ready());

  moss::CudaEvent third = gpu.record();
  third = std::move(second);  // third's own event is destroyed, second's taken over
  CHECK(third.get() == raw);
  CHECK(second.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  third.wait();
  CHECK(third.ready());
  gpu.synchronize();
}

}  // namespace async_read_test
