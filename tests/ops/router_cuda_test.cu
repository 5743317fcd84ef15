// tests/ops/router_cuda_test.cu: `route`, `route_logits`, `route_select` and `router_stats` on
// CUDA against the host oracle.
//
// The contract (moss/ops/router.hpp): the float32 logits are bit-identical on both backends (the
// host replays the kernel's summation order), and `route_logits` writes the same bits as
// `route`, so the selected experts are identical too; gates may differ by the device's expf
// (≤ 1e-6 relative here). `route_select` from the same logits and scores selects the same
// experts on both backends. Shapes cover tokens 1 … 16384, d_model 1, 33 (not a multiple of the
// 16-byte chunk) and 2048, expert counts 1 … 256 (kMaxExperts), the weight staged in shared
// memory and read from global memory, and x contiguous, with a wider aligned row stride, and
// one element off 16 bytes (the scalar load path). Outputs are poisoned before every CUDA call.
// The Sinkhorn balancing is its own op (tests/ops/sinkhorn_cuda_test.cu).
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
#include "moss/ops/router_backward.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"
#include "router_test_routers.hpp"

namespace {

using moss::test::ArgmaxScores;
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

/// `route` on the GPU (tokens_per_warp 0), or its kernel with a warp taking 1 or 4 tokens at a
/// time (`run_route`); outputs poisoned first.
template <class T, class R>
Routed route_cuda(const Cuda& gpu, const R& router, const PlacedX<T>& px, const Buffer<float>& dw, index_t tokens,
                  index_t D, index_t X, int tokens_per_warp = 0) {
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
  if (tokens_per_warp == 0)
    moss::route(gpu, a);
  else
    moss::detail::route::run_route(gpu, a, tokens_per_warp);
  gpu.synchronize();
  return {host_copy(gpu, dl), host_copy(gpu, dg), host_copy(gpu, de)};
}

/// `route_logits` on the GPU over the same placement (logits poisoned first).
template <class T>
std::vector<float> route_logits_cuda(const Cuda& gpu, const PlacedX<T>& px, const Buffer<float>& dw, index_t tokens,
                                     index_t D, index_t X) {
  const Buffer<T> dx = device_copy(gpu, px.wide);
  Buffer<float> dl = device_copy(gpu, std::vector<float>(static_cast<std::size_t>(tokens * X), kPoison));
  moss::route_logits(gpu, moss::RouteLogitsArgs<T>{ConstView<T, 2>(dx.data() + px.offset, {tokens, D}, {px.ld, 1}, "x"),
                                                   ConstView<float, 2>(dw.data(), {X, D}, "weight"),
                                                   TensorView<float, 2>(dl.data(), {tokens, X}, "logits")});
  gpu.synchronize();
  return host_copy(gpu, dl);
}

/// `route_select` on one backend over host logits and scores (tokens, X); outputs poisoned.
template <class R, class Backend>
Routed route_select_on(const Backend& backend, const R& router, const std::vector<float>& logits,
                       const std::vector<float>& scores, index_t tokens, index_t X) {
  const Buffer<float> dl = device_copy(backend, logits), ds = device_copy(backend, scores);
  Buffer<std::int32_t> de =
      device_copy(backend, std::vector<std::int32_t>(static_cast<std::size_t>(tokens * R::k), kPoisonIndex));
  Buffer<float> dg = device_copy(backend, std::vector<float>(static_cast<std::size_t>(tokens * R::k), kPoison));
  moss::RouteSelectArgs<R> a;
  a.router = router;
  a.logits = ConstView<float, 2>(dl.data(), {tokens, X}, "logits");
  a.scores = ConstView<float, 2>(ds.data(), {tokens, X}, "scores");
  a.expert = TensorView<std::int32_t, 2>(de.data(), {tokens, R::k}, "expert");
  a.gate = TensorView<float, 2>(dg.data(), {tokens, R::k}, "gate");
  moss::route_select(backend, a);
  return {{}, host_copy(backend, dg), host_copy(backend, de)};
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
    const PlacedX<T> px = place(x, tokens, D, layout);
    CHECK(same_bits(route_logits_cuda(gpu, px, dw, tokens, D, X), want.logits));
    for (int tokens_per_warp : {0, 4}) {  // route's kernel, and the one that takes 4 tokens a warp
      CAPTURE(tokens_per_warp);
      const Routed got = route_cuda(gpu, router, px, dw, tokens, D, X, tokens_per_warp);
      CHECK(same_bits(got.logits, want.logits));
      CHECK(got.expert == want.expert);
      CHECK(moss::test::rel_l2(got.gate, want.gate) <= 1e-6);
      CHECK(moss::test::max_rel_nan_aware(got.gate, want.gate) <= 1e-5);
    }
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

TEST_CASE("route: CUDA at a realistic shape (16384 tokens, d_model 2048, 8 experts, bf16)",
          "[cuda][ops][router][large]") {
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
      route_cuda(gpu, moss::SinkhornTop1{}, place(std::vector<bf16>{}, 0, 33, Layout::contiguous), dw, 0, 33, 8);
  CHECK(got_s.gate.empty());
  CHECK(route_logits_cuda(gpu, place(std::vector<f16>{}, 0, 33, Layout::contiguous), dw, 0, 33, 8).empty());
  CHECK(route_select_on(gpu, moss::TopK<2>{}, {}, {}, 0, 8).expert.empty());
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
    CAPTURE(R::k);
    const Routed want = route_host(router, x, w, tokens, D, X);
    // NaN logits through the kernel that takes 4 tokens a warp: the same as route's.
    const Routed four = route_cuda(gpu, router, place(x, tokens, D, Layout::contiguous), dw, tokens, D, X, 4);
    CHECK(same_or_both_nan(four.logits, want.logits));
    CHECK(four.expert == want.expert);
    const Routed got = route_cuda(gpu, router, place(x, tokens, D, Layout::contiguous), dw, tokens, D, X);
    CHECK(same_or_both_nan(got.logits, want.logits));
    CHECK(got.expert == want.expert);
    CHECK(moss::test::max_rel_nan_aware(got.gate, want.gate) <= 1e-5);
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
  CHECK_THROWS_AS(route_cuda(gpu, moss::Top1Switch{}, place(x, tokens, D, Layout::contiguous), dw, tokens, D, X, 2),
                  moss::config_error);
}

TEST_CASE("route_select: CUDA selects from given scores as the host does", "[cuda][ops][router]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 700;
  for (index_t tokens : {1, 7, 1000, 16384}) {
    for (index_t X : {1, 8, 17, 256}) {
      seed += 4;
      CAPTURE(tokens, X);
      const auto logits = moss::test::randn(static_cast<std::size_t>(tokens * X), seed, 2.0f);
      // Scores unrelated to the logits: quantised (many ties), a NaN now and then, one all-NaN row.
      auto scores = moss::test::randn(static_cast<std::size_t>(tokens * X), seed + 1);
      for (float& v : scores) v = std::round(v * 4.0f) / 4.0f;
      for (index_t t = 0; t < tokens; t += 7) scores[t * X + (t % X)] = NAN;
      if (tokens > 3)
        for (index_t i = 0; i < X; ++i) scores[3 * X + i] = NAN;
      auto check = [&](const auto& router) {
        using R = std::decay_t<decltype(router)>;
        CAPTURE(R::k);
        const Routed want = route_select_on(Host{}, router, logits, scores, tokens, X);
        const Routed got = route_select_on(gpu, router, logits, scores, tokens, X);
        CHECK(got.expert == want.expert);
        CHECK(moss::test::max_rel_nan_aware(got.gate, want.gate) <= 1e-5);
        return got;
      };
      // ArgmaxScores's weight is the chosen logit itself: the kernel read the logits it was given.
      const Routed a = check(ArgmaxScores{});
      bool gate_is_logit = true;
      for (index_t t = 0; t < tokens; ++t)
        gate_is_logit = gate_is_logit && std::memcmp(&a.gate[t], &logits[t * X + a.expert[t]], sizeof(float)) == 0;
      CHECK(gate_is_logit);
      check(moss::Top1Switch{});
      check(moss::SinkhornTop1{});
      if (X >= 2) check(moss::TopK<2>{true});
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
          CHECK(moss::test::max_rel_nan_aware(got, want) <= 1e-5);
          if (!aux) CHECK(got[0] == 0.0f);
          if (tokens == 0) CHECK(std::all_of(got.begin(), got.end(), [](float v) { return v == 0.0f; }));
        }
      }
    }
  }
}

namespace {

/// route_backward on the host and on the GPU from the same inputs; returns {host, gpu} of
/// dlogits, dx (as float) and dweight, each flattened.
template <class T, class R>
std::pair<std::vector<std::vector<float>>, std::vector<std::vector<float>>> route_backward_both(
    const Cuda& gpu, const R& router, index_t tokens, index_t D, index_t X, bool accumulate, std::uint64_t seed) {
  constexpr index_t K = R::k;
  const auto x = moss::test::to_storage<T>(moss::test::randn(static_cast<std::size_t>(tokens * D), seed));
  const auto w = moss::test::randn(static_cast<std::size_t>(X * D), seed + 1, 0.5f);
  // The forward's logits, selection and counts, from the host's route.
  std::vector<float> logits(static_cast<std::size_t>(tokens * X)), gate(static_cast<std::size_t>(tokens * K));
  std::vector<std::int32_t> expert(static_cast<std::size_t>(tokens * K));
  moss::route(Host{}, moss::RouteArgs<T, R>{router, ConstView<T, 2>(x.data(), {tokens, D}, "x"),
                                            ConstView<float, 2>(w.data(), {X, D}, "weight"),
                                            TensorView<float, 2>(logits.data(), {tokens, X}, "logits"),
                                            TensorView<std::int32_t, 2>(expert.data(), {tokens, K}, "expert"),
                                            TensorView<float, 2>(gate.data(), {tokens, K}, "gate")});
  std::vector<std::int32_t> counts(static_cast<std::size_t>(X), 0);
  for (auto e : expert) ++counts[static_cast<std::size_t>(e)];
  const auto dgate = moss::test::randn(static_cast<std::size_t>(tokens * K), seed + 2);
  const auto dw0 = moss::test::randn(static_cast<std::size_t>(X * D), seed + 3);

  std::vector<float> dl_h(static_cast<std::size_t>(tokens * X)), dw_h = dw0;
  std::vector<T> dx_h(static_cast<std::size_t>(tokens * D));
  moss::RouteBackwardArgs<T, R> a;
  a.router = router;
  a.x = ConstView<T, 2>(x.data(), {tokens, D}, "x");
  a.weight = ConstView<float, 2>(w.data(), {X, D}, "weight");
  a.logits = ConstView<float, 2>(logits.data(), {tokens, X}, "logits");
  a.expert = ConstView<std::int32_t, 2>(expert.data(), {tokens, K}, "expert");
  a.dgate = ConstView<float, 2>(dgate.data(), {tokens, K}, "dgate");
  a.counts = ConstView<std::int32_t, 1>(counts.data(), {X}, "counts");
  a.aux_loss_coef = 0.01f;
  a.z_loss_coef = 0.001f;
  a.dlogits = TensorView<float, 2>(dl_h.data(), {tokens, X}, "dlogits");
  a.dx = TensorView<T, 2>(dx_h.data(), {tokens, D}, "dx");
  a.dweight = TensorView<float, 2>(dw_h.data(), {X, D}, "dweight");
  a.accumulate = accumulate;
  moss::route_backward(Host{}, a);

  const auto d_x = device_copy(gpu, x);
  const auto d_w = device_copy(gpu, w);
  const auto d_logits = device_copy(gpu, logits);
  const auto d_expert = device_copy(gpu, expert);
  const auto d_dgate = device_copy(gpu, dgate);
  const auto d_counts = device_copy(gpu, counts);
  auto d_dl = device_copy(gpu, std::vector<float>(dl_h.size(), kPoison));
  auto d_dx = device_copy(gpu, std::vector<T>(dx_h.size()));
  auto d_dw = device_copy(gpu, dw0);
  a.x = ConstView<T, 2>(d_x.data(), {tokens, D}, "x");
  a.weight = ConstView<float, 2>(d_w.data(), {X, D}, "weight");
  a.logits = ConstView<float, 2>(d_logits.data(), {tokens, X}, "logits");
  a.expert = ConstView<std::int32_t, 2>(d_expert.data(), {tokens, K}, "expert");
  a.dgate = ConstView<float, 2>(d_dgate.data(), {tokens, K}, "dgate");
  a.counts = ConstView<std::int32_t, 1>(d_counts.data(), {X}, "counts");
  a.dlogits = TensorView<float, 2>(d_dl.data(), {tokens, X}, "dlogits");
  a.dx = TensorView<T, 2>(d_dx.data(), {tokens, D}, "dx");
  a.dweight = TensorView<float, 2>(d_dw.data(), {X, D}, "dweight");
  moss::route_backward(gpu, a);
  const auto widen = [](const std::vector<T>& v) {
    std::vector<float> f(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) f[i] = moss::to_float(v[i]);
    return f;
  };
  return {{dl_h, widen(dx_h), dw_h}, {host_copy(gpu, d_dl), widen(host_copy(gpu, d_dx)), host_copy(gpu, d_dw)}};
}

}  // namespace

TEMPLATE_TEST_CASE("route_backward: CUDA matches the host for every built-in router, aux and z-losses on",
                   "[cuda][ops][router][backward]", float, bf16) {
  MOSS_REQUIRE_CUDA_DEVICE();
  using T = TestType;
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  moss::TopK<2> renorm;
  renorm.renormalize = true;
  std::uint64_t seed = 900;
  // Float sums in the host's order on both sides; the GPU's expf and division may differ from
  // the host's libm in the last bits, and some dlogits cancel to ~0: relative L2 error 1e-5 over
  // each tensor (dx stored in bf16: 4e-3, about one rounding of bf16).
  const double tol_dx = std::is_same_v<T, bf16> ? 4e-3 : 1e-5;
  for (const auto& [tokens, D, X] :
       {std::tuple<index_t, index_t, index_t>{0, 8, 4}, {1, 5, 3}, {37, 16, 8}, {300, 64, 17}}) {
    for (const bool accumulate : {false, true}) {
      CAPTURE(tokens, D, X, accumulate);
      const auto check = [&](const auto& both) {
        const auto& [want, got] = both;
        CHECK(moss::test::rel_l2(got[0], want[0]) <= 1e-5);
        CHECK(moss::test::rel_l2(got[1], want[1]) <= tol_dx);
        CHECK(moss::test::rel_l2(got[2], want[2]) <= 1e-5);
      };
      check(route_backward_both<T>(gpu, moss::Top1Switch{}, tokens, D, X, accumulate, seed += 10));
      if (X >= 2) check(route_backward_both<T>(gpu, moss::TopK<2>{}, tokens, D, X, accumulate, seed += 10));
      if (X >= 2) check(route_backward_both<T>(gpu, renorm, tokens, D, X, accumulate, seed += 10));
      check(route_backward_both<T>(gpu, moss::SinkhornTop1{}, tokens, D, X, accumulate, seed += 10));
    }
  }
  // Bitwise repeatable.
  const auto a = route_backward_both<T>(gpu, moss::Top1Switch{}, 300, 64, 8, false, 5);
  const auto b = route_backward_both<T>(gpu, moss::Top1Switch{}, 300, 64, 8, false, 5);
  CHECK(same_bits(a.second[0], b.second[0]));
  CHECK(same_bits(a.second[2], b.second[2]));
}
