// Tests of moss/core/tensor.hpp (views, strides, contiguity, the expect_* checks and their
// messages) and moss/core/buffer.hpp (owning host buffers handing out views).
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <numeric>
#include <type_traits>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/tensor.hpp"

using Catch::Matchers::ContainsSubstring;
using moss::Extents;
using moss::index_t;
using moss::TensorView;

TEST_CASE("tensor: contiguous views index row-major", "[host]") {
  static_assert(moss::contiguous_strides(Extents<3>{2, 3, 4}) == Extents<3>{12, 4, 1});
  static_assert(moss::contiguous_strides(Extents<1>{7}) == Extents<1>{1});
  CHECK(moss::shape_string(Extents<3>{4, 512, 768}) == "[4, 512, 768]");
  CHECK(moss::shape_string(Extents<1>{0}) == "[0]");

  std::vector<float> data(24);
  std::iota(data.begin(), data.end(), 0.0f);
  const TensorView<float, 3> v(data.data(), {2, 3, 4}, "x");
  CHECK(v.stride == Extents<3>{12, 4, 1});
  CHECK(v.numel() == 24);
  CHECK_FALSE(v.empty());
  CHECK(v.size(1) == 3);
  CHECK(v.rank == 3);
  CHECK(v.is_contiguous());
  CHECK(v.offset(1, 2, 3) == 23);
  CHECK(v(1, 0, 2) == 14.0f);
  v(0, 1, 1) = -1.0f;
  CHECK(data[5] == -1.0f);
  CHECK(moss::span_elements(v) == 24);
  CHECK(std::string(v.name) == "x");
  CHECK(std::string(v.named("y").name) == "y");
  CHECK(v.named("y").data == v.data);

  const TensorView<float, 2> e(nullptr, {0, 5});
  CHECK(e.empty());
  CHECK(moss::span_elements(e) == 0);
  CHECK(std::string(TensorView<float, 1>().name) == "tensor");
}

TEST_CASE("tensor: strided views, contiguity and spans", "[host]") {
  std::vector<float> data(2 * 5 * 3);
  std::iota(data.begin(), data.end(), 0.0f);
  // A (batch, L, dim) = (2, 5, 3) buffer read as (batch, dim, L): strides (L·dim, 1, dim).
  const TensorView<float, 3> t(data.data(), {2, 3, 5}, {15, 1, 3}, "u");
  CHECK_FALSE(t.is_contiguous());
  CHECK(t(1, 2, 4) == data[15 + 4 * 3 + 2]);
  CHECK(moss::span_elements(t) == 30);
  // Size-1 dimensions may carry any stride and still be contiguous.
  const TensorView<float, 3> one(data.data(), {1, 3, 5}, {999, 5, 1});
  CHECK(one.is_contiguous());
  // A row slice of every other row: not contiguous, spans less than the whole buffer.
  const TensorView<float, 2> rows(data.data() + 1, {3, 4}, {10, 1});
  CHECK_FALSE(rows.is_contiguous());
  CHECK(moss::span_elements(rows) == 24);
  CHECK(rows(2, 3) == data[1 + 20 + 3]);
  // Broadcast (stride 0) views read the same element.
  const TensorView<float, 2> bcast(data.data(), {4, 3}, {0, 1});
  CHECK(bcast(3, 2) == data[2]);
  CHECK_FALSE(bcast.is_contiguous());
  CHECK(moss::span_elements(bcast) == 3);

  // Mutable converts to read-only, never the other way.
  const moss::ConstView<float, 3> c = t;
  CHECK(c.data == t.data);
  CHECK(c.stride == t.stride);
  CHECK(std::string(c.name) == "u");
  static_assert(std::is_convertible_v<TensorView<float, 2>, moss::ConstView<float, 2>>);
  static_assert(!std::is_convertible_v<moss::ConstView<float, 2>, TensorView<float, 2>>);
  static_assert(!std::is_convertible_v<TensorView<int, 2>, moss::ConstView<float, 2>>);
}

TEST_CASE("tensor: expect_shape names the place, the tensor and both shapes", "[host]") {
  std::vector<float> data(4 * 512 * 768);
  const TensorView<float, 3> x(data.data(), {4, 512, 768}, "x");
  REQUIRE_NOTHROW(moss::expect_shape("Mamba::forward", x, {4, 512, 768}, "(batch, seqlen, d_model)"));
  REQUIRE_NOTHROW(moss::expect_shape("Mamba::forward", x, {moss::any, moss::any, 768}, "(batch, seqlen, d_model)"));
  REQUIRE_THROWS_AS(moss::expect_shape("Mamba::forward", x, {4, 512, 1024}, "(batch, seqlen, d_model)"),
                    moss::shape_error);
  REQUIRE_THROWS_WITH(moss::expect_shape("Mamba::forward", x, {4, 512, 1024}, "(batch, seqlen, d_model)"),
                      "Mamba::forward: x is [4, 512, 768] (batch, seqlen, d_model) but expected [4, 512, 1024]");
  REQUIRE_THROWS_WITH(moss::expect_shape("op", x, {moss::any, 7, moss::any}, "(a, b, c)"),
                      "op: x is [4, 512, 768] (a, b, c) but expected [*, 7, *]");
}

TEST_CASE("tensor: expect_valid, expect_unit_inner_stride and expect_contiguous", "[host]") {
  std::vector<float> data(12);
  const TensorView<float, 2> ok(data.data(), {3, 4}, "w");
  REQUIRE_NOTHROW(moss::expect_valid("op", ok));
  REQUIRE_NOTHROW(moss::expect_unit_inner_stride("op", ok));
  REQUIRE_NOTHROW(moss::expect_contiguous("op", ok));

  const TensorView<float, 2> neg_extent(data.data(), {3, -4}, {4, 1}, "w");
  REQUIRE_THROWS_AS(moss::expect_valid("op", neg_extent), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::expect_valid("op", neg_extent), ContainsSubstring("op: w has negative extent [3, -4]"));
  const TensorView<float, 2> neg_stride(data.data(), {3, 4}, {-4, 1}, "w");
  REQUIRE_THROWS_WITH(moss::expect_valid("op", neg_stride),
                      ContainsSubstring("op: w has negative stride [-4, 1]; moss views need non-negative strides"));
  const TensorView<float, 2> null_data(nullptr, {3, 4}, "w");
  REQUIRE_THROWS_WITH(moss::expect_valid("op", null_data), "op: w [3, 4] has no data (null pointer)");
  REQUIRE_NOTHROW(moss::expect_valid("op", TensorView<float, 2>(nullptr, {0, 4}, "w")));  // empty: no data needed

  const TensorView<float, 2> transposed(data.data(), {4, 3}, {1, 4}, "wt");
  REQUIRE_THROWS_AS(moss::expect_unit_inner_stride("op", transposed), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::expect_unit_inner_stride("op", transposed),
                      "op: wt needs unit stride in its last dimension but has strides [1, 4]");
  // A last dimension of extent 1 has no stride to speak of.
  REQUIRE_NOTHROW(moss::expect_unit_inner_stride("op", TensorView<float, 2>(data.data(), {4, 1}, {1, 4})));
  REQUIRE_THROWS_AS(moss::expect_contiguous("op", transposed), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::expect_contiguous("op", transposed),
                      "op: wt [4, 3] must be contiguous but has strides [1, 4]");
}

TEST_CASE("tensor: present, ceil_div", "[host]") {
  float x = 0;
  CHECK(moss::present(TensorView<float, 1>(&x, {1})));
  CHECK_FALSE(moss::present(TensorView<const float, 1>()));
  static_assert(moss::ceil_div(10, 4) == 3);
  static_assert(moss::ceil_div(12, 4) == 3);
  static_assert(moss::ceil_div(index_t{1}, index_t{128}) == 1);
  static_assert(moss::ceil_div(0, 7) == 0);
}

TEST_CASE("buffer: host buffers own memory and hand out checked views", "[host]") {
  const moss::Host host;
  moss::Buffer<float> buf = host.alloc<float>(24);
  REQUIRE(buf.data() != nullptr);
  CHECK(buf.size() == 24);
  CHECK(buf.device() == moss::Device::host);
  CHECK(reinterpret_cast<std::uintptr_t>(buf.data()) % 64 == 0);
  const auto v = buf.view(Extents<2>{4, 6}, "h");
  CHECK(v.data == buf.data());
  CHECK(v.is_contiguous());
  CHECK(buf.view(Extents<2>{2, 3}).numel() == 6);  // a prefix is fine
  REQUIRE_THROWS_AS(buf.view(Extents<2>{5, 5}, "h"), moss::shape_error);
  REQUIRE_THROWS_WITH(buf.view(Extents<2>{5, 5}, "h"),
                      "Buffer::view: h [5, 5] needs 25 elements but the buffer holds 24");
  CHECK(buf.flat().shape == Extents<1>{24});

  moss::Buffer<float> moved = std::move(buf);
  CHECK(moved.size() == 24);
  CHECK(buf.data() == nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  moved.reset();
  CHECK(moved.data() == nullptr);
  CHECK(moved.size() == 0);

  CHECK(host.alloc<float>(0).data() == nullptr);
  REQUIRE_THROWS_AS(host.alloc<float>(-1), moss::config_error);
  CHECK(std::string(moss::device_name(moss::Device::cuda)) == "cuda");
}
