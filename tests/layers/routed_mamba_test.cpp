// Host tests of the Routing Mamba mixer (docs/math.md §3): every weight placement, routing
// scope and routed subset against an independent float64 mixer, the one-expert case against
// dense Mamba, K = 2 summed before the conv, capacity, decode (prefill = steps, prefill from a
// cache, the cache of dense Mamba's size), checkpoints, errors and the zero-length call.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstring>
#include <filesystem>
#include <map>

#include "layers/moe_reference.hpp"
#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;

namespace {

constexpr index_t kExperts = 4;

MambaConfig rom_config() {
  MambaConfig c;
  c.d_model = 16;
  c.expand = 2;
  c.d_state = 4;
  c.d_conv = 4;
  c.dt_rank = 2;
  c.use_bias = false;
  c.use_conv_bias = true;
  c.n_layers = 1;
  c.vocab_size = 8;
  return c;
}

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moss_rom_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

using test::rom_params;

template <class Layer, class T>
std::vector<T> run_forward(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x, index_t batch,
                           index_t L, typename Layer::Cache* cache = nullptr, RoutingReport* report = nullptr) {
  const index_t D = layer.dims().d_model;
  std::vector<T> out(static_cast<std::size_t>(batch * L * D), from_float<T>(NAN));
  layer.forward(Host{}, p, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                TensorView<T, 3>(out.data(), {batch, L, D}, "out"), cache, report);
  return out;
}

template <class Layer, class T>
std::vector<T> run_step(const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x, index_t batch,
                        typename Layer::Cache& cache, RoutingReport* report = nullptr) {
  const index_t D = layer.dims().d_model;
  std::vector<T> out(static_cast<std::size_t>(batch * D), from_float<T>(NAN));
  layer.step(Host{}, p, ConstView<T, 2>(x.data(), {batch, D}, "x"), TensorView<T, 2>(out.data(), {batch, D}, "out"),
             cache, report);
  return out;
}

using test::rom_reference;

/// The report names of a layer's routers, in the order the reference lists them.
std::vector<std::string> report_names(const test::RomRefResult& ref) {
  std::vector<std::string> n;
  for (const std::string& r : ref.router_names) n.push_back(test::rom_report_name(r));
  return n;
}

/// The report names a built-in scope's layer adds, in the order it adds them (docs/math.md §3).
template <class S, class V>
std::vector<std::string> builtin_report_names() {
  if constexpr (std::is_same_v<S, SharedRouting>) {
    return {"mixer"};
  } else {
    static_assert(std::is_same_v<S, PerProjectionRouting>);
    std::vector<std::string> n;
    if (V::template routes<Conv>) n.emplace_back("mixer.router_conv");
    if (V::template routes<Gate>) n.emplace_back("mixer.router_gate");
    if (V::template routes<Out>) n.emplace_back("mixer.router_out");
    return n;
  }
}

/// The four built-in placements under shared routing, by name.
std::vector<std::pair<std::string, test::RefPlacement>> shared_placements() {
  return {{"WeightOut", test::RefPlacement::of<SharedRouting, WeightOut>()},
          {"WeightGate", test::RefPlacement::of<SharedRouting, WeightGate>()},
          {"WeightAll", test::RefPlacement::of<SharedRouting, WeightAll>()},
          {"WeightNone", test::RefPlacement::of<SharedRouting, WeightNone>()}};
}

template <class S, class V>
using Rom2 = RoutedMamba<TopK<2>, S, Experts<>, float, V>;
using CGO = Routed<Conv, Gate, Out>;
using GO = Routed<Gate, Out>;
using OnlyOut = Routed<Out>;

}  // namespace

TEMPLATE_TEST_CASE(
    "RoutedMamba with TopK<2> matches a float64 RoM mixer", "[host][layers][moe][rom]",
    (Rom2<SharedRouting, RomVariant<CGO, WeightOut>>), (Rom2<SharedRouting, RomVariant<CGO, WeightGate>>),
    (Rom2<SharedRouting, RomVariant<CGO, WeightAll>>), (Rom2<SharedRouting, RomVariant<CGO, WeightNone>>),
    (Rom2<SharedRouting, RomVariant<GO, WeightOut>>), (Rom2<SharedRouting, RomVariant<GO, WeightGate>>),
    (Rom2<SharedRouting, RomVariant<GO, WeightAll>>), (Rom2<SharedRouting, RomVariant<GO, WeightNone>>),
    (Rom2<SharedRouting, RomVariant<OnlyOut, WeightOut>>), (Rom2<SharedRouting, RomVariant<OnlyOut, WeightAll>>),
    (Rom2<SharedRouting, RomVariant<OnlyOut, WeightNone>>), (Rom2<SharedRouting, RomVariant<Routed<Conv>, WeightAll>>),
    (Rom2<SharedRouting, RomVariant<Routed<Conv, Gate>, WeightGate>>),
    (Rom2<SharedRouting, RomVariant<Routed<Out, Conv>, WeightAll>>), (Rom2<PerProjectionRouting, RomVariant<CGO>>),
    (Rom2<PerProjectionRouting, RomVariant<GO>>), (Rom2<PerProjectionRouting, RomVariant<OnlyOut>>),
    (Rom2<PerProjectionRouting, RomVariant<Routed<Conv>>>)) {
  using Layer = TestType;
  const MambaConfig cfg = rom_config();
  const bool renormalize = GENERATE(false, true);
  const index_t batch = 2, L = GENERATE(1, 9);
  const Layer layer(cfg.dims(), kExperts, TopK<2>{renormalize});
  const auto p = rom_params(layer, 101);
  const auto x = test::to_storage<float>(test::randn(static_cast<std::size_t>(batch * L * cfg.d_model), 102));
  RoutingReport report;
  const auto out = run_forward(layer, p, x, batch, L, nullptr, &report);
  const auto ref = rom_reference(layer, p, x, batch, L);
  const double err = test::rel_l2(out, ref.out);
  INFO("renormalize " << renormalize << ", L = " << L << ": relative L2 error " << err);
  CHECK(err <= 1e-5);

  // One report entry per router, in the order the layer runs them, with the reference's
  // counts before and after capacity.
  using S = typename test::RomTypes<Layer>::scope;
  using V = typename test::RomTypes<Layer>::variant;
  const auto stats = report.read();
  const auto names = builtin_report_names<S, V>();
  CHECK(report_names(ref) == names);
  REQUIRE(stats.size() == names.size());
  REQUIRE(ref.routings.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(stats[i].layer == names[i]);
    CHECK(stats[i].tokens == batch * L);
    CHECK(stats[i].k == 2);
    CHECK(stats[i].counts == ref.routings[i].counts);
    CHECK(stats[i].dropped == 0);
    // the losses, once per router (once per layer with shared routing)
    const auto rs =
        test::ref_stats(ref.logits[i], ref.routings[i], layer.settings().aux_loss_coef, layer.settings().z_loss_coef);
    CHECK(std::abs(stats[i].aux_loss - rs.aux) <= 1e-5 * rs.aux);
    CHECK(std::abs(stats[i].z_loss - rs.z) <= 1e-5 * rs.z);
  }

  // The placements are told apart: the reference with any other placement misses.
  if constexpr (std::is_same_v<S, SharedRouting>) {
    for (const auto& [other, pl] : shared_placements()) {
      const auto& mine = ref.placement;
      const bool differs = (V::template routes<Conv> && pl.conv != mine.conv) ||
                           (V::template routes<Gate> && pl.gate != mine.gate) ||
                           (V::template routes<Out> && pl.out != mine.out);
      if (!differs) continue;
      test::RomRefRouting rr;
      rr.conv = rr.gate = &ref.routings[0];
      rr.out = [&](const std::vector<double>&) { return ref.routings[0]; };
      const auto wrong = test::ref_rom(ref.weights, test::to_double(x), batch, L, rr, pl);
      INFO("placement " << other << " instead of " << typename test::RomTypes<Layer>::weight{}.name);
      CHECK(test::rel_l2(out, wrong) > 1e-3);
    }
  }
}

TEST_CASE("RoutedMamba sums the K = 2 expert outputs before the conv", "[host][layers][moe][rom]") {
  // docs/math.md §3: one conv and scan per token on the summed stream; a conv per slot
  // (K streams, summed after Out Proj) is a different function and must not match.
  const MambaConfig cfg = rom_config();
  using Layer = Rom2<SharedRouting, RomVariant<CGO, WeightOut>>;
  const Layer layer(cfg.dims(), kExperts);
  const auto p = rom_params(layer, 111);
  const index_t batch = 2, L = 12;
  const auto x = test::randn(static_cast<std::size_t>(batch * L * cfg.d_model), 112);
  const auto out = run_forward(layer, p, x, batch, L);
  const auto ref = rom_reference(layer, p, x, batch, L);
  CHECK(test::rel_l2(out, ref.out) <= 1e-5);
  const auto per_slot =
      test::ref_rom_conv_per_slot(ref.weights, test::to_double(x), batch, L, ref.routings[0], ref.placement);
  const double apart = test::rel_l2(out, per_slot);
  INFO("distance to the per-slot-conv design: " << apart);
  CHECK(apart > 1e-2);
}

TEST_CASE("RoutedMamba with K = 1 and renormalised weights is the same for every placement",
          "[host][layers][moe][rom]") {
  // g = 1 for top-1 with renormalisation, so WeightOut, WeightGate, WeightAll and WeightNone
  // compute the unweighted layer; without renormalisation g = p < 1 and they differ.
  const MambaConfig cfg = rom_config();
  const auto dir = temp_dir("placements");
  const bool renormalize = GENERATE(true, false);
  const TopK<1> router{renormalize};
  const index_t batch = 2, L = 7;
  const auto x = test::randn(static_cast<std::size_t>(batch * L * cfg.d_model), 122);
  using WOut = RoutedMamba<TopK<1>, SharedRouting, Experts<>, float, RomVariant<CGO, WeightOut>>;
  const WOut base(cfg.dims(), kExperts, router);
  const auto p = rom_params(base, 121);
  {
    SafetensorsWriter w;
    base.save(Host{}, p, w, "m.");
    w.write(dir / "rom.safetensors");
  }
  const Checkpoint ckpt(dir / "rom.safetensors");
  auto run = [&]<class W>() {
    const RoutedMamba<TopK<1>, SharedRouting, Experts<>, float, RomVariant<CGO, W>> layer(cfg.dims(), kExperts, router);
    const auto q = layer.load(Host{}, ckpt, "m.");
    const auto out = run_forward(layer, q, x, batch, L);
    CHECK(test::rel_l2(out, rom_reference(layer, q, x, batch, L).out) <= 1e-5);
    return out;
  };
  const auto out_w = run.template operator()<WeightOut>();
  const auto gate_w = run.template operator()<WeightGate>();
  const auto all_w = run.template operator()<WeightAll>();
  const auto none_w = run.template operator()<WeightNone>();
  if (renormalize) {
    CHECK(test::rel_l2(out_w, none_w) <= 1e-6);
    CHECK(test::rel_l2(gate_w, none_w) <= 1e-6);
    CHECK(test::rel_l2(all_w, none_w) <= 1e-6);
  } else {
    CHECK(test::rel_l2(out_w, none_w) > 1e-3);
    CHECK(test::rel_l2(gate_w, none_w) > 1e-3);
    CHECK(test::rel_l2(all_w, none_w) > 1e-3);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("RoutedMamba with one expert equals dense Mamba with the same weights", "[host][layers][moe][rom]") {
  const MambaConfig cfg = rom_config();
  const MambaDims dims = cfg.dims();
  const index_t D = dims.d_model, batch = 3, L = 10, prefill = 4;
  const Mamba<float> dense(dims);
  Rng rng(131);
  auto dp = dense.init(Host{}, rng, 2);
  test::fill_normal(dp.in_proj, 132, 1.0 / std::sqrt(static_cast<double>(D)));
  test::fill_normal(dp.out_proj, 133, 1.0 / std::sqrt(static_cast<double>(dims.d_inner)));

  auto check = [&]<class R>(R router) {
    using Rom = RoutedMamba<R, SharedRouting, Experts<1>, float>;
    const Rom rom(dims, 0, router);
    REQUIRE(rom.num_experts() == 1);
    Rng r2(134);
    auto p = rom.init(Host{}, r2, 2);
    static_assert(Rom::router_count() == 1 && Rom::kFusedIn);
    test::fill_normal(p.routers[0], 135, 1.0);
    const index_t ED = dims.d_inner;
    p.in.weight = test::reshaped(dp.in_proj, Extents<3>{1, 2 * ED, D}, "in_proj.weight");  // = the dense in_proj
    p.out.weight = test::reshaped(dp.out_proj, Extents<3>{1, D, ED}, "out_proj.weight");
    p.core.conv_weight = test::clone(dp.conv_weight);
    p.core.conv_bias = test::clone(dp.conv_bias);
    p.core.x_proj = test::clone(dp.x_proj);
    p.core.dt_proj = test::clone(dp.dt_proj);
    p.core.dt_bias = test::clone(dp.dt_bias);
    p.core.A = test::clone(dp.A);
    p.core.A_log = test::clone(dp.A_log);
    p.core.D = test::clone(dp.D);
    const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 136);
    std::vector<float> want(x.size(), NAN);
    dense.forward(Host{}, dp, ConstView<float, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<float, 3>(want.data(), {batch, L, D}, "out"));
    CHECK(test::rel_l2(run_forward(rom, p, x, batch, L), want) <= 1e-6);

    // Prefill and steps against dense Mamba's, states included.
    auto rc = rom.make_cache(Host{}, batch);
    auto dc = dense.make_cache(Host{}, batch);
    CHECK(rc.conv_state.size() == dc.conv_state.size());
    CHECK(rc.ssm_state.size() == dc.ssm_state.size());
    std::vector<float> head(static_cast<std::size_t>(batch * prefill * D)), hout(head.size());
    for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + b * L * D, prefill * D, head.begin() + b * prefill * D);
    run_forward(rom, p, head, batch, prefill, &rc);
    dense.forward(Host{}, dp, ConstView<float, 3>(head.data(), {batch, prefill, D}, "x"),
                  TensorView<float, 3>(hout.data(), {batch, prefill, D}, "out"), &dc);
    for (index_t t = prefill; t < L; ++t) {
      std::vector<float> xt(static_cast<std::size_t>(batch * D)), yt(xt.size());
      for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + (b * L + t) * D, D, xt.begin() + b * D);
      const auto got = run_step(rom, p, xt, batch, rc);
      dense.step(Host{}, dp, ConstView<float, 2>(xt.data(), {batch, D}, "x"),
                 TensorView<float, 2>(yt.data(), {batch, D}, "out"), dc);
      CHECK(test::rel_l2(got, yt) <= 1e-6);
    }
    CHECK(test::rel_l2(test::widen(rc.ssm_state), test::widen(dc.ssm_state)) <= 1e-6);
    CHECK(test::rel_l2(test::widen(rc.conv_state), test::widen(dc.conv_state)) <= 1e-6);
  };
  SECTION("TopK<1>") { check(TopK<1>{false}); }
  SECTION("Top1Switch") { check(Top1Switch{}); }
}

TEMPLATE_TEST_CASE("RoutedMamba prefill followed by decode steps equals one full forward", "[host][layers][moe][rom]",
                   (Rom2<SharedRouting, RomVariant<CGO, WeightAll>>), (Rom2<SharedRouting, RomVariant<GO, WeightGate>>),
                   (Rom2<PerProjectionRouting, RomVariant<CGO>>)) {
  using Layer = TestType;
  const MambaConfig cfg = rom_config();
  const Layer layer(cfg.dims(), kExperts);
  const auto p = rom_params(layer, 141);
  const index_t batch = 3, L = 10, prefill = GENERATE(1, 4), D = cfg.d_model;
  const auto x = test::randn(static_cast<std::size_t>(batch * L * D), 142);
  const auto full = run_forward(layer, p, x, batch, L);

  auto cache = layer.make_cache(Host{}, batch);
  const Mamba<float> dense(cfg.dims());
  const auto dense_cache = dense.make_cache(Host{}, batch);
  CHECK(cache.conv_state.size() == dense_cache.conv_state.size());  // the decode state is dense Mamba's
  CHECK(cache.ssm_state.size() == dense_cache.ssm_state.size());
  CHECK(cache.conv_state.size() == batch * cfg.d_inner() * (cfg.d_conv - 1));
  CHECK(cache.ssm_state.size() == batch * cfg.d_inner() * cfg.d_state);

  std::vector<float> head(static_cast<std::size_t>(batch * prefill * D));
  for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + b * L * D, prefill * D, head.begin() + b * prefill * D);
  const auto h = run_forward(layer, p, head, batch, prefill, &cache);
  std::vector<float> got(full.size(), NAN);
  for (index_t b = 0; b < batch; ++b) std::copy_n(h.begin() + b * prefill * D, prefill * D, got.begin() + b * L * D);
  for (index_t t = prefill; t < L; ++t) {
    std::vector<float> xt(static_cast<std::size_t>(batch * D));
    for (index_t b = 0; b < batch; ++b) std::copy_n(x.begin() + (b * L + t) * D, D, xt.begin() + b * D);
    RoutingReport r;
    const auto yt = run_step(layer, p, xt, batch, cache, &r);
    CHECK(r.read().at(0).tokens == batch);
    for (index_t b = 0; b < batch; ++b) std::copy_n(yt.begin() + b * D, D, got.begin() + (b * L + t) * D);
  }
  CHECK(test::rel_l2(got, full) <= 1e-5);

  auto whole = layer.make_cache(Host{}, batch);
  run_forward(layer, p, x, batch, L, &whole);
  CHECK(test::rel_l2(test::widen(cache.ssm_state), test::widen(whole.ssm_state)) <= 1e-6);
  CHECK(test::rel_l2(test::widen(cache.conv_state), test::widen(whole.conv_state)) <= 1e-6);
  // and the final states against the float64 mixer's
  test::RefStates fin;
  rom_reference(layer, p, x, batch, L, nullptr, &fin);
  CHECK(test::rel_l2(test::widen(whole.ssm_state), fin.ssm) <= 1e-5);
  CHECK(test::rel_l2(test::widen(whole.conv_state), fin.conv) <= 1e-5);
}

TEST_CASE("RoutedMamba prefill continues from a cache", "[host][layers][moe][rom]") {
  const MambaConfig cfg = rom_config();
  using Layer = Rom2<SharedRouting, RomVariant<CGO, WeightOut>>;
  const Layer layer(cfg.dims(), kExperts);
  const auto p = rom_params(layer, 151);
  const index_t batch = 2, L1 = GENERATE(1, 2, 6), L2 = 7, D = cfg.d_model;
  const auto x = test::randn(static_cast<std::size_t>(batch * (L1 + L2) * D), 152);
  std::vector<float> a(static_cast<std::size_t>(batch * L1 * D)), b2(static_cast<std::size_t>(batch * L2 * D));
  for (index_t b = 0; b < batch; ++b) {
    std::copy_n(x.begin() + b * (L1 + L2) * D, L1 * D, a.begin() + b * L1 * D);
    std::copy_n(x.begin() + (b * (L1 + L2) + L1) * D, L2 * D, b2.begin() + b * L2 * D);
  }
  auto cache = layer.make_cache(Host{}, batch);
  run_forward(layer, p, a, batch, L1, &cache);
  const auto second = run_forward(layer, p, b2, batch, L2, &cache);

  // The float64 mixer on the second part, started from the states it left after the first.
  test::RefStates mid;
  rom_reference(layer, p, a, batch, L1, nullptr, &mid);
  const auto ref = rom_reference(layer, p, b2, batch, L2, &mid);
  CHECK(test::rel_l2(second, ref.out) <= 1e-5);
  // and the same as one pass over the whole sequence
  const auto all = run_forward(layer, p, x, batch, L1 + L2);
  std::vector<float> tail(second.size());
  for (index_t b = 0; b < batch; ++b)
    std::copy_n(all.begin() + (b * (L1 + L2) + L1) * D, L2 * D, tail.begin() + b * L2 * D);
  CHECK(test::rel_l2(second, tail) <= 1e-5);
}

TEMPLATE_TEST_CASE("RoutedMamba with capacity drops pairs from every routed projection", "[host][layers][moe][rom]",
                   (Rom2<SharedRouting, RomVariant<CGO, WeightOut>>), (Rom2<SharedRouting, RomVariant<GO, WeightAll>>),
                   (Rom2<PerProjectionRouting, RomVariant<CGO>>)) {
  using Layer = TestType;
  const MambaConfig cfg = rom_config();
  RouterSettings s;
  s.capacity_factor = 0.6;  // C = ceil(0.6 · 24 · 2 / 4) = 8 of 12 pairs per expert on average
  const Layer layer(cfg.dims(), kExperts, TopK<2>{}, s);
  const auto p = rom_params(layer, 161);
  const index_t batch = 2, L = 12;
  const auto x = test::randn(static_cast<std::size_t>(batch * L * cfg.d_model), 162);
  RoutingReport report;
  const auto out = run_forward(layer, p, x, batch, L, nullptr, &report);
  const auto ref = rom_reference(layer, p, x, batch, L);
  CHECK(test::rel_l2(out, ref.out) <= 1e-5);
  const auto stats = report.read();
  REQUIRE(stats.size() == ref.routings.size());
  std::int64_t dropped = 0;
  for (std::size_t i = 0; i < stats.size(); ++i) {
    CHECK(stats[i].counts == ref.routings[i].counts);
    CHECK(stats[i].kept == ref.routings[i].kept);
    CHECK(stats[i].dropped == ref.routings[i].dropped);
    dropped += stats[i].dropped;
  }
  CHECK(dropped > 0);
}

TEMPLATE_TEST_CASE("RoutedMamba in bf16 and f16 stays within the layer tolerance", "[host][layers][moe][rom]", bf16,
                   f16) {
  using T = TestType;
  const MambaConfig cfg = rom_config();
  const RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<CGO, WeightAll>> layer(cfg.dims(), kExperts);
  const auto p = rom_params(layer, 171);
  const index_t batch = 2, L = 11;
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * L * cfg.d_model), 172));
  const auto out = run_forward(layer, p, x, batch, L);
  const auto ref = rom_reference(layer, p, x, batch, L);
  const double err = test::rel_l2(out, ref.out);
  INFO("relative L2 error " << err);
  // A whole mixer (in_proj, conv, x_proj, dt_proj, scan, out_proj, each rounding to T): the
  // end-to-end tolerance of docs/math.md's precision contract, as for dense Mamba.
  CHECK(err <= (std::is_same_v<T, bf16> ? 3e-2 : 1e-2));
}

TEST_CASE("RoutedMamba checkpoints use the documented names and load back bit for bit", "[host][layers][moe][rom]") {
  const MambaConfig cfg = rom_config();
  const index_t D = cfg.d_model, ED = cfg.d_inner(), X = kExperts, R = cfg.dt_rank, N = cfg.d_state;
  const auto dir = temp_dir("names");
  using Shape = std::vector<index_t>;
  auto check = [&]<class Layer>(const std::map<std::string, Shape>& routed) {
    const Layer layer(cfg.dims(), X);
    const auto p = rom_params(layer, 181);
    SafetensorsWriter w;
    layer.save(Host{}, p, w, "backbone.layers.0.mixer.");
    w.write(dir / "rom.safetensors");
    const Checkpoint c(dir / "rom.safetensors");
    std::map<std::string, Shape> want = routed;
    want["conv1d.weight"] = {ED, 1, cfg.d_conv};
    want["conv1d.bias"] = {ED};
    want["x_proj.weight"] = {R + 2 * N, ED};
    want["dt_proj.weight"] = {ED, R};
    want["dt_proj.bias"] = {ED};
    want["A_log"] = {ED, N};
    want["D"] = {ED};
    std::vector<std::string> names;
    for (const auto& [k, v] : want) names.push_back("backbone.layers.0.mixer." + k);
    std::sort(names.begin(), names.end());
    CHECK(c.names() == names);
    for (const auto& [k, v] : want) {
      INFO(k);
      if (c.contains("backbone.layers.0.mixer." + k)) CHECK(c.info("backbone.layers.0.mixer." + k).shape == v);
    }
    const auto q = layer.load(Host{}, c, "backbone.layers.0.mixer.");
    for (int i = 0; i < Layer::router_count(); ++i) CHECK(test::same_bits(p.routers[i], q.routers[i]));
    for (auto [a, b] : {std::pair{&p.core.dt_bias, &q.core.dt_bias}, {&p.core.D, &q.core.D}})
      CHECK(test::same_bits(*a, *b));
    for (auto [a, b] : {std::pair{&p.core.A_log, &q.core.A_log}, {&p.core.A, &q.core.A}})
      CHECK(test::same_bits(*a, *b));
    for (auto [a, b] : {std::pair{&p.in.weight, &q.in.weight},
                        {&p.conv.weight, &q.conv.weight},
                        {&p.gate.weight, &q.gate.weight},
                        {&p.out.weight, &q.out.weight}})
      CHECK(test::same_bits(*a, *b));
    for (auto [a, b] : {std::pair{&p.core.conv_weight, &q.core.conv_weight},
                        {&p.core.x_proj, &q.core.x_proj},
                        {&p.core.dt_proj, &q.core.dt_proj}})
      CHECK(test::same_bits(*a, *b));
    CHECK(test::same_bits(p.core.conv_bias, q.core.conv_bias));
    const auto x = test::randn(static_cast<std::size_t>(2 * 5 * D), 182);
    CHECK(run_forward(layer, p, x, 2, 5) == run_forward(layer, q, x, 2, 5));
  };
  SECTION("shared routing, Conv + Gate + Out: one fused in_proj per expert") {
    check.template operator()<Rom2<SharedRouting, RomVariant<CGO>>>(
        {{"router.weight", {X, D}}, {"in_proj.weight", {X, 2 * ED, D}}, {"out_proj.weight", {X, D, ED}}});
  }
  SECTION("shared routing, Gate + Out: Conv Proj dense") {
    check.template operator()<Rom2<SharedRouting, RomVariant<GO, WeightGate>>>({{"router.weight", {X, D}},
                                                                                {"in_proj_conv.weight", {ED, D}},
                                                                                {"in_proj_gate.weight", {X, ED, D}},
                                                                                {"out_proj.weight", {X, D, ED}}});
  }
  SECTION("shared routing, Out only") {
    check.template operator()<Rom2<SharedRouting, RomVariant<OnlyOut>>>({{"router.weight", {X, D}},
                                                                         {"in_proj_conv.weight", {ED, D}},
                                                                         {"in_proj_gate.weight", {ED, D}},
                                                                         {"out_proj.weight", {X, D, ED}}});
  }
  SECTION("per-projection routing: three routers, the Out router over d_inner") {
    check.template operator()<Rom2<PerProjectionRouting, RomVariant<CGO>>>({{"router_conv.weight", {X, D}},
                                                                            {"router_gate.weight", {X, D}},
                                                                            {"router_out.weight", {X, ED}},
                                                                            {"in_proj_conv.weight", {X, ED, D}},
                                                                            {"in_proj_gate.weight", {X, ED, D}},
                                                                            {"out_proj.weight", {X, D, ED}}});
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("RoutedMamba refuses unsupported settings and wrong shapes with useful messages",
          "[host][layers][moe][rom][errors]") {
  MambaConfig cfg = rom_config();
  using Layer = Rom2<SharedRouting, RomVariant<CGO>>;
  SECTION("use_bias = true is unsupported") {
    cfg.use_bias = true;
    REQUIRE_THROWS_AS(Layer(cfg.dims(), kExperts), unsupported_error);
    REQUIRE_THROWS_WITH(Layer(cfg.dims(), kExperts), ContainsSubstring("use_bias"));
  }
  SECTION("K larger than the expert count") {
    REQUIRE_THROWS_AS(Layer(cfg.dims(), 1), config_error);
    REQUIRE_THROWS_WITH(Layer(cfg.dims(), 1), ContainsSubstring("K = 2"));
  }
  SECTION("a type fixing 8 experts with a config saying 4") {
    using Eight = RoutedMamba<TopK<1>, SharedRouting, Experts<8>, float>;
    REQUIRE_THROWS_WITH(Eight(cfg.dims(), 4),
                        ContainsSubstring("moss::Experts<8>") && ContainsSubstring("num_experts = 4"));
    // The same contradiction in a config.json section names its path.
    const io::Json doc = io::parse_json(R"({"model_type": "moss", "moss_variant": "rom", "block_pattern": ["rom"],
                                            "blocks": [{"num_experts": 4}]})",
                                        "config.json");
    const MambaConfig c = MambaConfig::from_json(doc, "config.json");
    REQUIRE_THROWS_AS(Eight::Config::from_json(c.block_section(0)), config_error);
    REQUIRE_THROWS_WITH(Eight::Config::from_json(c.block_section(0)),
                        ContainsSubstring("config.json: blocks[0].num_experts") &&
                            ContainsSubstring("moss::Experts<8>") && ContainsSubstring("num_experts = 4"));
  }
  SECTION("wrong shapes name the tensor") {
    const Layer layer(cfg.dims(), kExperts);
    const auto p = rom_params(layer, 191);
    std::vector<float> x(2 * 3 * 20), out(2 * 3 * 16);
    REQUIRE_THROWS_WITH(
        layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 20}, "x"),
                      TensorView<float, 3>(out.data(), {2, 3, 16}, "out")),
        ContainsSubstring("RoutedMamba::forward: x is [2, 3, 20] (batch, seqlen, d_model) but expected [*, *, 16]"));
    REQUIRE_THROWS_WITH(layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 16}, "x"),
                                      TensorView<float, 3>(out.data(), {2, 2, 16}, "out")),
                        ContainsSubstring("RoutedMamba::forward: out is [2, 2, 16]"));
    auto cache = layer.make_cache(Host{}, 3);
    REQUIRE_THROWS_WITH(layer.forward(Host{}, p, ConstView<float, 3>(x.data(), {2, 3, 16}, "x"),
                                      TensorView<float, 3>(out.data(), {2, 3, 16}, "out"), &cache),
                        ContainsSubstring("the cache holds 3 sequences but the input has batch 2"));
    REQUIRE_THROWS_WITH(layer.step(Host{}, p, ConstView<float, 2>(x.data(), {2, 17}, "x"),
                                   TensorView<float, 2>(out.data(), {2, 16}, "out"), cache),
                        ContainsSubstring("RoutedMamba::step: x is [2, 17]"));
    REQUIRE_THROWS_AS(layer.step(Host{}, p, ConstView<float, 2>(x.data(), {2, 16}, "x"),
                                 TensorView<float, 2>(out.data(), {2, 16}, "out"), cache),
                      shape_error);
  }
  SECTION("a checkpoint of other sizes is an io_error naming the tensor") {
    const auto dir = temp_dir("errors");
    MambaConfig wide = cfg;
    wide.expand = 3;
    const Layer other(wide.dims(), kExperts);
    SafetensorsWriter w;
    other.save(Host{}, rom_params(other, 192), w, "m.");
    w.write(dir / "wide.safetensors");
    const Layer layer(cfg.dims(), kExperts);
    const Checkpoint c(dir / "wide.safetensors");
    REQUIRE_THROWS_AS(layer.load(Host{}, c, "m."), io_error);
    REQUIRE_THROWS_WITH(layer.load(Host{}, c, "m."), ContainsSubstring("m.in_proj.weight"));
    // a shared-routing checkpoint does not load as per-projection routing
    REQUIRE_THROWS_WITH((Rom2<PerProjectionRouting, RomVariant<CGO>>(wide.dims(), kExperts).load(Host{}, c, "m.")),
                        ContainsSubstring("m.router_conv.weight"));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("A zero-length input is a no-op for RoutedMamba, as for Mamba and MoeFeedForward",
          "[host][layers][moe][rom]") {
  // Nothing to route: no error about gates or plans (never a misleading failure).
  const MambaConfig cfg = rom_config();
  const index_t D = cfg.d_model;
  std::vector<float> x(static_cast<std::size_t>(D)), out(static_cast<std::size_t>(D), 7.0f);
  const ConstView<float, 3> empty_x(x.data(), {2, 0, D}, "x");
  const TensorView<float, 3> empty_out(out.data(), {2, 0, D}, "out");
  const Mamba<float> dense(cfg.dims());
  Rng rng(201);
  CHECK_NOTHROW(dense.forward(Host{}, dense.init(Host{}, rng, 1), empty_x, empty_out));
  const MoeFeedForward<TopK<2>, Experts<>, Mlp<Relu>, float> moe(D, 8, kExperts);
  CHECK_NOTHROW(moe.forward(Host{}, moe.init(Host{}, rng, 1), empty_x, empty_out));
  SECTION("shared routing, WeightOut") {
    const Rom2<SharedRouting, RomVariant<CGO, WeightOut>> layer(cfg.dims(), kExperts);
    CHECK_NOTHROW(layer.forward(Host{}, rom_params(layer, 202), empty_x, empty_out));
  }
  SECTION("per-projection routing") {
    const Rom2<PerProjectionRouting, RomVariant<CGO>> layer(cfg.dims(), kExperts);
    CHECK_NOTHROW(layer.forward(Host{}, rom_params(layer, 203), empty_x, empty_out));
  }
  SECTION("shared routing, WeightNone (no gate needed anywhere)") {
    const Rom2<SharedRouting, RomVariant<CGO, WeightNone>> layer(cfg.dims(), kExperts);
    CHECK_NOTHROW(layer.forward(Host{}, rom_params(layer, 204), empty_x, empty_out));
  }
  CHECK(out[0] == 7.0f);  // nothing written
}

TEST_CASE("RoutedMamba's config section round-trips and refuses another scope, placement or routed set",
          "[host][layers][moe][rom][config]") {
  using Layer = Rom2<PerProjectionRouting, RomVariant<GO>>;
  Layer::Config c;
  c.routing.num_experts = 5;
  c.routing.router.renormalize = true;
  c.routing.settings.capacity_factor = 1.5;
  io::Json s = io::Json::object();
  c.to_json(s);
  CHECK(s.at("router") == "top_k");
  CHECK(s.at("top_k") == 2);
  CHECK(s.at("num_experts") == 5);
  CHECK(s.at("normalize") == true);
  CHECK(s.at("scope") == "per_projection");
  CHECK(s.at("weight_placement") == "out");
  CHECK(s.at("projections") == io::Json::array({"gate", "out"}));
  const io::Json back = io::parse_json(io::dump_json(s), "config.json");
  const auto r = Layer::Config::from_json(io::JsonRef::at_path(back, "config.json: blocks[0]"));
  CHECK(r.routing.num_experts == 5);
  CHECK(r.routing.router.renormalize);
  CHECK(r.routing.settings.capacity_factor == 1.5);
  const Layer layer(rom_config().dims(), r);
  CHECK(layer.num_experts() == 5);
  CHECK(layer.settings().capacity_factor == 1.5);

  auto refused = [&](const char* key, io::Json value) {
    io::Json bad = back;
    bad[key] = std::move(value);
    return Layer::Config::from_json(io::JsonRef::at_path(bad, "config.json: blocks[0]"));
  };
  REQUIRE_THROWS_AS(refused("scope", "shared"), config_error);
  REQUIRE_THROWS_WITH(refused("scope", "shared"),
                      ContainsSubstring("config.json: blocks[0].scope is \"shared\" but the layer type's is "
                                        "\"per_projection\""));
  REQUIRE_THROWS_WITH(refused("weight_placement", "all"),
                      ContainsSubstring("config.json: blocks[0].weight_placement is \"all\""));
  REQUIRE_THROWS_WITH(refused("projections", io::Json::array({"conv", "gate", "out"})),
                      ContainsSubstring("config.json: blocks[0].projections does not match") &&
                          ContainsSubstring("[\"gate\", \"out\"]"));
  // The routed set is a set: its order in the section does not matter.
  CHECK_NOTHROW(refused("projections", io::Json::array({"out", "gate"})));
  REQUIRE_THROWS_WITH(refused("router", "sinkhorn_top1"),
                      ContainsSubstring("config.json: blocks[0].router is \"sinkhorn_top1\""));
}
