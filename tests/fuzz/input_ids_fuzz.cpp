// tests/fuzz/input_ids_fuzz.cpp: libFuzzer target for moss-run's input path.
// The input is the bytes of an inputs file (safetensors with int64 `input_ids`). It is read by
// `moss::cli::read_input_ids`, the function moss-run uses, against a vocabulary of 64 tokens;
// ids that pass run through a small Mamba language model on the CPU (at most 64 positions).
// Seeds: tests/fuzz/corpus/input_ids/.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cli.hpp"
#include "fuzz_common.hpp"
#include "moss/moss.hpp"

namespace {

using Model = moss::MambaLM<float>;

const Model& model() {
  static const Model m = [] {
    moss::MambaConfig c;
    c.d_model = 16;
    c.n_layers = 2;
    c.vocab_size = 64;
    c.d_state = 4;
    c.expand = 2;
    c.d_conv = 4;
    return Model(c);
  }();
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto params = model().init(moss::Host{}, 1);
  const auto path = moss::fuzz::scratch() / "inputs.safetensors";
  moss::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  moss::fuzz::expect_moss_errors_only([&] {
    const moss::cli::InputIds in = moss::cli::read_input_ids(path, model().config().vocab_size);
    if (in.batch * in.length > 64) return;
    std::vector<float> logits(static_cast<std::size_t>(in.batch * in.length * model().config().vocab_size));
    model().forward(moss::Host{}, params,
                    moss::ConstView<std::int64_t, 2>(in.ids.data(), {in.batch, in.length}, "input_ids"),
                    moss::TensorView<float, 3>(logits.data(), {in.batch, in.length, model().config().vocab_size},
                                               "logits"));
  });
  return 0;
}
