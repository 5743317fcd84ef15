// CUDA tests of the sparse layers: MoeFeedForward and RoutedMamba on the GPU against the same
// layers on the host (the same seeded weights on both), full sequence and one-token steps, with
// and without capacity, f32 and bf16, and the Hugging Face SwitchTransformersSparseMLP fixture;
// and the parts of one's own of tests/layers/custom_components.hpp (a router with a saved
// setting in MoeFeedForward, a weight placement and a routing scope in RoutedMamba), whose
// kernel paths differ from the built-in ones (a router struct with state in the route kernel,
// the fused Conv+Gate combine weighting only the Conv columns, a fused in_proj under a router
// of another name next to an Out router on Out's own input).
//
// The layer input is the same on both backends, so the router logits are bit-identical and
// every routing decision (expert, plan, counts, drops) must agree exactly; outputs agree within
// the layer tolerances (f32 1e-5 for the feed-forward block, 1e-4 for a RoM mixer as for the
// dense Mamba mixer; bf16 1e-2 and 3e-2). The one router that reads an activation the two
// backends compute differently is an Out router on Out's own input (PerProjectionRouting's,
// InOutRouting's: it routes y ⊙ silu(z)):
// in f32 the difference (~1e-6) cannot move a decision in practice, in bf16 it can flip a near
// tie, so the bf16 runs give that router zero weights (every logit 0: expert 0, exactly, on
// both backends) and keep the seeded Conv and Gate routers.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "layers/custom_components.hpp"
#include "moss/moss.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

using namespace moss;

namespace {

using moss::test::check_reports;
using moss::test::host_copy;

template <class T>
std::vector<T> poisoned(index_t n) {
  return std::vector<T>(static_cast<std::size_t>(n), from_float<T>(NAN));
}

/// Replaces a router's weight by zeros on `backend`: every logit is then exactly 0, ties go to
/// the lowest experts, so every token takes expert 0 (and 1, 2, ... for its further slots).
template <class Backend>
void zero_router(const Backend& backend, Tensor<float, 2>& w) {
  REQUIRE(w.present());
  w = constant_tensor<float>(backend, w.shape(), 0.0f, w.name());
}

constexpr double kStatsTol = 1e-5;

// ---------------------------------------------------------------------------------------------
// MoeFeedForward

template <class T>
struct FfnRun {
  std::vector<T> out;               // (batch, L, D) forward
  std::vector<T> step;              // (batch, D) one step
  std::vector<RouterStats> report;  // forward's entry, then the step's
};

template <class Layer, class Backend, class T = typename Layer::value_type>
FfnRun<T> run_ffn(const Backend& backend, const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x,
                  const std::vector<T>& x_step, index_t batch, index_t L, index_t D) {
  FfnRun<T> r;
  RoutingReport report;
  const Buffer<T> dx = upload(backend, x.data(), static_cast<index_t>(x.size()));
  const std::vector<T> poison = poisoned<T>(batch * L * D);
  Buffer<T> dy = upload(backend, poison.data(), static_cast<index_t>(poison.size()));
  layer.forward(backend, p, ConstView<T, 3>(dx.data(), {batch, L, D}, "x"), dy.template view<3>({batch, L, D}, "out"),
                nullptr, &report);
  r.out = host_copy(backend, dy);
  typename Layer::Cache cache = layer.make_cache(backend, batch);
  const Buffer<T> dxs = upload(backend, x_step.data(), static_cast<index_t>(x_step.size()));
  const std::vector<T> poison_step = poisoned<T>(batch * D);
  Buffer<T> dys = upload(backend, poison_step.data(), static_cast<index_t>(poison_step.size()));
  layer.step(backend, p, ConstView<T, 2>(dxs.data(), {batch, D}, "x"), dys.template view<2>({batch, D}, "out"), cache,
             &report);
  r.step = host_copy(backend, dys);
  r.report = report.read();
  return r;
}

/// The layer on both backends from the same seed; `zero` replaces the router by zeros, after
/// which every token's first choice is `zero_expert` (expert 0 for a router whose ranking is
/// the logits alone; the bias's favourite for a bias-balancing router).
template <class Layer>
void compare_ffn(const Cuda& gpu, const Layer& layer, index_t D, index_t batch, index_t L, double tol,
                 std::uint64_t seed, bool zero = false, index_t zero_expert = 0) {
  using T = typename Layer::value_type;
  Rng r1(seed), r2(seed);
  auto hp = layer.init(Host{}, r1, 4);
  auto gp = layer.init(gpu, r2, 4);
  if (zero) {
    zero_router(Host{}, hp.router);
    zero_router(gpu, gp.router);
  }
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * L * D), seed + 1));
  const auto xs = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * D), seed + 2));
  const FfnRun<T> want = run_ffn(Host{}, layer, hp, x, xs, batch, L, D);
  const FfnRun<T> got = run_ffn(gpu, layer, gp, x, xs, batch, L, D);
  CAPTURE(batch, L, D, layer.num_experts(), layer.settings().capacity_factor, zero);
  CHECK(test::rel_l2(got.out, want.out) <= tol);
  CHECK(test::rel_l2(got.step, want.step) <= tol);
  check_reports(got.report, want.report, kStatsTol);
  REQUIRE(want.report.size() == 2);
  CHECK(want.report[1].dropped == 0);  // the step is dropless
  if (zero) {
    CHECK(want.report[0].counts[zero_expert] == batch * L);  // it took every token's slot 0
    if (layer.settings().capacity_factor == 0) CHECK(want.report[0].dropped == 0);
  }
}

template <class T>
void compare_ffn_variants(const Cuda& gpu, index_t batch, index_t L, double capacity_factor, double tol,
                          std::uint64_t seed, bool zero = false) {
  const index_t D = 64, X = 8;
  RouterSettings s;
  s.capacity_factor = capacity_factor;
  // MoE-Mamba's block: Switch top-1 over ReLU MLP experts of width 3·D.
  compare_ffn(gpu, MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, T>(D, 3 * D, X, {}, s), D, batch, L, tol, seed,
              zero);
  // Top-2 over SwiGLU experts, with and without renormalised weights.
  for (bool renormalize : {false, true})
    compare_ffn(gpu, MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, T>(D, 96, X, TopK<2>{renormalize}, s), D, batch,
                L, tol, seed + 10, zero);
  // BlackMamba's block in inference mode: Sinkhorn top-1 (argmax of sigmoid) over SwiGLU experts.
  compare_ffn(gpu, MoeFeedForward<SinkhornTop1, Experts<>, GatedMlp<Silu>, T>(D, 96, X, SinkhornTop1{false}, s), D,
              batch, L, tol, seed + 20, zero);
}

// ---------------------------------------------------------------------------------------------
// RoutedMamba

template <class T>
struct RomRun {
  std::vector<T> full;                // (batch, L, D) forward without a cache
  std::vector<T> prefill;             // (batch, L, D) forward into a cache
  std::vector<std::vector<T>> steps;  // (batch, D) per decode step
  std::vector<float> ssm_state;       // the cache after the steps
  std::vector<T> conv_state;
  std::vector<RouterStats> report;  // every call's entries in order
};

template <class Layer, class Backend, class T = typename Layer::value_type>
RomRun<T> run_rom(const Backend& backend, const Layer& layer, const typename Layer::Params& p, const std::vector<T>& x,
                  const std::vector<std::vector<T>>& x_steps, index_t batch, index_t L) {
  const index_t D = layer.dims().d_model;
  RomRun<T> r;
  RoutingReport report;
  const Buffer<T> dx = upload(backend, x.data(), static_cast<index_t>(x.size()));
  const std::vector<T> poison = poisoned<T>(batch * L * D);
  const ConstView<T, 3> xv(dx.data(), {batch, L, D}, "x");
  {
    Buffer<T> dy = upload(backend, poison.data(), static_cast<index_t>(poison.size()));
    layer.forward(backend, p, xv, dy.template view<3>({batch, L, D}, "out"), nullptr, &report);
    r.full = host_copy(backend, dy);
  }
  auto cache = layer.make_cache(backend, batch);
  {
    Buffer<T> dy = upload(backend, poison.data(), static_cast<index_t>(poison.size()));
    layer.forward(backend, p, xv, dy.template view<3>({batch, L, D}, "out"), &cache, &report);
    r.prefill = host_copy(backend, dy);
  }
  const std::vector<T> poison_step = poisoned<T>(batch * D);
  for (const std::vector<T>& xs : x_steps) {
    const Buffer<T> dxs = upload(backend, xs.data(), static_cast<index_t>(xs.size()));
    Buffer<T> dys = upload(backend, poison_step.data(), static_cast<index_t>(poison_step.size()));
    layer.step(backend, p, ConstView<T, 2>(dxs.data(), {batch, D}, "x"), dys.template view<2>({batch, D}, "out"), cache,
               &report);
    r.steps.push_back(host_copy(backend, dys));
  }
  r.ssm_state = host_copy(backend, cache.ssm_state);
  r.conv_state = host_copy(backend, cache.conv_state);
  r.report = report.read();
  return r;
}

/// Which routers of a RoM layer get zero weights (see the file comment): none, the router on
/// Out's own input (an (X, ED) weight), or all.
enum class ZeroRouters { none, out_only, all };

template <class Layer>
void zero_rom_routers(const Cuda& gpu, const Layer& layer, typename Layer::Params& hp, typename Layer::Params& gp,
                      ZeroRouters z) {
  if (z == ZeroRouters::none) return;
  bool any = false;
  for (int i = 0; i < Layer::router_count(); ++i) {
    const bool on_out_input = hp.routers[i].size(1) == layer.dims().d_inner;
    if (z == ZeroRouters::all || on_out_input) {
      zero_router(Host{}, hp.routers[i]);
      zero_router(gpu, gp.routers[i]);
      any = true;
    }
  }
  REQUIRE(any);  // the layer type has the router the test means to zero
}

template <class Layer>
void compare_rom(const Cuda& gpu, const Layer& layer, index_t batch, index_t L, index_t steps, double tol,
                 std::uint64_t seed, ZeroRouters zero = ZeroRouters::none) {
  using T = typename Layer::value_type;
  const index_t D = layer.dims().d_model;
  Rng r1(seed), r2(seed);
  auto hp = layer.init(Host{}, r1, 4);
  auto gp = layer.init(gpu, r2, 4);
  zero_rom_routers(gpu, layer, hp, gp, zero);
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * L * D), seed + 1));
  std::vector<std::vector<T>> xs;
  for (index_t s = 0; s < steps; ++s)
    xs.push_back(test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * D), seed + 2 + s)));
  const RomRun<T> want = run_rom(Host{}, layer, hp, x, xs, batch, L);
  const RomRun<T> got = run_rom(gpu, layer, gp, x, xs, batch, L);
  CAPTURE(batch, L, steps, layer.num_experts(), layer.settings().capacity_factor, int(zero));
  CHECK(test::rel_l2(got.full, want.full) <= tol);
  CHECK(test::rel_l2(got.prefill, want.prefill) <= tol);
  REQUIRE(got.steps.size() == want.steps.size());
  for (std::size_t s = 0; s < got.steps.size(); ++s) {
    CAPTURE(s);
    CHECK(test::rel_l2(got.steps[s], want.steps[s]) <= tol);
  }
  CHECK(test::rel_l2(got.ssm_state, want.ssm_state) <= tol);
  CHECK(test::rel_l2(got.conv_state, want.conv_state) <= tol);
  // Stats of routers reading y (PerProjectionRouting's Out router) see slightly different
  // logits on the two backends: compare their floats at the layer tolerance.
  check_reports(got.report, want.report, std::max(kStatsTol, tol));
}

MambaDims rom_dims(index_t d_model) {
  MambaConfig cfg;
  cfg.d_model = d_model;
  cfg.d_state = 16;
  return cfg.dims();
}

template <class T>
void compare_rom_variants(const Cuda& gpu, index_t batch, index_t L, double capacity_factor, double tol,
                          std::uint64_t seed) {
  const MambaDims dims = rom_dims(64);
  const index_t X = 4, steps = 3;
  RouterSettings s;
  s.capacity_factor = capacity_factor;
  // The paper's main setting: top-1, one shared decision, g on Out.
  compare_rom(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<>, T>(dims, X, {}, s), batch, L, steps, tol, seed);
  // Top-2 with every weight placement (they differ only for K > 1).
  using P = Routed<Conv, Gate, Out>;
  compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<P, WeightOut>>(dims, X, {}, s), batch,
              L, steps, tol, seed + 10);
  compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<P, WeightGate>>(dims, X, {}, s), batch,
              L, steps, tol, seed + 20);
  compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<P, WeightAll>>(dims, X, {}, s), batch,
              L, steps, tol, seed + 30);
  compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<P, WeightNone>>(dims, X, {}, s), batch,
              L, steps, tol, seed + 40);
  // Conv dense, Gate and Out routed (no fused in_proj).
  compare_rom(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<>, T, RomVariant<Routed<Gate, Out>>>(dims, X, {}, s),
              batch, L, steps, tol, seed + 50);
  // The naive baseline: a router per projection.
  compare_rom(gpu, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<>, T>(dims, X, TopK<2>{true}, s), batch, L, steps,
              tol, seed + 60, std::is_same_v<T, float> ? ZeroRouters::none : ZeroRouters::out_only);
}

}  // namespace

TEST_CASE("MoeFeedForward: CUDA forward and step equal the host", "[cuda][layers][moe]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 11;
  for (index_t L : {1, 7, 64}) {
    for (double cf : {0.0, 1.0, 0.5}) {
      seed += 100;
      compare_ffn_variants<float>(gpu, 2, L, cf, 1e-5, seed);
      compare_ffn_variants<bf16>(gpu, 2, L, cf, 1e-2, seed + 50);
    }
  }
}

TEST_CASE("MoeFeedForward: CUDA when one expert takes every token (the others empty)", "[cuda][layers][moe]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  for (double cf : {0.0, 1.0}) {
    compare_ffn_variants<float>(gpu, 3, 21, cf, 1e-5, 5, true);
    compare_ffn_variants<bf16>(gpu, 3, 21, cf, 1e-2, 6, true);
  }
}

TEST_CASE("MoeFeedForward: CUDA at a wider shape (d_model 256, 8 experts, 512 tokens)", "[cuda][layers][moe][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  RouterSettings s;
  s.capacity_factor = 1.25;
  compare_ffn(gpu, MoeFeedForward<TopK<2>, Experts<>, GatedMlp<Silu>, bf16>(256, 512, 8, TopK<2>{true}, s), 256, 2, 256,
              1e-2, 77);
  compare_ffn(gpu, MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float>(256, 768, 8, {}, s), 256, 2, 256, 1e-5, 78);
}

TEST_CASE("MoeFeedForward on CUDA reproduces Hugging Face SwitchTransformersSparseMLP", "[cuda][layers][moe][hf]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const std::string path = test::data_dir() + "/hf_switch_tiny/switch.safetensors";
  REQUIRE(std::filesystem::exists(path));
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const Checkpoint ckpt(path);
  const MoeFeedForward<Top1Switch, Experts<>, Mlp<Relu>, float> layer(32, 64, 8);
  const auto x = ckpt.read_as<float>("x", {2, 20, 32});
  const auto want = ckpt.read_as<float>("out0", {2, 20, 32});
  const auto gp = layer.load(gpu, ckpt, "w.");
  const auto hp = layer.load(Host{}, ckpt, "w.");
  const FfnRun<float> got = run_ffn(gpu, layer, gp, x, std::vector<float>(x.begin(), x.begin() + 2 * 32), 2, 20, 32);
  const FfnRun<float> host =
      run_ffn(Host{}, layer, hp, x, std::vector<float>(x.begin(), x.begin() + 2 * 32), 2, 20, 32);
  const double err = test::rel_l2(got.out, want);
  INFO("relative L2 error against the fixture " << err);
  CHECK(err <= 1e-5);
  CHECK(test::rel_l2(got.out, host.out) <= 1e-5);
  check_reports(got.report, host.report, kStatsTol);
  REQUIRE(got.report.size() == 2);
  CHECK(got.report[0].tokens == 40);
  CHECK(got.report[0].dropped == 0);
  CHECK(got.report[0].counts[3] == 13);  // the fixture's README: 13 of the 40 tokens go to expert 3
}

TEST_CASE("RoutedMamba: CUDA forward, prefill and decode steps equal the host", "[cuda][layers][rom]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  std::uint64_t seed = 21;
  for (index_t L : {1, 7, 40}) {
    for (double cf : {0.0, 1.0}) {
      seed += 100;
      compare_rom_variants<float>(gpu, 2, L, cf, 1e-4, seed);
      compare_rom_variants<bf16>(gpu, 2, L, cf, 3e-2, seed + 50);
    }
  }
}

TEST_CASE("RoutedMamba: CUDA when one expert takes every token (the others empty)", "[cuda][layers][rom]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const MambaDims dims = rom_dims(64);
  for (double cf : {0.0, 1.0}) {
    RouterSettings s;
    s.capacity_factor = cf;
    compare_rom(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<>, float>(dims, 4, {}, s), 2, 33, 2, 1e-4, 3,
                ZeroRouters::all);
    compare_rom(gpu, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<>, bf16>(dims, 4, {}, s), 2, 33, 2, 3e-2, 4,
                ZeroRouters::all);
  }
}

TEST_CASE("RoutedMamba: CUDA at a wider shape (d_model 256, 8 experts, 2 × 200 tokens)", "[cuda][layers][rom][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  RouterSettings s;
  s.capacity_factor = 1.0;
  compare_rom(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<>, bf16>(rom_dims(256), 8, {}, s), 2, 200, 4, 3e-2, 9);
  compare_rom(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<>, float>(rom_dims(256), 8, {}, s), 2, 200, 4, 1e-4, 10);
}

// ---------------------------------------------------------------------------------------------
// Parts of one's own (tests/layers/custom_components.hpp)

namespace {

/// A bias over 8 experts that moves the choice (init's router weights give logits of about
/// ±0.2, so the bias decides most tokens and the logits the rest).
test::BiasBalancedTopK<2> steering_router() {
  test::BiasBalancedTopK<2> r;
  const float b[8] = {-0.3f, 0.0f, 0.1f, 0.25f, 0.0f, 0.15f, -0.1f, 0.05f};
  std::copy(std::begin(b), std::end(b), r.bias);
  return r;
}

}  // namespace

/// A layer with `Experts<N, SyncFreeGemm>`: its CUDA forward (no cache, no report) is captured
/// once in a CUDA graph (which fails if anything in it waits for the host) and replayed for
/// three inputs written into the captured input buffer; every replay equals the host forward.
template <class Layer>
void check_graph_forward(const Cuda& gpu, const Layer& layer, index_t D, index_t batch, index_t L, double tol,
                         std::uint64_t seed) {
  using T = typename Layer::value_type;
  Rng r1(seed), r2(seed);
  const auto hp = layer.init(Host{}, r1, 4);
  const auto gp = layer.init(gpu, r2, 4);
  const index_t n = batch * L * D;
  Buffer<T> dx = gpu.alloc<T>(n);
  Buffer<T> dy = gpu.alloc<T>(n);
  const ConstView<T, 3> xv(dx.data(), {batch, L, D}, "x");
  const TensorView<T, 3> yv = dy.template view<3>({batch, L, D}, "out");
  const auto set_x = [&](const std::vector<T>& x) {
    REQUIRE(cudaMemcpyAsync(dx.data(), x.data(), x.size() * sizeof(T), cudaMemcpyHostToDevice, gpu.stream) ==
            cudaSuccess);
    gpu.synchronize();
  };
  set_x(test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 1)));
  layer.forward(gpu, gp, xv, yv, nullptr, nullptr);  // eager once: handles, pools, occupancy queries
  gpu.synchronize();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaStreamBeginCapture(gpu.stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  layer.forward(gpu, gp, xv, yv, nullptr, nullptr);
  REQUIRE(cudaStreamEndCapture(gpu.stream, &graph) == cudaSuccess);
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (std::uint64_t k = 0; k < 3; ++k) {
    const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 10 + k));
    set_x(x);
    REQUIRE(cudaGraphLaunch(exec, gpu.stream) == cudaSuccess);
    gpu.synchronize();
    std::vector<T> want(static_cast<std::size_t>(n));
    layer.forward(Host{}, hp, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                  TensorView<T, 3>(want.data(), {batch, L, D}, "out"), nullptr, nullptr);
    CAPTURE(k, batch, L, D, layer.settings().capacity_factor);
    CHECK(test::rel_l2(host_copy(gpu, dy), want) <= tol);
  }
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
}

/// A layer with `Experts<N, SyncFreeGemm>`: its CUDA training forward and backward (the routing
/// decision made and freed inside) are captured once in one CUDA graph, which fails if anything
/// in them waits for the host, and replayed for two (x, dout) pairs written into the captured
/// buffers; each replay's output, dx and every parameter gradient equal the host's.
template <class Layer>
void check_graph_backward(const Cuda& gpu, const Layer& layer, index_t D, index_t batch, index_t L, double tol,
                          std::uint64_t seed) {
  using T = typename Layer::value_type;
  Rng r1(seed), r2(seed);
  const auto hp = layer.init(Host{}, r1, 4);
  const auto gp = layer.init(gpu, r2, 4);
  const index_t n = batch * L * D;
  Buffer<T> d_x = gpu.alloc<T>(n), d_dout = gpu.alloc<T>(n), d_out = gpu.alloc<T>(n), d_dx = gpu.alloc<T>(n);
  const ConstView<T, 3> xv(d_x.data(), {batch, L, D}, "x"), doutv(d_dout.data(), {batch, L, D}, "dout");
  const TensorView<T, 3> ov = d_out.template view<3>({batch, L, D}, "out");
  const TensorView<T, 3> dxv = d_dx.template view<3>({batch, L, D}, "dx");
  auto g = layer.make_grads(gpu, gp);
  const auto step = [&] {
    typename Layer::Saved saved;
    layer.forward_train(gpu, gp, xv, ov, saved);
    layer.backward(gpu, gp, xv, saved, doutv, dxv, g);
  };
  const auto set = [&](Buffer<T>& b, const std::vector<T>& v) {
    REQUIRE(cudaMemcpyAsync(b.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, gpu.stream) ==
            cudaSuccess);
    gpu.synchronize();
  };
  set(d_x, test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 1)));
  set(d_dout, test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 2)));
  step();  // eager once: handles, pools, occupancy queries
  gpu.synchronize();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaStreamBeginCapture(gpu.stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  step();
  REQUIRE(cudaStreamEndCapture(gpu.stream, &graph) == cudaSuccess);
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (std::uint64_t k = 0; k < 2; ++k) {
    const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 10 + k));
    const auto dout = test::to_storage<T>(test::randn(static_cast<std::size_t>(n), seed + 20 + k));
    set(d_x, x);
    set(d_dout, dout);
    REQUIRE(cudaGraphLaunch(exec, gpu.stream) == cudaSuccess);
    gpu.synchronize();
    std::vector<T> out(static_cast<std::size_t>(n)), dx(static_cast<std::size_t>(n));
    auto hg = layer.make_grads(Host{}, hp);
    typename Layer::Saved saved;
    const ConstView<T, 3> hx(x.data(), {batch, L, D}, "x");
    layer.forward_train(Host{}, hp, hx, TensorView<T, 3>(out.data(), {batch, L, D}, "out"), saved);
    layer.backward(Host{}, hp, hx, saved, ConstView<T, 3>(dout.data(), {batch, L, D}, "dout"),
                   TensorView<T, 3>(dx.data(), {batch, L, D}, "dx"), hg);
    CAPTURE(k, batch, L, D, layer.settings().capacity_factor);
    CHECK(test::rel_l2(host_copy(gpu, d_out), out) <= tol);
    CHECK(test::rel_l2(host_copy(gpu, d_dx), dx) <= tol);
    std::vector<std::vector<float>> want;
    Layer::visit_params(hg, [&](const std::string&, auto& t) { want.push_back(host_copy(Host{}, t)); });
    std::size_t i = 0;
    Layer::visit_params(g, [&](const std::string& name, auto& t) {
      CAPTURE(name);
      CHECK(test::rel_l2(host_copy(gpu, t), want[i++]) <= tol);
    });
  }
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
}

TEST_CASE("MoE and RoM layers' training step with the sync-free grouped GEMM: one CUDA graph, equal to the host",
          "[cuda][layers][moe][rom][backward]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t D = 64;
  for (double cf : {0.0, 1.0}) {
    RouterSettings s;
    s.capacity_factor = cf;
    check_graph_backward(gpu, MoeFeedForward<TopK<2>, Experts<8, SyncFreeGemm>, GatedMlp<Silu>, float>(D, 96, 8, {}, s),
                         D, 2, 40, 1e-3, 71);
    check_graph_backward(gpu, MoeFeedForward<TopK<2>, Experts<8, SyncFreeGemm>, GatedMlp<Silu>, bf16>(D, 96, 8, {}, s),
                         D, 2, 300, 5e-2, 72);
    check_graph_backward(
        gpu, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<8, SyncFreeGemm>, float>(rom_dims(D), 8, {}, s), D, 2,
        40, 1e-3, 73);
    check_graph_backward(gpu,
                         RoutedMamba<TopK<1>, SharedRouting, Experts<8, SyncFreeGemm>, bf16>(rom_dims(D), 8, {}, s), D,
                         2, 300, 5e-2, 74);
  }
}

TEST_CASE("MoE and RoM layers with the sync-free grouped GEMM: captured in a CUDA graph, equal to the host",
          "[cuda][layers][moe][rom]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const index_t D = 64;
  for (double cf : {0.0, 1.0}) {
    RouterSettings s;
    s.capacity_factor = cf;
    check_graph_forward(gpu, MoeFeedForward<TopK<2>, Experts<8, SyncFreeGemm>, GatedMlp<Silu>, bf16>(D, 96, 8, {}, s),
                        D, 2, 300, 3e-2, 61);
    check_graph_forward(gpu, MoeFeedForward<Top1Switch, Experts<8, SyncFreeGemm>, Mlp<Relu>, float>(D, 192, 8, {}, s),
                        D, 2, 40, 1e-4, 62);
    check_graph_forward(gpu, RoutedMamba<TopK<1>, SharedRouting, Experts<8, SyncFreeGemm>, bf16>(rom_dims(D), 8, {}, s),
                        D, 2, 300, 3e-2, 63);
    check_graph_forward(
        gpu, RoutedMamba<TopK<2>, PerProjectionRouting, Experts<8, SyncFreeGemm>, float>(rom_dims(D), 8, {}, s), D, 2,
        40, 1e-4, 64);
  }
  // The strategy through the existing comparisons (forward with reports, prefill, decode steps).
  compare_ffn(gpu, MoeFeedForward<TopK<2>, Experts<8, SyncFreeGemm>, GatedMlp<Silu>, float>(D, 96, 8), D, 2, 40, 1e-4,
              65);
  compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<8, SyncFreeGemm>, float>(rom_dims(D), 8), 2, 40, 3, 1e-4,
              66);
}

TEST_CASE("MoeFeedForward with a bias-balancing router of one's own: CUDA equals the host",
          "[cuda][layers][moe][components]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  using Router = test::BiasBalancedTopK<2>;
  const index_t D = 64, X = 8;
  std::uint64_t seed = 401;
  for (index_t L : {1, 7, 64}) {
    for (double cf : {0.0, 1.0}) {
      seed += 10;
      RouterSettings s;
      s.capacity_factor = cf;
      compare_ffn(gpu, MoeFeedForward<Router, Experts<>, Mlp<Relu>, float>(D, 3 * D, X, steering_router(), s), D, 2, L,
                  1e-5, seed);
      compare_ffn(gpu, MoeFeedForward<Router, Experts<>, GatedMlp<Silu>, bf16>(D, 96, X, steering_router(), s), D, 2, L,
                  1e-2, seed + 1);
    }
  }
  // Zero router weights: every logit 0, the bias alone ranks (experts 3 and 5 for every token).
  compare_ffn(gpu, MoeFeedForward<Router, Experts<>, Mlp<Relu>, float>(D, 3 * D, X, steering_router()), D, 3, 21, 1e-5,
              451, true, /*zero_expert=*/3);
  // More experts than the router holds biases for: NaN weights on both backends, never a crash.
  const MoeFeedForward<Router, Experts<>, Mlp<Relu>, float> wide(D, 3 * D, Router::kMaxExperts + 1);
  Rng r1(452), r2(452);
  const auto hp = wide.init(Host{}, r1, 2);
  const auto gp = wide.init(gpu, r2, 2);
  const auto x = test::randn(static_cast<std::size_t>(2 * D), 453);
  const auto xs = test::randn(static_cast<std::size_t>(D), 454);
  const FfnRun<float> h = run_ffn(Host{}, wide, hp, x, xs, 1, 2, D);
  const FfnRun<float> g = run_ffn(gpu, wide, gp, x, xs, 1, 2, D);
  CHECK(std::all_of(h.out.begin(), h.out.end(), [](float v) { return std::isnan(v); }));
  CHECK(std::all_of(g.out.begin(), g.out.end(), [](float v) { return std::isnan(v); }));
  CHECK(std::all_of(h.step.begin(), h.step.end(), [](float v) { return std::isnan(v); }));
  CHECK(std::all_of(g.step.begin(), g.step.end(), [](float v) { return std::isnan(v); }));
  check_reports(g.report, h.report, kStatsTol);
}

TEST_CASE("RoutedMamba with a placement and a scope of one's own: CUDA equals the host",
          "[cuda][layers][rom][components]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  using test::InOutRouting;
  using test::WeightConv;
  using CGO = Routed<Conv, Gate, Out>;
  const MambaDims dims = rom_dims(64);
  const index_t X = 4, steps = 3;
  std::uint64_t seed = 501;
  for (index_t L : {1, 7, 40}) {
    for (double cf : {0.0, 1.0}) {
      seed += 100;
      RouterSettings s;
      s.capacity_factor = cf;
      auto both = [&]<class T>(double tol, std::uint64_t sd) {
        const ZeroRouters own = std::is_same_v<T, float> ? ZeroRouters::none : ZeroRouters::out_only;
        // g on the Conv columns of the fused Conv+Gate GEMM.
        compare_rom(gpu, RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<CGO, WeightConv>>(dims, X, {}, s),
                    2, L, steps, tol, sd);
        // g on an unfused routed Conv, Gate dense.
        compare_rom(gpu,
                    RoutedMamba<TopK<2>, SharedRouting, Experts<>, T, RomVariant<Routed<Conv, Out>, WeightConv>>(
                        dims, X, TopK<2>{true}, s),
                    2, L, steps, tol, sd + 10);
        // The scope: fused in_proj under "router_in", Out under its own router on m.
        compare_rom(gpu, RoutedMamba<TopK<2>, InOutRouting, Experts<>, T, RomVariant<CGO, WeightOut>>(dims, X, {}, s),
                    2, L, steps, tol, sd + 20, own);
        compare_rom(gpu, RoutedMamba<TopK<2>, InOutRouting, Experts<>, T, RomVariant<CGO, WeightConv>>(dims, X, {}, s),
                    2, L, steps, tol, sd + 30, own);
        compare_rom(
            gpu,
            RoutedMamba<TopK<1>, InOutRouting, Experts<>, T, RomVariant<Routed<Gate, Out>, WeightNone>>(dims, X, {}, s),
            2, L, steps, tol, sd + 40, own);
      };
      both.template operator()<float>(1e-4, seed);
      both.template operator()<bf16>(3e-2, seed + 50);
    }
  }
  // Every router zero: one expert takes every token, the others are empty.
  compare_rom(gpu, RoutedMamba<TopK<2>, InOutRouting, Experts<>, float, RomVariant<CGO, WeightConv>>(dims, X), 2, 33, 2,
              1e-4, 3, ZeroRouters::all);
}
