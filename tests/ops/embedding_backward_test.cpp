// tests/ops/embedding_backward_test.cpp: `embedding_backward` on the host: float64 central
// differences of `embedding` run in double, a hand-computed case, the summation order (bitwise
// against a sequential loop), the float instantiation against the double one, unseen rows, bad
// ids, accumulation, strided views, the double forward, and every validation error.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/ops/embedding.hpp"
#include "moss/ops/embedding_backward.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::ConstView;
using moss::index_t;
using moss::TensorView;

/// `check_gradient`, also printing the measured error when MOSS_PRINT_GRAD_ERRORS is set.
template <class Loss>
void check_grad(const std::string& name, const std::vector<double>& analytic, Loss&& loss, std::vector<double>& x) {
  if (std::getenv("MOSS_PRINT_GRAD_ERRORS")) {
    const double err = moss::test::gradient_error(analytic, moss::test::numeric_gradient(loss, x));
    std::printf("grad-error embedding_backward %s %.3e\n", name.c_str(), err);
  }
  moss::test::check_gradient(name, analytic, loss, x);
}

/// dtable of `ids` and `dout` (rows, dim) over a (vocab, dim) table, starting from `init`
/// (zeros when empty) with `accumulate`.
template <class C>
std::vector<C> backward(const std::vector<std::int64_t>& ids, const std::vector<C>& dout, index_t vocab, index_t dim,
                        bool accumulate = false, std::vector<C> init = {}) {
  if (init.empty()) init.assign(static_cast<std::size_t>(vocab * dim), C(0));
  moss::EmbeddingBackwardArgs<C> a;
  const index_t rows = static_cast<index_t>(ids.size());
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, "ids");
  a.dout = ConstView<C, 2>(dout.data(), {rows, dim}, "dout");
  a.dtable = TensorView<C, 2>(init.data(), {vocab, dim}, "dtable");
  a.accumulate = accumulate;
  moss::embedding_backward(moss::Host{}, a);
  return init;
}

/// `n` ids in [0, vocab) from a fixed seed (repeats likely when n is close to vocab).
std::vector<std::int64_t> random_ids(index_t n, index_t vocab, std::uint64_t seed) {
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  const auto u = moss::test::uniform(static_cast<std::size_t>(n), seed, 0.0f, 1.0f);
  for (index_t r = 0; r < n; ++r) ids[r] = std::min<std::int64_t>(vocab - 1, std::int64_t(u[r] * float(vocab)));
  return ids;
}

}  // namespace

TEST_CASE("embedding forward in double copies the table exactly", "[host]") {
  const std::vector<double> table = moss::test::randn_f64(5 * 3, 1);
  const std::vector<std::int64_t> ids = {4, 0, 4};
  std::vector<double> out(9, NAN);
  moss::EmbeddingArgs<double> a;
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {3}, "ids");
  a.table = ConstView<double, 2>(table.data(), {5, 3}, "table");
  a.out = TensorView<double, 2>(out.data(), {3, 3}, "out");
  moss::embedding(moss::Host{}, a);
  for (index_t r = 0; r < 3; ++r)
    for (index_t i = 0; i < 3; ++i) REQUIRE(out[r * 3 + i] == table[ids[r] * 3 + i]);  // not rounded to float
}

TEST_CASE("embedding_backward: hand-computed sums, unseen rows zero", "[host]") {
  const std::vector<std::int64_t> ids = {2, 0, 2, 2};
  const std::vector<float> dout = {1, 2, 10, 20, 100, 200, 1000, 2000};  // (4, 2)
  std::vector<float> init(4 * 2, NAN);                                   // (vocab 4, dim 2)
  const auto g = backward<float>(ids, dout, 4, 2, false, init);
  CHECK(g == std::vector<float>{10, 20, 0, 0, 1101, 2202, 0, 0});
}

TEST_CASE("embedding_backward matches central differences in double", "[host]") {
  struct Shape {
    index_t rows, vocab, dim;
  };
  // 0 and 1 rows, one-element table, odd sizes, many repeats (rows ≫ vocab), many unseen ids.
  const Shape shapes[] = {{0, 3, 2}, {1, 1, 1}, {1, 4, 5}, {7, 3, 3}, {40, 5, 7}, {6, 50, 9}};
  std::uint64_t seed = 200;
  for (const Shape& s : shapes) {
    const auto ids = random_ids(s.rows, s.vocab, seed += 10);
    std::vector<double> table = moss::test::randn_f64(s.vocab * s.dim, seed + 1);
    const std::vector<double> w = moss::test::randn_f64(s.rows * s.dim, seed + 2);
    auto loss = [&] {
      std::vector<double> out(static_cast<std::size_t>(s.rows * s.dim));
      moss::EmbeddingArgs<double> a;
      a.ids = ConstView<std::int64_t, 1>(ids.data(), {s.rows}, "ids");
      a.table = ConstView<double, 2>(table.data(), {s.vocab, s.dim}, "table");
      a.out = TensorView<double, 2>(out.data(), {s.rows, s.dim}, "out");
      moss::embedding(moss::Host{}, a);
      return moss::test::dot(out, w);
    };
    std::string tag = "table[";  // appended piecewise: GCC 12 warns (-Wrestrict) on "[" + std::string
    for (index_t v : {s.rows, s.vocab, s.dim}) tag += std::to_string(v) + ",";
    tag += "]";
    INFO(tag);
    check_grad(tag, backward<double>(ids, w, s.vocab, s.dim), loss, table);
  }
}

TEST_CASE("embedding_backward sums each id's rows in ascending order (bitwise), repeatably", "[host]") {
  const index_t rows = 300, vocab = 23, dim = 17;
  const auto ids = random_ids(rows, vocab, 5);
  const auto dout = moss::test::randn(rows * dim, 6);
  const auto g = backward<float>(ids, dout, vocab, dim);
  std::vector<float> ref(vocab * dim, 0.0f);
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < dim; ++i) ref[ids[r] * dim + i] += dout[r * dim + i];
  CHECK(std::memcmp(g.data(), ref.data(), ref.size() * sizeof(float)) == 0);
  const auto again = backward<float>(ids, dout, vocab, dim);
  CHECK(std::memcmp(g.data(), again.data(), ref.size() * sizeof(float)) == 0);

  // The float instantiation against the double one on the same (float) values.
  const std::vector<double> dout64(dout.begin(), dout.end());
  const auto g64 = backward<double>(ids, dout64, vocab, dim);
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < g64.size(); ++i) {
    worst = std::max(worst, std::abs(double(g[i]) - g64[i]));
    scale = std::max(scale, std::abs(g64[i]));
  }
  CHECK(worst / scale < 1e-5);
  CHECK(worst > 0);  // the float sums really are float (this data rounds somewhere)
}

TEST_CASE("embedding_backward: accumulate adds each id's sum to dtable", "[host]") {
  const index_t rows = 30, vocab = 40, dim = 6;
  const auto ids = random_ids(rows, vocab, 7);
  const auto dout = moss::test::randn(rows * dim, 8);
  const auto fresh = backward<float>(ids, dout, vocab, dim);
  const auto old = moss::test::randn(vocab * dim, 9);
  const auto acc = backward<float>(ids, dout, vocab, dim, true, old);
  for (std::size_t i = 0; i < old.size(); ++i) REQUIRE(acc[i] == old[i] + fresh[i]);  // unseen rows: old + 0
  // Zero rows: dtable zeroed, or left as it was when accumulating.
  CHECK(backward<float>({}, {}, vocab, dim, false, old) == std::vector<float>(vocab * dim, 0.0f));
  CHECK(backward<float>({}, {}, vocab, dim, true, old) == old);
}

TEST_CASE("embedding_backward: strided ids, dout and dtable", "[host]") {
  const index_t rows = 5, vocab = 4, dim = 3;
  const std::vector<std::int64_t> ids = {3, -7, 1, -7, 3, -7, 0, -7, 3, -7};  // every second one is used
  const auto dout = moss::test::randn(rows * 5, 10);                          // (rows, dim) in (rows, 5)
  std::vector<float> dtable(vocab * 4, 77.0f);                                // (vocab, dim) in (vocab, 4)
  moss::EmbeddingBackwardArgs<float> a;
  a.ids = ConstView<std::int64_t, 1>(ids.data(), {rows}, {2}, "ids");
  a.dout = ConstView<float, 2>(dout.data(), {rows, dim}, {5, 1}, "dout");
  a.dtable = TensorView<float, 2>(dtable.data(), {vocab, dim}, {4, 1}, "dtable");
  moss::embedding_backward(moss::Host{}, a);
  for (index_t i = 0; i < dim; ++i) {
    CHECK(dtable[0 * 4 + i] == 0.0f + dout[3 * 5 + i]);
    CHECK(dtable[1 * 4 + i] == 0.0f + dout[1 * 5 + i]);
    CHECK(dtable[2 * 4 + i] == 0.0f);
    CHECK(dtable[3 * 4 + i] == (0.0f + dout[0 * 5 + i]) + dout[2 * 5 + i] + dout[4 * 5 + i]);
  }
  for (index_t v = 0; v < vocab; ++v) CHECK(dtable[v * 4 + 3] == 77.0f);  // the gaps are not written
}

TEST_CASE("embedding_backward: a bad id names the first bad position and writes nothing", "[host]") {
  const std::vector<float> dout(4 * 2, 1.0f);
  for (const auto& [ids, text] : std::vector<std::pair<std::vector<std::int64_t>, std::string>>{
           {{1, 5, -1, 0}, "embedding_backward: ids[1] = 5 is outside the table's rows [0, 5)"},
           {{1, 2, -1, 9}, "embedding_backward: ids[2] = -1 is outside the table's rows [0, 5)"}}) {
    std::vector<float> dtable(5 * 2, 42.0f);
    moss::EmbeddingBackwardArgs<float> a;
    a.ids = ConstView<std::int64_t, 1>(ids.data(), {4}, "ids");
    a.dout = ConstView<float, 2>(dout.data(), {4, 2}, "dout");
    a.dtable = TensorView<float, 2>(dtable.data(), {5, 2}, "dtable");
    REQUIRE_THROWS_AS(moss::embedding_backward(moss::Host{}, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::embedding_backward(moss::Host{}, a), ContainsSubstring(text));
    CHECK(dtable == std::vector<float>(10, 42.0f));
  }
}

TEST_CASE("embedding_backward: every validation error names the tensor", "[host]") {
  const std::vector<std::int64_t> ids = {0, 1, 2, 1};
  std::vector<float> dout(4 * 3), dtable(5 * 3);
  auto args = [&] {
    moss::EmbeddingBackwardArgs<float> a;
    a.ids = ConstView<std::int64_t, 1>(ids.data(), {4}, "ids");
    a.dout = ConstView<float, 2>(dout.data(), {4, 3}, "dout");
    a.dtable = TensorView<float, 2>(dtable.data(), {5, 3}, "dtable");
    return a;
  };
  const moss::Host host;
  REQUIRE_NOTHROW(moss::embedding_backward(host, args()));
  auto expect = [&](moss::EmbeddingBackwardArgs<float> a, const std::string& text, bool config = false) {
    if (config) {
      REQUIRE_THROWS_AS(moss::embedding_backward(host, a), moss::config_error);
    } else {
      REQUIRE_THROWS_AS(moss::embedding_backward(host, a), moss::shape_error);
    }
    REQUIRE_THROWS_WITH(moss::embedding_backward(host, a), ContainsSubstring(text));
  };
  {
    auto a = args();
    a.dtable.shape = {0, 3};
    expect(a, "embedding_backward: dtable is [0, 3] (vocab, dim) but both must be at least 1", true);
  }
  {
    auto a = args();
    a.dtable.shape = {5, 0};
    a.dout.shape = {4, 0};
    expect(a, "embedding_backward: dtable is [5, 0] (vocab, dim) but both must be at least 1", true);
  }
  {
    auto a = args();
    a.dout = ConstView<float, 2>(dout.data(), {3, 3}, "dout");
    expect(a, "embedding_backward: dout is [3, 3] (rows, dim) but expected [4, 3]");
  }
  {
    auto a = args();
    a.dtable = TensorView<float, 2>(dtable.data(), {3, 4}, "dtable");
    expect(a, "embedding_backward: dout is [4, 3] (rows, dim) but expected [4, 4]");
  }
  {
    auto a = args();
    a.dout = ConstView<float, 2>(dout.data(), {4, 3}, {3, 2}, "dout");
    expect(a, "embedding_backward: dout needs unit stride in its last dimension");
  }
  {
    auto a = args();
    a.dtable = TensorView<float, 2>(dtable.data(), {5, 3}, {3, 2}, "dtable");
    expect(a, "embedding_backward: dtable needs unit stride in its last dimension");
  }
  {
    auto a = args();
    a.dout = ConstView<float, 2>(dout.data(), {4, 3}, {2, 1}, "dout");
    expect(a, "embedding_backward: dout has row stride 2 but its rows are 3 wide");
  }
  {
    auto a = args();
    a.dtable = TensorView<float, 2>(dtable.data(), {5, 3}, {1, 1}, "dtable");
    expect(a, "embedding_backward: dtable has row stride 1 but its rows are 3 wide");
  }
  {
    auto a = args();
    a.dtable.data = nullptr;
    expect(a, "embedding_backward: dtable [5, 3] has no data");
  }
  {
    auto a = args();
    a.ids.stride = {-1};
    expect(a, "embedding_backward: ids has negative stride");
  }
}
