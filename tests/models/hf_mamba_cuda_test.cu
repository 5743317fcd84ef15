// CUDA tests of the Mamba language model: Hugging Face parity on the GPU (f32 ≤ 1e-4,
// bf16 ≤ 3e-2, f16 ≤ 1e-2), and the GPU model against the host model at a larger shape.
#include <catch2/catch_test_macros.hpp>

#include "models/hf_parity.hpp"

using namespace moss;

TEST_CASE("Hugging Face MambaForCausalLM parity on CUDA", "[cuda][models][hf]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  test::check_hf_mamba_parity<float>(gpu, 1e-4);
  test::check_hf_mamba_parity<bf16>(gpu, 3e-2);
  test::check_hf_mamba_parity<f16>(gpu, 1e-2);
}

TEST_CASE("CUDA Mamba LM equals the host model at a larger shape, with prefill, continue and decode", "[cuda][models]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg;
  cfg.d_model = 256;
  cfg.n_layers = 3;
  cfg.vocab_size = 1000;
  cfg.d_state = 16;
  const MambaLM<float> model(cfg);
  const auto host_p = model.init(Host{}, 5);
  const auto gpu_p = model.init(gpu, 5);  // the same seed gives the same weights on both backends
  const index_t batch = 3, L = 37, V = cfg.vocab_size;
  Rng rng(8);
  std::vector<std::int64_t> ids(batch * L);
  for (auto& id : ids) id = static_cast<std::int64_t>(rng.next() % V);
  const ConstView<std::int64_t, 2> v(ids.data(), {batch, L}, "ids");
  std::vector<float> want(batch * L * V), got(batch * L * V, NAN);
  model.forward(Host{}, host_p, v, TensorView<float, 3>(want.data(), {batch, L, V}, "logits"));
  Buffer<float> d = gpu.alloc<float>(batch * L * V);
  model.forward(gpu, gpu_p, v, d.view<3>({batch, L, V}, "logits"));
  download(gpu, got.data(), d.data(), d.size());
  CHECK(test::rel_l2(got, want) <= 1e-4);

  GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.record_logits = true;
  const auto rh = generate(Host{}, model, host_p, v, opt);
  const auto rg = generate(gpu, model, gpu_p, v, opt);
  CHECK(test::rel_l2(rg.logits, rh.logits) <= 1e-4);
  CHECK(rg.tokens == rh.tokens);
}
