// tests/model_grad_check.hpp: the central-difference check of a whole language model's
// loss_and_grads, shared by the tests of the models that train (MoE-Mamba, RoM, RoM + MoE).
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/models/language_model.hpp"
#include "moss_test.hpp"

namespace moss::test {

/// Every gradient of a two-layer `Model`'s loss_and_grads (d_model 6, vocabulary 11, d_state 3,
/// dt_rank 2; 2 sequences of 7 tokens) against central differences of its loss along random
/// directions of size `step`. `configure(blocks)` sets the block configs (routed blocks: aux
/// losses off, since the loss returned is the cross-entropy alone). Weights are sizeable (norms
/// near 1, routers ~0.8 so that no routing choice flips within the step, A_log and D and the dt
/// bias near their usual values). Returns the number of tensors checked.
template <class Model, class Configure>
std::size_t check_model_gradients(Configure&& configure, std::uint64_t seed, double step) {
  MambaConfig c;
  c.d_model = 6;
  c.n_layers = 2;
  c.vocab_size = 11;
  c.d_state = 3;
  c.dt_rank = 2;
  auto blocks = Model::default_block_configs();
  configure(blocks);
  const Model model(c, blocks);
  auto p = model.init(Host{}, 4);
  model.visit_params(p, [&](const std::string& name, auto& t) {
    const bool norm = name.find("norm") != std::string::npos, router = name.find("router") != std::string::npos;
    const float mean = norm || name.ends_with(".D") ? 1.0f : (name.ends_with("A_log") ? 0.3f : 0.0f);
    fill_normal(t, seed++, norm ? 0.2f : (router ? 0.8f : 0.4f), name.ends_with("dt_proj.bias") ? -1.0f : mean);
  });
  model.refresh_derived(Host{}, p);
  const index_t batch = 2, L = 7;
  Rng rng(5);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch * (L + 1)));
  for (auto& t : tokens) t = static_cast<std::int64_t>(rng.next() % 11);
  const ConstView<std::int64_t, 2> tv(tokens.data(), {batch, L + 1}, "tokens");
  auto g = model.make_grads(Host{}, p);
  model.loss_and_grads(Host{}, p, tv, g);
  auto scratch = model.make_grads(Host{}, p);
  auto loss = [&] {
    model.refresh_derived(Host{}, p);
    return static_cast<double>(model.loss_and_grads(Host{}, p, tv, scratch).loss);
  };
  return check_all_directional([&](auto& set, auto&& f) { model.visit_params(set, f); }, p, g, loss, seed, step);
}

}  // namespace moss::test
