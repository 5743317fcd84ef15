// tests/ops/router_cuda_test.cu: `route` and `router_stats` on CUDA against the host oracle.
//
// The contract (moss/ops/router.hpp): the float32 logits are bit-identical on both backends (the
// host replays the kernel's summation order), so the selected experts are identical too; gates
// may differ by the device's expf (≤ 1e-6 relative here). SinkhornTop1 in training mode is the
// exception: its balancing sums round differently on the device, so a tiny fraction of
// near-tied tokens may pick another expert and the balanced loads are compared loosely.
// Shapes cover tokens 1 … 16384, d_model 1, 33 (not a multiple of the 16-byte chunk) and 2048,
// expert counts 1 … 256 (kMaxExperts), the weight staged in shared memory and read from global
// memory, and x contiguous, with a wider aligned row stride, and one element off 16 bytes (the
// scalar load path). Outputs are poisoned before every CUDA call.
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/core/random.hpp"
#include "moss/ops/router.hpp"
#include "moss/ops/router/cuda.cuh"
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

/// max_i |a_i − b_i| / |b_i| (0 for equal values, including equal infinities); NaN on one side
/// only gives +inf.
double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]))) continue;
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    m = std::max(m,
                 std::fabs(static_cast<double>(a[i]) - b[i]) / std::max(std::fabs(static_cast<double>(b[i])), 1e-30));
  }
  return m;
}

constexpr float kPoison = -12345.0f;
constexpr std::int32_t kPoisonIndex = 0x5a5a5a5a;

/// Where x sits in device memory.
enum class Layout { contiguous, aligned_stride, misaligned };

const char* layout_name(Layout l) {
  return l == Layout::contiguous ? "contiguous" : l == Layout::aligned_stride ? "aligned stride" : "misaligned";
}

/// A (tokens, D) matrix placed per `layout` in a wider buffer: elements before `offset`, row
/// stride `ld`; everything outside the matrix is a large finite value, never read.
template <class T>
struct PlacedX {
  std::vector<T> wide;
  index_t offset = 0, ld = 0;
};

template <class T>
PlacedX<T> place(const std::vector<T>& x, index_t tokens, index_t D, Layout layout) {
  constexpr index_t V = 16 / sizeof(T);
  PlacedX<T> p;
  p.ld = layout == Layout::contiguous ? D : layout == Layout::aligned_stride ? (D + V - 1) / V * V + V : D + 3;
  p.offset = layout == Layout::misaligned ? 1 : 0;
  p.wide.assign(static_cast<std::size_t>(tokens * p.ld + p.offset + 1), moss::from_float<T>(1e4f));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t i = 0; i < D; ++i) p.wide[p.offset + t * p.ld + i] = x[t * D + i];
  return p;
}

/// What `route` wrote.
struct Routed {
  std::vector<float> logits, gate;
  std::vector<std::int32_t> expert;
};

template <class T, class R>
Routed route_host(const R& router, const std::vector<T>& x, const std::vector<float>& w, index_t tokens, index_t D,
                  index_t X) {
  Routed r;
  r.logits.assign(static_cast<std::size_t>(tokens * X), kPoison);
  r.expert.assign(static_cast<std::size_t>(tokens * R::k), kPoisonIndex);
  r.gate.assign(static_cast<std::size_t>(tokens * R::k), kPoison);
  moss::RouteArgs<T, R> a;
  a.router = router;
  a.x = ConstView<T, 2>(x.data(), {tokens, D}, "x");
  a.weight = ConstView<float, 2>(w.data(), {X, D}, "weight");
  a.logits = TensorView<float, 2>(r.logits.data(), {tokens, X}, "logits");
  a.expert = TensorView<std::int32_t, 2>(r.expert.data(), {tokens, R::k}, "expert");
  a.gate = TensorView<float, 2>(r.gate.data(), {tokens, R::k}, "gate");
  moss::route(Host{}, a);
  return r;
}

template <class T, class R>
Routed route_cuda(const Cuda& gpu, const R& router, const PlacedX<T>& px, const Buffer<float>& dw, index_t tokens,
                  index_t D, index_t X) {
  const Buffer<T> dx = device_copy(gpu, px.wide);
  Buffer<float> dl = device_copy(gpu, std::vector<float>(static_cast<std::size_t>(tokens * X), kPoison));
  Buffer<std::int32_t> de =
      device_copy(gpu, std::vector<std::int32_t>(static_cast<std::size_t>(tokens * R::k), kPoisonIndex));
  Buffer<float> dg = device_copy(gpu, std::vector<float>(static_cast<std::size_t>(tokens * R::k), kPoison));
  moss::RouteArgs<T, R> a;
  a.router = router;
  a.x = ConstView<T, 2>(dx.data() + px.offset, {tokens, D}, {px.ld, 1}, "x");
  a.weight = ConstView<float, 2>(dw.data(), {X, D}, "weight");
  a.logits = TensorView<float, 2>(dl.data(), {tokens, X}, "logits");
  a.expert = TensorView<std::int32_t, 2>(de.data(), {tokens, R::k}, "expert");
  a.gate = TensorView<float, 2>(dg.data(), {tokens, R::k}, "gate");
  moss::route(gpu, a);
  gpu.synchronize();
  return {host_copy(gpu, dl), host_copy(gpu, dg), host_copy(gpu, de)};
}

/// x ~ N(0, 1) in T and a router weight ~ N(0, 1/D), so the logits are O(1) at every d_model.
template <class T>
std::vector<T> make_x(index_t tokens, index_t D, std::uint64_t seed) {
  return moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(tokens * D), seed));
}
inline std::vector<float> make_weight(index_t X, index_t D, std::uint64_t seed) {
  return moss::test::randn(static_cast<std::size_t>(X * D), seed, static_cast<float>(1.0 / std::sqrt(double(D))));
}

struct Shape {
  index_t tokens, d_model, experts;
};
// Each token count, d_model and expert count of the contract appears with several of the
// others; the weight (X·D floats) is staged in the kernel's shared memory in some shapes and
// read from global memory in others (X = 17 or 256 with D = 2048).
constexpr Shape kShapes[] = {{1, 1, 1},     {1, 2048, 8},   {7, 33, 17},     {7, 2048, 256}, {257, 2048, 17},
                             {1000, 1, 64}, {1000, 33, 8},  {1000, 2048, 8}, {257, 33, 256}, {4097, 33, 17},
                             {4097, 1, 1},  {16384, 64, 8}, {16384, 1, 8}};

/// Routes one shape on both backends (the host once, CUDA once per layout) and checks the
/// contract: logits bit for bit, experts exactly, gates within 1e-6.
template <class T, class R>
void check_route(const Cuda& gpu, const R& router, const Shape& s, std::uint64_t seed, bool all_layouts) {
  const index_t tokens = s.tokens, D = s.d_model, X = s.experts;
  const auto x = make_x<T>(tokens, D, seed);
  const auto w = make_weight(X, D, seed + 1);
  const Routed want = route_host(router, x, w, tokens, D, X);
  const Buffer<float> dw = device_copy(gpu, w);
  for (Layout layout : {Layout::contiguous, Layout::aligned_stride, Layout::misaligned}) {
    if (!all_layouts && layout != Layout::contiguous) continue;
    CAPTURE(tokens, D, X, R::k, layout_name(layout));
    const Routed got = route_cuda(gpu, router, place(x, tokens, D, layout), dw, tokens, D, X);
    CHECK(same_bits(got.logits, want.logits));
    CHECK(got.expert == want.expert);
    CHECK(moss::test::rel_l2(got.gate, want.gate) <= 1e-6);
    CHECK(max_rel(got.gate, want.gate) <= 1e-5);
  }
}

template <class T>
void check_all_routers(const Cuda& gpu, const Shape& s, std::uint64_t seed, bool all_layouts) {
  check_route<T>(gpu, moss::Top1Switch{}, s, seed, all_layouts);
  check_route<T>(gpu, moss::SinkhornTop1{}, s, seed, all_layouts);  // inference mode: argmax of sigmoid(logits)
  if (s.tokens <= 1000) check_route<T>(gpu, moss::TopK<1>{true}, s, seed, all_layouts);  // g = 1 exactly
  if (s.experts >= 2) {
    check_route<T>(gpu, moss::TopK<2>{false}, s, seed, all_layouts);
    check_route<T>(gpu, moss::TopK<2>{true}, s, seed, all_layouts);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("route: CUDA logits are bit-identical to the host's and select the same experts",
                   "[cuda][ops][router]", float, f16, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    seed += 10;
    check_all_routers<TestType>(gpu, s, seed, s.tokens <= 4097);
  }
}

TEST_CASE("route: CUDA at a realistic shape (16384 tokens, d_model 2048, 8 experts, bf16)", "[cuda][ops][router]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  check_route<bf16>(gpu, moss::Top1Switch{}, Shape{16384, 2048, 8}, 7, true);
}

TEST_CASE("route: CUDA with no tokens writes nothing", "[cuda][ops][router]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const auto w = make_weight(8, 33, 1);
  const Buffer<float> dw = device_copy(gpu, w);
  const Routed got =
      route_cuda(gpu, moss::TopK<2>{}, place(std::vector<float>{}, 0, 33, Layout::contiguous), dw, 0, 33, 8);
  CHECK(got.logits.empty());
  CHECK(got.expert.empty());
  const Routed got_s =
      route_cuda(gpu, moss::SinkhornTop1{true}, place(std::vector<bf16>{}, 0, 33, Layout::contiguous), dw, 0, 33, 8);
  CHECK(got_s.gate.empty());
}

TEMPLATE_TEST_CASE("route: CUDA ties, NaN logits and all-NaN tokens select as the host does", "[cuda][ops][router]",
                   float, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t tokens = 300, D = 40, X = 17;
  auto xf = moss::test::randn(static_cast<std::size_t>(tokens * D), 5);
  for (index_t i = 0; i < D; ++i) xf[7 * D + i] = NAN;  // token 7: every logit NaN → expert 0 (then 1), NaN gates
  auto w = make_weight(X, D, 6);
  for (index_t i = 0; i < D; ++i) {
    w[5 * D + i] = w[2 * D + i];  // experts 2 and 5 tie for every token: 2 ranks first
    w[9 * D + i] = NAN;           // expert 9's logit is NaN: never selected while others are numbers
    w[11 * D + i] = 0.0f;         // expert 11's logit is exactly 0
  }
  const auto x = moss::test::to_storage<TestType>(xf);
  const Buffer<float> dw = device_copy(gpu, w);
  auto same_or_both_nan = [](const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!(std::memcmp(&a[i], &b[i], sizeof(float)) == 0 || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
    return true;
  };
  auto check = [&](const auto& router) {
    using R = std::decay_t<decltype(router)>;
    CAPTURE(R::k, moss::router_wants_balance(router));
    const Routed want = route_host(router, x, w, tokens, D, X);
    const Routed got = route_cuda(gpu, router, place(x, tokens, D, Layout::contiguous), dw, tokens, D, X);
    CHECK(same_or_both_nan(got.logits, want.logits));
    CHECK(got.expert == want.expert);
    CHECK(max_rel(got.gate, want.gate) <= 1e-5);
    for (index_t t = 0; t < tokens; ++t)
      for (int s = 0; s < R::k; ++s) {
        if (t != 7) CHECK(got.expert[t * R::k + s] != 9);
      }
    if constexpr (R::k == 2) {
      CHECK(got.expert[7 * 2] == 0);
      CHECK(got.expert[7 * 2 + 1] == 1);
    } else {
      CHECK(got.expert[7] == 0);
    }
    CHECK(std::isnan(got.gate[7 * R::k]));
  };
  check(moss::Top1Switch{});
  check(moss::TopK<2>{true});
  check(moss::SinkhornTop1{});
}

TEMPLATE_TEST_CASE("route: SinkhornTop1 training mode on CUDA balances like the host", "[cuda][ops][router]", float,
                   bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  struct Case {
    index_t tokens, d_model, experts;
    bool skewed;  // expert 0 gets +3 on every logit: inference mode sends it most tokens
  };
  const Case cases[] = {{1, 33, 8, false},    {64, 33, 8, false},   {1000, 33, 8, true},   {1000, 64, 17, false},
                        {4097, 64, 64, true}, {16384, 64, 8, true}, {2048, 2048, 8, false}};
  std::uint64_t seed = 900;
  for (const Case& c : cases) {
    seed += 10;
    const index_t tokens = c.tokens, D = c.d_model, X = c.experts;
    CAPTURE(tokens, D, X, c.skewed);
    auto xf = moss::test::randn(static_cast<std::size_t>(tokens * D), seed);
    auto w = make_weight(X, D, seed + 1);
    if (c.skewed) {
      for (index_t t = 0; t < tokens; ++t) xf[t * D] = 1.0f;
      for (index_t i = 0; i < X; ++i) w[i * D] = i == 0 ? 3.0f : 0.0f;
    }
    const auto x = moss::test::to_storage<TestType>(xf);
    const Routed want = route_host(moss::SinkhornTop1{true}, x, w, tokens, D, X);
    const Buffer<float> dw = device_copy(gpu, w);
    const Routed got =
        route_cuda(gpu, moss::SinkhornTop1{true}, place(x, tokens, D, Layout::contiguous), dw, tokens, D, X);
    // The logits are the same kernel as in inference mode: bit-identical.
    CHECK(same_bits(got.logits, want.logits));
    // Selections: a tiny fraction of near ties may go either way.
    index_t differ = 0;
    std::vector<index_t> load_host(static_cast<std::size_t>(X), 0), load_cuda(static_cast<std::size_t>(X), 0);
    bool valid = true;
    std::vector<float> gate_agree_host, gate_agree_cuda;
    for (index_t t = 0; t < tokens; ++t) {
      const std::int32_t e = got.expert[t], h = want.expert[t];
      valid = valid && e >= 0 && e < X;
      if (!valid) break;
      ++load_cuda[e];
      ++load_host[h];
      if (e != h) {
        ++differ;
      } else {
        gate_agree_host.push_back(want.gate[t]);
        gate_agree_cuda.push_back(got.gate[t]);
      }
    }
    REQUIRE(valid);
    const index_t allowed = std::max<index_t>(1, tokens / 200);
    INFO(differ << " of " << tokens << " tokens picked another expert (allowed " << allowed << ")");
    CHECK(differ <= allowed);
    // Where the experts agree the gate is sigmoid(logit) of the same logit.
    CHECK(max_rel(gate_agree_cuda, gate_agree_host) <= 1e-5);
    // The balanced loads agree loosely, and balancing did balance where inference would not.
    index_t load_diff = 0;
    for (index_t e = 0; e < X; ++e) load_diff += std::abs(load_cuda[e] - load_host[e]);
    CHECK(load_diff <= 2 * allowed);
    if (c.skewed) {
      const Routed inference = route_host(moss::SinkhornTop1{false}, x, w, tokens, D, X);
      index_t to_zero = 0;
      for (index_t t = 0; t < tokens; ++t) to_zero += inference.expert[t] == 0;
      CHECK(to_zero > tokens / 2);
      CHECK(*std::max_element(load_cuda.begin(), load_cuda.end()) <= 2 * tokens / X);
    }
  }
}

namespace {

/// router_stats on both backends for given logits and counts; returns (host, cuda).
std::pair<std::vector<float>, std::vector<float>> stats_both(const Cuda& gpu, const std::vector<float>& logits,
                                                             const std::vector<std::int32_t>& counts, index_t tokens,
                                                             index_t X, index_t k, bool aux) {
  moss::RouterStatsArgs a;
  a.k = k;
  a.aux_loss = aux;
  a.aux_loss_coef = 0.01f;
  a.z_loss_coef = 0.001f;
  std::vector<float> want(static_cast<std::size_t>(moss::router_stats_size(X)), kPoison);
  a.logits = ConstView<float, 2>(logits.data(), {tokens, X}, "logits");
  a.counts = ConstView<std::int32_t, 1>(counts.data(), {X}, "counts");
  a.out = TensorView<float, 1>(want.data(), {moss::router_stats_size(X)}, "out");
  moss::router_stats(Host{}, a);
  const Buffer<float> dl = device_copy(gpu, logits);
  const Buffer<std::int32_t> dc = device_copy(gpu, counts);
  Buffer<float> dout = device_copy(gpu, std::vector<float>(want.size(), kPoison));
  a.logits = ConstView<float, 2>(dl.data(), {tokens, X}, "logits");
  a.counts = ConstView<std::int32_t, 1>(dc.data(), {X}, "counts");
  a.out = TensorView<float, 1>(dout.data(), {moss::router_stats_size(X)}, "out");
  moss::router_stats(gpu, a);
  gpu.synchronize();
  return {want, host_copy(gpu, dout)};
}

}  // namespace

TEST_CASE("router_stats: CUDA matches the host within 1e-5", "[cuda][ops][router]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 300;
  for (index_t tokens : {0, 1, 7, 1000, 4097, 16384}) {
    for (index_t X : {1, 8, 17, 64, 256}) {
      for (index_t k : {1, 2}) {
        if (k > X) continue;
        seed += 3;
        const auto logits = moss::test::randn(static_cast<std::size_t>(tokens * X), seed, 2.0f);
        // Counts of a K-slot assignment (any assignment: the statistics only read the counts).
        std::vector<std::int32_t> counts(static_cast<std::size_t>(X), 0);
        moss::Rng rng(seed);
        for (index_t p = 0; p < tokens * k; ++p) ++counts[rng.next() % static_cast<std::uint64_t>(X)];
        for (bool aux : {true, false}) {
          CAPTURE(tokens, X, k, aux);
          const auto [want, got] = stats_both(gpu, logits, counts, tokens, X, k, aux);
          CHECK(max_rel(got, want) <= 1e-5);
          if (!aux) CHECK(got[0] == 0.0f);
          if (tokens == 0) CHECK(std::all_of(got.begin(), got.end(), [](float v) { return v == 0.0f; }));
        }
      }
    }
  }
}
