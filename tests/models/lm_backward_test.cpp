// tests/models/lm_backward_test.cpp: `LanguageModel::loss_and_grads` on the host for a dense
// MambaLM (tied and untied head, 1 and 3 layers): the loss against an independent float64
// cross-entropy of `forward`'s logits, every parameter tensor's gradient against central
// differences of that loss along random directions, and the training options (ignore_index,
// dloss, accumulate, recompute) and errors.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "moss/models/language_model.hpp"
#include "moss_test.hpp"

namespace {

using moss::ConstView;
using moss::Host;
using moss::index_t;
using Model = moss::MambaLM<float>;

moss::MambaConfig tiny(index_t layers, bool tied) {
  moss::MambaConfig c;
  c.d_model = 6;
  c.n_layers = layers;
  c.vocab_size = 11;
  c.d_state = 3;
  c.dt_rank = 2;
  c.tie_embeddings = tied;
  return c;
}

/// Parameters with sizeable values everywhere (Hugging Face's init leaves the scan's gradients
/// below float's resolution of the loss; see tests/layers/mamba_backward_test.cpp).
Model::Params params_for(const Model& model, std::uint64_t seed) {
  Model::Params p = model.init(Host{}, seed);
  model.visit_params(p, [&](const std::string& name, auto& t) {
    const bool norm = name.find("norm") != std::string::npos;
    const bool a_log = name.ends_with("A_log"), d = name.ends_with(".D");
    const float mean = norm || d ? 1.0f : (a_log ? 0.3f : 0.0f);
    const float stddev = norm ? 0.2f : (name.ends_with("dt_proj.bias") ? 0.3f : 0.4f);
    moss::test::fill_normal(t, seed++, stddev, name.ends_with("dt_proj.bias") ? -1.0f : mean);
  });
  return p;
}

/// A = −exp(A_log) in every layer (derived at load time; tests change A_log in place).
void derive_a(Model::Params& p) {
  for (auto& layer : std::get<0>(p.layers))
    for (index_t i = 0; i < layer.mixer.A.numel(); ++i)
      layer.mixer.A.data()[i] = -std::exp(layer.mixer.A_log.data()[i]);
}

/// Mean cross-entropy of tokens[:, 1:] under `forward`'s logits, in float64 (independent of
/// moss's cross_entropy op).
double reference_loss(const Model& model, const Model::Params& p, const std::vector<std::int64_t>& tokens,
                      index_t batch, index_t L, std::int64_t ignore = -100) {
  const index_t V = model.config().vocab_size;
  std::vector<std::int64_t> in(static_cast<std::size_t>(batch * L));
  for (index_t b = 0; b < batch; ++b)
    for (index_t t = 0; t < L; ++t)
      in[static_cast<std::size_t>(b * L + t)] = tokens[static_cast<std::size_t>(b * (L + 1) + t)];
  std::vector<float> logits(static_cast<std::size_t>(batch * L * V));
  model.forward(Host{}, p, ConstView<std::int64_t, 2>(in.data(), {batch, L}, "ids"),
                moss::TensorView<float, 3>(logits.data(), {batch, L, V}, "logits"));
  double sum = 0;
  index_t count = 0;
  for (index_t b = 0; b < batch; ++b)
    for (index_t t = 0; t < L; ++t) {
      const std::int64_t target = tokens[static_cast<std::size_t>(b * (L + 1) + t + 1)];
      if (target == ignore) continue;
      const float* row = logits.data() + (b * L + t) * V;
      double mx = row[0];
      for (index_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double z = 0;
      for (index_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
      sum += mx + std::log(z) - row[target];
      ++count;
    }
  return count ? sum / static_cast<double>(count) : 0.0;
}

std::vector<std::int64_t> random_tokens(index_t n, index_t V, std::uint64_t seed) {
  moss::Rng rng(seed);
  std::vector<std::int64_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(V));
  return t;
}

// Central-difference step: the deep layers' gradients curve enough at 1e-2 (measured worst relative
// error 0.65) and drown in float rounding at 3e-4 (0.04); 1e-3 measures 0.009 at worst.
constexpr double kStep = 1e-3;

}  // namespace

TEST_CASE("LanguageModel loss_and_grads: the loss and every gradient match float64 and central differences",
          "[host][models][backward]") {
  std::uint64_t seed = 3000;
  for (const bool tied : {true, false}) {
    for (const index_t layers : {1, 3}) {
      CAPTURE(tied, layers);
      const Model model(tiny(layers, tied));
      auto p = params_for(model, seed += 100);
      derive_a(p);
      const index_t batch = 2, L = 9, V = model.config().vocab_size;
      auto tokens = random_tokens(batch * (L + 1), V, seed + 1);
      tokens[static_cast<std::size_t>(L)] = -100;  // one ignored target (the last of row 0: never an input)
      auto g = model.make_grads(Host{}, p);
      const auto r = model.loss_and_grads(
          Host{}, p, ConstView<std::int64_t, 2>(tokens.data(), {batch, L + 1}, "tokens"), g, {.chunk_rows = 5});
      CHECK(r.count == batch * L - 1);
      const double want = reference_loss(model, p, tokens, batch, L);
      CHECK(std::abs(r.loss - want) <= 1e-5 * std::abs(want));

      std::vector<std::string> pnames, gnames;
      std::vector<float*> pdata, gdata;
      std::vector<index_t> sizes;
      model.visit_params(p, [&](const std::string& name, auto& t) {
        pnames.push_back(name);
        pdata.push_back(t.data());
        sizes.push_back(t.numel());
      });
      model.visit_params(g, [&](const std::string& name, auto& t) {
        gnames.push_back(name);
        gdata.push_back(t.data());
      });
      REQUIRE(pnames == gnames);
      CHECK(pnames.size() == static_cast<std::size_t>(2 + (tied ? 0 : 1) + 10 * layers));
      auto loss = [&] {
        derive_a(p);
        return reference_loss(model, p, tokens, batch, L);
      };
      for (std::size_t k = 0; k < pnames.size(); ++k) {
        CAPTURE(pnames[k]);
        moss::test::check_directional(pnames[k], gdata[k], pdata[k], static_cast<std::size_t>(sizes[k]), loss, seed++,
                                      kStep);
      }
    }
  }
}

TEST_CASE("LanguageModel loss_and_grads: dloss scales, accumulate adds, recompute equals keep, bad input is refused",
          "[host][models][backward]") {
  const Model model(tiny(2, true));
  auto p = params_for(model, 41);
  derive_a(p);
  const index_t batch = 3, L = 8, V = model.config().vocab_size;
  const auto tokens = random_tokens(batch * (L + 1), V, 42);
  const ConstView<std::int64_t, 2> tv(tokens.data(), {batch, L + 1}, "tokens");
  const auto flat = [&](Model::Grads& g) {
    std::vector<float> all;
    model.visit_params(g, [&](const std::string&, auto& t) { all.insert(all.end(), t.data(), t.data() + t.numel()); });
    return all;
  };
  auto g1 = model.make_grads(Host{}, p);
  const auto r1 = model.loss_and_grads(Host{}, p, tv, g1);
  const auto base = flat(g1);

  auto g_re = model.make_grads(Host{}, p);
  const auto r_re = model.loss_and_grads(Host{}, p, tv, g_re, {.activations = moss::ActivationPolicy::recompute});
  CHECK(std::memcmp(&r_re.loss, &r1.loss, sizeof(float)) == 0);
  CHECK(flat(g_re) == base);

  // Two accumulated calls with dloss 1/2 give the same gradient to float rounding (halving is
  // exact; ops that accumulate add their new terms in their own order).
  auto g2 = model.make_grads(Host{}, p);
  model.loss_and_grads(Host{}, p, tv, g2, {.accumulate = true, .dloss = 0.5f});
  model.loss_and_grads(Host{}, p, tv, g2, {.accumulate = true, .dloss = 0.5f});
  {
    std::vector<std::string> names;
    std::vector<std::vector<float>> a, b;
    model.visit_params(g1, [&](const std::string& name, auto& t) {
      names.push_back(name);
      a.emplace_back(t.data(), t.data() + t.numel());
    });
    model.visit_params(g2, [&](const std::string&, auto& t) { b.emplace_back(t.data(), t.data() + t.numel()); });
    for (std::size_t k = 0; k < names.size(); ++k) {
      double worst = 0, scale = 0;
      for (std::size_t i = 0; i < a[k].size(); ++i) {
        worst = std::max(worst, std::abs(double(a[k][i]) - b[k][i]));
        scale = std::max(scale, std::abs(double(a[k][i])));
      }
      INFO(names[k] << " worst " << worst << " scale " << scale);
      CHECK(worst <= 1e-6 * scale);
    }
  }

  // Errors: too short a sequence, gradients of another model.
  const std::vector<std::int64_t> one = {1, 2};
  REQUIRE_THROWS_WITH(model.loss_and_grads(Host{}, p, ConstView<std::int64_t, 2>(one.data(), {2, 1}, "tokens"), g1),
                      Catch::Matchers::ContainsSubstring("(batch, seqlen + 1) but needs"));
  const Model other(tiny(3, true));
  auto g_other = other.make_grads(Host{}, other.init(Host{}, 1));
  REQUIRE_THROWS_WITH(model.loss_and_grads(Host{}, p, tv, g_other),
                      Catch::Matchers::ContainsSubstring("the gradients were not made for this model"));
  const std::vector<std::int64_t> bad = {1, 2, 3, 99};
  REQUIRE_THROWS_WITH(model.loss_and_grads(Host{}, p, ConstView<std::int64_t, 2>(bad.data(), {1, 4}, "tokens"), g1),
                      Catch::Matchers::ContainsSubstring("99"));
}

TEST_CASE("LanguageModel loss_and_grads: plain gradient steps lower the loss", "[host][models][backward]") {
  const Model model(tiny(2, false));
  auto p = model.init(Host{}, 5);
  const index_t batch = 4, L = 16, V = model.config().vocab_size;
  // A learnable sequence: t+1 = (t·3 + 1) mod V.
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(batch * (L + 1)));
  for (index_t b = 0; b < batch; ++b) {
    std::int64_t t = b;
    for (index_t i = 0; i <= L; ++i, t = (t * 3 + 1) % V) tokens[static_cast<std::size_t>(b * (L + 1) + i)] = t;
  }
  const ConstView<std::int64_t, 2> tv(tokens.data(), {batch, L + 1}, "tokens");
  auto g = model.make_grads(Host{}, p);
  const float first = model.loss_and_grads(Host{}, p, tv, g).loss;
  float last = first;
  for (int step = 0; step < 30; ++step) {
    last = model.loss_and_grads(Host{}, p, tv, g).loss;
    std::vector<moss::Tensor<float, 1>*> unused;
    std::vector<float*> pd, gd;
    std::vector<index_t> n;
    model.visit_params(p, [&](const std::string& name, auto& t) {
      pd.push_back(t.data());
      n.push_back(name.ends_with("A_log") ? -t.numel() : t.numel());
    });
    model.visit_params(g, [&](const std::string&, auto& t) { gd.push_back(t.data()); });
    for (std::size_t k = 0; k < pd.size(); ++k)
      for (index_t i = 0; i < std::abs(n[k]); ++i) pd[k][i] -= 0.1f * gd[k][i];
    derive_a(p);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.7f * first);
}
