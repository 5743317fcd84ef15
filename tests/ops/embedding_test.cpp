// tests/ops/embedding_test.cpp: `embedding` on the host: hand-computed gathers, exact widening
// of every dtype, strided views, bad ids, and every validation error.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstdint>
#include <vector>

#include "moss/ops/embedding.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;

}  // namespace

TEST_CASE("embedding: hand-computed gather", "[host]") {
  const std::vector<float> table = {1, 2, 3, 4, 5, 6};  // (3, 2)
  const std::vector<std::int64_t> ids = {2, 0, 2, 1};
  std::vector<float> out(8, NAN);
  moss::EmbeddingArgs<float> a;
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {4}, "ids");
  a.table = ConstView<float, 2>(table.data(), {3, 2}, "table");
  a.out = TensorView<float, 2>(out.data(), {4, 2}, "out");
  moss::embedding(moss::Host{}, a);
  REQUIRE(out == std::vector<float>{5, 6, 1, 2, 5, 6, 3, 4});
}

TEMPLATE_TEST_CASE("embedding widens every dtype exactly", "[host]", float, f16, bf16) {
  using T = TestType;
  const index_t vocab = 50, dim = 37, rows = 64;
  const auto table = moss::test::to_storage<T>(moss::test::randn(vocab * dim, 5));
  std::vector<std::int64_t> ids(rows);
  for (index_t r = 0; r < rows; ++r) ids[r] = (r * 7 + 3) % vocab;
  std::vector<float> out(rows * dim, NAN);
  moss::EmbeddingArgs<T> a;
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, "ids");
  a.table = ConstView<T, 2>(table.data(), {vocab, dim}, "table");
  a.out = TensorView<float, 2>(out.data(), {rows, dim}, "out");
  moss::embedding(moss::Host{}, a);
  const auto wide = moss::test::to_double(table);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t i = 0; i < dim; ++i) REQUIRE(double(out[r * dim + i]) == wide[ids[r] * dim + i]);
  }
}

TEST_CASE("embedding: strided ids, table and out", "[host]") {
  const index_t vocab = 6, dim = 5, rows = 4;
  // table rows in columns [1, 6) of a (vocab, 8) buffer; every second id; out in columns [2, 7)
  // of a (rows, 9) buffer.
  std::vector<bf16> table(vocab * 8);
  for (index_t v = 0; v < vocab; ++v) {
    for (index_t j = 0; j < 8; ++j) table[v * 8 + j] = moss::from_float<bf16>(float(v * 10 + j));
  }
  const std::vector<std::int64_t> ids = {3, -7, 0, -7, 5, -7, 3, -7};
  const float sentinel = -1.0f;
  std::vector<float> out(rows * 9, sentinel);
  moss::EmbeddingArgs<bf16> a;
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, {2}, "ids");
  a.table = ConstView<bf16, 2>(table.data() + 1, {vocab, dim}, {8, 1}, "table");
  a.out = TensorView<float, 2>(out.data() + 2, {rows, dim}, {9, 1}, "out");
  moss::embedding(moss::Host{}, a);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < 9; ++j) {
      const bool in = j >= 2 && j < 2 + dim;
      REQUIRE(out[r * 9 + j] == (in ? float(ids[2 * r] * 10 + 1 + j - 2) : sentinel));
    }
  }
}

TEST_CASE("embedding: an id outside the table is a shape_error naming row and id", "[host]") {
  const std::vector<float> table = {1, 2, 3, 4, 5, 6};  // (3, 2)
  std::vector<float> out(8, 7.0f);
  moss::EmbeddingArgs<float> a;
  a.table = ConstView<float, 2>(table.data(), {3, 2}, "table");
  a.out = TensorView<float, 2>(out.data(), {4, 2}, "out");

  const std::vector<std::int64_t> negative = {0, -1, 2, 1};
  a.ids = ConstView<std::int64_t, 1>(negative.data(), {4}, "ids");
  REQUIRE_THROWS_AS(moss::embedding(moss::Host{}, a), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::embedding(moss::Host{}, a),
                      ContainsSubstring("embedding: ids[1] = -1 is outside the table's rows [0, 3)"));

  const std::vector<std::int64_t> too_large = {0, 1, 3, 1ll << 40};
  a.ids = ConstView<std::int64_t, 1>(too_large.data(), {4}, "ids");
  REQUIRE_THROWS_WITH(moss::embedding(moss::Host{}, a), ContainsSubstring("ids[2] = 3 is outside"));

  const std::vector<std::int64_t> huge = {0, 1, 2, 1ll << 40};
  a.ids = ConstView<std::int64_t, 1>(huge.data(), {4}, "ids");
  REQUIRE_THROWS_WITH(moss::embedding(moss::Host{}, a), ContainsSubstring("ids[3] = 1099511627776 is outside"));
  // Ids are checked before anything is written.
  REQUIRE(out == std::vector<float>(8, 7.0f));
}

TEST_CASE("embedding: zero rows write nothing", "[host]") {
  const std::vector<float> table = {1, 2};
  std::vector<float> out(2, 3.0f);
  moss::EmbeddingArgs<float> a;
  a.ids = ConstView<std::int64_t, 1>(nullptr, {0}, "ids");
  a.table = ConstView<float, 2>(table.data(), {1, 2}, "table");
  a.out = TensorView<float, 2>(out.data(), {0, 2}, "out");
  REQUIRE_NOTHROW(moss::embedding(moss::Host{}, a));
  REQUIRE(out == std::vector<float>{3.0f, 3.0f});
}

TEST_CASE("embedding: every validation error", "[host]") {
  const std::vector<float> table(4 * 6, 1.0f);
  const std::vector<std::int64_t> ids = {0, 1, 2};
  std::vector<float> out(3 * 12);
  const moss::Host host;
  const auto good = [&] {
    moss::EmbeddingArgs<float> a;
    a.ids = ConstView<std::int64_t, 1>(ids.data(), {3}, "ids");
    a.table = ConstView<float, 2>(table.data(), {4, 6}, "table");
    a.out = TensorView<float, 2>(out.data(), {3, 6}, "out");
    return a;
  };
  REQUIRE_NOTHROW(moss::embedding(host, good()));

  SECTION("empty vocabulary or dim") {
    auto a = good();
    a.table = ConstView<float, 2>(table.data(), {0, 6}, "table");
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::embedding(host, a),
                        ContainsSubstring("embedding: table is [0, 6] (vocab, dim) but both must be at least 1"));
    a.table = ConstView<float, 2>(table.data(), {4, 0}, "table");
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::config_error);
  }
  SECTION("out has the wrong shape") {
    auto a = good();
    a.out = TensorView<float, 2>(out.data(), {3, 5}, "out");
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("out is [3, 5] (rows, dim) but expected [3, 6]"));
    a.out = TensorView<float, 2>(out.data(), {2, 6}, "out");
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("out is [2, 6] (rows, dim) but expected [3, 6]"));
  }
  SECTION("table or out without unit inner stride") {
    auto a = good();
    a.table = ConstView<float, 2>(table.data(), {4, 3}, {6, 2}, "table");
    a.out = TensorView<float, 2>(out.data(), {3, 3}, "out");
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("table needs unit stride"));
    a = good();
    a.out = TensorView<float, 2>(out.data(), {3, 6}, {12, 2}, "out");
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("out needs unit stride"));
  }
  SECTION("overlapping rows") {
    auto a = good();
    a.table = ConstView<float, 2>(table.data(), {4, 6}, {5, 1}, "table");
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("table has row stride 5 but its rows are 6 wide"));
    a = good();
    a.out = TensorView<float, 2>(out.data(), {3, 6}, {3, 1}, "out");
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("out has row stride 3 but its rows are 6 wide"));
  }
  SECTION("missing ids") {
    auto a = good();
    a.ids.data = nullptr;
    REQUIRE_THROWS_AS(moss::embedding(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::embedding(host, a), ContainsSubstring("ids [3] has no data"));
  }
}
