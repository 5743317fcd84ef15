// tests/ops/rms_norm_cuda_test.cu: `rms_norm` on CUDA against the host oracle from the same
// inputs: dtypes, dims (vectorised and scalar paths), delta on/off, residual_in_fp32 on/off,
// strided rows. The stored residual must match the host bit for bit (one float add, one
// rounding: the same IEEE operations on both sides).
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "moss/ops/rms_norm/cuda.cuh"
#include "moss_test.hpp"

namespace {

using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

template <class Tdelta, class Tout>
struct Types {
  using Delta = Tdelta;
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

/// Rows of a (rows, dim) tensor placed in a wider buffer: `offset` elements before each row's
/// first element, row stride dim + pad. offset 0 / pad 0 is contiguous.
struct Layout {
  const char* name;
  index_t offset, pad;
};
// Offsets 4 and 8 keep 16-byte rows (the vectorised path with row strides); 1 forces the
// scalar path even when dim is a multiple of 4.
constexpr Layout kLayouts[] = {{"contiguous", 0, 0}, {"aligned slice", 4, 8}, {"odd slice", 1, 3}};

template <class T>
std::vector<T> widen_rows(const std::vector<T>& dense, index_t rows, index_t dim, const Layout& l, T fill) {
  std::vector<T> wide(static_cast<std::size_t>(rows * (dim + l.pad) + l.offset), fill);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t i = 0; i < dim; ++i) wide[r * (dim + l.pad) + l.offset + i] = dense[r * dim + i];
  }
  return wide;
}

/// Packs the rows back and checks that every element outside them still holds `fill`'s bits.
template <class T>
std::vector<T> pack_rows(const std::vector<T>& wide, index_t rows, index_t dim, const Layout& l, T fill) {
  std::vector<T> dense(static_cast<std::size_t>(rows * dim));
  bool kept = true;
  const index_t ld = dim + l.pad;
  for (index_t i = 0; i < static_cast<index_t>(wide.size()); ++i) {
    const index_t r = (i - l.offset) / ld, c = (i - l.offset) % ld;
    if (i >= l.offset && r < rows && c < dim) {
      dense[r * dim + c] = wide[i];
    } else {
      kept = kept && std::memcmp(&wide[i], &fill, sizeof(T)) == 0;
    }
  }
  CHECK(kept);
  return dense;
}

}  // namespace

TEMPLATE_TEST_CASE("rms_norm: CUDA matches the host", "[cuda]", (Types<float, float>), (Types<f16, f16>),
                   (Types<bf16, bf16>), (Types<bf16, float>), (Types<f16, float>)) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using Tdelta = typename TestType::Delta;
  using Tout = typename TestType::Out;
  moss::CudaStream stream;
  const moss::Cuda gpu{stream.get()};
  std::uint64_t seed = 500;
  for (index_t dim : {1, 7, 768, 2048, 4097}) {
    for (index_t rows : {1, 5, 1000}) {
      seed += 10;
      const auto residual = moss::test::randn(rows * dim, seed, 2.0f);
      const auto delta = moss::test::to_storage<Tdelta>(moss::test::randn(rows * dim, seed + 1));
      const auto weight = moss::test::uniform(dim, seed + 2, 0.5f, 1.5f);
      const auto dweight = upload(gpu, weight);
      for (bool with_delta : {false, true}) {
        for (bool in_fp32 : {true, false}) {
          if (!with_delta && !in_fp32) continue;  // the flag only matters when a delta is added
          // Host oracle.
          std::vector<float> res_host = residual;
          std::vector<Tout> out_host(static_cast<std::size_t>(rows * dim));
          moss::RmsNormArgs<Tdelta, Tout> h;
          h.residual = TensorView<float, 2>(res_host.data(), {rows, dim}, "residual");
          if (with_delta) h.delta = ConstView<Tdelta, 2>(delta.data(), {rows, dim}, "delta");
          h.residual_in_fp32 = in_fp32;
          h.weight = ConstView<float, 1>(weight.data(), {dim}, "weight");
          h.out = TensorView<Tout, 2>(out_host.data(), {rows, dim}, "out");
          moss::rms_norm(moss::Host{}, h);

          for (const Layout& l : kLayouts) {
            CAPTURE(dim, rows, with_delta, in_fp32, l.name);
            const float res_fill = -777.0f;
            const Tout poison = moss::from_float<Tout>(NAN);
            const auto dres = upload(gpu, widen_rows(residual, rows, dim, l, res_fill));
            const auto ddelta = upload(gpu, widen_rows(delta, rows, dim, l, moss::from_float<Tdelta>(0.0f)));
            const auto dout =
                upload(gpu, std::vector<Tout>(static_cast<std::size_t>(rows * (dim + l.pad) + l.offset), poison));
            moss::RmsNormArgs<Tdelta, Tout> a = h;
            a.residual = TensorView<float, 2>(dres.data() + l.offset, {rows, dim}, {dim + l.pad, 1}, "residual");
            if (with_delta) {
              a.delta = ConstView<Tdelta, 2>(ddelta.data() + l.offset, {rows, dim}, {dim + l.pad, 1}, "delta");
            }
            a.weight = ConstView<float, 1>(dweight.data(), {dim}, "weight");
            a.out = TensorView<Tout, 2>(dout.data() + l.offset, {rows, dim}, {dim + l.pad, 1}, "out");
            moss::rms_norm(gpu, a);

            const auto res_dev = pack_rows(download(gpu, dres), rows, dim, l, res_fill);
            const auto out_dev = pack_rows(download(gpu, dout), rows, dim, l, poison);
            CHECK(std::memcmp(res_dev.data(), res_host.data(), res_host.size() * sizeof(float)) == 0);
            CHECK(moss::test::rel_l2(out_dev, out_host) <= moss::test::op_tolerance<Tout>());
          }
        }
      }
    }
  }
}

TEST_CASE("rms_norm: CUDA with zero rows launches nothing", "[cuda]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const moss::Cuda gpu{};
  moss::RmsNormArgs<bf16, bf16> a;
  std::vector<float> weight(8, 1.0f);
  const auto dweight = upload(gpu, weight);
  a.residual = TensorView<float, 2>(nullptr, {0, 8}, "residual");
  a.weight = ConstView<float, 1>(dweight.data(), {8}, "weight");
  a.out = TensorView<bf16, 2>(nullptr, {0, 8}, "out");
  REQUIRE_NOTHROW(moss::rms_norm(gpu, a));
  REQUIRE_NOTHROW(gpu.synchronize());
}
