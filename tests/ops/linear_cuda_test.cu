// tests/ops/linear_cuda_test.cu: `linear` on CUDA (cuBLASLt, and the cublasGemmEx fallback)
// against the host oracle computed from the same rounded inputs, over dtypes, shapes, bias,
// float output and strided views (aligned and misaligned column slices).
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "moss/ops/linear/cuda.cuh"
#include "moss_test.hpp"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

template <class T, class Tout>
struct Types {
  using In = T;
  using Out = Tout;
};

template <class T>
moss::Buffer<T> upload(const moss::Cuda& gpu, const std::vector<T>& v) {
  moss::Buffer<T> d = gpu.alloc<T>(static_cast<index_t>(v.size()));
  moss::copy(gpu, d.flat(), ConstView<T, 1>(v.data(), {static_cast<index_t>(v.size())}));
  gpu.synchronize();
  return d;
}

template <class T>
std::vector<T> download(const moss::Cuda& gpu, const moss::Buffer<T>& d) {
  std::vector<T> v(static_cast<std::size_t>(d.size()));
  moss::copy(gpu, TensorView<T, 1>(v.data(), {d.size()}), ConstView<T, 1>(d.flat()));
  gpu.synchronize();
  return v;
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// How x and y sit in device memory: contiguous, or column slices of wider buffers (at an
/// aligned offset, as a layer slices a fused projection, or at an odd one).
struct Layout {
  const char* name;
  index_t offset;  // elements before the slice in each row
  index_t pad;     // extra elements per row
};
constexpr Layout kLayouts[] = {{"contiguous", 0, 0}, {"aligned slice", 8, 24}, {"odd slice", 3, 5}};

enum class Path { lt, gemm_ex };

/// Runs `linear` on the device with x and y placed per `layout`, y poisoned with NaN; returns
/// y packed densely and checks that the poison outside y's columns survived.
template <class T, class Tout>
std::vector<Tout> run_cuda(const moss::Cuda& gpu, Path path, const Layout& layout, index_t rows, index_t in,
                           index_t out, const std::vector<T>& x, const std::vector<T>& w, const std::vector<T>* bias) {
  const index_t ldx = in + layout.pad, ldy = out + layout.pad;
  std::vector<T> x_wide(static_cast<std::size_t>(rows * ldx + layout.offset), moss::from_float<T>(1e4f));
  for (index_t r = 0; r < rows; ++r) {
    for (index_t k = 0; k < in; ++k) x_wide[r * ldx + layout.offset + k] = x[r * in + k];
  }
  const Tout poison = moss::from_float<Tout>(NAN);
  const std::vector<Tout> y_poisoned(static_cast<std::size_t>(rows * ldy + layout.offset), poison);
  const auto dx = upload(gpu, x_wide);
  const auto dw = upload(gpu, w);
  const auto dy = upload(gpu, y_poisoned);
  moss::Buffer<T> db;
  moss::LinearArgs<T, Tout> a;
  a.x = ConstView<T, 2>(dx.data() + layout.offset, {rows, in}, {ldx, 1}, "x");
  a.weight = ConstView<T, 2>(dw.data(), {out, in}, "weight");
  if (bias) {
    db = upload(gpu, *bias);
    a.bias = ConstView<T, 1>(db.data(), {out}, "bias");
  }
  a.y = TensorView<Tout, 2>(dy.data() + layout.offset, {rows, out}, {ldy, 1}, "y");
  if (path == Path::lt) {
    moss::linear(gpu, a);
  } else {
    moss::detail::linear_gemm_ex(gpu, a);
  }
  const auto y_wide = download(gpu, dy);
  std::vector<Tout> y(static_cast<std::size_t>(rows * out));
  bool poison_kept = true;
  for (index_t i = 0; i < static_cast<index_t>(y_wide.size()); ++i) {
    const index_t r = (i - layout.offset) / ldy;
    const index_t c = (i - layout.offset) % ldy;
    if (i >= layout.offset && r < rows && c < out) {
      y[r * out + c] = y_wide[i];
    } else {
      poison_kept = poison_kept && same_bits(y_wide[i], poison);
    }
  }
  CHECK(poison_kept);
  return y;
}

template <class T>
constexpr double tolerance() {
  return moss::test::op_tolerance<T>();
}

struct Shape {
  index_t rows, in, out;
};
// rows ∈ {0, 1, 7, 1000, 4097} and in, out ∈ {1, 7, 64, 2048}, each value met several times;
// the largest products stay small enough for the host oracle.
constexpr Shape kShapes[] = {{0, 7, 64},      {1, 1, 1},       {1, 2048, 7},  {1, 64, 2048},    {7, 7, 7},
                             {7, 2048, 2048}, {1000, 1, 64},   {1000, 64, 7}, {1000, 2048, 64}, {4097, 7, 2048},
                             {4097, 64, 1},   {4097, 2048, 7}, {1000, 7, 1}};

template <class T, class Tout>
void check_against_host(Path path, bool all_layouts) {
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::uint64_t seed = 1000;
  for (const Shape& s : kShapes) {
    for (bool with_bias : {false, true}) {
      seed += 10;
      const auto x = moss::test::to_storage<T>(moss::test::randn(s.rows * s.in, seed));
      const auto w = moss::test::to_storage<T>(moss::test::randn(s.out * s.in, seed + 1, 0.05f));
      const auto b = moss::test::to_storage<T>(moss::test::randn(s.out, seed + 2));
      std::vector<Tout> expected(static_cast<std::size_t>(s.rows * s.out));
      moss::LinearArgs<T, Tout> h;
      h.x = ConstView<T, 2>(x.data(), {s.rows, s.in}, "x");
      h.weight = ConstView<T, 2>(w.data(), {s.out, s.in}, "weight");
      if (with_bias) h.bias = ConstView<T, 1>(b.data(), {s.out}, "bias");
      h.y = TensorView<Tout, 2>(expected.data(), {s.rows, s.out}, "y");
      moss::linear(moss::Host{}, h);
      for (const Layout& layout : kLayouts) {
        if (!all_layouts && layout.offset == 8) continue;
        CAPTURE(s.rows, s.in, s.out, with_bias, layout.name);
        const auto y = run_cuda<T, Tout>(gpu, path, layout, s.rows, s.in, s.out, x, w, with_bias ? &b : nullptr);
        if (s.rows > 0) CHECK(moss::test::rel_l2(y, expected) <= tolerance<Tout>());
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("linear: CUDA (cuBLASLt) matches the host", "[cuda]", (Types<float, float>), (Types<f16, f16>),
                   (Types<bf16, bf16>), (Types<f16, float>), (Types<bf16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  check_against_host<typename TestType::In, typename TestType::Out>(Path::lt, true);
}

TEMPLATE_TEST_CASE("linear: the cublasGemmEx fallback matches the host", "[cuda]", (Types<float, float>),
                   (Types<f16, f16>), (Types<bf16, bf16>), (Types<bf16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  check_against_host<typename TestType::In, typename TestType::Out>(Path::gemm_ex, false);
}

TEST_CASE("linear: a cached plan follows a new bias and new buffers", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t rows = 64, in = 128, out = 96;
  const auto x = moss::test::to_storage<bf16>(moss::test::randn(rows * in, 1));
  const auto w = moss::test::to_storage<bf16>(moss::test::randn(out * in, 2, 0.1f));
  for (std::uint64_t seed : {3u, 4u, 5u}) {
    CAPTURE(seed);
    const auto b = moss::test::to_storage<bf16>(moss::test::randn(out, seed, 10.0f));
    std::vector<bf16> expected(rows * out);
    moss::LinearArgs<bf16> h;
    h.x = ConstView<bf16, 2>(x.data(), {rows, in}, "x");
    h.weight = ConstView<bf16, 2>(w.data(), {out, in}, "weight");
    h.bias = ConstView<bf16, 1>(b.data(), {out}, "bias");
    h.y = TensorView<bf16, 2>(expected.data(), {rows, out}, "y");
    moss::linear(moss::Host{}, h);
    const auto y = run_cuda<bf16, bf16>(gpu, Path::lt, kLayouts[0], rows, in, out, x, w, &b);
    CHECK(moss::test::rel_l2(y, expected) <= tolerance<bf16>());
  }
}

TEST_CASE("linear: CUDA validates like the host", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const moss::Cuda gpu{};
  moss::LinearArgs<bf16> a;
  std::vector<bf16> dummy(64);
  a.x = ConstView<bf16, 2>(dummy.data(), {2, 4}, "x");
  a.weight = ConstView<bf16, 2>(dummy.data(), {3, 5}, "weight");
  a.y = TensorView<bf16, 2>(dummy.data(), {2, 3}, "y");
  REQUIRE_THROWS_AS(moss::linear(gpu, a), moss::shape_error);
}
