// tests/ops/permute_test.cpp: `permute_plan`, `gather_rows` and `combine_rows` on the host
// against hand-worked plans (slot-major capacity priority, empty experts, K = X), a plan
// reference written here, the capacity formula, gather/combine against float64 loops, strided
// and poisoned buffers, the workspace contract on the host, and every validation error.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "moss/ops/permute.hpp"
#include "moss/ops/router/math.hpp"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
using moss::bf16;
using moss::ConstView;
using moss::f16;
using moss::index_t;
using moss::TensorView;
using I32 = std::vector<std::int32_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// The four arrays of a plan, in host vectors.
struct Plan {
  I32 pair_row, row_pair, offsets, counts;
  bool operator==(const Plan&) const = default;
};

/// Runs `permute_plan` into poisoned vectors (so every element must be written).
Plan run_plan(const I32& expert, index_t T, index_t K, index_t X, index_t capacity) {
  Plan p;
  p.pair_row.assign(static_cast<std::size_t>(T * K), -99);
  p.row_pair.assign(static_cast<std::size_t>(T * K), -99);
  p.offsets.assign(static_cast<std::size_t>(X + 1), -99);
  p.counts.assign(static_cast<std::size_t>(X), -99);
  moss::PermutePlanArgs a;
  a.expert = ConstView<std::int32_t, 2>(expert.data(), {T, K}, "expert");
  a.num_experts = X;
  a.capacity = capacity;
  a.pair_row = TensorView<std::int32_t, 1>(p.pair_row.data(), {T * K}, "pair_row");
  a.row_pair = TensorView<std::int32_t, 1>(p.row_pair.data(), {T * K}, "row_pair");
  a.offsets = TensorView<std::int32_t, 1>(p.offsets.data(), {X + 1}, "offsets");
  a.counts = TensorView<std::int32_t, 1>(p.counts.data(), {X}, "counts");
  moss::permute_plan(moss::Host{}, a);
  return p;
}

/// The plan straight from docs/math.md §2.3 and §2.6 (GShard priority): expert by expert, slot by slot,
/// token by token; each expert keeps its first C pairs (all when C = 0); kept rows are numbered
/// consecutively.
Plan reference_plan(const I32& expert, index_t T, index_t K, index_t X, index_t capacity) {
  Plan p;
  p.pair_row.assign(static_cast<std::size_t>(T * K), -1);
  p.row_pair.assign(static_cast<std::size_t>(T * K), -1);
  p.offsets.assign(static_cast<std::size_t>(X + 1), 0);
  p.counts.assign(static_cast<std::size_t>(X), 0);
  std::int32_t row = 0;
  for (index_t e = 0; e < X; ++e) {
    std::int32_t seen = 0;
    for (index_t s = 0; s < K; ++s)
      for (index_t t = 0; t < T; ++t) {
        if (expert[t * K + s] != e) continue;
        ++seen;
        if (capacity > 0 && seen > capacity) continue;
        p.pair_row[t * K + s] = row;
        p.row_pair[row] = static_cast<std::int32_t>(t * K + s);
        ++row;
      }
    p.counts[e] = seen;
    p.offsets[e + 1] = row;
  }
  return p;
}

/// Random experts (tokens, K), distinct within a token, skewed towards low indices.
I32 random_experts(index_t T, index_t K, index_t X, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> w(static_cast<std::size_t>(X));
  for (index_t e = 0; e < X; ++e) w[e] = 1.0 / static_cast<double>(e + 1);
  I32 ex(static_cast<std::size_t>(T * K));
  for (index_t t = 0; t < T; ++t)
    for (index_t s = 0; s < K; ++s) {
      std::int32_t e;
      do {
        e = static_cast<std::int32_t>(std::discrete_distribution<int>(w.begin(), w.end())(rng));
      } while (std::find(ex.begin() + t * K, ex.begin() + t * K + s, e) != ex.begin() + t * K + s);
      ex[t * K + s] = e;
    }
  return ex;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }
template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("permute_plan: hand-worked plans", "[host][ops][permute]") {
  SECTION("K = 1: segments by expert, token order inside") {
    // experts of tokens 0..4: 2, 0, 2, 1, 0 (X = 4: expert 3 is empty)
    const Plan p = run_plan({2, 0, 2, 1, 0}, 5, 1, 4, 0);
    CHECK(p.counts == I32{2, 1, 2, 0});
    CHECK(p.offsets == I32{0, 2, 3, 5, 5});
    CHECK(p.row_pair == I32{1, 4, 3, 0, 2});
    CHECK(p.pair_row == I32{3, 0, 4, 2, 1});
  }
  SECTION("K = 2: slot 0's tokens, then slot 1's, inside each expert") {
    // token 0: (1, 0), token 1: (0, 2), token 2: (2, 1), token 3: (0, 1)
    // expert 0: t1s0, t3s0, t0s1; expert 1: t0s0, t2s1, t3s1; expert 2: t2s0, t1s1
    const Plan p = run_plan({1, 0, 0, 2, 2, 1, 0, 1}, 4, 2, 3, 0);
    CHECK(p.counts == I32{3, 3, 2});
    CHECK(p.offsets == I32{0, 3, 6, 8});
    CHECK(p.row_pair == I32{2, 6, 1, 0, 5, 7, 4, 3});
    CHECK(p.pair_row == I32{3, 2, 0, 7, 6, 4, 1, 5});
  }
  SECTION("K = X: every expert once per token") {
    // token 0: (2, 0, 1), token 1: (0, 1, 2), token 2: (1, 2, 0)
    const Plan p = run_plan({2, 0, 1, 0, 1, 2, 1, 2, 0}, 3, 3, 3, 0);
    CHECK(p.counts == I32{3, 3, 3});
    CHECK(p.offsets == I32{0, 3, 6, 9});
    CHECK(p.row_pair == I32{3, 1, 8, 6, 4, 2, 0, 7, 5});
    CHECK(p.pair_row == I32{6, 1, 5, 0, 4, 8, 3, 7, 2});
  }
  SECTION("all tokens on one expert, the others empty") {
    const Plan p = run_plan({2, 2, 2, 2, 2}, 5, 1, 4, 0);
    CHECK(p.counts == I32{0, 0, 5, 0});
    CHECK(p.offsets == I32{0, 0, 0, 5, 5});
    CHECK(p.row_pair == I32{0, 1, 2, 3, 4});
    CHECK(p.pair_row == I32{0, 1, 2, 3, 4});
    const Plan c = run_plan({2, 2, 2, 2, 2}, 5, 1, 4, 3);
    CHECK(c.counts == I32{0, 0, 5, 0});  // before capacity
    CHECK(c.offsets == I32{0, 0, 0, 3, 3});
    CHECK(c.row_pair == I32{0, 1, 2, -1, -1});
    CHECK(c.pair_row == I32{0, 1, 2, -1, -1});
  }
  SECTION("zero tokens") {
    const Plan p = run_plan({}, 0, 2, 3, 0);
    CHECK(p.counts == I32{0, 0, 0});
    CHECK(p.offsets == I32{0, 0, 0, 0});
  }
}

TEST_CASE("permute_plan: capacity keeps the first pairs of each expert, slot-major", "[host][ops][permute]") {
  SECTION("K = 1: first come, first served in token order") {
    const Plan p = run_plan({0, 0, 1, 0, 0, 1}, 6, 1, 2, 2);
    CHECK(p.counts == I32{4, 2});
    CHECK(p.offsets == I32{0, 2, 4});
    CHECK(p.pair_row == I32{0, 1, 2, -1, -1, 3});
    CHECK(p.row_pair == I32{0, 1, 2, 5, -1, -1});
  }
  SECTION("K = 2: every slot-0 pair before any slot-1 pair (token-major would keep t0s1)") {
    // token 0: (1, 0), token 1: (0, 1), token 2: (0, 1); C = 2.
    // expert 0 in priority order: t1s0, t2s0, t0s1 → t0s1 dropped;
    // expert 1: t0s0, t1s1, t2s1 → t2s1 dropped.
    const Plan p = run_plan({1, 0, 0, 1, 0, 1}, 3, 2, 2, 2);
    CHECK(p.counts == I32{3, 3});
    CHECK(p.offsets == I32{0, 2, 4});
    CHECK(p.pair_row == I32{2, -1, 0, 3, 1, -1});
    CHECK(p.row_pair == I32{2, 4, 0, 3, -1, -1});
  }
  SECTION("capacity 1 with an empty expert; capacity ≥ every count drops nothing") {
    const I32 ex{3, 0, 3, 3, 0, 1};
    const Plan p = run_plan(ex, 6, 1, 4, 1);
    CHECK(p.counts == I32{2, 1, 0, 3});
    CHECK(p.offsets == I32{0, 1, 2, 2, 3});
    CHECK(p.pair_row == I32{2, 0, -1, -1, -1, 1});
    CHECK(p.row_pair == I32{1, 5, 0, -1, -1, -1});
    CHECK(run_plan(ex, 6, 1, 4, 3) == run_plan(ex, 6, 1, 4, 0));
    CHECK(run_plan(ex, 6, 1, 4, 100) == run_plan(ex, 6, 1, 4, 0));
  }
}

TEST_CASE("permute_plan: random plans match the reference and are consistent", "[host][ops][permute]") {
  struct Shape {
    index_t T, K, X;
  };
  const Shape shapes[] = {{1, 1, 1},  {1, 2, 2},  {17, 1, 4},   {50, 2, 8},
                          {33, 3, 5}, {64, 4, 4}, {200, 2, 16}, {9, 1, 32}};
  std::uint64_t seed = 900;
  for (const Shape& sh : shapes) {
    for (double cf : {0.0, 0.5, 1.0, 1.25, 3.0}) {
      const index_t C = moss::detail::route::expert_capacity(cf, sh.T, sh.K, sh.X);
      CAPTURE(sh.T, sh.K, sh.X, cf, C);
      const I32 ex = random_experts(sh.T, sh.K, sh.X, seed += 3);
      const Plan p = run_plan(ex, sh.T, sh.K, sh.X, C);
      REQUIRE(p == reference_plan(ex, sh.T, sh.K, sh.X, C));
      // The same plan through make_permute_plan.
      const moss::PermutePlan mp =
          moss::make_permute_plan(moss::Host{}, ConstView<std::int32_t, 2>(ex.data(), {sh.T, sh.K}, "expert"), sh.X, C);
      REQUIRE(mp.rows() == sh.T * sh.K);
      REQUIRE(I32(mp.pair_row.data(), mp.pair_row.data() + sh.T * sh.K) == p.pair_row);
      REQUIRE(I32(mp.row_pair.data(), mp.row_pair.data() + sh.T * sh.K) == p.row_pair);
      REQUIRE(I32(mp.offsets.data(), mp.offsets.data() + sh.X + 1) == p.offsets);
      REQUIRE(I32(mp.counts.data(), mp.counts.data() + sh.X) == p.counts);
      // Invariants: counts sum to T·K, kept = Σ min(count, C), pair_row and row_pair are
      // inverse on the kept rows, and each kept row sits in its expert's segment.
      index_t total = 0, kept = 0;
      for (index_t e = 0; e < sh.X; ++e) {
        total += p.counts[e];
        kept += C > 0 ? std::min<index_t>(p.counts[e], C) : p.counts[e];
      }
      REQUIRE(total == sh.T * sh.K);
      REQUIRE(p.offsets[sh.X] == kept);
      for (index_t r = 0; r < sh.T * sh.K; ++r) {
        if (r >= kept) {
          REQUIRE(p.row_pair[r] == -1);
          continue;
        }
        const std::int32_t pair = p.row_pair[r];
        REQUIRE(p.pair_row[pair] == r);
        const std::int32_t e = ex[pair];
        REQUIRE((p.offsets[e] <= r && r < p.offsets[e + 1]));
      }
      if (C == 0) REQUIRE(std::count(p.pair_row.begin(), p.pair_row.end(), -1) == 0);
    }
  }
}

TEST_CASE("permute_plan: the host needs no workspace and ignores one given, workspace_bytes validates",
          "[host][ops][permute]") {
  const I32 ex = random_experts(40, 2, 6, 4242);
  Plan p;
  p.pair_row.assign(80, -99);
  p.row_pair.assign(80, -99);
  p.offsets.assign(7, -99);
  p.counts.assign(6, -99);
  moss::PermutePlanArgs a;
  a.expert = ConstView<std::int32_t, 2>(ex.data(), {40, 2}, "expert");
  a.num_experts = 6;
  a.capacity = 9;
  a.pair_row = TensorView<std::int32_t, 1>(p.pair_row.data(), {80}, "pair_row");
  a.row_pair = TensorView<std::int32_t, 1>(p.row_pair.data(), {80}, "row_pair");
  a.offsets = TensorView<std::int32_t, 1>(p.offsets.data(), {7}, "offsets");
  a.counts = TensorView<std::int32_t, 1>(p.counts.data(), {6}, "counts");
  CHECK(moss::workspace_bytes(moss::Host{}, a) == 0);
  std::vector<unsigned char> scratch(16);
  a.workspace = moss::Workspace{scratch.data(), scratch.size()};
  moss::permute_plan(moss::Host{}, a);
  CHECK(p == reference_plan(ex, 40, 2, 6, 9));
  a.counts = TensorView<std::int32_t, 1>(p.counts.data(), {5}, "counts");
  REQUIRE_THROWS_AS(moss::workspace_bytes(moss::Host{}, a), moss::shape_error);
  REQUIRE_THROWS_WITH(moss::workspace_bytes(moss::Host{}, a),
                      ContainsSubstring("workspace_bytes (permute_plan): counts is [5] (experts) but expected [6]"));
  // make_permute_plan passes a workspace through.
  const moss::PermutePlan mp =
      moss::make_permute_plan(moss::Host{}, ConstView<std::int32_t, 2>(ex.data(), {40, 2}, "expert"), 6, 9,
                              moss::Workspace{scratch.data(), scratch.size()});
  CHECK(I32(mp.pair_row.data(), mp.pair_row.data() + 80) == reference_plan(ex, 40, 2, 6, 9).pair_row);
}

TEST_CASE("expert_capacity: max(1, ceil(cf·T·K/X)) in double, 0 when dropless", "[host][ops][permute]") {
  using moss::detail::route::expert_capacity;
  CHECK(expert_capacity(0.0, 100, 2, 8) == 0);
  CHECK(expert_capacity(1.0, 8, 1, 4) == 2);
  CHECK(expert_capacity(1.0, 12, 2, 8) == 3);   // exact: no rounding up
  CHECK(expert_capacity(1.0, 13, 2, 8) == 4);   // 3.25 → 4
  CHECK(expert_capacity(1.25, 10, 2, 4) == 7);  // 6.25 → 7
  CHECK(expert_capacity(0.01, 3, 1, 8) == 1);   // 0.00375 → at least 1
  CHECK(expert_capacity(2.0, 1, 1, 64) == 1);
  CHECK(expert_capacity(1.0, 0, 1, 4) == 1);
  // 2^24 + 1 tokens on one expert: exact in double, not in float.
  CHECK(expert_capacity(1.0, 16777217, 1, 1) == 16777217);
  CHECK(expert_capacity(1.0, 3'000'000'000LL, 2, 3) == 2'000'000'000LL);
  std::uint64_t seed = 5;
  for (int i = 0; i < 200; ++i) {
    std::mt19937_64 rng(seed++);
    const double cf = std::uniform_real_distribution<double>(0.05, 4.0)(rng);
    const long long T = std::uniform_int_distribution<long long>(1, 100000)(rng);
    const long long K = std::uniform_int_distribution<long long>(1, 8)(rng);
    const long long X = std::uniform_int_distribution<long long>(K, 256)(rng);
    const double c = std::ceil(cf * static_cast<double>(T) * static_cast<double>(K) / static_cast<double>(X));
    CAPTURE(cf, T, K, X);
    REQUIRE(expert_capacity(cf, T, K, X) == std::max(1LL, static_cast<long long>(c)));
  }
}

TEST_CASE("permute_plan: an expert out of range is a shape_error naming the token and slot",
          "[host][ops][permute][errors]") {
  REQUIRE_THROWS_AS(run_plan({0, 1, 2, 5}, 2, 2, 3, 0), moss::shape_error);
  REQUIRE_THROWS_WITH(run_plan({0, 1, 2, 5}, 2, 2, 3, 0),
                      ContainsSubstring("permute_plan: expert[1, 1] = 5 is not an expert in [0, 3)"));
  REQUIRE_THROWS_WITH(run_plan({0, 1, -1, 2}, 2, 2, 3, 0), ContainsSubstring("expert[1, 0] = -1 is not an expert"));
  REQUIRE_THROWS_WITH(run_plan({0, 3}, 2, 1, 3, 1), ContainsSubstring("expert[1, 0] = 3"));
}

namespace {

/// gather_rows into a poisoned (rows, D) buffer.
template <class T>
std::vector<T> run_gather(const std::vector<T>& x, index_t tokens, index_t D, index_t x_stride, const Plan& p,
                          index_t K) {
  std::vector<T> out(static_cast<std::size_t>(tokens * K * D), moss::from_float<T>(kNaN));
  moss::GatherRowsArgs<T> a;
  a.x = ConstView<T, 2>(x.data(), {tokens, D}, {x_stride, 1}, "x");
  a.row_pair = ConstView<std::int32_t, 1>(p.row_pair.data(), {tokens * K}, "row_pair");
  a.offsets = ConstView<std::int32_t, 1>(p.offsets.data(), {static_cast<index_t>(p.offsets.size())}, "offsets");
  a.k = K;
  a.out = TensorView<T, 2>(out.data(), {tokens * K, D}, "permuted");
  moss::gather_rows(moss::Host{}, a);
  return out;
}

/// combine_rows of y (rows, D) into `out` (tokens, D) with row stride `out_stride`.
template <class T>
void run_combine(const std::vector<T>& y, index_t tokens, index_t K, index_t D, const Plan& p,
                 const std::vector<float>* gate, index_t wb, index_t we, T* out, index_t out_stride) {
  moss::CombineRowsArgs<T> a;
  a.y = ConstView<T, 2>(y.data(), {tokens * K, D}, "y");
  a.pair_row = ConstView<std::int32_t, 2>(p.pair_row.data(), {tokens, K}, "pair_row");
  if (gate) a.gate = ConstView<float, 2>(gate->data(), {tokens, K}, "gate");
  a.weight_begin = wb;
  a.weight_end = we;
  a.out = TensorView<T, 2>(out, {tokens, D}, {out_stride, 1}, "out");
  moss::combine_rows(moss::Host{}, a);
}

/// Σ_s over kept slots of (c in [wb, we) ? g·y : y) in float64, from the stored values.
template <class T>
std::vector<double> combine64(const std::vector<T>& y, index_t tokens, index_t K, index_t D, const Plan& p,
                              const std::vector<float>* gate, index_t wb, index_t we) {
  std::vector<double> o(static_cast<std::size_t>(tokens * D), 0.0);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t s = 0; s < K; ++s) {
      const std::int32_t r = p.pair_row[t * K + s];
      if (r < 0) continue;
      const double g = gate ? static_cast<double>((*gate)[t * K + s]) : 1.0;
      for (index_t c = 0; c < D; ++c) {
        const double v = moss::to_float(y[r * D + c]);
        o[t * D + c] += (c >= wb && c < we) ? g * v : v;
      }
    }
  return o;
}

}  // namespace

TEMPLATE_TEST_CASE("gather_rows: row r is x at the token of row_pair r, rows past offsets at X untouched",
                   "[host][ops][permute]", float, f16, bf16) {
  using T = TestType;
  const index_t tokens = 41, D = 13, stride = D + 4;
  const auto x = moss::test::to_storage<T>(moss::test::randn(tokens * stride, 1001));
  for (index_t K : {1, 2, 3}) {
    for (index_t C : {0, 4}) {
      CAPTURE(K, C);
      const I32 ex = random_experts(tokens, K, 6, 1002 + K);
      const Plan p = run_plan(ex, tokens, K, 6, C);
      const auto out = run_gather(x, tokens, D, stride, p, K);
      const index_t kept = p.offsets[6];
      if (C > 0) REQUIRE(kept < tokens * K);  // some rows are dropped, so some stay poisoned
      for (index_t r = 0; r < tokens * K; ++r)
        for (index_t c = 0; c < D; ++c) {
          if (r < kept) {
            REQUIRE(same_bits(out[r * D + c], x[(p.row_pair[r] / K) * stride + c]));
          } else {
            REQUIRE(std::isnan(moss::to_float(out[r * D + c])));
          }
        }
    }
  }
}

TEMPLATE_TEST_CASE("gather then combine with K = 1 and gate 1 gives x back exactly", "[host][ops][permute]", float, f16,
                   bf16) {
  using T = TestType;
  const index_t tokens = 37, D = 19, X = 5;
  const auto x = moss::test::to_storage<T>(moss::test::randn(tokens * D, 1101));
  const Plan p = run_plan(random_experts(tokens, 1, X, 1102), tokens, 1, X, 0);
  const auto permuted = run_gather(x, tokens, D, D, p, 1);
  const std::vector<float> ones(static_cast<std::size_t>(tokens), 1.0f);
  for (bool with_gate : {false, true}) {
    CAPTURE(with_gate);
    std::vector<T> back(static_cast<std::size_t>(tokens * D), moss::from_float<T>(kNaN));
    run_combine(permuted, tokens, 1, D, p, with_gate ? &ones : nullptr, 0, with_gate ? D : 0, back.data(), D);
    for (std::size_t i = 0; i < back.size(); ++i) REQUIRE(same_bits(back[i], x[i]));
  }
}

TEMPLATE_TEST_CASE("combine_rows with K = 2 and gates matches a float64 loop", "[host][ops][permute]", float, f16,
                   bf16) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>();
  const index_t tokens = 45, K = 2, D = 23, X = 6;
  const I32 ex = random_experts(tokens, K, X, 1201);
  const auto y = moss::test::to_storage<T>(moss::test::randn(tokens * K * D, 1202));
  const auto gate = moss::test::uniform(tokens * K, 1203, 0.05f, 1.0f);
  const Plan p = run_plan(ex, tokens, K, X, 0);

  SECTION("every column weighted") {
    std::vector<T> out(static_cast<std::size_t>(tokens * D), moss::from_float<T>(kNaN));
    run_combine(y, tokens, K, D, p, &gate, 0, D, out.data(), D);
    CHECK(moss::test::rel_l2(out, combine64(y, tokens, K, D, p, &gate, 0, D)) <= tol);
    // The unweighted sum differs: the gates really multiply.
    CHECK(moss::test::rel_l2(out, combine64(y, tokens, K, D, p, nullptr, 0, 0)) > 0.1);
  }
  SECTION("only the columns in [weight_begin, weight_end) are weighted") {
    const index_t wb = 5, we = 17;
    std::vector<T> out(static_cast<std::size_t>(tokens * D), moss::from_float<T>(kNaN));
    run_combine(y, tokens, K, D, p, &gate, wb, we, out.data(), D);
    const auto ref = combine64(y, tokens, K, D, p, &gate, wb, we);
    CHECK(moss::test::rel_l2(out, ref) <= tol);
    // Column by column: the weighted ones against Σ g·y, the others against Σ y.
    const auto all_w = combine64(y, tokens, K, D, p, &gate, 0, D);
    const auto none_w = combine64(y, tokens, K, D, p, nullptr, 0, 0);
    for (index_t c = 0; c < D; ++c) {
      std::vector<T> got;
      std::vector<double> want;
      for (index_t t = 0; t < tokens; ++t) {
        got.push_back(out[t * D + c]);
        want.push_back((c >= wb && c < we ? all_w : none_w)[t * D + c]);
      }
      CAPTURE(c);
      REQUIRE(moss::test::rel_l2(got, want) <= 2 * tol);
    }
  }
  SECTION("no gate: the plain sum of the slots") {
    std::vector<T> out(static_cast<std::size_t>(tokens * D), moss::from_float<T>(kNaN));
    run_combine(y, tokens, K, D, p, nullptr, 3, 3, out.data(), D);
    CHECK(moss::test::rel_l2(out, combine64(y, tokens, K, D, p, nullptr, 0, 0)) <= tol);
  }
  SECTION("slot order is fixed: the result is deterministic and the same as y0 + y1 in float") {
    std::vector<T> a(static_cast<std::size_t>(tokens * D)), b(a.size());
    run_combine(y, tokens, K, D, p, &gate, 0, D, a.data(), D);
    run_combine(y, tokens, K, D, p, &gate, 0, D, b.data(), D);
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(same_bits(a[i], b[i]));
    for (index_t t = 0; t < tokens; ++t)
      for (index_t c = 0; c < D; ++c) {
        float acc = 0.0f;
        for (index_t s = 0; s < K; ++s) acc += gate[t * K + s] * moss::to_float(y[p.pair_row[t * K + s] * D + c]);
        REQUIRE(same_bits(a[t * D + c], moss::from_float<T>(acc)));
      }
  }
}

TEMPLATE_TEST_CASE("combine_rows: dropped pairs contribute zero and every output element is written",
                   "[host][ops][permute]", float, bf16) {
  using T = TestType;
  const index_t tokens = 30, K = 2, D = 11, X = 4;
  const I32 ex = random_experts(tokens, K, X, 1301);
  const index_t C = moss::detail::route::expert_capacity(0.5, tokens, K, X);  // 8 of 60 pairs per expert
  const Plan p = run_plan(ex, tokens, K, X, C);
  const index_t kept = p.offsets[X];
  REQUIRE(kept < tokens * K);
  // Rows past the kept ones are NaN and dropped pairs' gates are NaN: neither may be read.
  auto y = moss::test::to_storage<T>(moss::test::randn(tokens * K * D, 1302));
  for (index_t r = kept; r < tokens * K; ++r)
    for (index_t c = 0; c < D; ++c) y[r * D + c] = moss::from_float<T>(kNaN);
  auto gate = moss::test::uniform(tokens * K, 1303, 0.1f, 1.0f);
  index_t dropped_tokens = 0;
  for (index_t t = 0; t < tokens; ++t) {
    bool any = false;
    for (index_t s = 0; s < K; ++s) {
      if (p.pair_row[t * K + s] < 0)
        gate[t * K + s] = kNaN;
      else
        any = true;
    }
    dropped_tokens += any ? 0 : 1;
  }
  REQUIRE(dropped_tokens > 0);  // some tokens lost every slot: their rows must become zero

  std::vector<T> out(static_cast<std::size_t>(tokens * D), moss::from_float<T>(kNaN));
  run_combine(y, tokens, K, D, p, &gate, 0, D, out.data(), D);
  const auto ref = combine64(y, tokens, K, D, p, &gate, 0, D);
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(std::isfinite(moss::to_float(out[i])));
  CHECK(moss::test::rel_l2(out, ref) <= (std::is_same_v<T, float> ? 1e-6 : moss::test::op_tolerance<T>()));
  for (index_t t = 0; t < tokens; ++t) {
    if (p.pair_row[t * K] >= 0 || p.pair_row[t * K + 1] >= 0) continue;
    for (index_t c = 0; c < D; ++c) REQUIRE(moss::to_float(out[t * D + c]) == 0.0f);
  }
}

TEMPLATE_TEST_CASE("combine_rows writes a strided output without touching the gaps", "[host][ops][permute]", float,
                   f16) {
  using T = TestType;
  const index_t tokens = 21, K = 2, D = 9, X = 3, stride = D + 5, lead = 2;
  const I32 ex = random_experts(tokens, K, X, 1401);
  const Plan p = run_plan(ex, tokens, K, X, 0);
  const auto y = moss::test::to_storage<T>(moss::test::randn(tokens * K * D, 1402));
  const auto gate = moss::test::uniform(tokens * K, 1403, 0.1f, 1.0f);
  std::vector<T> dense(static_cast<std::size_t>(tokens * D));
  run_combine(y, tokens, K, D, p, &gate, 2, 7, dense.data(), D);
  std::vector<T> wide(static_cast<std::size_t>(tokens * stride + lead), moss::from_float<T>(kNaN));
  run_combine(y, tokens, K, D, p, &gate, 2, 7, wide.data() + lead, stride);
  for (index_t i = 0; i < static_cast<index_t>(wide.size()); ++i) {
    const index_t j = i - lead;
    if (j >= 0 && j % stride < D) {
      REQUIRE(same_bits(wide[i], dense[(j / stride) * D + j % stride]));
    } else {
      REQUIRE(std::isnan(moss::to_float(wide[i])));
    }
  }
}

TEST_CASE("permute ops: every validation error", "[host][ops][permute][errors]") {
  const moss::Host host;
  const index_t T = 4, K = 2, X = 3, D = 5;
  I32 expert{0, 1, 2, 0, 1, 2, 0, 2};
  I32 pair_row(16), row_pair(16), offsets(8), counts(8);
  const auto plan_args = [&] {
    moss::PermutePlanArgs a;
    a.expert = ConstView<std::int32_t, 2>(expert.data(), {T, K}, "expert");
    a.num_experts = X;
    a.pair_row = TensorView<std::int32_t, 1>(pair_row.data(), {T * K}, "pair_row");
    a.row_pair = TensorView<std::int32_t, 1>(row_pair.data(), {T * K}, "row_pair");
    a.offsets = TensorView<std::int32_t, 1>(offsets.data(), {X + 1}, "offsets");
    a.counts = TensorView<std::int32_t, 1>(counts.data(), {X}, "counts");
    return a;
  };
  REQUIRE_NOTHROW(moss::permute_plan(host, plan_args()));

  SECTION("plan: K = 0") {
    auto a = plan_args();
    a.expert = ConstView<std::int32_t, 2>(expert.data(), {T, 0}, "expert");
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a),
                        ContainsSubstring("expert is [4, 0] (tokens, K) but K must be at least 1"));
  }
  SECTION("plan: no experts, K > X, negative capacity") {
    auto a = plan_args();
    a.num_experts = 0;
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("num_experts is 0"));
    a = plan_args();
    a.num_experts = 1;
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("K = 2 slots but only 1 experts"));
    a = plan_args();
    a.capacity = -1;
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("capacity is -1"));
  }
  SECTION("plan: outputs of the wrong size") {
    auto a = plan_args();
    a.pair_row = TensorView<std::int32_t, 1>(pair_row.data(), {7}, "pair_row");
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("pair_row is [7] (tokens·K) but expected [8]"));
    a = plan_args();
    a.row_pair = TensorView<std::int32_t, 1>(row_pair.data(), {9}, "row_pair");
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("row_pair is [9] (tokens·K) but expected [8]"));
    a = plan_args();
    a.offsets = TensorView<std::int32_t, 1>(offsets.data(), {X}, "offsets");
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a),
                        ContainsSubstring("offsets is [3] (experts + 1) but expected [4]"));
    a = plan_args();
    a.counts = TensorView<std::int32_t, 1>(counts.data(), {X + 1}, "counts");
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("counts is [4] (experts) but expected [3]"));
    a = plan_args();
    a.counts = TensorView<std::int32_t, 1>(counts.data(), {X}, {2}, "counts");
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("counts [3] must be contiguous"));
  }
  SECTION("plan: expert not contiguous, or missing") {
    auto a = plan_args();
    a.expert = ConstView<std::int32_t, 2>(expert.data(), {2, K}, {4, 1}, "expert");
    a.pair_row.shape = {4};
    a.row_pair.shape = {4};
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("expert [2, 2] must be contiguous"));
    a = plan_args();
    a.expert.data = nullptr;
    REQUIRE_THROWS_AS(moss::permute_plan(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(host, a), ContainsSubstring("expert [4, 2] has no data"));
  }

  const Plan p = run_plan(expert, T, K, X, 0);
  const auto x = moss::test::randn(T * 8, 1501);
  std::vector<float> permuted(T * K * 8), y(T * K * 8), out(T * 8), gate(T * K, 0.5f);
  const auto gather_args = [&] {
    moss::GatherRowsArgs<float> a;
    a.x = ConstView<float, 2>(x.data(), {T, D}, "x");
    a.row_pair = ConstView<std::int32_t, 1>(p.row_pair.data(), {T * K}, "row_pair");
    a.offsets = ConstView<std::int32_t, 1>(p.offsets.data(), {X + 1}, "offsets");
    a.k = K;
    a.out = TensorView<float, 2>(permuted.data(), {T * K, D}, "permuted");
    return a;
  };
  REQUIRE_NOTHROW(moss::gather_rows(host, gather_args()));
  SECTION("gather: row_pair does not match tokens·K") {
    auto a = gather_args();
    a.row_pair = ConstView<std::int32_t, 1>(p.row_pair.data(), {7}, "row_pair");
    REQUIRE_THROWS_AS(moss::gather_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a),
                        ContainsSubstring("gather_rows: row_pair is [7] but x [4, 5] with K = 2 has 8 pairs"));
    a = gather_args();
    a.k = 0;
    REQUIRE_THROWS_AS(moss::gather_rows(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a), ContainsSubstring("K is 0"));
  }
  SECTION("gather: offsets too short, out of the wrong shape, x rows overlapping") {
    auto a = gather_args();
    a.offsets = ConstView<std::int32_t, 1>(p.offsets.data(), {1}, "offsets");
    REQUIRE_THROWS_AS(moss::gather_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a), ContainsSubstring("offsets is [1] but needs experts + 1"));
    a = gather_args();
    a.out = TensorView<float, 2>(permuted.data(), {T * K, D + 1}, "permuted");
    REQUIRE_THROWS_AS(moss::gather_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a),
                        ContainsSubstring("permuted is [8, 6] (rows, d) but expected [8, 5]"));
    a = gather_args();
    a.out = TensorView<float, 2>(permuted.data(), {T * K, D}, {8, 1}, "permuted");
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a), ContainsSubstring("permuted [8, 5] must be contiguous"));
    a = gather_args();
    a.x = ConstView<float, 2>(x.data(), {T, D}, {4, 1}, "x");
    REQUIRE_THROWS_AS(moss::gather_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a), ContainsSubstring("x has row stride 4 but its rows are 5 wide"));
    a = gather_args();
    a.x = ConstView<float, 2>(x.data(), {T, D}, {8, 2}, "x");
    REQUIRE_THROWS_WITH(moss::gather_rows(host, a), ContainsSubstring("x needs unit stride in its last dimension"));
  }

  const auto combine_args = [&] {
    moss::CombineRowsArgs<float> a;
    a.y = ConstView<float, 2>(y.data(), {T * K, D}, "y");
    a.pair_row = ConstView<std::int32_t, 2>(p.pair_row.data(), {T, K}, "pair_row");
    a.gate = ConstView<float, 2>(gate.data(), {T, K}, "gate");
    a.weight_begin = 0;
    a.weight_end = D;
    a.out = TensorView<float, 2>(out.data(), {T, D}, "out");
    return a;
  };
  REQUIRE_NOTHROW(moss::combine_rows(host, combine_args()));
  SECTION("combine: y rows do not match the plan") {
    auto a = combine_args();
    a.y = ConstView<float, 2>(y.data(), {T * K - 1, D}, "y");
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a),
                        ContainsSubstring("combine_rows: y is [7, 5] (rows, d) but the plan has 8 rows (tokens·K)"));
  }
  SECTION("combine: out of the wrong shape, or with overlapping rows") {
    auto a = combine_args();
    a.out = TensorView<float, 2>(out.data(), {T, D - 1}, "out");
    a.weight_end = D - 1;
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a),
                        ContainsSubstring("out is [4, 4] (tokens, d) but expected [4, 5]"));
    a = combine_args();
    a.out = TensorView<float, 2>(out.data(), {T, D}, {3, 1}, "out");
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a), ContainsSubstring("out has row stride 3 but its rows are 5 wide"));
    a = combine_args();
    a.y = ConstView<float, 2>(y.data(), {T * K, D}, {5, 2}, "y");
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a), ContainsSubstring("y needs unit stride in its last dimension"));
  }
  SECTION("combine: weighted columns outside [0, D), or weighted without a gate") {
    auto a = combine_args();
    a.weight_begin = 2;
    a.weight_end = D + 1;
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a),
                        ContainsSubstring("weighted columns [2, 6) are not inside [0, 5)"));
    a.weight_begin = 3;
    a.weight_end = 2;
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::config_error);
    a = combine_args();
    a.gate = {};
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a),
                        ContainsSubstring("columns [0, 5) are to be weighted but no gate was given"));
  }
  SECTION("combine: gate of the wrong shape") {
    auto a = combine_args();
    a.gate = ConstView<float, 2>(gate.data(), {T, 1}, "gate");
    REQUIRE_THROWS_AS(moss::combine_rows(host, a), moss::shape_error);
    REQUIRE_THROWS_WITH(moss::combine_rows(host, a),
                        ContainsSubstring("gate is [4, 1] (tokens, K) but expected [4, 2]"));
  }
}
