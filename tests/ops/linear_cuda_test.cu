// tests/ops/linear_cuda_test.cu: `linear` on CUDA (cuBLASLt, and the cublasGemmEx fallback)
// against the host oracle computed from the same rounded inputs, over dtypes, shapes, bias,
// float output and strided views (aligned and misaligned column slices).
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
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

TEMPLATE_TEST_CASE("linear: runs in a caller's workspace of workspace_bytes, checked, with the same result", "[cuda]",
                   (Types<bf16, float>), (Types<f16, f16>), (Types<float, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = typename TestType::In;
  using Tout = typename TestType::Out;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  const index_t rows = 300, in = 256, out = 192;
  const auto x = upload(gpu, moss::test::to_storage<T>(moss::test::randn(rows * in, 1)));
  const auto w = upload(gpu, moss::test::to_storage<T>(moss::test::randn(out * in, 2, 0.05f)));
  const auto b_host = moss::test::to_storage<T>(moss::test::randn(out + 1, 3));
  const auto b = upload(gpu, b_host);
  auto y0 = gpu.alloc<Tout>(rows * out), y1 = gpu.alloc<Tout>(rows * out);
  // Biases at offset 0 (aligned: read in place when T is Tout) and 1 (2 or 4 bytes off: copied).
  for (index_t bias_offset : {0, 1}) {
    CAPTURE(bias_offset);
    moss::LinearArgs<T, Tout> a;
    a.x = ConstView<T, 2>(x.data(), {rows, in}, "x");
    a.weight = ConstView<T, 2>(w.data(), {out, in}, "weight");
    a.bias = ConstView<T, 1>(b.data() + bias_offset, {out}, "bias");
    a.y = y0.template view<2>({rows, out}, "y");
    const bool copied = !std::is_same_v<T, Tout> || bias_offset == 1;
    const std::size_t bytes = workspace_bytes(gpu, a);
    if (copied) CHECK(bytes >= out * sizeof(Tout));
    moss::linear(gpu, a);  // no workspace: the op's own, from the pool

    // A caller's workspace, poisoned: a copied bias must land at its start.
    auto ws = gpu.alloc<std::byte>(static_cast<index_t>(bytes + moss::kWorkspaceAlignment));
    MOSS_CUDA_CHECK(cudaMemsetAsync(ws.data(), 0xff, bytes + moss::kWorkspaceAlignment, gpu.stream));
    a.y = y1.template view<2>({rows, out}, "y");
    a.workspace = moss::Workspace{ws.data(), bytes};
    moss::linear(gpu, a);
    const auto out0 = download(gpu, y0), out1 = download(gpu, y1);
    CHECK(std::memcmp(out0.data(), out1.data(), out0.size() * sizeof(Tout)) == 0);
    if (copied) {
      std::vector<Tout> staged(static_cast<std::size_t>(out));
      moss::download(gpu, staged.data(), reinterpret_cast<const Tout*>(ws.data()), out);
      bool same = true;
      for (index_t o = 0; o < out; ++o)
        same = same && moss::to_float(staged[o]) == moss::to_float(b_host[static_cast<std::size_t>(o + bias_offset)]);
      CHECK(same);
    }

    if (bytes > 0) {
      a.workspace = moss::Workspace{ws.data(), bytes - 1};
      CHECK_THROWS_AS(moss::linear(gpu, a), moss::config_error);
    }
    a.workspace = moss::Workspace{static_cast<std::byte*>(ws.data()) + 16, bytes};  // misaligned
    CHECK_THROWS_AS(moss::linear(gpu, a), moss::config_error);
  }
}
