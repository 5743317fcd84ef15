// CUDA tests of checkpoint validation and generation on the GPU: a checkpoint the model cannot
// run as meant is refused on moss::Cuda exactly as on the host (the checks run on the host copy
// of each tensor before it is uploaded), generation on the GPU raises the non-finite logits
// error instead of emitting token 0, and the decode step replayed as a CUDA graph (greedy pick
// on the device) gives the tokens and logits of eager steps.
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "moss/moss.hpp"
#include "moss_cuda_test.cuh"
#include "moss_test.hpp"

using namespace moss;
using Catch::Matchers::ContainsSubstring;
namespace fs = std::filesystem;

namespace {

MambaConfig tiny_config(index_t n_layers = 2) {
  MambaConfig c;
  c.d_model = 32;
  c.n_layers = n_layers;
  c.vocab_size = 48;
  c.d_state = 8;
  c.dt_rank = 2;
  return c;
}

/// The tensors of a seeded `model` (saved to a temporary folder and read back as float), each
/// passed through `edit`.
template <class Model>
WeightMap saved_weights(const Model& model, const std::string& tag,
                        const std::function<void(const std::string&, std::vector<float>&)>& edit = {}) {
  const fs::path dir = fs::temp_directory_path() / ("moss_generation_cuda_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  model.save(Host{}, model.init(Host{}, 11), dir);
  WeightMap map("tiny");
  {
    const Checkpoint ckpt(dir);
    for (const std::string& name : ckpt.names()) {
      std::vector<float> v = ckpt.read_as<float>(name);
      if (edit) edit(name, v);
      map.add(name, ckpt.info(name).shape, std::move(v));
    }
  }
  fs::remove_all(dir);
  return map;
}

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const moss::error& e) {
    return e.what();
  }
  return {};
}

const std::string kInProj = "backbone.layers.1.mixer.in_proj.weight";

}  // namespace

TEST_CASE("CUDA: loading onto the GPU refuses unused tensors and non-finite weights as the host does",
          "[cuda][models][checkpoint][errors]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const WeightMap two = saved_weights(MambaLM<float>(tiny_config(2)), "extra");
  const MambaLM<bf16> one(tiny_config(1));
  REQUIRE_THROWS_AS(one.load(gpu, two), io_error);
  CHECK(message_of([&] { one.load(gpu, two); }) == message_of([&] { one.load(Host{}, two); }));
  CHECK_THAT(message_of([&] { one.load(gpu, two); }), ContainsSubstring("10 tensors are not used"));
  CHECK(one.load(gpu, two, LoadOptions{.allow_unused_tensors = true}).size() == 1);

  const WeightMap nan = saved_weights(MambaLM<float>(tiny_config()), "nan", [](const std::string& n, auto& v) {
    if (n == kInProj) v[77] = std::numeric_limits<float>::quiet_NaN();
  });
  const MambaLM<f16> model(tiny_config());
  REQUIRE_THROWS_AS(model.load(gpu, nan), io_error);
  REQUIRE_THROWS_WITH(model.load(gpu, nan), ContainsSubstring("tensor \"" + kInProj + "\" holds a non-finite value") &&
                                                ContainsSubstring("element 77 (flat index) is nan"));
}

TEST_CASE("CUDA: generation with a NaN weight raises the non-finite logits error, greedy and sampled",
          "[cuda][models][generation][errors]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const WeightMap nan = saved_weights(MambaLM<float>(tiny_config()), "generate", [](const std::string& n, auto& v) {
    if (n == kInProj) v[77] = std::numeric_limits<float>::quiet_NaN();
  });
  const WeightMap good = saved_weights(MambaLM<float>(tiny_config()), "generate_good");
  std::vector<std::int64_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  const ConstView<std::int64_t, 2> v(prompt.data(), {2, 4}, "prompt");
  GenerateOptions opt;
  opt.max_new_tokens = 5;

  auto check = [&](auto tag) {
    using Model = typename decltype(tag)::type;
    const Model model(tiny_config());
    const auto bad = model.load(gpu, nan, LoadOptions{.check_finite = false});
    REQUIRE_THROWS_AS(generate(gpu, model, bad, v, opt), moss::error);
    const std::string msg = message_of([&] { generate(gpu, model, bad, v, opt); });
    INFO(msg);
    CHECK_THAT(msg,
               ContainsSubstring("generate: the logits of sequence 0 for new token 0 (position 4) are not finite"));
    CHECK_THAT(msg, ContainsSubstring("logits[0, 0] = nan"));
    // The same error as on the host.
    const auto host_bad = model.load(Host{}, nan, LoadOptions{.check_finite = false});
    CHECK(msg == message_of([&] { generate(Host{}, model, host_bad, v, opt); }));
    // Finite weights generate every token, the same as on the host.
    const auto ok = model.load(gpu, good);
    const auto r = generate(gpu, model, ok, v, opt);
    CHECK(r.steps == 5);
    if constexpr (std::is_same_v<Model, MambaLM<float>>)
      CHECK(r.tokens == generate(Host{}, model, model.load(Host{}, good), v, opt).tokens);
  };
  check(type_tag<MambaLM<float>>{});
  check(type_tag<MambaLM<bf16>>{});
  check(type_tag<MambaLM<f16>>{});

  opt.sampling.greedy = false;
  opt.sampling.top_k = 8;
  opt.sampling.seed = 5;
  const MambaLM<float> model(tiny_config());
  const auto bad = model.load(gpu, nan, LoadOptions{.check_finite = false});
  REQUIRE_THROWS_WITH(generate(gpu, model, bad, v, opt), ContainsSubstring("are not finite"));
}

TEST_CASE("CUDA: generate replays the decode step as a CUDA graph with the tokens and logits of eager steps",
          "[cuda][models][generation]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  // Every named variant: a decode step's routing decision is resident (no host read).
  STATIC_CHECK(MambaLM<float>::capturable_step);
  STATIC_CHECK(MambaLM<bf16>::capturable_step);
  STATIC_CHECK(MoeMambaLM<float>::capturable_step);
  STATIC_CHECK(BlackMambaLM<bf16>::capturable_step);
  STATIC_CHECK(RomLM<bf16>::capturable_step);
  STATIC_CHECK(RomMoeLM<float>::capturable_step);
  CudaStream stream;
  const Cuda gpu{stream.get()};
  MambaConfig cfg = tiny_config(4);  // a multiple of every pattern's length
  cfg.eos_token_id = 7;
  std::vector<std::int64_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};

  auto check = [&](auto tag, index_t batch) {
    using Model = typename decltype(tag)::type;
    const Model model(cfg, moss::test::blocks_with_experts<Model>(4));  // routed blocks: top-1 as the types say
    const auto p = model.init(gpu, 21);
    const ConstView<std::int64_t, 2> v(prompt.data(), {batch, 12 / batch}, "prompt");
    for (int mode = 0; mode < 4; ++mode) {
      GenerateOptions opt;
      opt.max_new_tokens = 24;
      opt.record_logits = mode == 1;
      opt.sampling.greedy = mode != 2;
      opt.sampling.temperature = 1.5f;
      opt.sampling.seed = 9;
      opt.stop_at_eos = mode == 3;
      INFO("batch " << batch << " mode " << mode << " dtype " << dtype_name(dtype_of<typename Model::T>));
      const GenerateResult graphed = generate(gpu, model, p, v, opt);
      opt.cuda_graph = false;
      const GenerateResult eager = generate(gpu, model, p, v, opt);
      CHECK(graphed.steps == eager.steps);
      CHECK(graphed.tokens == eager.tokens);
      CHECK(graphed.logits == eager.logits);  // bitwise: the same kernels on the same inputs
      if (mode == 1) CHECK(graphed.logits.size() == static_cast<std::size_t>(batch * 24 * cfg.vocab_size));
    }
  };
  for (index_t batch : {1, 2, 3}) {
    check(type_tag<MambaLM<float>>{}, batch);
    check(type_tag<MambaLM<bf16>>{}, batch);
  }
  // The sparse variants: their steps route through the grouped matrix-vector kernel.
  for (index_t batch : {1, 3}) {
    check(type_tag<MoeMambaLM<bf16>>{}, batch);
    check(type_tag<BlackMambaLM<float>>{}, batch);
    check(type_tag<RomLM<bf16>>{}, batch);
    check(type_tag<RomMoeLM<float>>{}, batch);
  }
}

TEST_CASE("CUDA: the graphed decode step counts non-finite logits on the device and picks as argmax does",
          "[cuda][models][generation][errors]") {
  MOSS_REQUIRE_CUDA_DEVICE();
  CudaStream stream;
  const Cuda gpu{stream.get()};
  const MambaLM<float> model(tiny_config());
  const auto p = model.init(gpu, 5);
  const index_t batch = 2, V = model.config().vocab_size;
  auto cache = model.make_cache(gpu, batch);
  Buffer<float> logits = gpu.alloc<float>(batch * V);
  GenerateOptions opt;
  StepRunner<MambaLM<float>, Cuda> runner(gpu, model, p, cache, logits.view<2>({batch, V}, "logits"), opt);
  REQUIRE(runner.graphed());
  std::vector<std::int64_t> next = {4, 40};
  for (int t = 0; t < 3; ++t) {
    if (t == 0) {
      // The capture from a fresh thread, whose first cuBLAS call is inside it: the runner must
      // create the thread's handles (which allocate) before capturing.
      std::string error;
      std::thread([&] {
        try {
          runner.run(next);
        } catch (const std::exception& e) {
          error = e.what();
        }
      }).join();
      REQUIRE(error.empty());
    } else {
      runner.run(next);
    }
    REQUIRE(runner.picks() != nullptr);
    const std::vector<float> host = moss::test::host_copy(gpu, logits);
    for (index_t b = 0; b < batch; ++b) {
      CHECK(runner.picks()[b] == argmax(host.data() + b * V, V));
      CHECK(runner.nonfinite()[b] == 0);
      next[static_cast<std::size_t>(b)] = runner.picks()[b];
    }
  }
  CHECK(cache.length == 3);
  // A NaN weight from now on: every logit of every row is NaN; the pick is 0, as argmax's.
  const auto& in_proj = std::get<0>(p.layers)[1].mixer.in_proj;
  REQUIRE(cudaMemset(const_cast<float*>(in_proj.data()), 0xff, sizeof(float) * 4) == cudaSuccess);
  runner.run(next);
  for (index_t b = 0; b < batch; ++b) {
    CHECK(runner.nonfinite()[b] == V);
    CHECK(runner.picks()[b] == 0);
  }
  // A token id outside the vocabulary is refused before the replay.
  next[0] = V;
  CHECK_THROWS_WITH(runner.run(next), ContainsSubstring("token id 48 at flat position 0 is outside the vocabulary"));
}
