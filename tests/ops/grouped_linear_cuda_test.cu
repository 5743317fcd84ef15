// tests/ops/grouped_linear_cuda_test.cu: `grouped_linear` on CUDA against the host oracle, for
// each dtype, with and without bias, over ragged, skewed and empty segments, a single expert and a
// single non-empty expert, x and y contiguous or strided, and through each way of reading the
// offsets: given on the host, read from the device by the op (one cublasGemmEx per segment
// either way), or resident (the grouped matrix-vector kernel and the sync-free tiled GEMM, both
// also replayed from a CUDA graph while the offsets change). y is poisoned: rows at or past
// offsets[X] (unless resident: then zeros) and the gaps of a strided y must stay untouched.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/random.hpp"
#include "moss/ops/grouped_linear.hpp"
#include "moss/ops/grouped_linear/cuda.cuh"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::test::device_copy;
using moss::test::host_copy;

using moss::bf16;
using moss::Buffer;
using moss::ConstView;
using moss::Cuda;
using moss::f16;
using moss::Host;
using moss::index_t;
using moss::TensorView;

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// One call: segment lengths per expert (their sum is the kept rows), extra rows past them,
/// the feature sizes and the layout of x and y.
struct Case {
  const char* name;
  std::vector<std::int32_t> segments;  // (X)
  index_t tail = 0;                    // rows past offsets[X] (never written)
  index_t in = 1, out = 1;
  index_t pad_x = 0, pad_y = 0;  // extra elements per row of x / y
};

/// How the call gets its offsets: read from the device by the op (one synchronisation), given
/// on the host, or resident (read on the device only, the rows past offsets[X] written as
/// zeros) by the grouped matrix-vector kernel or the tiled sync-free grouped GEMM.
enum class Offsets { device_read, host, resident_gemv, resident_tiled };

template <class T>
void check_case(const Cuda& gpu, const Case& c, bool with_bias, Offsets mode, std::uint64_t seed) {
  const bool host_offsets = mode == Offsets::host;
  const bool resident = mode == Offsets::resident_gemv || mode == Offsets::resident_tiled;
  const index_t X = static_cast<index_t>(c.segments.size()), in = c.in, out = c.out;
  std::vector<std::int32_t> offsets(static_cast<std::size_t>(X + 1), 0);
  std::partial_sum(c.segments.begin(), c.segments.end(), offsets.begin() + 1);
  const index_t kept = offsets[X], rows = kept + c.tail;
  const index_t ldx = in + c.pad_x, ldy = out + c.pad_y;
  CAPTURE(c.name, X, rows, kept, in, out, ldx, ldy, with_bias, host_offsets, resident);

  const auto xs = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(rows * ldx), seed));
  const auto w = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(X * out * in), seed + 1,
                                                             static_cast<float>(1.0 / std::sqrt(double(in)))));
  const auto b = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(X * out), seed + 2, 0.5f));
  const T poison = moss::from_float<T>(NAN);
  const std::vector<T> y_poisoned(static_cast<std::size_t>(std::max<index_t>(rows * ldy, 1)), poison);

  std::vector<T> want = y_poisoned;
  moss::GroupedLinearArgs<T> h;
  h.x = ConstView<T, 2>(xs.data(), {rows, in}, {ldx, 1}, "x");
  h.weight = ConstView<T, 3>(w.data(), {X, out, in}, "weight");
  if (with_bias) h.bias = ConstView<T, 2>(b.data(), {X, out}, "bias");
  h.offsets = ConstView<std::int32_t, 1>(offsets.data(), {X + 1}, "offsets");
  h.y = TensorView<T, 2>(want.data(), {rows, out}, {ldy, 1}, "y");
  h.resident_offsets = resident;
  moss::grouped_linear(Host{}, h);

  const Buffer<T> dx = device_copy(gpu, xs), dw = device_copy(gpu, w), db = device_copy(gpu, b);
  const Buffer<std::int32_t> doff = device_copy(gpu, offsets);
  Buffer<T> dy = device_copy(gpu, y_poisoned);
  moss::GroupedLinearArgs<T> g;
  g.x = ConstView<T, 2>(dx.data(), {rows, in}, {ldx, 1}, "x");
  g.weight = ConstView<T, 3>(dw.data(), {X, out, in}, "weight");
  if (with_bias) g.bias = ConstView<T, 2>(db.data(), {X, out}, "bias");
  g.offsets = ConstView<std::int32_t, 1>(doff.data(), {X + 1}, "offsets");
  if (host_offsets) g.host_offsets = offsets.data();
  g.y = TensorView<T, 2>(dy.data(), {rows, out}, {ldy, 1}, "y");
  g.resident_offsets = resident;
  g.resident_kernel =
      mode == Offsets::resident_gemv ? moss::ResidentKernel::matrix_vector : moss::ResidentKernel::tiled;
  moss::grouped_linear(gpu, g);
  gpu.synchronize();
  const auto got_all = host_copy(gpu, dy);

  std::vector<T> got, expect;
  bool untouched = true, zeroed = true;
  for (index_t i = 0; i < static_cast<index_t>(got_all.size()); ++i) {
    const index_t r = i / ldy, col = i % ldy;
    if (r < kept && col < out) {
      got.push_back(got_all[i]);
      expect.push_back(want[i]);
    } else if (resident && r < rows && col < out) {
      zeroed = zeroed && same_bits(got_all[i], moss::from_float<T>(0.0f)) && same_bits(want[i], got_all[i]);
    } else {
      untouched = untouched && same_bits(got_all[i], poison);
    }
  }
  CHECK(untouched);
  CHECK(zeroed);
  if (kept > 0) CHECK(moss::test::rel_l2(got, expect) <= moss::test::op_tolerance<T>());
}

/// Random segment lengths for X experts: about `mean` rows each, a fraction of them empty.
std::vector<std::int32_t> ragged(index_t X, index_t mean, double empty_fraction, std::uint64_t seed) {
  moss::Rng rng(seed);
  std::vector<std::int32_t> s(static_cast<std::size_t>(X));
  for (auto& n : s) n = rng.uniform() < empty_fraction ? 0 : static_cast<std::int32_t>(rng.next() % (2 * mean + 1));
  return s;
}

/// Overwrites the device offsets `d` with `offsets` (synchronous).
void set_offsets(const Cuda& gpu, Buffer<std::int32_t>& d, const std::vector<std::int32_t>& offsets) {
  REQUIRE(cudaMemcpyAsync(d.data(), offsets.data(), offsets.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                          gpu.stream) == cudaSuccess);
  gpu.synchronize();
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({"one expert, one row", {1}, 0, 1, 1});
  v.push_back({"one expert", {37}, 3, 33, 7, 0, 5});
  v.push_back({"ragged with empty experts", {5, 0, 17, 1, 0, 33, 2, 9}, 4, 64, 128});
  v.push_back({"ragged, odd sizes, strided x and y", {5, 0, 17, 1, 0, 33, 2, 9}, 4, 33, 7, 3, 5});
  v.push_back({"one expert takes every row", {0, 0, 0, 300, 0, 0, 0, 0}, 0, 64, 48});
  v.push_back({"every segment empty", {0, 0, 0, 0, 0, 0, 0, 0}, 6, 16, 16});
  v.push_back({"first and last experts only", {40, 0, 0, 0, 0, 0, 0, 23}, 2, 7, 33, 1, 0});
  v.push_back({"skewed", {1000, 1, 0, 3, 0, 0, 60, 2}, 0, 96, 64, 0, 8});
  v.push_back({"17 ragged experts", ragged(17, 20, 0.3, 1), 5, 40, 24});
  v.push_back({"64 experts, mostly empty", ragged(64, 6, 0.7, 2), 0, 32, 64, 8, 0});
  v.push_back({"256 experts", ragged(256, 3, 0.5, 3), 1, 24, 16});
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("grouped_linear: CUDA matches the host over segments, bias, layouts and offsets",
                   "[cuda][ops][grouped_linear]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 40;
  for (const Case& c : cases()) {
    for (bool with_bias : {false, true}) {
      for (Offsets mode : {Offsets::host, Offsets::device_read, Offsets::resident_gemv, Offsets::resident_tiled}) {
        seed += 5;
        check_case<TestType>(gpu, c, with_bias, mode, seed);
      }
    }
  }
}

TEMPLATE_TEST_CASE("grouped_linear: CUDA at a realistic MoE shape (2048 rows, 8 experts, 768 → 1536)",
                   "[cuda][ops][grouped_linear][large]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  Case c{"realistic", ragged(8, 256, 0.0, 9), 64, 768, 1536};
  // float reads the offsets from the device, f16 and bf16 are given them (both paths are covered above).
  check_case<TestType>(gpu, c, true, std::is_same_v<TestType, float> ? Offsets::device_read : Offsets::host, 11);
  check_case<TestType>(gpu, c, true, Offsets::resident_gemv, 12);
  check_case<TestType>(gpu, c, true, Offsets::resident_tiled, 13);
}

TEST_CASE("grouped_linear: CUDA refuses bad offsets as the host does", "[cuda][ops][grouped_linear]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t X = 2, rows = 4, in = 3, out = 2;
  const Buffer<float> dx = device_copy(gpu, std::vector<float>(rows * in, 1.0f));
  const Buffer<float> dw = device_copy(gpu, std::vector<float>(X * out * in, 1.0f));
  Buffer<float> dy = gpu.alloc<float>(rows * out);
  for (const std::vector<std::int32_t>& off :
       {std::vector<std::int32_t>{0, 3, 2}, std::vector<std::int32_t>{0, 2, 5}, std::vector<std::int32_t>{1, 2, 3}}) {
    const Buffer<std::int32_t> doff = device_copy(gpu, off);
    moss::GroupedLinearArgs<float> g;
    g.x = ConstView<float, 2>(dx.data(), {rows, in}, "x");
    g.weight = ConstView<float, 3>(dw.data(), {X, out, in}, "weight");
    g.offsets = ConstView<std::int32_t, 1>(doff.data(), {X + 1}, "offsets");
    g.y = dy.view<2>({rows, out}, "y");
    CHECK_THROWS_AS(moss::grouped_linear(gpu, g), moss::shape_error);  // read from the device
    g.host_offsets = off.data();
    CHECK_THROWS_AS(moss::grouped_linear(gpu, g), moss::shape_error);
  }
}

TEMPLATE_TEST_CASE("grouped_linear: resident offsets replay in a CUDA graph while the segments change",
                   "[cuda][ops][grouped_linear]", float, bf16) {
  // One capture, then new offsets written into the same device buffer before each replay: the
  // graph must follow them (nothing of the first segments is baked into it), for both kernels.
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t X = 6, rows = 300, in = 72, out = 136;
  const auto xs = moss::test::to_storage<TestType>(moss::test::randn(static_cast<std::size_t>(rows * in), 3));
  const auto w = moss::test::to_storage<TestType>(moss::test::randn(static_cast<std::size_t>(X * out * in), 4, 0.1f));
  const auto b = moss::test::to_storage<TestType>(moss::test::randn(static_cast<std::size_t>(X * out), 5));
  const Buffer<TestType> dx = device_copy(gpu, xs), dw = device_copy(gpu, w), db = device_copy(gpu, b);
  Buffer<std::int32_t> doff = gpu.alloc<std::int32_t>(X + 1);
  Buffer<TestType> dy = gpu.alloc<TestType>(rows * out);
  const std::vector<std::vector<std::int32_t>> segment_sets = {
      {50, 50, 50, 50, 50, 50}, {0, 300, 0, 0, 0, 0}, {7, 0, 131, 2, 0, 60}, {0, 0, 0, 0, 0, 0}};
  for (const auto kernel : {moss::ResidentKernel::matrix_vector, moss::ResidentKernel::tiled}) {
    CAPTURE(static_cast<int>(kernel));
    moss::GroupedLinearArgs<TestType> g;
    g.x = ConstView<TestType, 2>(dx.data(), {rows, in}, "x");
    g.weight = ConstView<TestType, 3>(dw.data(), {X, out, in}, "weight");
    g.bias = ConstView<TestType, 2>(db.data(), {X, out}, "bias");
    g.offsets = ConstView<std::int32_t, 1>(doff.data(), {X + 1}, "offsets");
    g.y = dy.template view<2>({rows, out}, "y");
    g.resident_offsets = true;
    g.resident_kernel = kernel;
    set_offsets(gpu, doff, std::vector<std::int32_t>(X + 1, 0));
    moss::grouped_linear(gpu, g);  // eager once: whatever the launch sets up on first use
    gpu.synchronize();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    REQUIRE(cudaStreamBeginCapture(gpu.stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    moss::grouped_linear(gpu, g);
    REQUIRE(cudaStreamEndCapture(gpu.stream, &graph) == cudaSuccess);
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    for (const auto& segments : segment_sets) {
      std::vector<std::int32_t> offsets(static_cast<std::size_t>(X + 1), 0);
      std::partial_sum(segments.begin(), segments.end(), offsets.begin() + 1);
      CAPTURE(offsets);
      set_offsets(gpu, doff, offsets);
      REQUIRE(cudaGraphLaunch(exec, gpu.stream) == cudaSuccess);
      gpu.synchronize();
      std::vector<TestType> want(static_cast<std::size_t>(rows * out));
      moss::GroupedLinearArgs<TestType> h;
      h.x = ConstView<TestType, 2>(xs.data(), {rows, in}, "x");
      h.weight = ConstView<TestType, 3>(w.data(), {X, out, in}, "weight");
      h.bias = ConstView<TestType, 2>(b.data(), {X, out}, "bias");
      h.offsets = ConstView<std::int32_t, 1>(offsets.data(), {X + 1}, "offsets");
      h.y = TensorView<TestType, 2>(want.data(), {rows, out}, "y");
      h.resident_offsets = true;
      moss::grouped_linear(Host{}, h);
      const auto got = host_copy(gpu, dy);
      CHECK(moss::test::rel_l2(got, want) <= moss::test::op_tolerance<TestType>());
      const bool tail_zero = std::all_of(got.begin() + offsets[X] * out, got.end(),
                                         [](TestType v) { return same_bits(v, moss::from_float<TestType>(0.0f)); });
      CHECK(tail_zero);
    }
    (void)cudaGraphExecDestroy(exec);
    (void)cudaGraphDestroy(graph);
  }
}

TEST_CASE("grouped_linear: resident offsets out of range stay inside x and y", "[cuda][ops][grouped_linear]") {
  // The host cannot check resident offsets (it never reads them): the kernels clamp them into
  // [0, rows], so bad ones give wrong rows at worst, never an access outside the tensors
  // (compute-sanitizer memcheck runs this case).
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t X = 3, rows = 40, in = 64, out = 32;
  const Buffer<bf16> dx = device_copy(gpu, std::vector<bf16>(rows * in, moss::from_float<bf16>(1.0f)));
  const Buffer<bf16> dw = device_copy(gpu, std::vector<bf16>(X * out * in, moss::from_float<bf16>(0.5f)));
  Buffer<bf16> dy = gpu.alloc<bf16>(rows * out);
  moss::fill_zero(gpu, dy);
  for (const std::vector<std::int32_t>& off :
       {std::vector<std::int32_t>{0, 30, 20, 40}, std::vector<std::int32_t>{0, 10, 90, 4000},
        std::vector<std::int32_t>{-50, 5, 10, 40}, std::vector<std::int32_t>{0, -7, 3, -1}}) {
    for (const auto kernel : {moss::ResidentKernel::matrix_vector, moss::ResidentKernel::tiled}) {
      const Buffer<std::int32_t> doff = device_copy(gpu, off);
      moss::GroupedLinearArgs<bf16> g;
      g.x = ConstView<bf16, 2>(dx.data(), {rows, in}, "x");
      g.weight = ConstView<bf16, 3>(dw.data(), {X, out, in}, "weight");
      g.offsets = ConstView<std::int32_t, 1>(doff.data(), {X + 1}, "offsets");
      g.y = dy.view<2>({rows, out}, "y");
      g.resident_offsets = true;
      g.resident_kernel = kernel;
      moss::grouped_linear(gpu, g);
      gpu.synchronize();
      // Every written value is 0 or the dot product of ones with halves: 32.
      const auto got = host_copy(gpu, dy);
      CHECK(std::all_of(got.begin(), got.end(), [](bf16 v) {
        const float f = moss::to_float(v);
        return f == 0.0f || f == 32.0f;
      }));
    }
  }
}
