// moss/models/generation.hpp: token generation through the decode path (greedy or sampled).
//
// Prefill runs the prompt through the full-sequence forward with a cache; every further token
// is one `step`. Logits come back to the host, where one sampler serves every backend, so the
// same seed gives the same tokens on the CPU and the GPU (up to logits that differ in rounding).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "moss/backend/host.hpp"
#include "moss/core/buffer.hpp"
#include "moss/core/random.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// How the next token is picked from the logits.
struct SamplingOptions {
  bool greedy = true;        ///< argmax (ties → lowest id); the other fields are ignored
  float temperature = 1.0f;  ///< > 0; logits are divided by it
  index_t top_k = 0;         ///< keep the k most likely tokens (0: all)
  float top_p = 1.0f;        ///< keep the smallest set whose probability reaches top_p (1: all)
  std::uint64_t seed = 0;    ///< seed of the sampler's generator

  void validate() const {
    MOSS_EXPECTS(greedy || (temperature > 0 && std::isfinite(temperature)), config_error,
                 "SamplingOptions: temperature is ", temperature, ", expected > 0");
    MOSS_EXPECTS(top_k >= 0, config_error, "SamplingOptions: top_k is ", top_k, ", expected ≥ 0");
    MOSS_EXPECTS(top_p > 0 && top_p <= 1, config_error, "SamplingOptions: top_p is ", top_p, ", expected in (0, 1]");
  }
};

/// The index of the largest value; NaN is never chosen unless every value is NaN (then 0);
/// ties go to the lowest index.
inline std::int64_t argmax(const float* v, index_t n) {
  std::int64_t best = -1;
  for (index_t i = 0; i < n; ++i) {
    if (std::isnan(v[i])) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best < 0 ? 0 : best;
}

/// Picks one token from `logits` (V values) by `opt`, drawing from `rng` when sampling.
inline std::int64_t sample_token(const float* logits, index_t V, const SamplingOptions& opt, Rng& rng) {
  if (opt.greedy) return argmax(logits, V);
  std::vector<std::int64_t> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](std::int64_t i) {
    const float x = logits[i];
    return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x;
  };
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return key(a) > key(b); });
  index_t keep = V;
  if (opt.top_k > 0) keep = std::min(keep, opt.top_k);
  // Softmax over the kept candidates, in double, from the largest logit down.
  std::vector<double> prob(static_cast<std::size_t>(keep));
  const double top = key(order[0]) / opt.temperature;
  double sum = 0;
  for (index_t i = 0; i < keep; ++i) {
    prob[i] = std::exp(key(order[i]) / opt.temperature - top);
    sum += prob[i];
  }
  if (!(sum > 0) || !std::isfinite(sum)) return order[0];  // all -inf / NaN logits
  if (opt.top_p < 1.0f) {
    double cum = 0;
    index_t n = 0;
    while (n < keep) {
      cum += prob[n] / sum;
      ++n;
      if (cum >= opt.top_p) break;
    }
    keep = n;
    sum = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  }
  double r = rng.uniform() * sum;
  for (index_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return order[i];
  }
  return order[keep - 1];
}

namespace detail {

/// Raises `moss::error` when one of the V logits of sequence `row` for new token `step` is NaN
/// or ±Inf: no token picked from them would be what the model means (argmax over NaN is 0).
inline void expect_finite_logits(const float* logits, index_t V, index_t row, index_t step, index_t prompt_len) {
  index_t first = -1, bad = 0;
  for (index_t v = 0; v < V; ++v)
    if (!std::isfinite(logits[v])) {
      if (first < 0) first = v;
      ++bad;
    }
  if (bad == 0) return;
  raise<moss::error>("generate: the logits of sequence ", row, " for new token ", step, " (position ",
                     prompt_len + step, ") are not finite: logits[", row, ", ", first, "] = ", logits[first], " (", bad,
                     " of ", V,
                     " non-finite); no token can be picked from them. The weights or the computation produced NaN or "
                     "Inf (load the checkpoint with LoadOptions{.check_finite = true} to find a non-finite weight; an "
                     "f16 model may overflow where bf16 or f32 does not)");
}

}  // namespace detail

/// What `generate` does.
struct GenerateOptions {
  index_t max_new_tokens = 16;
  SamplingOptions sampling;
  bool stop_at_eos = false;    ///< a sequence stops after it emits the config's eos_token_id
  bool record_logits = false;  ///< keep the logits of every generated position
  /// On CUDA, replay the one-token step as a CUDA graph when the model's step is capturable
  /// (`Model::capturable_step`); false runs every step eagerly (the same tokens, slower).
  bool cuda_graph = true;
};

/// How `generate` runs its one-token steps on a backend. This one, for every backend: the
/// model's eager `step` from host ids, then the logits are copied to the host, where the token
/// is picked. moss::Cuda has its own (moss/models/generation_cuda.cuh): the step captured once
/// as a CUDA graph and replayed, with the greedy pick on the device.
template <class Model, class Backend>
class StepRunner {
 public:
  /// Steps of `model` with `params` from `cache` (batch sequences), writing `logits` (batch, V).
  StepRunner(const Backend& backend, const Model& model, const typename Model::Params& params,
             typename Model::Cache& cache, TensorView<float, 2> logits, const GenerateOptions&)
      : backend_(backend), model_(model), params_(params), cache_(cache), logits_(logits) {}
  /// One step for `next` (host, batch ids).
  void run(const std::vector<std::int64_t>& next) {
    model_.step(backend_, params_, ConstView<std::int64_t, 1>(next.data(), {logits_.shape[0]}, "next_ids"), logits_,
                cache_);
  }
  /// The greedy picks of the last `run` when the device made them (then `nonfinite()` holds
  /// each row's count of non-finite logits), else nullptr: the caller reads the logits.
  const std::int64_t* picks() const { return nullptr; }
  const std::int32_t* nonfinite() const { return nullptr; }
  /// The last step's logits in host memory when the runner copied them there, else nullptr.
  const float* host_logits() const { return nullptr; }

 private:
  const Backend& backend_;
  const Model& model_;
  const typename Model::Params& params_;
  typename Model::Cache& cache_;
  TensorView<float, 2> logits_;
};

/// Tokens and timings of one `generate` call.
struct GenerateResult {
  index_t batch = 0;
  index_t length = 0;                ///< prompt length + generated tokens (the longest row)
  std::vector<std::int64_t> tokens;  ///< (batch, length); rows that stopped early are padded with eos
  std::vector<float> logits;         ///< (batch, steps, V) when record_logits
  index_t steps = 0;                 ///< new tokens generated per row
  double prefill_seconds = 0;
  double decode_seconds = 0;  ///< time of the one-token steps (steps − 1 of them)
};

/// Generates up to `opt.max_new_tokens` tokens after `prompt` (host memory, (batch, L)) with
/// `model` and its `params` on `backend`. The logits of every step come back to the host (on
/// every backend, in the copy that the token pick reads anyway, so no extra synchronisation)
/// and a NaN or ±Inf among those of a running sequence raises `moss::error` naming the
/// sequence, the step and the vocabulary index, never a token picked from them.
template <class Model, class Backend>
GenerateResult generate(const Backend& backend, const Model& model, const typename Model::Params& params,
                        ConstView<std::int64_t, 2> prompt, const GenerateOptions& opt) {
  opt.sampling.validate();
  MOSS_EXPECTS(opt.max_new_tokens >= 0, config_error, "generate: max_new_tokens is ", opt.max_new_tokens,
               ", expected ≥ 0");
  expect_contiguous("generate", prompt);
  const index_t batch = prompt.shape[0], L = prompt.shape[1], V = model.config().vocab_size;
  const std::int64_t eos = model.config().eos_token_id;
  const bool stop = opt.stop_at_eos && eos >= 0;
  using clock = std::chrono::steady_clock;

  GenerateResult r;
  r.batch = batch;
  std::vector<std::vector<std::int64_t>> rows(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) rows[b].assign(prompt.data + b * L, prompt.data + (b + 1) * L);
  if (opt.max_new_tokens > 0) {
    Rng rng(opt.sampling.seed);
    auto cache = model.make_cache(backend, batch);
    Buffer<float> logits = backend.template alloc<float>(batch * V);
    std::vector<float> host_logits(static_cast<std::size_t>(batch * V));
    std::vector<std::int64_t> next(static_cast<std::size_t>(batch));
    std::vector<bool> done(static_cast<std::size_t>(batch), false);

    // Picks every running row's next token: from the device's greedy picks when the step
    // runner made them (the logits come to the host only to report non-finite ones), else from
    // the logits on the host (copied here unless the runner already did).
    auto pick = [&](const float* ready_logits, const std::int64_t* picks, const std::int32_t* nonfinite) {
      const float* lg = ready_logits;
      auto fetch = [&] {
        download(backend, host_logits.data(), logits.data(), batch * V);
        return host_logits.data();
      };
      if (!lg && (!picks || opt.record_logits)) lg = fetch();
      if (opt.record_logits) r.logits.insert(r.logits.end(), lg, lg + batch * V);
      bool all_done = true;
      for (index_t b = 0; b < batch; ++b) {
        if (!done[b] && picks && nonfinite[b] > 0) lg = lg ? lg : fetch();
        if (!done[b] && (!picks || nonfinite[b] > 0)) detail::expect_finite_logits(lg + b * V, V, b, r.steps, L);
        next[b] = done[b] ? eos : picks ? picks[b] : sample_token(lg + b * V, V, opt.sampling, rng);
        rows[b].push_back(next[b]);
        if (stop && next[b] == eos) done[b] = true;
        all_done = all_done && done[b];
      }
      ++r.steps;
      return all_done;
    };

    auto t0 = clock::now();
    model.forward(backend, params, prompt, logits.template view<3>({batch, 1, V}, "logits"), &cache);
    bool finished = pick(nullptr, nullptr, nullptr);
    r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    t0 = clock::now();
    StepRunner<Model, Backend> runner(backend, model, params, cache, logits.template view<2>({batch, V}, "logits"),
                                      opt);
    while (!finished && r.steps < opt.max_new_tokens) {
      runner.run(next);
      finished = pick(runner.host_logits(), runner.picks(), runner.nonfinite());
    }
    r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  }
  r.length = L + r.steps;
  r.tokens.reserve(static_cast<std::size_t>(batch * r.length));
  for (auto& row : rows) {
    row.resize(static_cast<std::size_t>(r.length), eos);
    r.tokens.insert(r.tokens.end(), row.begin(), row.end());
  }
  return r;
}

}  // namespace moss

#if defined(__CUDACC__)
#include "moss/models/generation_cuda.cuh"
#endif
