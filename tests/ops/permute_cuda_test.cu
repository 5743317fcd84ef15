// tests/ops/permute_cuda_test.cu: `permute_plan`, `gather_rows` and `combine_rows` on CUDA
// against the host oracle.
//
// The plan is integer-exact, so the CUDA plan must equal the host plan entry for entry
// (pair_row, row_pair, offsets, counts), with and without capacity, K = 1 and 2, every token on
// one expert, empty experts, no tokens, and expert counts across several tiles of the offsets
// scan; a slot-major reference written here checks both. The workspace contract: a caller
// workspace of workspace_bytes (filled with garbage) gives the same plan; a smaller or
// misaligned one is a config_error.
// gather_rows copies rows, so it is compared bit for bit; combine_rows sums in float32 and is
// compared within the per-op tolerance, over weighted column ranges, strided and misaligned
// outputs whose gaps are poisoned and must stay untouched, and expert-output rows that no kept
// pair points at, filled with NaN so that reading them would show.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/random.hpp"
#include "moss/ops/permute.hpp"
#include "moss/ops/permute/cuda.cuh"
#include "moss/ops/router/math.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

namespace {

using Catch::Matchers::ContainsSubstring;
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

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

constexpr std::int32_t kPoisonIndex = 0x5a5a5a5a;

/// How the (token, slot) pairs spread over the experts.
enum class Spread { uniform, one_expert, sparse, skewed };

const char* spread_name(Spread s) {
  switch (s) {
    case Spread::uniform:
      return "uniform";
    case Spread::one_expert:
      return "one expert takes every token";
    case Spread::sparse:
      return "most experts empty";
    default:
      return "skewed";
  }
}

/// (tokens, K) experts, distinct within a token as a router writes them.
std::vector<std::int32_t> make_experts(index_t tokens, index_t K, index_t X, Spread spread, std::uint64_t seed) {
  std::vector<std::int32_t> allowed;
  for (index_t e = 0; e < X; ++e)
    if (spread != Spread::sparse || e % 5 == 2) allowed.push_back(static_cast<std::int32_t>(e));
  if (static_cast<index_t>(allowed.size()) < K) {
    allowed.clear();
    for (index_t e = 0; e < K; ++e) allowed.push_back(static_cast<std::int32_t>(X - 1 - e));
  }
  moss::Rng rng(seed);
  auto draw = [&]() -> std::int32_t {
    if (spread == Spread::skewed) {
      // P(e) ∝ 1 / (e + 1)²: expert 0 takes about 60 % of the pairs, the tail is thin.
      const double u = rng.uniform();
      double acc = 0, total = 0;
      for (index_t e = 0; e < X; ++e) total += 1.0 / double((e + 1) * (e + 1));
      for (index_t e = 0; e < X; ++e) {
        acc += 1.0 / double((e + 1) * (e + 1)) / total;
        if (u < acc) return static_cast<std::int32_t>(e);
      }
      return static_cast<std::int32_t>(X - 1);
    }
    return allowed[rng.next() % allowed.size()];
  };
  std::vector<std::int32_t> ex(static_cast<std::size_t>(tokens * K));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t s = 0; s < K; ++s) {
      std::int32_t e = 0;
      if (spread == Spread::one_expert) {
        e = static_cast<std::int32_t>((X - 1 + s * 3) % X);  // slot 0: expert X − 1 for every token
        if (s > 0 && e == ex[t * K]) e = static_cast<std::int32_t>((e + 1) % X);
      } else {
        bool fresh = false;
        while (!fresh) {
          e = draw();
          fresh = true;
          for (index_t j = 0; j < s; ++j) fresh = fresh && ex[t * K + j] != e;
        }
      }
      ex[t * K + s] = e;
    }
  }
  return ex;
}

/// Everything a plan holds, in host memory.
struct PlanOut {
  std::vector<std::int32_t> pair_row, row_pair, offsets, counts;
  bool operator==(const PlanOut&) const = default;
};

PlanOut poisoned_plan(index_t pairs, index_t X) {
  PlanOut p;
  p.pair_row.assign(static_cast<std::size_t>(pairs), kPoisonIndex);
  p.row_pair.assign(static_cast<std::size_t>(pairs), kPoisonIndex);
  p.offsets.assign(static_cast<std::size_t>(X + 1), kPoisonIndex);
  p.counts.assign(static_cast<std::size_t>(X), kPoisonIndex);
  return p;
}

PlanOut plan_host(const std::vector<std::int32_t>& experts, index_t tokens, index_t K, index_t X, index_t capacity) {
  PlanOut p = poisoned_plan(tokens * K, X);
  moss::PermutePlanArgs a;
  a.expert = ConstView<std::int32_t, 2>(experts.data(), {tokens, K}, "expert");
  a.num_experts = X;
  a.capacity = capacity;
  a.pair_row = TensorView<std::int32_t, 1>(p.pair_row.data(), {tokens * K}, "pair_row");
  a.row_pair = TensorView<std::int32_t, 1>(p.row_pair.data(), {tokens * K}, "row_pair");
  a.offsets = TensorView<std::int32_t, 1>(p.offsets.data(), {X + 1}, "offsets");
  a.counts = TensorView<std::int32_t, 1>(p.counts.data(), {X}, "counts");
  moss::permute_plan(Host{}, a);
  return p;
}

/// The plan on the GPU, in device buffers (outputs poisoned first).
struct DevicePlan {
  Buffer<std::int32_t> pair_row, row_pair, offsets, counts;
};

DevicePlan plan_cuda(const Cuda& gpu, const Buffer<std::int32_t>& experts, index_t tokens, index_t K, index_t X,
                     index_t capacity, moss::Workspace workspace = {}) {
  const PlanOut poison = poisoned_plan(tokens * K, X);
  DevicePlan d{device_copy(gpu, poison.pair_row), device_copy(gpu, poison.row_pair), device_copy(gpu, poison.offsets),
               device_copy(gpu, poison.counts)};
  moss::PermutePlanArgs a;
  a.expert = ConstView<std::int32_t, 2>(experts.data(), {tokens, K}, "expert");
  a.num_experts = X;
  a.capacity = capacity;
  a.pair_row = d.pair_row.flat("pair_row");
  a.row_pair = d.row_pair.flat("row_pair");
  a.offsets = d.offsets.flat("offsets");
  a.counts = d.counts.flat("counts");
  a.workspace = workspace;
  moss::permute_plan(gpu, a);
  return d;
}

PlanOut host_copy(const Cuda& gpu, const DevicePlan& d) {
  gpu.synchronize();
  return {host_copy(gpu, d.pair_row), host_copy(gpu, d.row_pair), host_copy(gpu, d.offsets), host_copy(gpu, d.counts)};
}

/// The plan as permute.hpp defines it, written independently: pairs in slot-major order
/// (every slot-0 pair in token order, then slot 1, ...), each expert keeping its first C; an
/// expert outside [0, X) is dropped (the CUDA plan's documented treatment).
PlanOut reference_plan(const std::vector<std::int32_t>& experts, index_t tokens, index_t K, index_t X,
                       index_t capacity) {
  PlanOut p;
  p.pair_row.assign(static_cast<std::size_t>(tokens * K), -1);
  p.row_pair.assign(static_cast<std::size_t>(tokens * K), -1);
  p.counts.assign(static_cast<std::size_t>(X), 0);
  p.offsets.assign(static_cast<std::size_t>(X + 1), 0);
  for (const std::int32_t e : experts)
    if (e >= 0 && e < X) ++p.counts[e];
  for (index_t e = 0; e < X; ++e) {
    const std::int32_t kept =
        capacity > 0 ? std::min<std::int32_t>(p.counts[e], static_cast<std::int32_t>(capacity)) : p.counts[e];
    p.offsets[e + 1] = p.offsets[e] + kept;
  }
  std::vector<std::int32_t> rank(static_cast<std::size_t>(X), 0);
  for (index_t s = 0; s < K; ++s)
    for (index_t t = 0; t < tokens; ++t) {
      const std::int32_t e = experts[t * K + s];
      if (e < 0 || e >= X) continue;
      const std::int32_t r = rank[e]++;
      if (capacity > 0 && r >= capacity) continue;
      const std::int32_t row = p.offsets[e] + r;
      p.pair_row[t * K + s] = row;
      p.row_pair[row] = static_cast<std::int32_t>(t * K + s);
    }
  return p;
}

/// The capacities tried for a call: dropless, cf = 1 (MoE-Mamba's), cf = 0.5 and 1.
std::vector<index_t> capacities(index_t tokens, index_t K, index_t X) {
  return {0, static_cast<index_t>(moss::detail::route::expert_capacity(1.0, tokens, K, X)),
          static_cast<index_t>(moss::detail::route::expert_capacity(0.5, tokens, K, X)), 1};
}

}  // namespace

namespace {

/// Plans every combination of the given expert counts, K = 1 and 2, token counts and spreads,
/// under every capacity, on both backends: the CUDA plan must equal the host plan entry for
/// entry, and the host plan the reference.
void check_plans(const Cuda& gpu, std::initializer_list<index_t> expert_counts,
                 std::initializer_list<index_t> token_counts, std::initializer_list<Spread> spreads,
                 std::uint64_t seed) {
  for (index_t X : expert_counts) {
    for (index_t K : {1, 2}) {
      if (K > X) continue;
      for (index_t tokens : token_counts) {
        for (Spread spread : spreads) {
          seed += 7;
          const auto experts = make_experts(tokens, K, X, spread, seed);
          const Buffer<std::int32_t> dex = device_copy(gpu, experts);
          for (index_t capacity : capacities(tokens, K, X)) {
            CAPTURE(X, K, tokens, spread_name(spread), capacity);
            const PlanOut want = plan_host(experts, tokens, K, X, capacity);
            const PlanOut got = host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, capacity));
            CHECK(got.counts == want.counts);
            CHECK(got.offsets == want.offsets);
            CHECK(got.pair_row == want.pair_row);
            CHECK(got.row_pair == want.row_pair);
            CHECK(want == reference_plan(experts, tokens, K, X, capacity));
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("permute_plan: the CUDA plan equals the host plan entry for entry", "[cuda][ops][permute]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  check_plans(gpu, {1, 8, 17, 64, 256}, {0, 1, 7, 1000, 4097, 16384},
              {Spread::uniform, Spread::one_expert, Spread::sparse, Spread::skewed}, 10);
}

TEST_CASE("permute_plan: CUDA at a realistic shape (65536 tokens, K = 2, 64 experts)", "[cuda][ops][permute][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t tokens = 65536, K = 2, X = 64;
  const auto experts = make_experts(tokens, K, X, Spread::skewed, 77);
  const Buffer<std::int32_t> dex = device_copy(gpu, experts);
  for (index_t capacity : capacities(tokens, K, X)) {
    CAPTURE(capacity);
    CHECK(host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, capacity)) == plan_host(experts, tokens, K, X, capacity));
  }
}

TEST_CASE("permute_plan: CUDA offsets scan across many tiles of experts", "[cuda][ops][permute]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  // The offsets kernel scans tiles of 256 experts with a running total: X at and just above one
  // tile, and several tiles; small token counts (racecheck-friendly) leave most experts empty.
  check_plans(gpu, {256, 257, 3000}, {1, 7, 1000}, {Spread::uniform, Spread::one_expert, Spread::sparse}, 3000);
}

TEST_CASE("permute_plan: CUDA workspace contract", "[cuda][ops][permute]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t tokens = 4097, K = 2, X = 17;
  const auto experts = make_experts(tokens, K, X, Spread::skewed, 31);
  const Buffer<std::int32_t> dex = device_copy(gpu, experts);
  const PlanOut poison = poisoned_plan(tokens * K, X);
  DevicePlan d{device_copy(gpu, poison.pair_row), device_copy(gpu, poison.row_pair), device_copy(gpu, poison.offsets),
               device_copy(gpu, poison.counts)};
  moss::PermutePlanArgs a;
  a.expert = ConstView<std::int32_t, 2>(dex.data(), {tokens, K}, "expert");
  a.num_experts = X;
  a.capacity = 300;
  a.pair_row = d.pair_row.flat("pair_row");
  a.row_pair = d.row_pair.flat("row_pair");
  a.offsets = d.offsets.flat("offsets");
  a.counts = d.counts.flat("counts");
  const std::size_t need = moss::workspace_bytes(gpu, a);
  CHECK(moss::workspace_bytes(Host{}, a) == 0);
  // At least the sort keys and values (input and sorted) and the run bounds.
  CHECK(need >= 4 * static_cast<std::size_t>(tokens * K) * sizeof(std::int32_t) + 2 * X * sizeof(std::int32_t));
  const PlanOut want = plan_host(experts, tokens, K, X, 300);

  SECTION("an exact caller workspace, filled with garbage, gives the host plan") {
    Buffer<unsigned char> ws = device_copy(gpu, std::vector<unsigned char>(need, 0xab));
    CHECK(host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, 300, moss::Workspace{ws.data(), need})) == want);
    // At an aligned offset into a larger buffer, too; and twice from the same workspace.
    Buffer<unsigned char> big = device_copy(gpu, std::vector<unsigned char>(need + 1024, 0x5a));
    const moss::Workspace inner{big.data() + moss::kWorkspaceAlignment, need + 512};
    CHECK(host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, 300, inner)) == want);
    CHECK(host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, 300, inner)) == want);
    // make_permute_plan passes it through.
    const moss::PermutePlan mp = moss::make_permute_plan(gpu, a.expert, X, 300, moss::Workspace{ws.data(), need});
    gpu.synchronize();
    CHECK(host_copy(gpu, mp.pair_row) == want.pair_row);
    CHECK(host_copy(gpu, mp.offsets) == want.offsets);
  }
  SECTION("a small plan (no tokens, or up to kSmallPlanPairs pairs): no scratch, a given workspace still checked") {
    moss::PermutePlanArgs e = a;
    e.expert = ConstView<std::int32_t, 2>(dex.data(), {0, K}, "expert");
    e.pair_row = TensorView<std::int32_t, 1>(d.pair_row.data(), {0}, "pair_row");
    e.row_pair = TensorView<std::int32_t, 1>(d.row_pair.data(), {0}, "row_pair");
    CHECK(moss::workspace_bytes(gpu, e) == 0);
    const index_t small = moss::detail::permute::kSmallPlanPairs / K;
    e.expert = ConstView<std::int32_t, 2>(dex.data(), {small, K}, "expert");
    e.pair_row = TensorView<std::int32_t, 1>(d.pair_row.data(), {small * K}, "pair_row");
    e.row_pair = TensorView<std::int32_t, 1>(d.row_pair.data(), {small * K}, "row_pair");
    CHECK(moss::workspace_bytes(gpu, e) == 0);
    Buffer<unsigned char> ws = gpu.alloc<unsigned char>(1024);
    e.workspace = moss::Workspace{ws.data() + 4, 512};
    REQUIRE_THROWS_WITH(moss::permute_plan(gpu, e), ContainsSubstring("is not aligned to 256 bytes"));
  }
  SECTION("too small or misaligned: config_error naming the op and the sizes") {
    Buffer<unsigned char> ws = gpu.alloc<unsigned char>(static_cast<index_t>(need + 1024));
    a.workspace = moss::Workspace{ws.data(), need - 1};
    REQUIRE_THROWS_AS(moss::permute_plan(gpu, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(gpu, a),
                        ContainsSubstring("permute_plan (cuda): the workspace holds " + std::to_string(need - 1) +
                                          " bytes but this call needs " + std::to_string(need)));
    a.workspace = moss::Workspace{ws.data() + 4, need};
    REQUIRE_THROWS_AS(moss::permute_plan(gpu, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::permute_plan(gpu, a), ContainsSubstring("is not aligned to 256 bytes"));
    gpu.synchronize();
  }
}

TEST_CASE("permute_plan: CUDA on both sides of the small plan's limits", "[cuda][ops][permute]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  using moss::detail::permute::kSmallPlanExperts;
  using moss::detail::permute::kSmallPlanPairs;
  // One block up to kSmallPlanPairs pairs and kSmallPlanExperts experts, the sort beyond.
  check_plans(gpu, {8, kSmallPlanExperts, kSmallPlanExperts + 1}, {kSmallPlanPairs / 2, kSmallPlanPairs / 2 + 1},
              {Spread::uniform, Spread::one_expert, Spread::skewed}, 5000);
  check_plans(gpu, {3, 64}, {kSmallPlanPairs - 1, kSmallPlanPairs, kSmallPlanPairs + 1},
              {Spread::sparse, Spread::skewed}, 5100);
}

TEST_CASE("permute_plan: the small plan's routines run on the host equal the reference plan", "[ops][permute]") {
  // No GPU needed: small_plan_kernel's phases in order, every thread's work done in turn.
  std::uint64_t seed = 5200;
  for (index_t X : {1, 3, 8, 64}) {
    for (index_t K : {1, 2}) {
      if (K > X) continue;
      for (index_t tokens : {0, 1, 7, 100, 256}) {
        for (Spread spread : {Spread::uniform, Spread::one_expert, Spread::sparse, Spread::skewed}) {
          auto experts = make_experts(tokens, K, X, spread, seed += 7);
          if (tokens > 3) experts[3] = static_cast<std::int32_t>(X);  // an expert outside [0, X): dropped
          for (index_t capacity : capacities(tokens, K, X)) {
            CAPTURE(X, K, tokens, spread_name(spread), capacity);
            const index_t P = tokens * K;
            PlanOut got = poisoned_plan(P, X);
            std::vector<std::int32_t> pair_expert(static_cast<std::size_t>(P)), count(static_cast<std::size_t>(X), 0),
                shared_off(static_cast<std::size_t>(X + 1));
            for (index_t sm = 0; sm < P; ++sm) {
              pair_expert[sm] =
                  moss::detail::permute::small_plan_expert(experts.data(), tokens, K, static_cast<int>(X), sm);
              got.row_pair[sm] = -1;
            }
            for (index_t sm = 0; sm < P; ++sm)
              if (pair_expert[sm] >= 0) ++count[pair_expert[sm]];
            moss::detail::permute::small_plan_offsets(count.data(), static_cast<int>(X), capacity, got.counts.data(),
                                                      got.offsets.data(), shared_off.data());
            for (index_t sm = 0; sm < P; ++sm)
              moss::detail::permute::small_plan_pair(pair_expert.data(), tokens, K, capacity, shared_off.data(), sm,
                                                     got.pair_row.data(), got.row_pair.data());
            const PlanOut want = reference_plan(experts, tokens, K, X, capacity);
            CHECK(got.counts == want.counts);
            CHECK(got.offsets == want.offsets);
            CHECK(got.pair_row == want.pair_row);
            CHECK(got.row_pair == want.row_pair);
          }
        }
      }
    }
  }
}

TEST_CASE("permute_plan: CUDA drops an expert outside 0..X-1 (the host raises)", "[cuda][ops][permute]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t tokens = 500, K = 2, X = 8;
  auto experts = make_experts(tokens, K, X, Spread::uniform, 5);
  experts[3 * K] = static_cast<std::int32_t>(X);
  experts[10 * K + 1] = -1;
  experts[499 * K] = 1000;
  REQUIRE_THROWS_AS(plan_host(experts, tokens, K, X, 0), moss::shape_error);
  const Buffer<std::int32_t> dex = device_copy(gpu, experts);
  for (index_t capacity : capacities(tokens, K, X)) {
    CAPTURE(capacity);
    CHECK(host_copy(gpu, plan_cuda(gpu, dex, tokens, K, X, capacity)) ==
          reference_plan(experts, tokens, K, X, capacity));
  }
}

namespace {

/// Where a (rows, D) matrix sits in device memory.
enum class Layout { contiguous, aligned_stride, misaligned };

const char* layout_name(Layout l) {
  return l == Layout::contiguous ? "contiguous" : l == Layout::aligned_stride ? "aligned stride" : "misaligned";
}

/// A (rows, cols) matrix inside a wider buffer: `offset` elements first, row stride `ld`.
struct Placement {
  index_t offset, ld, size;
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

template <class T>
std::vector<T> place(const std::vector<T>& m, index_t rows, index_t cols, const Placement& p, T fill) {
  std::vector<T> wide(static_cast<std::size_t>(p.size), fill);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) wide[p.offset + r * p.ld + c] = m[r * cols + c];
  return wide;
}

/// The plan of a uniform routing on both backends (checked equal), for the gather and combine.
struct BothPlans {
  PlanOut host;
  DevicePlan cuda;
  index_t kept = 0;
};

BothPlans make_plans(const Cuda& gpu, index_t tokens, index_t K, index_t X, index_t capacity, std::uint64_t seed) {
  const auto experts = make_experts(tokens, K, X, Spread::skewed, seed);
  const Buffer<std::int32_t> dex = device_copy(gpu, experts);
  BothPlans b{plan_host(experts, tokens, K, X, capacity), plan_cuda(gpu, dex, tokens, K, X, capacity), 0};
  REQUIRE(host_copy(gpu, b.cuda) == b.host);
  b.kept = b.host.offsets[X];
  return b;
}

template <class T>
void check_gather(const Cuda& gpu, const BothPlans& plans, index_t tokens, index_t K, index_t X, index_t D,
                  Layout layout, std::uint64_t seed) {
  CAPTURE(tokens, K, X, D, plans.kept, layout_name(layout));
  const index_t rows = tokens * K;
  const auto x = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(tokens * D), seed + 1));
  const Placement px = placement<T>(tokens, D, layout);
  const auto x_wide = place(x, tokens, D, px, moss::from_float<T>(1e4f));
  const T poison = moss::from_float<T>(-777.0f);
  // out must be contiguous; it is misaligned when D is odd anyway.
  std::vector<T> want(static_cast<std::size_t>(rows * D), poison);
  moss::GatherRowsArgs<T> h;
  h.x = ConstView<T, 2>(x_wide.data() + px.offset, {tokens, D}, {px.ld, 1}, "x");
  h.row_pair = ConstView<std::int32_t, 1>(plans.host.row_pair.data(), {rows}, "row_pair");
  h.offsets = ConstView<std::int32_t, 1>(plans.host.offsets.data(), {X + 1}, "offsets");
  h.k = K;
  h.out = TensorView<T, 2>(want.data(), {rows, D}, "out");
  moss::gather_rows(Host{}, h);

  const Buffer<T> dx = device_copy(gpu, x_wide);
  Buffer<T> dout = device_copy(gpu, std::vector<T>(want.size(), poison));
  moss::GatherRowsArgs<T> g;
  g.x = ConstView<T, 2>(dx.data() + px.offset, {tokens, D}, {px.ld, 1}, "x");
  g.row_pair = ConstView<std::int32_t, 1>(plans.cuda.row_pair.data(), {rows}, "row_pair");
  g.offsets = ConstView<std::int32_t, 1>(plans.cuda.offsets.data(), {X + 1}, "offsets");
  g.k = K;
  g.out = dout.template view<2>({rows, D}, "out");
  moss::gather_rows(gpu, g);
  gpu.synchronize();
  const auto got = host_copy(gpu, dout);
  CHECK(same_bits(got, want));  // rows past the kept ones stay poisoned on both
}

/// Which columns the gate multiplies.
struct WeightRange {
  const char* name;
  bool gate;
  index_t begin, end;
};

std::vector<WeightRange> weight_ranges(index_t D) {
  return {{"no gate", false, 0, 0},
          {"every column", true, 0, D},
          {"second half", true, D / 2, D},
          {"inner columns", true, std::min<index_t>(1, D), std::max<index_t>(std::min<index_t>(1, D), D - 2)},
          {"no column", true, 0, 0}};
}

template <class T>
void check_combine(const Cuda& gpu, const BothPlans& plans, index_t tokens, index_t K, index_t D, Layout y_layout,
                   Layout out_layout, std::uint64_t seed, bool all_ranges = true) {
  const index_t rows = tokens * K;
  // Rows no kept pair points at are NaN: the combine must never read them.
  auto yf = moss::test::randn(static_cast<std::size_t>(rows * D), seed + 1);
  for (index_t r = plans.kept; r < rows; ++r)
    for (index_t c = 0; c < D; ++c) yf[r * D + c] = NAN;
  const auto y = moss::test::to_storage<T>(yf);
  auto gate = moss::test::uniform(static_cast<std::size_t>(rows), seed + 2, 0.05f, 1.0f);
  for (index_t p = 0; p < rows; ++p)
    if (plans.host.pair_row[p] < 0) gate[p] = NAN;  // a dropped pair's gate is never read either
  const Placement py = placement<T>(rows, D, y_layout);
  const Placement po = placement<T>(tokens, D, out_layout);
  const auto y_wide = place(y, rows, D, py, moss::from_float<T>(NAN));
  const T poison = moss::from_float<T>(NAN);
  const Buffer<T> dy = device_copy(gpu, y_wide);
  const Buffer<float> dgate = device_copy(gpu, gate);
  for (const WeightRange& range : weight_ranges(D)) {
    if (!all_ranges && !(range.gate && range.begin == 0 && range.end == D)) continue;
    CAPTURE(tokens, K, D, plans.kept, layout_name(y_layout), layout_name(out_layout), range.name);
    std::vector<T> want_wide(static_cast<std::size_t>(po.size), poison);
    moss::CombineRowsArgs<T> h;
    h.y = ConstView<T, 2>(y_wide.data() + py.offset, {rows, D}, {py.ld, 1}, "y");
    h.pair_row = ConstView<std::int32_t, 2>(plans.host.pair_row.data(), {tokens, K}, "pair_row");
    if (range.gate) h.gate = ConstView<float, 2>(gate.data(), {tokens, K}, "gate");
    h.weight_begin = range.begin;
    h.weight_end = range.end;
    h.out = TensorView<T, 2>(want_wide.data() + po.offset, {tokens, D}, {po.ld, 1}, "out");
    moss::combine_rows(Host{}, h);

    Buffer<T> dout = device_copy(gpu, std::vector<T>(want_wide.size(), poison));
    moss::CombineRowsArgs<T> g;
    g.y = ConstView<T, 2>(dy.data() + py.offset, {rows, D}, {py.ld, 1}, "y");
    g.pair_row = ConstView<std::int32_t, 2>(plans.cuda.pair_row.data(), {tokens, K}, "pair_row");
    if (range.gate) g.gate = ConstView<float, 2>(dgate.data(), {tokens, K}, "gate");
    g.weight_begin = range.begin;
    g.weight_end = range.end;
    g.out = TensorView<T, 2>(dout.data() + po.offset, {tokens, D}, {po.ld, 1}, "out");
    moss::combine_rows(gpu, g);
    gpu.synchronize();
    const auto got_wide = host_copy(gpu, dout);

    std::vector<T> got, want;
    bool gaps_kept = true;
    for (index_t i = 0; i < po.size; ++i) {
      const index_t r = (i - po.offset) / po.ld, c = (i - po.offset) % po.ld;
      if (i >= po.offset && r < tokens && c < D) {
        got.push_back(got_wide[i]);
        want.push_back(want_wide[i]);
      } else {
        gaps_kept = gaps_kept && same_bits(got_wide[i], poison);
      }
    }
    CHECK(gaps_kept);
    CHECK(moss::test::rel_l2(got, want) <= moss::test::op_tolerance<T>());
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gather_rows: CUDA copies the same rows as the host, bit for bit", "[cuda][ops][permute]", float,
                   f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 2000;
  for (index_t tokens : {1, 7, 1000, 4097}) {
    for (index_t K : {1, 2}) {
      for (index_t X : {8, 64}) {
        for (index_t D : {1, 7, 8, 33, 256}) {
          seed += 5;
          if (tokens * D > 300000) continue;  // the realistic case below covers the large sizes
          const index_t cf1 = static_cast<index_t>(moss::detail::route::expert_capacity(1.0, tokens, K, X));
          for (index_t capacity : {index_t(0), cf1}) {
            const BothPlans plans = make_plans(gpu, tokens, K, X, capacity, seed);
            for (Layout layout : {Layout::contiguous, Layout::aligned_stride, Layout::misaligned})
              check_gather<TestType>(gpu, plans, tokens, K, X, D, layout, seed);
          }
        }
      }
    }
  }
  // Realistic: 4096 tokens of d_model 2048, top-2 over 8 experts, with capacity.
  const BothPlans big = make_plans(gpu, 4096, 2, 8, moss::detail::route::expert_capacity(1.0, 4096, 2, 8), seed + 1);
  check_gather<TestType>(gpu, big, 4096, 2, 8, 2048, Layout::contiguous, seed + 1);
}

TEMPLATE_TEST_CASE("combine_rows: CUDA matches the host over weighted ranges and strided outputs",
                   "[cuda][ops][permute]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 3000;
  for (index_t tokens : {1, 7, 1000, 4097}) {
    for (index_t K : {1, 2}) {
      for (index_t X : {8, 64}) {
        for (index_t D : {1, 7, 8, 33, 256}) {
          seed += 5;
          if (tokens * D > 300000) continue;  // the realistic case below covers the large sizes
          const index_t cf1 = static_cast<index_t>(moss::detail::route::expert_capacity(1.0, tokens, K, X));
          for (index_t capacity : {index_t(0), cf1}) {
            const BothPlans plans = make_plans(gpu, tokens, K, X, capacity, seed);
            check_combine<TestType>(gpu, plans, tokens, K, D, Layout::contiguous, Layout::contiguous, seed);
            check_combine<TestType>(gpu, plans, tokens, K, D, Layout::aligned_stride, Layout::aligned_stride, seed);
            check_combine<TestType>(gpu, plans, tokens, K, D, Layout::contiguous, Layout::misaligned, seed);
            check_combine<TestType>(gpu, plans, tokens, K, D, Layout::misaligned, Layout::aligned_stride, seed);
          }
        }
      }
    }
  }
  // Realistic: 4096 tokens of d_model 1024, top-2 over 8 experts, with capacity.
  const BothPlans big = make_plans(gpu, 4096, 2, 8, moss::detail::route::expert_capacity(1.0, 4096, 2, 8), seed + 1);
  check_combine<TestType>(gpu, big, 4096, 2, 1024, Layout::contiguous, Layout::contiguous, seed + 1, false);
}

TEMPLATE_TEST_CASE("permute ops: CUDA with no tokens", "[cuda][ops][permute]", float, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t X = 8, K = 2, D = 16;
  const Buffer<std::int32_t> dex = device_copy(gpu, std::vector<std::int32_t>{});
  const DevicePlan plan = plan_cuda(gpu, dex, 0, K, X, 0);
  const PlanOut got = host_copy(gpu, plan);
  CHECK(got.counts == std::vector<std::int32_t>(X, 0));
  CHECK(got.offsets == std::vector<std::int32_t>(X + 1, 0));
  const Buffer<TestType> dx = gpu.alloc<TestType>(0), dy = gpu.alloc<TestType>(0), dout = gpu.alloc<TestType>(0);
  moss::GatherRowsArgs<TestType> g{ConstView<TestType, 2>(dx.data(), {0, D}, "x"), plan.row_pair.flat("row_pair"),
                                   plan.offsets.flat("offsets"), K,
                                   TensorView<TestType, 2>(dout.data(), {0, D}, "out")};
  moss::gather_rows(gpu, g);
  moss::CombineRowsArgs<TestType> c;
  c.y = ConstView<TestType, 2>(dy.data(), {0, D}, "y");
  c.pair_row = ConstView<std::int32_t, 2>(plan.pair_row.data(), {0, K}, "pair_row");
  c.out = TensorView<TestType, 2>(dout.data(), {0, D}, "out");
  moss::combine_rows(gpu, c);
  gpu.synchronize();
}
