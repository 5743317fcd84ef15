// Host tests of the Mamba mixer (docs/math.md §1): against an independent float64 mixer with
// every built-in scan strategy, the decode invariants (prefill = step by step; prefill that
// continues from a cache), and its error messages.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "layers/mamba_reference.hpp"
#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

MambaConfig small_config(bool bias) {
  MambaConfig c;
  c.d_model = 24;
  c.expand = 2;
  c.d_state = 5;
  c.d_conv = 4;
  c.dt_rank = 3;
  c.use_bias = bias;
  c.use_conv_bias = true;
  c.n_layers = 1;
  c.vocab_size = 10;
  return c;
}

template <class T>
std::vector<T> random_input(index_t n, std::uint64_t seed) {
  return test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed));
}

template <class T, class Scan>
std::vector<double> run_forward(const Mamba<T, Scan>& layer, const MambaParams<T>& p, const std::vector<T>& x,
                                index_t batch, index_t L, MambaCache<T>* cache = nullptr) {
  const index_t D = layer.dims().d_model;
  std::vector<T> out(static_cast<std::size_t>(batch * L * D), from_float<T>(NAN));
  layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                TensorView<T, 3>(out.data(), {batch, L, D}, "out"), cache);
  return test::to_double(out);
}

}  // namespace

TEST_CASE("Mamba forward matches an independent float64 mixer", "[host][layers]") {
  const bool bias = GENERATE(false, true);
  const index_t L = GENERATE(1, 2, 3, 9);
  const index_t batch = 2;
  const MambaConfig cfg = small_config(bias);
  const Mamba<float> layer(cfg.dims());
  Rng rng(7);
  auto p = layer.init(Host{}, rng, 2);
  if (bias) {  // make the biases non-zero so they are tested
    REQUIRE(p.in_proj_bias.shape() == Extents<1>{2 * cfg.d_inner()});
    REQUIRE(p.out_proj_bias.shape() == Extents<1>{cfg.d_model});
    for (index_t i = 0; i < p.in_proj_bias.numel(); ++i) p.in_proj_bias.data()[i] = 0.01f * static_cast<float>(i % 7);
    for (index_t i = 0; i < p.out_proj_bias.numel(); ++i)
      p.out_proj_bias.data()[i] = -0.02f * static_cast<float>(i % 5);
  }
  const auto x = random_input<float>(batch * L * cfg.d_model, 11);
  const auto got = run_forward(layer, p, x, batch, L);
  const auto ref = test::ref_mamba(test::ref_weights(layer.dims(), p), test::to_double(x), batch, L);
  CHECK(test::rel_l2(got, ref) <= 1e-5);
}

TEST_CASE("Mamba with each built-in scan strategy matches the float64 mixer", "[host][layers]") {
  // L = 600 spans three segments of ChunkedScan's CPU path (kHostSegment = 256 steps), so its
  // carries between segments are exercised; the prefill continues from a cache.
  const MambaConfig cfg = small_config(true);
  const index_t batch = 2, L1 = 5, L2 = 595, D = cfg.d_model;
  static_assert(L2 > 2 * ChunkedScan::kHostSegment);
  auto check = [&]<class Scan>() {
    INFO("scan strategy " << Scan::name);
    const Mamba<float, Scan> layer(cfg.dims());
    Rng rng(9);
    const auto p = layer.init(Host{}, rng, 2);
    const auto x = random_input<float>(batch * (L1 + L2) * D, 12);
    const auto whole = run_forward(layer, p, x, batch, L1 + L2);
    const auto ref = test::ref_mamba(test::ref_weights(layer.dims(), p), test::to_double(x), batch, L1 + L2);
    CHECK(test::rel_l2(whole, ref) <= 1e-5);
    std::vector<float> a(static_cast<std::size_t>(batch * L1 * D)), b2(static_cast<std::size_t>(batch * L2 * D));
    for (index_t b = 0; b < batch; ++b) {
      std::copy_n(x.begin() + b * (L1 + L2) * D, L1 * D, a.begin() + b * L1 * D);
      std::copy_n(x.begin() + (b * (L1 + L2) + L1) * D, L2 * D, b2.begin() + b * L2 * D);
    }
    auto cache = layer.make_cache(Host{}, batch);
    run_forward(layer, p, a, batch, L1, &cache);
    const auto second = run_forward(layer, p, b2, batch, L2, &cache);
    std::vector<double> tail(second.size());
    for (index_t b = 0; b < batch; ++b)
      std::copy_n(ref.begin() + (b * (L1 + L2) + L1) * D, L2 * D, tail.begin() + b * L2 * D);
    CHECK(test::rel_l2(second, tail) <= 1e-5);
    std::vector<double> conv1, h1;
    test::ref_mamba(test::ref_weights(layer.dims(), p), test::to_double(x), batch, L1 + L2, nullptr, nullptr, &conv1,
                    &h1);
    CHECK(test::rel_l2(test::widen(cache.ssm_state), h1) <= 1e-5);
    CHECK(test::rel_l2(test::widen(cache.conv_state), conv1) <= 1e-6);
  };
  check.template operator()<SequentialScan>();
  check.template operator()<ChunkedScan>();
  check.template operator()<AutoScan>();
}

TEST_CASE("Mamba forward in bf16 and f16 stays within the end-to-end tolerance", "[host][layers]") {
  const MambaConfig cfg = small_config(false);
  const index_t batch = 2, L = 13;
  auto check = [&]<class T>(double tol) {
    const Mamba<T> layer(cfg.dims());
    Rng rng(3);
    auto p = layer.init(Host{}, rng, 2);
    const auto x = random_input<T>(batch * L * cfg.d_model, 5);
    const auto got = run_forward(layer, p, x, batch, L);
    const auto ref = test::ref_mamba(test::ref_weights(layer.dims(), p), test::to_double(x), batch, L);
    CHECK(test::rel_l2(got, ref) <= tol);
  };
  check.template operator()<bf16>(3e-2);
  check.template operator()<f16>(1e-2);
}

TEST_CASE("Mamba prefill followed by decode steps equals one full forward", "[host][layers]") {
  const MambaConfig cfg = small_config(true);
  const Mamba<float> layer(cfg.dims());
  Rng rng(21);
  const auto p = layer.init(Host{}, rng, 2);
  const index_t batch = 3, L = 11, prefill = GENERATE(1, 2, 5);
  const index_t D = cfg.d_model;
  const auto x = random_input<float>(batch * L * D, 99);
  const auto full = run_forward(layer, p, x, batch, L);

  auto cache = layer.make_cache(Host{}, batch);
  std::vector<float> xp(static_cast<std::size_t>(batch * prefill * D));
  for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + b * L * D, prefill * D, xp.begin() + b * prefill * D);
  const auto head = run_forward(layer, p, xp, batch, prefill, &cache);
  std::vector<double> got(full.size());
  for (index_t b = 0; b < batch; ++b) std::copy_n(head.begin() + b * prefill * D, prefill * D, got.begin() + b * L * D);
  for (index_t t = prefill; t < L; ++t) {
    std::vector<float> xt(static_cast<std::size_t>(batch * D)), yt(static_cast<std::size_t>(batch * D), NAN);
    for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + (b * L + t) * D, D, xt.begin() + b * D);
    layer.step(Host{}, p, ConstView<float, 2>(xt.data(), {batch, D}, "x"),
               TensorView<float, 2>(yt.data(), {batch, D}, "out"), cache);
    for (index_t b = 0; b < batch; ++b) std::copy_n(yt.begin() + b * D, D, got.begin() + (b * L + t) * D);
  }
  CHECK(test::rel_l2(got, full) <= 1e-5);

  // The states after stepping equal the final states of one prefill over all L tokens.
  auto whole = layer.make_cache(Host{}, batch);
  run_forward(layer, p, x, batch, L, &whole);
  CHECK(test::rel_l2(test::widen(cache.ssm_state), test::widen(whole.ssm_state)) <= 1e-6);
  CHECK(test::rel_l2(test::widen(cache.conv_state), test::widen(whole.conv_state)) <= 1e-6);
}

TEST_CASE("Mamba prefill continues from a cache", "[host][layers]") {
  const MambaConfig cfg = small_config(false);
  const Mamba<float> layer(cfg.dims());
  Rng rng(5);
  const auto p = layer.init(Host{}, rng, 2);
  const index_t batch = 2, L1 = GENERATE(1, 2, 6), L2 = 7, D = cfg.d_model;
  const auto x = random_input<float>(batch * (L1 + L2) * D, 17);
  std::vector<float> a(static_cast<std::size_t>(batch * L1 * D)), b2(static_cast<std::size_t>(batch * L2 * D));
  for (index_t b = 0; b < batch; ++b) {
    std::copy_n(x.begin() + b * (L1 + L2) * D, L1 * D, a.begin() + b * L1 * D);
    std::copy_n(x.begin() + (b * (L1 + L2) + L1) * D, L2 * D, b2.begin() + b * L2 * D);
  }
  auto cache = layer.make_cache(Host{}, batch);
  run_forward(layer, p, a, batch, L1, &cache);
  const auto second = run_forward(layer, p, b2, batch, L2, &cache);

  // Reference: the float64 mixer over the whole sequence, second part only.
  const auto ref_all = test::ref_mamba(test::ref_weights(layer.dims(), p), test::to_double(x), batch, L1 + L2);
  std::vector<double> ref(second.size());
  for (index_t b = 0; b < batch; ++b)
    std::copy_n(ref_all.begin() + (b * (L1 + L2) + L1) * D, L2 * D, ref.begin() + b * L2 * D);
  CHECK(test::rel_l2(second, ref) <= 1e-5);
}

TEST_CASE("Mamba rejects inputs of the wrong shape with a useful message", "[host][layers][errors]") {
  const MambaConfig cfg = small_config(false);
  const Mamba<float> layer(cfg.dims());
  Rng rng(1);
  const auto p = layer.init(Host{}, rng, 1);
  std::vector<float> x(2 * 3 * 20), out(2 * 3 * 24);
  REQUIRE_THROWS_WITH(
      layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 20}, "x"),
                    TensorView<float, 3>(out.data(), {2, 3, 24}, "out")),
      ContainsSubstring("Mamba::forward: x is [2, 3, 20] (batch, seqlen, d_model) but expected [*, *, 24]"));
  std::vector<float> x2(2 * 3 * 24);
  REQUIRE_THROWS_AS(layer.forward(Host{}, p, ConstView<float, 3>(x2.data(), {2, 3, 24}, "x"),
                                  TensorView<float, 3>(out.data(), {2, 4, 24}, "out")),
                    shape_error);
  auto cache = layer.make_cache(Host{}, 3);
  REQUIRE_THROWS_WITH(layer.forward(Host{}, p, ConstView<float, 3>(x2.data(), {2, 3, 24}, "x"),
                                    TensorView<float, 3>(out.data(), {2, 3, 24}, "out"), &cache),
                      ContainsSubstring("the cache holds 3 sequences but the input has batch 2"));
}
