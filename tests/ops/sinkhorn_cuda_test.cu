// tests/ops/sinkhorn_cuda_test.cu: `sinkhorn` on CUDA against the host oracle.
//
// The contract (moss/ops/sinkhorn.hpp): the backends run the same iteration in float32 but add
// the column sums in different orders and round exp differently, so they agree to rounding.
// With tolerance 0 both run exactly max_rounds rounds and are compared tightly; with the
// default tolerance either may stop one round apart near the threshold, so they are compared to
// the tolerance, and both must balance the columns. A tiny fraction of near-tied tokens may pick
// another expert after the SinkhornTop1 selection. The CUDA kernel is deterministic (a fixed
// block reduction order): two runs give the same bits. Shapes cover 1 … 16384 tokens and 1 …
// 1000 experts (across the kernel's 16-expert column tiles), skewed and unskewed batches, NaN
// logits, no tokens, and the workspace contract (pool, exact caller workspace, too small,
// misaligned). Outputs are poisoned before every CUDA call.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "moss/backend/cuda.cuh"
#include "moss/ops/router.hpp"
#include "moss/ops/router/cuda.cuh"
#include "moss/ops/sinkhorn.hpp"
#include "moss/ops/sinkhorn/cuda.cuh"
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
using moss::Host;
using moss::index_t;
using moss::TensorView;

constexpr float kPoison = -12345.0f;

/// `sinkhorn` on the host.
std::vector<float> sinkhorn_host(const std::vector<float>& logits, index_t T, index_t X, float tolerance,
                                 int max_rounds) {
  std::vector<float> scores(static_cast<std::size_t>(T * X), kPoison);
  moss::SinkhornArgs a;
  a.logits = ConstView<float, 2>(logits.data(), {T, X}, "logits");
  a.scores = TensorView<float, 2>(scores.data(), {T, X}, "scores");
  a.tolerance = tolerance;
  a.max_rounds = max_rounds;
  moss::sinkhorn(Host{}, a);
  return scores;
}

/// `sinkhorn` on the GPU (scores poisoned first), with scratch from the pool or `workspace`.
std::vector<float> sinkhorn_cuda(const Cuda& gpu, const std::vector<float>& logits, index_t T, index_t X,
                                 float tolerance, int max_rounds, moss::Workspace workspace = {}) {
  const Buffer<float> dl = device_copy(gpu, logits);
  Buffer<float> ds = device_copy(gpu, std::vector<float>(static_cast<std::size_t>(T * X), kPoison));
  moss::SinkhornArgs a;
  a.logits = ConstView<float, 2>(dl.data(), {T, X}, "logits");
  a.scores = TensorView<float, 2>(ds.data(), {T, X}, "scores");
  a.tolerance = tolerance;
  a.max_rounds = max_rounds;
  a.workspace = workspace;
  moss::sinkhorn(gpu, a);
  gpu.synchronize();
  return host_copy(gpu, ds);
}

/// Logits (T, X) ~ N(0, 2²); skewed: expert 0 gets +3.
std::vector<float> make_logits(index_t T, index_t X, bool skewed, std::uint64_t seed) {
  auto l = moss::test::randn(static_cast<std::size_t>(T * X), seed, 2.0f);
  if (skewed)
    for (index_t t = 0; t < T; ++t) l[t * X] += 3.0f;
  return l;
}

struct Case {
  index_t tokens, experts;
  bool skewed;
};
constexpr Case kCases[] = {{1, 8, false},     {7, 1, false},    {64, 8, false},   {1000, 8, true},
                           {1000, 17, false}, {333, 33, true},  {4097, 64, true}, {257, 256, false},
                           {50, 1000, false}, {16384, 8, true}, {2048, 16, false}};

}  // namespace

TEST_CASE("sinkhorn: CUDA runs the same rounds as the host (tolerance 0, fixed max_rounds)", "[cuda][ops][sinkhorn]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 10;
  for (const Case& c : kCases) {
    for (int rounds : {1, 3, 20}) {
      seed += 3;
      CAPTURE(c.tokens, c.experts, c.skewed, rounds);
      const auto l = make_logits(c.tokens, c.experts, c.skewed, seed);
      const auto want = sinkhorn_host(l, c.tokens, c.experts, 0.0f, rounds);
      const auto got = sinkhorn_cuda(gpu, l, c.tokens, c.experts, 0.0f, rounds);
      CHECK(moss::test::rel_l2(got, want) <= 1e-5);
      CHECK(moss::test::max_rel_nan_aware(got, want) <= 1e-4);
    }
  }
}

TEST_CASE("sinkhorn: CUDA converges like the host and balances the columns (default tolerance)",
          "[cuda][ops][sinkhorn]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 500;
  for (const Case& c : kCases) {
    seed += 3;
    const index_t T = c.tokens, X = c.experts;
    CAPTURE(T, X, c.skewed);
    const auto l = make_logits(T, X, c.skewed, seed);
    const auto want = sinkhorn_host(l, T, X, 1e-4f, 100);
    const auto got = sinkhorn_cuda(gpu, l, T, X, 1e-4f, 100);
    // Either side may stop a round apart near the tolerance: agreement to about the tolerance.
    CHECK(moss::test::rel_l2(got, want) <= 1e-3);
    std::vector<double> col(static_cast<std::size_t>(X), 0.0);
    for (index_t t = 0; t < T; ++t)
      for (index_t i = 0; i < X; ++i) col[i] += got[t * X + i];
    for (index_t i = 0; i < X; ++i) {
      CAPTURE(i);
      CHECK(std::fabs(col[i] * X - 1.0) <= 1e-4);
    }
    // Two runs of the kernel give the same bits.
    CHECK(same_bits(sinkhorn_cuda(gpu, l, T, X, 1e-4f, 100), got));
  }
}

TEST_CASE("sinkhorn: CUDA propagates NaN like the host, no tokens write nothing", "[cuda][ops][sinkhorn]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t T = 300, X = 17;
  auto l = make_logits(T, X, false, 3);
  l[41 * X + 5] = NAN;
  for (int rounds : {1, 100}) {
    const auto got = sinkhorn_cuda(gpu, l, T, X, 1e-4f, rounds);
    CHECK(std::all_of(got.begin(), got.end(), [](float v) { return std::isnan(v); }));
  }
  auto m = make_logits(T, X, false, 4);
  m[7 * X + 2] = -INFINITY;  // an impossible expert: score 0, the rest finite
  const auto got = sinkhorn_cuda(gpu, m, T, X, 1e-4f, 100);
  CHECK(got[7 * X + 2] == 0.0f);
  CHECK(std::all_of(got.begin(), got.end(), [](float v) { return std::isfinite(v); }));
  CHECK(moss::test::rel_l2(got, sinkhorn_host(m, T, X, 1e-4f, 100)) <= 1e-3);
  CHECK(sinkhorn_cuda(gpu, {}, 0, 8, 1e-4f, 100).empty());
}

TEST_CASE("sinkhorn: CUDA workspace contract", "[cuda][ops][sinkhorn]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t T = 1000, X = 8;
  const auto l = make_logits(T, X, true, 9);
  const Buffer<float> dl = device_copy(gpu, l);
  Buffer<float> ds = gpu.alloc<float>(T * X);
  moss::SinkhornArgs a;
  a.logits = ConstView<float, 2>(dl.data(), {T, X}, "logits");
  a.scores = TensorView<float, 2>(ds.data(), {T, X}, "scores");
  const std::size_t need = moss::workspace_bytes(gpu, a);
  // One float per token, rounded up to the workspace alignment.
  CHECK(need == 4096);
  CHECK(need % moss::kWorkspaceAlignment == 0);
  CHECK(moss::workspace_bytes(Host{}, a) == 0);
  const auto from_pool = sinkhorn_cuda(gpu, l, T, X, 1e-4f, 100);

  SECTION("an exact caller workspace, filled with garbage, gives the pool's result bit for bit") {
    Buffer<unsigned char> ws = device_copy(gpu, std::vector<unsigned char>(need, 0xab));
    CHECK(same_bits(sinkhorn_cuda(gpu, l, T, X, 1e-4f, 100, moss::Workspace{ws.data(), need}), from_pool));
    // A larger one, at an aligned offset into a bigger buffer, too.
    Buffer<unsigned char> big = device_copy(gpu, std::vector<unsigned char>(need + 1024, 0xcd));
    const moss::Workspace inner{big.data() + moss::kWorkspaceAlignment, need + 512};
    CHECK(same_bits(sinkhorn_cuda(gpu, l, T, X, 1e-4f, 100, inner), from_pool));
  }
  SECTION("too small or misaligned: config_error naming the op and the sizes") {
    Buffer<unsigned char> ws = gpu.alloc<unsigned char>(static_cast<index_t>(need + 1024));
    a.workspace = moss::Workspace{ws.data(), need - 4};
    REQUIRE_THROWS_AS(moss::sinkhorn(gpu, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(gpu, a),
                        ContainsSubstring("sinkhorn (cuda): the workspace holds 4092 bytes but this call needs 4096"));
    a.workspace = moss::Workspace{ws.data() + 4, need};
    REQUIRE_THROWS_AS(moss::sinkhorn(gpu, a), moss::config_error);
    REQUIRE_THROWS_WITH(moss::sinkhorn(gpu, a), ContainsSubstring("is not aligned to 256 bytes"));
    gpu.synchronize();
  }
}

TEST_CASE("SinkhornTop1 training mode on CUDA (route_logits → sinkhorn → route_select) balances like the host",
          "[cuda][ops][sinkhorn][router]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  moss::CudaStream stream;
  const Cuda gpu{stream.get()};
  struct Shape {
    index_t tokens, d_model, experts;
    bool skewed;  // expert 0 gets +3 on every logit: ranking the logits sends it most tokens
  };
  const Shape shapes[] = {{1, 33, 8, false},    {64, 33, 8, false},   {1000, 33, 8, true},   {1000, 64, 17, false},
                          {4097, 64, 64, true}, {16384, 64, 8, true}, {2048, 2048, 8, false}};
  std::uint64_t seed = 900;
  moss::SinkhornTop1 train;
  train.training = true;
  for (const Shape& c : shapes) {
    seed += 10;
    const index_t T = c.tokens, D = c.d_model, X = c.experts;
    CAPTURE(T, D, X, c.skewed);
    auto xf = moss::test::randn(static_cast<std::size_t>(T * D), seed);
    auto w =
        moss::test::randn(static_cast<std::size_t>(X * D), seed + 1, static_cast<float>(1.0 / std::sqrt(double(D))));
    if (c.skewed) {
      for (index_t t = 0; t < T; ++t) xf[t * D] = 1.0f;
      for (index_t i = 0; i < X; ++i) w[i * D] = i == 0 ? 3.0f : 0.0f;
    }
    const auto x = moss::test::to_storage<bf16>(xf);
    // Both backends: logits, balanced scores, selection.
    struct Out {
      std::vector<float> logits, scores, gate;
      std::vector<std::int32_t> expert;
    };
    auto run = [&](const auto& backend) {
      const Buffer<bf16> dx = device_copy(backend, x);
      const Buffer<float> dw = device_copy(backend, w);
      Buffer<float> dl = device_copy(backend, std::vector<float>(static_cast<std::size_t>(T * X), kPoison));
      Buffer<float> ds = device_copy(backend, std::vector<float>(static_cast<std::size_t>(T * X), kPoison));
      Buffer<std::int32_t> de = device_copy(backend, std::vector<std::int32_t>(static_cast<std::size_t>(T), -1));
      Buffer<float> dg = device_copy(backend, std::vector<float>(static_cast<std::size_t>(T), kPoison));
      moss::route_logits(backend, moss::RouteLogitsArgs<bf16>{ConstView<bf16, 2>(dx.data(), {T, D}, "x"),
                                                              ConstView<float, 2>(dw.data(), {X, D}, "weight"),
                                                              dl.template view<2>({T, X}, "logits")});
      moss::SinkhornArgs sa;
      sa.logits = ConstView<float, 2>(dl.data(), {T, X}, "logits");
      sa.scores = ds.template view<2>({T, X}, "scores");
      moss::sinkhorn(backend, sa);
      moss::route_select(backend, moss::RouteSelectArgs<moss::SinkhornTop1>{
                                      train, ConstView<float, 2>(dl.data(), {T, X}, "logits"),
                                      ConstView<float, 2>(ds.data(), {T, X}, "scores"),
                                      de.template view<2>({T, 1}, "expert"), dg.template view<2>({T, 1}, "gate")});
      return Out{host_copy(backend, dl), host_copy(backend, ds), host_copy(backend, dg), host_copy(backend, de)};
    };
    const Out want = run(Host{});
    const Out got = run(gpu);
    CHECK(same_bits(got.logits, want.logits));  // route_logits: bit-identical
    CHECK(moss::test::rel_l2(got.scores, want.scores) <= 1e-3);
    // Every selection is the argmax of its own backend's balanced row.
    bool argmax = true;
    for (index_t t = 0; t < T; ++t) argmax = argmax && got.expert[t] == moss::test::argmax_row(got.scores, t, X);
    CHECK(argmax);
    // Selections: a tiny fraction of near ties may go either way.
    index_t differ = 0;
    std::vector<index_t> load_host(static_cast<std::size_t>(X), 0), load_cuda(static_cast<std::size_t>(X), 0);
    std::vector<float> gate_agree_host, gate_agree_cuda;
    for (index_t t = 0; t < T; ++t) {
      const std::int32_t e = got.expert[t], h = want.expert[t];
      REQUIRE((e >= 0 && e < X));
      ++load_cuda[e];
      ++load_host[h];
      if (e != h) {
        ++differ;
      } else {
        gate_agree_host.push_back(want.gate[t]);
        gate_agree_cuda.push_back(got.gate[t]);
      }
    }
    const index_t allowed = std::max<index_t>(1, T / 200);
    INFO(differ << " of " << T << " tokens picked another expert (allowed " << allowed << ")");
    CHECK(differ <= allowed);
    // Where the experts agree the gate is sigmoid(logit) of the same logit.
    CHECK(moss::test::max_rel_nan_aware(gate_agree_cuda, gate_agree_host) <= 1e-5);
    index_t load_diff = 0;
    for (index_t e = 0; e < X; ++e) load_diff += std::abs(load_cuda[e] - load_host[e]);
    CHECK(load_diff <= 2 * allowed);
    if (c.skewed) {
      // Balancing did balance where ranking the logits would not.
      index_t to_zero = 0;
      for (index_t t = 0; t < T; ++t) to_zero += moss::test::argmax_row(want.logits, t, X) == 0;
      CHECK(to_zero > T / 2);
      CHECK(*std::max_element(load_cuda.begin(), load_cuda.end()) <= 2 * T / X);
    }
  }
}
