// CUDA tests of checkpoint validation and generation on the GPU: a checkpoint the model cannot
// run as meant is refused on moss::Cuda exactly as on the host (the checks run on the host copy
// of each tensor before it is uploaded), and generation on the GPU raises the non-finite logits
// error instead of emitting token 0. Token picking runs on the host for every backend: the
// logits of each step are copied back once (the copy the pick reads anyway, no extra
// synchronisation) and checked there.
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
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
