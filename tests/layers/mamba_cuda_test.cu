// CUDA tests of the Mamba mixer: the GPU layer against the host layer over dtypes, shapes and
// scan strategies, with prefill from a cache and decode steps.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include "moss/moss.hpp"
#include "moss_test.hpp"

using namespace moss;

namespace {

template <class T, class Scan = AutoScan>
void compare_layer(index_t d_model, index_t d_state, index_t batch, index_t L, double tol) {
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg;
  cfg.d_model = d_model;
  cfg.d_state = d_state;
  cfg.use_bias = true;
  const Mamba<T, Scan> layer(cfg.dims());
  Rng r1(13), r2(13);
  const auto hp = layer.init(Host{}, r1, 4);
  const auto gp = layer.init(gpu, r2, 4);
  const index_t D = d_model;
  const auto x = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * L * D), 3));
  const auto x2 = test::to_storage<T>(test::randn(static_cast<std::size_t>(batch * D), 4));

  // Host: prefill with a cache, then one decode step.
  auto hc = layer.make_cache(Host{}, batch);
  std::vector<T> hy(batch * L * D), hs(batch * D);
  layer.forward(Host{}, hp, ConstView<T, 3>(x.data(), {batch, L, D}, "x"),
                TensorView<T, 3>(hy.data(), {batch, L, D}, "y"), &hc);
  layer.step(Host{}, hp, ConstView<T, 2>(x2.data(), {batch, D}, "x"), TensorView<T, 2>(hs.data(), {batch, D}, "y"), hc);

  auto gc = layer.make_cache(gpu, batch);
  Buffer<T> dx = upload(gpu, x.data(), static_cast<index_t>(x.size()));
  Buffer<T> dx2 = upload(gpu, x2.data(), static_cast<index_t>(x2.size()));
  Buffer<T> dy = gpu.alloc<T>(batch * L * D), ds = gpu.alloc<T>(batch * D);
  layer.forward(gpu, gp, ConstView<T, 3>(dx.data(), {batch, L, D}, "x"), dy.template view<3>({batch, L, D}, "y"), &gc);
  layer.step(gpu, gp, ConstView<T, 2>(dx2.data(), {batch, D}, "x"), ds.template view<2>({batch, D}, "y"), gc);
  std::vector<T> gy(hy.size()), gs(hs.size());
  download(gpu, gy.data(), dy.data(), dy.size());
  download(gpu, gs.data(), ds.data(), ds.size());
  std::vector<float> hstate(hc.ssm_state.size()), gstate(hc.ssm_state.size());
  std::copy_n(hc.ssm_state.data(), hstate.size(), hstate.begin());
  download(gpu, gstate.data(), gc.ssm_state.data(), gc.ssm_state.size());
  INFO("d_model " << d_model << " d_state " << d_state << " batch " << batch << " L " << L << " scan " << Scan::name);
  CHECK(test::rel_l2(gy, hy) <= tol);
  CHECK(test::rel_l2(gs, hs) <= tol);
  CHECK(test::rel_l2(gstate, hstate) <= tol);
}

}  // namespace

TEST_CASE("CUDA Mamba layer equals the host layer", "[cuda][layers]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  const index_t L = GENERATE(1, 7, 300);
  compare_layer<float>(64, 16, 2, L, 1e-4);
  compare_layer<bf16>(64, 16, 2, L, 3e-2);
  compare_layer<f16>(96, 8, 3, L, 1e-2);
}

TEST_CASE("CUDA Mamba layer at a wide shape", "[cuda][layers][large]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  compare_layer<bf16>(512, 16, 2, 513, 3e-2);
}

TEST_CASE("CUDA Mamba layer with each scan strategy equals the host layer", "[cuda][layers]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  // Batch 1 and long L: where AutoScan picks the chunked scan; L = 1 and L = 300 are below it.
  const index_t L = GENERATE(1, 300, 2048);
  compare_layer<float, SequentialScan>(64, 16, 1, L, 1e-4);
  compare_layer<float, ChunkedScan>(64, 16, 1, L, 1e-4);
  compare_layer<float, AutoScan>(64, 16, 1, L, 1e-4);
  compare_layer<bf16, ChunkedScan>(64, 16, 2, L, 3e-2);
  compare_layer<f16, SequentialScan>(96, 8, 1, L, 1e-2);
}
