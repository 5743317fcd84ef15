// CUDA tests of training: `add_into` / `multiply` against the host, and a dense MambaLM's
// `loss_and_grads` on the GPU against the host from the same seeded weights and tokens — the loss
// and every parameter gradient (tied and untied head, keep and recompute, accumulate), float32
// end to end — plus bitwise repeatability on the GPU; then every sparse model (MoE-Mamba,
// BlackMamba, RoM, RoM + MoE, per-projection RoM with top-2 and drops) the same way. The host
// paths are checked against central differences in tests/models/lm_backward_test.cpp and
// tests/layers/rom_backward_test.cpp; this compares the CUDA composition with them.
//
// Tolerances: the two backends run the same formulas in float32 with different summation orders
// (cuBLAS's GEMMs, the CUDA scan backward's reductions), so gradients agree to float rounding
// amplified through 2 layers: relative L2 error ≤ 1e-3 per tensor (measured on the host between
// chunk sizes and orders: ~1e-6).
//
// Last, the training step that waits for nothing: `Trainer::step_resident` against the eager
// step, and the same step captured in one CUDA graph (`CapturedTrainStep`) replayed bitwise.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "moss/models/language_model.hpp"
#include "moss/models/variants.hpp"
#include "moss/ops/elementwise.hpp"
#include "moss/train/captured_step_cuda.cuh"
#include "moss/train/trainer.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

using namespace moss;

namespace {

using moss::test::device_copy;
using moss::test::host_copy;
using moss::test::rel_l2;

moss::MambaConfig tiny(bool tied) {
  moss::MambaConfig c;
  c.d_model = 32;
  c.n_layers = 2;
  c.vocab_size = 64;
  c.d_state = 8;
  c.dt_rank = 4;
  c.tie_embeddings = tied;
  return c;
}

/// Every gradient tensor of `g` (on `backend`) in checkpoint order, copied to the host.
template <class Model, class Backend>
std::vector<std::pair<std::string, std::vector<float>>> grads_of(const Backend& backend, const Model& model,
                                                                 typename Model::Grads& g) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  model.visit_params(g, [&](const std::string& name, auto& t) { out.emplace_back(name, host_copy(backend, t)); });
  return out;
}

}  // namespace

TEST_CASE("add_into, multiply and negated_exp on CUDA equal the host's, in place too", "[cuda][ops][elementwise]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  for (const index_t n : {index_t{0}, index_t{1}, index_t{1000}, index_t{70001}}) {
    CAPTURE(n);
    const auto a = moss::test::randn(static_cast<std::size_t>(n), 1);
    const auto b = moss::test::randn(static_cast<std::size_t>(n), 2);
    // Host.
    std::vector<float> sum_h = b, prod_h(static_cast<std::size_t>(n));
    add_into(Host{}, ConstView<float, 1>(a.data(), {n}, "x"), TensorView<float, 1>(sum_h.data(), {n}, "y"));
    multiply(Host{}, ConstView<float, 1>(a.data(), {n}, "a"), ConstView<float, 1>(b.data(), {n}, "b"),
             TensorView<float, 1>(prod_h.data(), {n}, "out"));
    // CUDA: y += x, and out = a ⊙ b written into a itself.
    auto da = device_copy(gpu, a);
    auto db = device_copy(gpu, b);
    add_into(gpu, ConstView<float, 1>(da.data(), {n}, "x"), TensorView<float, 1>(db.data(), {n}, "y"));
    CHECK(moss::test::same_bits(host_copy(gpu, db), sum_h));
    auto db2 = device_copy(gpu, b);
    multiply(gpu, ConstView<float, 1>(da.data(), {n}, "a"), ConstView<float, 1>(db2.data(), {n}, "b"),
             TensorView<float, 1>(da.data(), {n}, "out"));
    CHECK(moss::test::same_bits(host_copy(gpu, da), prod_h));
    // negated_exp (A from A_log), in place: expf against the host's std::exp, to 2 ulp.
    std::vector<float> nexp_h(static_cast<std::size_t>(n));
    negated_exp(Host{}, ConstView<float, 1>(b.data(), {n}, "x"), TensorView<float, 1>(nexp_h.data(), {n}, "out"));
    auto dn = device_copy(gpu, b);
    negated_exp(gpu, ConstView<float, 1>(dn.data(), {n}, "x"), TensorView<float, 1>(dn.data(), {n}, "out"));
    CHECK(moss::test::max_rel_nan_aware(host_copy(gpu, dn), nexp_h) <= 2.5e-7);
  }
  // bf16: one rounding of the float result on both sides.
  const auto b = [](float f) { return from_float<bf16>(f); };
  const std::vector<bf16> x = {b(1.5f), b(-2.25f), b(3.0f)}, y = {b(0.5f), b(0.125f), b(-7.0f)};
  std::vector<bf16> yh = y;
  add_into(Host{}, ConstView<bf16, 1>(x.data(), {3}, "x"), TensorView<bf16, 1>(yh.data(), {3}, "y"));
  auto dx = device_copy(gpu, x);
  auto dy = device_copy(gpu, y);
  add_into(gpu, ConstView<bf16, 1>(dx.data(), {3}, "x"), TensorView<bf16, 1>(dy.data(), {3}, "y"));
  CHECK(moss::test::same_bits(host_copy(gpu, dy), yh));
}

TEST_CASE("MambaLM loss_and_grads on CUDA matches the host, and repeats bitwise", "[cuda][models][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  for (const bool tied : {true, false}) {
    for (const auto policy : {ActivationPolicy::keep, ActivationPolicy::recompute}) {
      CAPTURE(tied, policy == ActivationPolicy::keep);
      const MambaLM<float> model(tiny(tied));
      const auto hp = model.init(Host{}, 7);
      const auto dp = model.init(gpu, 7);
      const index_t batch = 3, L = 70, V = model.config().vocab_size;
      moss::Rng rng(8);
      std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch * (L + 1)));
      for (auto& t : tokens) t = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(V));
      tokens[static_cast<std::size_t>(L)] = -100;  // one ignored target
      const ConstView<std::int64_t, 2> tv(tokens.data(), {batch, L + 1}, "tokens");
      MambaLM<float>::TrainOptions o;
      o.activations = policy;
      o.chunk_rows = 64;

      auto hg = model.make_grads(Host{}, hp);
      const auto hr = model.loss_and_grads(Host{}, hp, tv, hg, o);
      auto dg = model.make_grads(gpu, dp);
      const auto dr = model.loss_and_grads(gpu, dp, tv, dg, o);
      CHECK(dr.count == hr.count);
      CHECK(std::abs(dr.loss - hr.loss) <= 1e-5f * hr.loss);
      const auto want = grads_of(Host{}, model, hg);
      const auto got = grads_of(gpu, model, dg);
      REQUIRE(got.size() == want.size());
      for (std::size_t k = 0; k < got.size(); ++k) {
        CAPTURE(got[k].first);
        REQUIRE(got[k].first == want[k].first);
        CHECK(rel_l2(got[k].second, want[k].second) <= 1e-3);
      }

      // Again, accumulating onto the first: every gradient doubles (to rounding); and a third
      // run from zero repeats the first bit for bit.
      model.loss_and_grads(gpu, dp, tv, dg, {.activations = policy, .accumulate = true, .chunk_rows = 64});
      const auto twice = grads_of(gpu, model, dg);
      for (std::size_t k = 0; k < got.size(); ++k) {
        std::vector<float> doubled = got[k].second;
        for (auto& v : doubled) v += v;
        CAPTURE(got[k].first);
        CHECK(rel_l2(twice[k].second, doubled) <= 1e-6);
      }
      auto dg2 = model.make_grads(gpu, dp);
      model.loss_and_grads(gpu, dp, tv, dg2, o);
      const auto again = grads_of(gpu, model, dg2);
      for (std::size_t k = 0; k < got.size(); ++k) {
        CAPTURE(got[k].first);
        CHECK(moss::test::same_bits(again[k].second, got[k].second));
      }
    }
  }
}

TEST_CASE("Trainer on CUDA follows the host's losses, and AdamW and the global norm match the host", "[cuda][train]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  // AdamW: the same bits as the host (no fused multiply-add on either side).
  const index_t n = 5000;
  const auto p0 = moss::test::randn(static_cast<std::size_t>(n), 11);
  const auto g0 = moss::test::randn(static_cast<std::size_t>(n), 12);
  std::vector<float> ph = p0, mh(static_cast<std::size_t>(n), 0.0f), vh(static_cast<std::size_t>(n), 0.0f);
  auto dp = device_copy(gpu, p0);
  auto dgr = device_copy(gpu, g0);
  auto dm = device_copy(gpu, mh);
  auto dv = device_copy(gpu, vh);
  for (std::int64_t step = 1; step <= 3; ++step) {
    AdamWArgs<float> a{.param = TensorView<float, 1>(ph.data(), {n}, "p"),
                       .grad = ConstView<float, 1>(g0.data(), {n}, "g"),
                       .m = TensorView<float, 1>(mh.data(), {n}, "m"),
                       .v = TensorView<float, 1>(vh.data(), {n}, "v"),
                       .lr = 1e-2,
                       .weight_decay = 0.1,
                       .step = step};
    adamw_step(Host{}, a);
    a.param = dp.flat("p");
    a.grad = ConstView<float, 1>(dgr.data(), {n}, "g");
    a.m = dm.flat("m");
    a.v = dv.flat("v");
    adamw_step(gpu, a);
  }
  CHECK(moss::test::same_bits(host_copy(gpu, dp), ph));
  CHECK(moss::test::same_bits(host_copy(gpu, dm), mh));
  // The global norm: float64 sums in another order than the host's, so equal to rounding.
  const std::vector<TensorView<float, 1>> hv = {TensorView<float, 1>(const_cast<float*>(g0.data()), {n}, "g"),
                                                TensorView<float, 1>(ph.data(), {n}, "p")};
  const std::vector<TensorView<float, 1>> dvs = {dgr.flat("g"), dp.flat("p")};
  const double want = global_norm(Host{}, hv), got = global_norm(gpu, dvs);
  CHECK(std::abs(got - want) <= 1e-12 * want);
  CHECK(global_norm(gpu, dvs) == got);  // run to run: the same bits

  // Trainer: 4 steps on the GPU and on the host from the same weights and batches.
  const MambaLM<float> model(tiny(false));
  auto hp = model.init(Host{}, 21);
  auto dpar = model.init(gpu, 21);
  moss::TrainerSettings s;
  s.schedule = {.lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 2, .total_steps = 4};
  moss::Trainer host_trainer(model, hp, s);
  moss::Trainer<MambaLM<float>, Cuda> gpu_trainer(model, dpar, s, gpu);
  moss::Rng rng(22);
  std::vector<double> hl, gl;
  for (int step = 0; step < 4; ++step) {
    std::vector<std::int64_t> tokens(static_cast<std::size_t>(2 * 33));
    for (auto& t : tokens) t = static_cast<std::int64_t>(rng.next() % 64);
    const ConstView<std::int64_t, 2> tv(tokens.data(), {2, 33}, "tokens");
    hl.push_back(host_trainer.step({tv}).loss);
    gl.push_back(gpu_trainer.step({tv}).loss);
  }
  for (int i = 0; i < 4; ++i) {
    CAPTURE(i, hl[static_cast<std::size_t>(i)], gl[static_cast<std::size_t>(i)]);
    CHECK(std::abs(gl[static_cast<std::size_t>(i)] - hl[static_cast<std::size_t>(i)]) <=
          1e-4 * hl[static_cast<std::size_t>(i)]);
  }
}

namespace {

/// A sparse `Model`'s loss_and_grads on CUDA against the host (same weights and tokens; aux and
/// z-losses on, as trained); `configure` sets the routed blocks' configs. `loss_tol` and
/// `grad_tol` bound the loss's relative difference and each gradient's relative L2 error.
template <class Model, class Configure>
void check_sparse_model(Configure&& configure, std::uint64_t seed, float loss_tol = 1e-5f, double grad_tol = 1e-3) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  auto blocks = Model::default_block_configs();
  configure(blocks);
  const Model model(tiny(true), blocks);
  const auto hp = model.init(Host{}, seed);
  const auto dp = model.init(gpu, seed);
  const index_t batch = 2, L = 40;
  moss::Rng rng(seed + 1);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch * (L + 1)));
  for (auto& t : tokens) t = static_cast<std::int64_t>(rng.next() % 64);
  const ConstView<std::int64_t, 2> tv(tokens.data(), {batch, L + 1}, "tokens");
  auto hg = model.make_grads(Host{}, hp);
  auto dg = model.make_grads(gpu, dp);
  const auto hr = model.loss_and_grads(Host{}, hp, tv, hg);
  const auto dr = model.loss_and_grads(gpu, dp, tv, dg);
  CHECK(std::abs(dr.loss - hr.loss) <= loss_tol * hr.loss);
  const auto want = grads_of(Host{}, model, hg);
  const auto got = grads_of(gpu, model, dg);
  REQUIRE(got.size() == want.size());
  for (std::size_t k = 0; k < got.size(); ++k) {
    CAPTURE(got[k].first);
    CHECK(got[k].first == want[k].first);
    CHECK(rel_l2(got[k].second, want[k].second) <= grad_tol);
  }
}

/// A RoM layer with per-projection routers (Out routed on its own input) and top-2, g everywhere.
using PerProjectionRomLM =
    LanguageModel<Residual<RmsNorm, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<>, float>>>;

}  // namespace

TEST_CASE("Sparse language models' loss_and_grads on CUDA match the host", "[cuda][models][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  SECTION("MoeMambaLM") {
    check_sparse_model<MoeMambaLM<float>>(
        [](auto& b) {
          std::get<1>(b).routing.num_experts = 4;
          std::get<1>(b).d_ff = 48;
        },
        31);
  }
  SECTION("BlackMambaLM (Sinkhorn top-1, SwiGLU experts)") {
    check_sparse_model<BlackMambaLM<float>>(
        [](auto& b) {
          std::get<1>(b).routing.num_experts = 4;
          std::get<1>(b).d_ff = 48;
        },
        41);
  }
  SECTION("RomLM (shared top-1, g on Out)") {
    check_sparse_model<RomLM<float>>([](auto& b) { std::get<0>(b).routing.num_experts = 4; }, 51);
  }
  SECTION("RomMoeLM") {
    check_sparse_model<RomMoeLM<float>>(
        [](auto& b) {
          std::get<0>(b).routing.num_experts = 4;
          std::get<1>(b).routing.num_experts = 4;
          std::get<1>(b).d_ff = 48;
        },
        61);
  }
  SECTION("RoM with per-projection routers, top-2, a capacity that drops pairs") {
    check_sparse_model<PerProjectionRomLM>(
        [](auto& b) {
          std::get<0>(b).routing.num_experts = 4;
          std::get<0>(b).routing.settings.capacity_factor = 0.75;
        },
        71);
  }
}

// bf16 storage (the GPU training dtype): every activation is rounded to 8 bits of mantissa after
// each op, in a different order on each backend, so the two agree to bf16's resolution amplified
// through two layers (a wrong gradient is off by O(1)): loss within 1 %, gradients within 5 %
// relative L2.
TEST_CASE("bf16 language models' loss_and_grads on CUDA match the host", "[cuda][models][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  SECTION("MambaLM") {
    check_sparse_model<MambaLM<bf16>>([](auto&) {}, 81, 1e-2f, 5e-2);
  }
  SECTION("MoeMambaLM") {
    check_sparse_model<MoeMambaLM<bf16>>(
        [](auto& b) {
          std::get<1>(b).routing.num_experts = 4;
          std::get<1>(b).d_ff = 48;
        },
        91, 1e-2f, 5e-2);
  }
  SECTION("RomLM") {
    check_sparse_model<RomLM<bf16>>([](auto& b) { std::get<0>(b).routing.num_experts = 4; }, 101, 1e-2f, 5e-2);
  }
}

namespace {

/// Every parameter of `p` (float) copied to the host, in checkpoint order.
template <class Model>
std::vector<std::vector<float>> params_of(const Cuda& gpu, const Model& model, typename Model::Params& p) {
  std::vector<std::vector<float>> out;
  model.visit_params(p, [&](const std::string&, auto& t) { out.push_back(host_copy(gpu, t)); });
  return out;
}

/// Two micro-batches of (2, 17) random ids below `vocab`, as one host vector.
std::vector<std::int64_t> two_micro_batches(moss::Rng& rng, std::int64_t vocab) {
  std::vector<std::int64_t> t(static_cast<std::size_t>(2 * 2 * 17));
  for (auto& x : t) x = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(vocab));
  return t;
}

/// Views of the two micro-batches held at `data` (host or device memory).
std::vector<ConstView<std::int64_t, 2>> views_of(const std::int64_t* data) {
  return {ConstView<std::int64_t, 2>(data, {2, 17}, "first"), ConstView<std::int64_t, 2>(data + 34, {2, 17}, "second")};
}

void check_same_result(const moss::TrainStepResult& a, const moss::TrainStepResult& b) {
  CHECK(a.loss == b.loss);
  CHECK(a.grad_norm == b.grad_norm);
  CHECK(a.lr == b.lr);
  CHECK(a.count == b.count);
  CHECK(a.skipped == b.skipped);
  CHECK(a.step == b.step);
}

/// `Model` trained 4 steps three ways from the same weights: eagerly, resident (tokens on the
/// device) and captured in a CUDA graph. The graph replays the resident step bitwise; the
/// resident step follows the eager one to rounding (`tol`: loss, norm and every weight).
template <class Model, class Configure>
void check_captured_training(Configure&& configure, std::uint64_t seed, double tol) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  auto blocks = Model::default_block_configs();
  configure(blocks);
  const Model model(tiny(false), blocks);
  auto pe = model.init(gpu, seed), pr = model.init(gpu, seed), pc = model.init(gpu, seed);
  moss::TrainerSettings s;
  s.schedule = {.lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 2, .total_steps = 4};
  s.clip_norm = 0.5;  // small: the steps clip
  moss::Trainer<Model, Cuda> eager(model, pe, s, gpu), resident(model, pr, s, gpu), captured(model, pc, s, gpu);
  moss::CapturedTrainStep<Model> graph(captured);
  moss::Rng rng(seed + 1);
  for (int step = 0; step < 4; ++step) {
    CAPTURE(step);
    const std::vector<std::int64_t> tokens = two_micro_batches(rng, 64);
    const Buffer<std::int64_t> on_device = device_copy(gpu, tokens);
    const auto e = eager.step(views_of(tokens.data()));
    resident.step_resident(views_of(on_device.data()));
    const auto r = resident.read_step();
    graph.run(views_of(tokens.data()));
    const auto c = graph.read();
    check_same_result(r, c);
    CHECK(r.count == e.count);
    CHECK(r.step == e.step);
    CHECK(!r.skipped);
    CHECK(std::abs(r.loss - e.loss) <= tol * e.loss);
    CHECK(std::abs(r.grad_norm - e.grad_norm) <= tol * e.grad_norm);
    CHECK(std::abs(r.lr - e.lr) <= 1e-12 * e.lr);
  }
  const auto we = params_of(gpu, model, pe), wr = params_of(gpu, model, pr), wc = params_of(gpu, model, pc);
  REQUIRE(wr.size() == we.size());
  for (std::size_t k = 0; k < wr.size(); ++k) {
    CAPTURE(k);
    CHECK(moss::test::same_bits(wr[k], wc[k]));
    CHECK(rel_l2(wr[k], we[k]) <= tol);
  }
}

/// RoM whose experts' grouped GEMMs read the routing on the device: its training step captures.
using SyncFreeRomLM = LanguageModel<
    Residual<RmsNorm, RoutedMamba<TopK<1>, SharedRouting, Experts<kExpertsFromConfig, SyncFreeGemm>, float>>>;

}  // namespace

TEST_CASE("A whole training step captured in a CUDA graph replays the resident step bitwise", "[cuda][train]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  SECTION("MambaLM") {
    check_captured_training<MambaLM<float>>([](auto&) {}, 81, 1e-4);
  }
  SECTION("RoM with SyncFreeGemm experts") {
    check_captured_training<SyncFreeRomLM>([](auto& b) { std::get<0>(b).routing.num_experts = 4; }, 91, 1e-3);
  }
}

TEST_CASE("A captured training step names a bad target and refuses a model that waits for the host", "[cuda][train]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  {
    const MambaLM<float> model(tiny(true));
    auto p = model.init(gpu, 5);
    moss::Trainer<MambaLM<float>, Cuda> trainer(model, p, moss::TrainerSettings{}, gpu);
    moss::CapturedTrainStep<MambaLM<float>> graph(trainer);
    moss::Rng rng(6);
    std::vector<std::int64_t> tokens = two_micro_batches(rng, 64);
    tokens[16] = 64;  // the last column of the first micro-batch's row 0: target flat position 15
    graph.run(views_of(tokens.data()));
    REQUIRE_THROWS_WITH(graph.read(), Catch::Matchers::ContainsSubstring("target token id outside [0, vocab) at "
                                                                         "flat position 15"));
    tokens[16] = 3;
    graph.run(views_of(tokens.data()));
    const auto r = graph.read();
    CHECK(r.step == 1);
    CHECK(std::isfinite(r.loss));
    REQUIRE_THROWS_AS(graph.run({ConstView<std::int64_t, 2>(tokens.data(), {2, 17}, "one")}), moss::shape_error);
  }
  {
    auto blocks = RomLM<float>::default_block_configs();
    std::get<0>(blocks).routing.num_experts = 4;
    const RomLM<float> model(tiny(false), blocks);
    auto p = model.init(gpu, 7);
    moss::Trainer<RomLM<float>, Cuda> trainer(model, p, moss::TrainerSettings{}, gpu);
    moss::CapturedTrainStep<RomLM<float>> graph(trainer);
    moss::Rng rng(8);
    const std::vector<std::int64_t> tokens = two_micro_batches(rng, 64);
    REQUIRE_THROWS_WITH(graph.run(views_of(tokens.data())), Catch::Matchers::ContainsSubstring("SyncFreeGemm"));
  }
}
