// tests/ops/activation_cuda_test.cu: `activation` on CUDA against the host oracle, for Relu,
// Gelu and Silu, plain and gated, into a separate output and in place, over the vector path
// (16-byte aligned rows, cols a multiple of the chunk) and the scalar path (odd cols, rows one
// element off alignment). Relu is exact arithmetic, so it must match bit for bit; Gelu and Silu
// use the device's erff / expf and match within the per-op tolerance. Outputs are poisoned and
// the gaps of strided outputs must stay untouched.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/activation.hpp"
#include "moss/ops/activation/cuda.cuh"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using moss::test::device_copy;
using moss::test::host_copy;
using moss::test::same_bits;

using moss::bf16;
using moss::Buffer;
using moss::ConstView;
using moss::Cuda;
using moss::f16;
using moss::Host;
using moss::index_t;
using moss::TensorView;

/// Where the (rows, cols) operands sit: contiguous, a wider 16-byte aligned row stride, or one
/// element off 16 bytes with an odd stride (the scalar path).
enum class Layout { contiguous, aligned_stride, misaligned };

const char* layout_name(Layout l) {
  return l == Layout::contiguous ? "contiguous" : l == Layout::aligned_stride ? "aligned stride" : "misaligned";
}

struct Placement {
  index_t offset, ld, size;
  bool inside(index_t i, index_t rows, index_t cols) const {
    if (i < offset) return false;
    const index_t r = (i - offset) / ld, c = (i - offset) % ld;
    return r < rows && c < cols;
  }
};

template <class T>
Placement placement(index_t rows, index_t cols, Layout layout) {
  constexpr index_t V = 16 / sizeof(T);
  Placement p;
  p.ld = layout == Layout::contiguous ? cols : layout == Layout::aligned_stride ? (cols + V - 1) / V * V + V : cols + 3;
  p.offset = layout == Layout::misaligned ? 1 : 0;
  p.size = rows * p.ld + p.offset + 2;
  return p;
}

/// Random values placed per `p`, the gaps filled with `fill`.
template <class T>
std::vector<T> placed_random(index_t rows, index_t cols, const Placement& p, T fill, std::uint64_t seed, float scale) {
  const auto v = moss::test::randn(static_cast<std::size_t>(rows * cols), seed, scale);
  std::vector<T> wide(static_cast<std::size_t>(p.size), fill);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) wide[p.offset + r * p.ld + c] = moss::from_float<T>(v[r * cols + c]);
  return wide;
}

template <class Act, class T>
void check_activation(const Cuda& gpu, index_t rows, index_t cols, bool gated, bool in_place, Layout layout,
                      std::uint64_t seed) {
  CAPTURE(Act::name, rows, cols, gated, in_place, layout_name(layout));
  const Placement p = placement<T>(rows, cols, layout);
  const T gap = moss::from_float<T>(-3.0f), poison = moss::from_float<T>(NAN);
  // |x| up to ~12: Gelu's and Silu's tails and the region around 0 are all exercised.
  const auto x = placed_random<T>(rows, cols, p, gap, seed, 4.0f);
  const auto up = placed_random<T>(rows, cols, p, gap, seed + 1, 1.0f);

  // Host.
  std::vector<T> hx = x, hout(static_cast<std::size_t>(p.size), poison);
  moss::ActivationArgs<T> h;
  h.x = ConstView<T, 2>(hx.data() + p.offset, {rows, cols}, {p.ld, 1}, "x");
  if (gated) h.up = ConstView<T, 2>(up.data() + p.offset, {rows, cols}, {p.ld, 1}, "up");
  h.out = TensorView<T, 2>((in_place ? hx.data() : hout.data()) + p.offset, {rows, cols}, {p.ld, 1}, "out");
  moss::activation<Act>(Host{}, h);
  const std::vector<T>& want = in_place ? hx : hout;

  // CUDA.
  Buffer<T> dx = device_copy(gpu, x);
  const Buffer<T> dup = device_copy(gpu, up);
  Buffer<T> dout = device_copy(gpu, std::vector<T>(static_cast<std::size_t>(p.size), poison));
  moss::ActivationArgs<T> g;
  g.x = ConstView<T, 2>(dx.data() + p.offset, {rows, cols}, {p.ld, 1}, "x");
  if (gated) g.up = ConstView<T, 2>(dup.data() + p.offset, {rows, cols}, {p.ld, 1}, "up");
  g.out = TensorView<T, 2>((in_place ? dx.data() : dout.data()) + p.offset, {rows, cols}, {p.ld, 1}, "out");
  moss::activation<Act>(gpu, g);
  gpu.synchronize();
  const auto got = host_copy(gpu, in_place ? dx : dout);

  std::vector<T> got_in, want_in, got_gaps, want_gaps;
  for (index_t i = 0; i < p.size; ++i) {
    if (p.inside(i, rows, cols)) {
      got_in.push_back(got[i]);
      want_in.push_back(want[i]);
    } else {
      got_gaps.push_back(got[i]);
      want_gaps.push_back(want[i]);  // the fill (in place) or the poison
    }
  }
  CHECK(same_bits(got_gaps, want_gaps));
  if constexpr (std::is_same_v<Act, moss::Relu>) {
    CHECK(same_bits(got_in, want_in));
  } else {
    CHECK(moss::test::rel_l2(got_in, want_in) <= moss::test::op_tolerance<T>());
  }
}

template <class T>
void check_every_activation(const Cuda& gpu, index_t rows, index_t cols, std::uint64_t seed, bool all_variants) {
  for (Layout layout : {Layout::contiguous, Layout::aligned_stride, Layout::misaligned}) {
    for (bool gated : {false, true}) {
      for (bool in_place : {false, true}) {
        if (!all_variants && (layout != Layout::contiguous || in_place)) continue;
        check_activation<moss::Relu, T>(gpu, rows, cols, gated, in_place, layout, seed);
        check_activation<moss::Gelu, T>(gpu, rows, cols, gated, in_place, layout, seed + 2);
        check_activation<moss::Silu, T>(gpu, rows, cols, gated, in_place, layout, seed + 4);
      }
    }
  }
}

struct Shape {
  index_t rows, cols;
};
constexpr Shape kShapes[] = {{1, 1}, {1, 8}, {1, 33}, {7, 7}, {7, 64}, {64, 24}, {1000, 7}, {1000, 256}, {4097, 40}};

}  // namespace

TEMPLATE_TEST_CASE("activation: CUDA matches the host for every activation, gated or not, in place or not",
                   "[cuda][ops][activation]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 70;
  for (const Shape& s : kShapes) {
    seed += 10;
    check_every_activation<TestType>(gpu, s.rows, s.cols, seed, true);
  }
}

TEMPLATE_TEST_CASE("activation: CUDA at a realistic MoE hidden shape (1024 rows, d_ff 3072)",
                   "[cuda][ops][activation][large]", float, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  check_every_activation<TestType>(gpu, 1024, 3072, 5, false);
}

TEMPLATE_TEST_CASE("activation: NaN propagates on CUDA as on the host", "[cuda][ops][activation]", float, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t rows = 5, cols = 16;
  auto xf = moss::test::randn(static_cast<std::size_t>(rows * cols), 1);
  auto uf = moss::test::randn(static_cast<std::size_t>(rows * cols), 2);
  xf[3] = NAN;
  xf[40] = NAN;
  uf[17] = NAN;
  const auto x = moss::test::to_storage<TestType>(xf), up = moss::test::to_storage<TestType>(uf);
  const Buffer<TestType> dx = device_copy(gpu, x), dup = device_copy(gpu, up);
  auto run = [&](auto act, bool gated) {
    using Act = decltype(act);
    CAPTURE(Act::name, gated);
    Buffer<TestType> dout = gpu.alloc<TestType>(rows * cols);
    moss::ActivationArgs<TestType> g;
    g.x = ConstView<TestType, 2>(dx.data(), {rows, cols}, "x");
    if (gated) g.up = ConstView<TestType, 2>(dup.data(), {rows, cols}, "up");
    g.out = dout.template view<2>({rows, cols}, "out");
    moss::activation<Act>(gpu, g);
    gpu.synchronize();
    const auto got = host_copy(gpu, dout);
    for (index_t i = 0; i < rows * cols; ++i) {
      const bool nan_in = std::isnan(xf[i]) || (gated && std::isnan(uf[i]));
      CHECK(std::isnan(moss::to_float(got[i])) == nan_in);
    }
  };
  for (bool gated : {false, true}) {
    run(moss::Relu{}, gated);
    run(moss::Gelu{}, gated);
    run(moss::Silu{}, gated);
  }
}
