// moss/models/language_model.hpp: token embedding → a stack of residual blocks → final norm →
// LM head (Hugging Face `MambaForCausalLM`), with full-sequence forward, prefill that continues
// from a cache, and one-token decode.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moss/io/checkpoint.hpp"
#include "moss/io/json.hpp"
#include "moss/io/weights.hpp"
#include "moss/io/writer.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/params.hpp"
#include "moss/layers/residual.hpp"
#include "moss/layers/routing.hpp"
#include "moss/models/mamba_config.hpp"
#include "moss/ops/cross_entropy.hpp"
#include "moss/ops/embedding.hpp"
#include "moss/ops/embedding_backward.hpp"
#include "moss/ops/linear.hpp"

namespace moss {

/// A list of block types that a model repeats, in order, to its runtime depth: layer i is of
/// type Blocks[i mod n]. A depth that is not a multiple of n is a `config_error`.
///   moss::Pattern<MambaBlock, MoeBlock>   MoE-Mamba: Mamba and MoE feed-forward alternating
/// What a model stacks: a block on the residual stream, built from the model's norm settings,
/// shared sizes and its config section, as `Residual<Norm, Mixer>` is around a mixer.
template <class B>
concept ModelBlock = requires(const NormSettings& norm, const MambaDims& dims, const typename B::Config& config) {
  typename B::Params;
  typename B::Cache;
  { B::block_name } -> std::convertible_to<std::string_view>;
  B(norm, dims, config);
};

template <class... Blocks>
struct Pattern {
  static_assert(sizeof...(Blocks) >= 1, "moss::Pattern<...>: list at least one block type");
  // Checked first: a bare mixer otherwise fails deep inside the model's constructor.
  static_assert((ModelBlock<Blocks> && ...),
                "moss::LanguageModel: every block type must be wrapped in moss::Residual<Norm, Mixer> (e.g. "
                "moss::Residual<moss::RmsNorm, moss::Mamba<T>>)");
  static constexpr std::size_t size = sizeof...(Blocks);
  using blocks = std::tuple<Blocks...>;
  using value_type = typename std::tuple_element_t<0, blocks>::value_type;
  static_assert((std::is_same_v<typename Blocks::value_type, value_type> && ...),
                "moss::Pattern<...>: every block must have the same storage type");
};

namespace detail {

template <class S>
struct as_pattern {
  using type = Pattern<S>;
};
template <class... B>
struct as_pattern<Pattern<B...>> {
  using type = Pattern<B...>;
};

/// Calls f(std::integral_constant<std::size_t, I>{}) for the I = i at run time (i < N).
template <std::size_t N, class F, std::size_t... I>
void visit_index(std::size_t i, F&& f, std::index_sequence<I...>) {
  ((i == I ? (f(std::integral_constant<std::size_t, I>{}), 0) : 0), ...);
}
template <std::size_t N, class F>
void visit_index(std::size_t i, F&& f) {
  visit_index<N>(i, std::forward<F>(f), std::make_index_sequence<N>{});
}

}  // namespace detail

/// A causal language model: embeddings, `n_layers` blocks following the stack's pattern, a
/// final RmsNorm and an LM head (tied to the embeddings or not).
/// @tparam Stack one block type (every layer alike, e.g. `Residual<RmsNorm, Mamba<bf16>>`) or a
///         `Pattern<Blocks...>` repeated to the depth.
template <class Stack>
class LanguageModel {
  using P = typename detail::as_pattern<Stack>::type;
  using Blocks = typename P::blocks;
  static constexpr std::size_t kPattern = P::size;
  template <std::size_t I>
  using Block = std::tuple_element_t<I, Blocks>;
  template <class Seq>
  struct Per;
  template <std::size_t... I>
  struct Per<std::index_sequence<I...>> {
    using params = std::tuple<std::vector<typename Block<I>::Params>...>;
    using caches = std::tuple<std::vector<typename Block<I>::Cache>...>;
    using configs = std::tuple<typename Block<I>::Config...>;
  };
  using Seq = std::make_index_sequence<kPattern>;
  // The training types of each position, instantiated only when training is used (so that a
  // model whose blocks cannot train yet still runs forward).
  template <class S>
  struct PerTrain;
  template <std::size_t... I>
  struct PerTrain<std::index_sequence<I...>> {
    using grads = std::tuple<std::vector<typename Block<I>::Grads>...>;
    using saved = std::tuple<std::vector<typename Block<I>::Saved>...>;
  };

 public:
  using value_type = typename P::value_type;
  using T = value_type;

  /// The config of each pattern position (`Block<I>::Config`), e.g. the expert count of an MoE block.
  using BlockConfigs = typename Per<Seq>::configs;
  /// Every block's step is capturable (moss::CapturableStep), so `step_resident` only queues work
  /// on the stream and `generate` on CUDA replays it as one CUDA graph per token.
  static constexpr bool capturable_step = []<std::size_t... I>(std::index_sequence<I...>) {
    return (CapturableStep<Block<I>> && ...);
  }
  (Seq{});

  /// Owned weights on one backend.
  struct Params {
    Tensor<T, 2> embeddings;           // (V, D) "backbone.embeddings.weight"
    Tensor<T, 2> lm_head;              // (V, D) "lm_head.weight"; absent when tied to the embeddings
    RmsNorm::Params norm_f;            // (D)
    typename Per<Seq>::params layers;  // per pattern position, layers i ≡ position (mod n) in order
    /// Number of layers held.
    std::size_t size() const {
      std::size_t n = 0;
      std::apply([&](const auto&... v) { ((n += v.size()), ...); }, layers);
      return n;
    }
  };
  /// Decode state of every layer for a batch of sequences.
  struct Cache {
    typename Per<Seq>::caches layers;
    index_t batch = 0;
    index_t length = 0;  ///< tokens consumed so far per sequence
  };

  /// A model of `config`: the shared sizes and LM settings, and each pattern position's section
  /// (`config.blocks`, as read from config.json; a missing one means the type's defaults).
  explicit LanguageModel(MambaConfig config) : LanguageModel(config, configs_from(config, Seq{})) {}
  /// A model of `config` with the typed config of each pattern position (`config.blocks` is
  /// replaced by what they write).
  LanguageModel(MambaConfig config, const BlockConfigs& blocks)
      : config_(settle(std::move(config))), blocks_(make_blocks(config_, blocks, Seq{})), norm_f_(config_.norm()) {
    config_.blocks = sections(Seq{});
  }

  /// The model's config, with the keys its layer types imply filled in (`blocks` holds every
  /// position's section as its block writes it).
  const MambaConfig& config() const { return config_; }
  /// Every block's config at its defaults (to change some and pass them to the constructor).
  static BlockConfigs default_block_configs() { return BlockConfigs{}; }
  /// Calls f(config.routing) for every routed position of `blocks` (MoE, RoM or one's own block
  /// with a `routing` member), e.g. to give them all one expert count.
  template <class F>
  static void for_each_routing(BlockConfigs& blocks, F&& f) {
    std::apply(
        [&](auto&... b) {
          const auto one = [&](auto& block) {
            if constexpr (requires { block.routing; }) f(block.routing);
          };
          (one(b), ...);
        },
        blocks);
  }
  /// Throws `shape_error` naming the first of `n` ids (host memory) outside [0, vocab).
  void check_ids(const std::int64_t* ids, index_t n) const {
    const index_t V = config_.vocab_size;
    for (index_t i = 0; i < n; ++i)
      MOSS_EXPECTS(ids[i] >= 0 && ids[i] < V, shape_error, "LanguageModel: token id ", ids[i], " at flat position ", i,
                   " is outside the vocabulary [0, ", V, ")");
  }
  /// The block at pattern position I (e.g. to change a router's mode).
  template <std::size_t I = 0>
  const Block<I>& block() const {
    return std::get<I>(blocks_);
  }
  template <std::size_t I = 0>
  Block<I>& block() {
    return std::get<I>(blocks_);
  }

  /// Seeded random weights (the same seed gives the same weights on every backend).
  template <class Backend>
  Params init(const Backend& backend, std::uint64_t seed) const {
    Rng rng(seed);
    Params p;
    const Extents<2> vd{config_.vocab_size, config_.d_model};
    p.embeddings = normal_tensor<T>(backend, rng, vd, 0.02, "backbone.embeddings.weight");
    if (!config_.tie_embeddings) p.lm_head = normal_tensor<T>(backend, rng, vd, 0.02, "lm_head.weight");
    p.norm_f = norm_f_.init(backend, "backbone.norm_f.weight");
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i,
         [&](auto I) { std::get<I>(p.layers).push_back(std::get<I>(blocks_).init(backend, rng, config_.n_layers)); });
    return p;
  }

  /// Loads weights under Hugging Face names (f32, f16 or bf16 in the file; converted to T),
  /// validated as `options` says (io/weights.hpp): by default every tensor of `ckpt` must be
  /// read by the model (a layer beyond num_hidden_layers, or a conv1d.bias under use_conv_bias
  /// false, is an `io_error` listing the unused tensors) and every value must be finite (a NaN
  /// or ±Inf is an `io_error` naming the tensor and the flat index). An untied model requires
  /// `lm_head.weight`; a tied one accepts a stored `lm_head.weight` only when it equals the
  /// embeddings bit for bit (`io_error` otherwise).
  template <class Backend, WeightSource Source>
  Params load(const Backend& backend, const Source& ckpt, const LoadOptions& options = {}) const {
    const CheckedSource<Source> src(ckpt, options);
    Params p;
    const Extents<2> vd{config_.vocab_size, config_.d_model};
    p.embeddings = load_tensor<T>(backend, src, "", "backbone.embeddings.weight", vd);
    if (!config_.tie_embeddings) p.lm_head = load_tensor<T>(backend, src, "", "lm_head.weight", vd);
    if (config_.tie_embeddings && src.contains("lm_head.weight")) expect_tied_head(src);
    p.norm_f = norm_f_.load(backend, src, "", "backbone.norm_f.weight");
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) { std::get<I>(p.layers).push_back(std::get<I>(blocks_).load(backend, src, layer_prefix(i))); });
    src.expect_all_read(config_.source == "config" ? std::string("the model") : cat("the model of ", config_.source),
                        [&](const std::vector<std::string>& unread) { return unused_hint(unread); });
    return p;
  }

  /// Writes `dir/model.safetensors` and `dir/config.json` (Hugging Face names and keys for a
  /// dense Mamba; moss's documented keys for the others).
  template <class Backend>
  void save(const Backend& backend, const Params& p, const std::filesystem::path& dir) const {
    std::filesystem::create_directories(dir);
    SafetensorsWriter w;
    save_tensor(backend, w, "", p.embeddings);
    if (!config_.tie_embeddings) save_tensor(backend, w, "", p.lm_head);
    norm_f_.save(backend, p.norm_f, w, "");
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) { std::get<I>(blocks_).save(backend, layer_params<I>(p, i), w, layer_prefix(i)); });
    w.write(dir / "model.safetensors");
    MambaConfig c = config_;
    c.dtype = dtype_of<T>;
    std::ofstream out(dir / "config.json");
    out << io::dump_json(c.to_json()) << "\n";
    MOSS_EXPECTS(out.good(), io_error, (dir / "config.json").string(), ": could not write the config");
  }

  /// An empty decode cache for `batch` sequences.
  template <class Backend>
  Cache make_cache(const Backend& backend, index_t batch) const {
    MOSS_EXPECTS(batch >= 1, shape_error, "LanguageModel::make_cache: batch is ", batch, ", expected ≥ 1");
    Cache c;
    c.batch = batch;
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) { std::get<I>(c.layers).push_back(std::get<I>(blocks_).make_cache(backend, batch)); });
    return c;
  }

  /// Full-sequence forward over `ids` (host memory, (batch, L)). `logits` (backend memory) is
  /// (batch, L, V) for every position or (batch, 1, V) for the last position only. With a
  /// cache, the sequences continue from its state and the cache advances by L tokens. Routed
  /// layers add their statistics to `report` when given (names "layers.{i}.mixer...").
  template <class Backend>
  void forward(const Backend& backend, const Params& p, ConstView<std::int64_t, 2> ids, TensorView<float, 3> logits,
               Cache* cache = nullptr, RoutingReport* report = nullptr) const {
    const char* where = "LanguageModel::forward";
    const index_t batch = ids.shape[0], L = ids.shape[1], D = config_.d_model, V = config_.vocab_size;
    expect_contiguous(where, ids);
    MOSS_EXPECTS(L >= 1, shape_error, where, ": ", ids.name, " is ", shape_string(ids.shape),
                 " (batch, seqlen) but needs seqlen ≥ 1");
    MOSS_EXPECTS(logits.shape[1] == L || logits.shape[1] == 1, shape_error, where, ": ", logits.name, " is ",
                 shape_string(logits.shape), " (batch, seqlen, vocab) but expected [", batch, ", ", L, " or 1, ", V,
                 "]");
    expect_shape(where, logits, {batch, logits.shape[1], V}, "(batch, seqlen, vocab)");
    expect_contiguous(where, logits);
    check_params(where, p);
    if (cache) check_cache(where, *cache, batch);

    const index_t tokens = batch * L;
    Buffer<float> stream = backend.template alloc<float>(tokens * D);
    ResidualStream<T> rs{stream.template view<2>({tokens, D}, "residual"), {}};
    embed(backend, p, ids.data, tokens, rs.stream);
    for (index_t i = 0; i < config_.n_layers; ++i) {
      if (report) report->set_scope("layers." + std::to_string(i));
      at(i, [&](auto I) {
        auto* c = cache ? &std::get<I>(cache->layers)[static_cast<std::size_t>(i) / kPattern] : nullptr;
        std::get<I>(blocks_).forward(backend, layer_params<I>(p, i), rs, batch, L, c, report);
      });
    }
    if (report) report->set_scope("");

    Buffer<T> normed = backend.template alloc<T>(tokens * D);
    norm_f_.apply(backend, p.norm_f, rs, normed.template view<2>({tokens, D}, "normed"));
    // Every position, or only the last row of each sequence (a strided view, no copy).
    const bool last_only = logits.shape[1] == 1 && L > 1;
    const ConstView<T, 2> head_in = last_only
                                        ? ConstView<T, 2>(normed.data() + (L - 1) * D, {batch, D}, {L * D, 1}, "normed")
                                        : ConstView<T, 2>(normed.data(), {tokens, D}, "normed");
    head(backend, p, head_in, TensorView<float, 2>(logits.data, {head_in.shape[0], V}, "logits"));
    if (cache) cache->length += L;
  }

  /// One new token per sequence (`ids`: host memory, (batch)); writes (batch, V) logits.
  template <class Backend>
  void step(const Backend& backend, const Params& p, ConstView<std::int64_t, 1> ids, TensorView<float, 2> logits,
            Cache& cache, RoutingReport* report = nullptr) const {
    expect_contiguous("LanguageModel::step", ids);
    const Buffer<std::int64_t> resident = upload_ids(backend, ids.data, ids.shape[0]);
    step_resident(backend, p, ConstView<std::int64_t, 1>(resident.data(), {ids.shape[0]}, ids.name), logits, cache,
                  report);
  }

  /// `step` with the ids already in backend memory: host checks of shapes only, then work
  /// queued on the backend's stream. When `capturable_step`, nothing in it waits for the device,
  /// so it can be captured in a CUDA graph (see `generate`). On the CPU the ids are checked
  /// against the vocabulary; on the GPU the caller guarantees 0 ≤ id < vocab (as a token picked
  /// from the logits does: reading them back would wait). Advances `cache.length` by one.
  template <class Backend>
  void step_resident(const Backend& backend, const Params& p, ConstView<std::int64_t, 1> ids,
                     TensorView<float, 2> logits, Cache& cache, RoutingReport* report = nullptr) const {
    const char* where = "LanguageModel::step";
    const index_t batch = ids.shape[0], D = config_.d_model, V = config_.vocab_size;
    expect_shape(where, logits, {batch, V}, "(batch, vocab)");
    expect_contiguous(where, logits);
    expect_contiguous(where, ids);
    check_params(where, p);
    check_cache(where, cache, batch);
    if constexpr (std::is_same_v<Backend, Host>) check_ids(ids.data, batch);
    Buffer<float> stream = backend.template alloc<float>(batch * D);
    ResidualStream<T> rs{stream.template view<2>({batch, D}, "residual"), {}};
    embedding(backend, EmbeddingArgs<T>{ids, p.embeddings, rs.stream, /*ids_checked=*/true});
    for (index_t i = 0; i < config_.n_layers; ++i) {
      if (report) report->set_scope("layers." + std::to_string(i));
      at(i, [&](auto I) {
        std::get<I>(blocks_).step(backend, layer_params<I>(p, i), rs,
                                  std::get<I>(cache.layers)[static_cast<std::size_t>(i) / kPattern], report);
      });
    }
    if (report) report->set_scope("");
    Buffer<T> normed = backend.template alloc<T>(batch * D);
    norm_f_.apply(backend, p.norm_f, rs, normed.template view<2>({batch, D}, "normed"));
    head(backend, p, ConstView<T, 2>(normed.data(), {batch, D}, "normed"), logits);
    cache.length += 1;
  }

  // ---- training (docs/training.md; every block must have forward_train and backward) ----

  /// Parameter gradients in float32, by the same names as the Params (a tied model has no
  /// lm_head gradient: the head's gradient is added to the embeddings').
  struct Grads {
    Tensor<float, 2> embeddings;
    Tensor<float, 2> lm_head;
    RmsNorm::Params norm_f;
    typename PerTrain<Seq>::grads layers;
  };

  /// Settings of one `loss_and_grads` call.
  struct TrainOptions {
    ActivationPolicy activations = ActivationPolicy::keep;  // what each block keeps for backward
    bool accumulate = false;           // add into the gradients instead of overwriting them (micro-batches)
    float dloss = 1.0f;                // gradient of the objective w.r.t. the mean loss (e.g. 1 / micro-batches)
    index_t chunk_rows = 1024;         // rows of the LM head's logits formed at once (cross_entropy)
    std::int64_t ignore_index = -100;  // targets with this id count nothing
    RoutingReport* report = nullptr;   // when given, every routed layer adds its statistics (aux losses' values)
  };

  /// Zeroed gradients for `p`.
  template <class Backend>
  Grads make_grads(const Backend& backend, const Params& p) const {
    check_params("LanguageModel::make_grads", p);
    Grads g;
    g.embeddings = zeros_like<float>(backend, p.embeddings);
    g.lm_head = zeros_like<float>(backend, p.lm_head);
    g.norm_f.weight = zeros_like<float>(backend, p.norm_f.weight);
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) {
        std::get<I>(g.layers).push_back(std::get<I>(blocks_).make_grads(backend, layer_params<I>(p, i)));
      });
    return g;
  }

  /// Calls f(checkpoint name, tensor) for every trainable tensor of `p` (Params or Grads), in
  /// checkpoint order: the embeddings, the untied head, the final norm, then each layer's.
  template <class P, class F>
  void visit_params(P& p, F&& f) const {
    f(std::string("backbone.embeddings.weight"), p.embeddings);
    if (p.lm_head.present()) f(std::string("lm_head.weight"), p.lm_head);
    f(std::string("backbone.norm_f.weight"), p.norm_f.weight);
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) {
        auto& layer = std::get<I>(p.layers)[static_cast<std::size_t>(i) / kPattern];
        Block<I>::visit_params(layer, [&](const std::string& name, auto& t) { f(layer_prefix(i) + name, t); });
      });
  }

  /// Recomputes every block's derived weights (e.g. a Mamba mixer's A from A_log) after an
  /// optimiser step changed the trained ones in place.
  template <class Backend>
  void refresh_derived(const Backend& backend, Params& p) const {
    for (index_t i = 0; i < config_.n_layers; ++i)
      at(i, [&](auto I) {
        std::get<I>(blocks_).refresh_derived(backend, std::get<I>(p.layers)[static_cast<std::size_t>(i) / kPattern]);
      });
  }

  /// One training forward and backward over `tokens` (host memory, (batch, L + 1)): the model
  /// reads tokens[:, :L] and predicts tokens[:, 1:]. Returns the mean cross-entropy in nats per
  /// counted target and the count, and writes (or, with `options.accumulate`, adds) the
  /// gradient of dloss · loss to `g`. Every block keeps its activations as `options.activations`
  /// says; nothing is kept after the call.
  template <class Backend>
  CrossEntropyResult<float> loss_and_grads(const Backend& backend, const Params& p, ConstView<std::int64_t, 2> tokens,
                                           Grads& g, const TrainOptions& options = {}) const {
    const char* where = "LanguageModel::loss_and_grads";
    check_train_args(where, p, tokens, g);
    const index_t batch = tokens.shape[0], L = tokens.shape[1] - 1;
    const index_t n = batch * L;
    std::vector<std::int64_t> inputs(static_cast<std::size_t>(n)), targets(static_cast<std::size_t>(n));
    for (index_t b = 0; b < batch; ++b)
      for (index_t t = 0; t < L; ++t) {
        inputs[static_cast<std::size_t>(b * L + t)] = tokens(b, t);
        targets[static_cast<std::size_t>(b * L + t)] = tokens(b, t + 1);
      }
    CrossEntropyResult<float> result;
    train_pass(
        backend, p, batch, L, g, options,
        [&](TensorView<float, 2> out) { return embed(backend, p, inputs.data(), n, out); },
        [&](CrossEntropyArgs<T>& ce) {
          ce.targets = ConstView<std::int64_t, 1>(targets.data(), {n}, "targets");
          result = cross_entropy(backend, ce);
        });
    return result;
  }

  /// Where `loss_and_grads_resident` leaves its results: backend memory, written by queued work.
  struct ResidentLoss {
    float* loss = nullptr;                         // (1): the mean cross-entropy over the counted targets
    std::int64_t* count = nullptr;                 // (1): the counted targets
    unsigned long long* bad_id_row = nullptr;      // (1), optional (CUDA): lowered to every input row with an id
                                                   // outside the vocabulary; the caller sets it to ~0 first
    unsigned long long* bad_target_row = nullptr;  // (1), optional: the same for the targets
  };

  /// `loss_and_grads` with `tokens` in the backend's memory and the loss left there (`out`): on
  /// CUDA nothing in it waits for the device, so a training step can be captured in a CUDA graph
  /// (moss/train/trainer.hpp). The inputs and targets are split on the device (one strided copy
  /// each); the embedding's id check and the loss's target check lower the `out` flags instead of
  /// synchronising (a bad id gives a NaN row, so NaN gradients; a bad target counts as ignored),
  /// and the loss is `cross_entropy_resident`'s. On the host the ids are checked at once (a bad
  /// one throws, as in `loss_and_grads`), a bad target lowers its flag, and the results are
  /// written before the call returns.
  template <class Backend>
  void loss_and_grads_resident(const Backend& backend, const Params& p, ConstView<std::int64_t, 2> tokens, Grads& g,
                               const TrainOptions& options, const ResidentLoss& out) const {
    const char* where = "LanguageModel::loss_and_grads_resident";
    check_train_args(where, p, tokens, g);
    MOSS_EXPECTS(out.loss && out.count, config_error, where, ": ResidentLoss needs loss and count");
    const index_t batch = tokens.shape[0], L = tokens.shape[1] - 1;
    const index_t n = batch * L;
    Buffer<std::int64_t> inputs = backend.template alloc<std::int64_t>(n, "input ids");
    Buffer<std::int64_t> targets = backend.template alloc<std::int64_t>(n, "target ids");
    const Extents<2> inner{tokens.stride[0], tokens.stride[1]};
    copy(backend, inputs.template view<2>({batch, L}, "input ids"),
         ConstView<std::int64_t, 2>(tokens.data, {batch, L}, inner, "tokens[:, :-1]"));
    copy(backend, targets.template view<2>({batch, L}, "target ids"),
         ConstView<std::int64_t, 2>(tokens.data + tokens.stride[1], {batch, L}, inner, "tokens[:, 1:]"));
    train_pass(
        backend, p, batch, L, g, options,
        [&](TensorView<float, 2> rows) {
          embedding(backend, EmbeddingArgs<T>{.ids = ConstView<std::int64_t, 1>(inputs.data(), {n}, "input_ids"),
                                              .table = p.embeddings,
                                              .out = rows,
                                              .ids_checked = out.bad_id_row == nullptr,
                                              .bad_row = out.bad_id_row});
          return std::move(inputs);
        },
        [&](CrossEntropyArgs<T>& ce) {
          ce.targets = ConstView<std::int64_t, 1>(targets.data(), {n}, "targets");
          cross_entropy_resident(backend, ce, CrossEntropyOutputs{out.loss, out.count, out.bad_target_row});
        });
  }

  /// Hugging Face prefix of layer i: "backbone.layers.{i}.".
  static std::string layer_prefix(index_t i) { return "backbone.layers." + std::to_string(i) + "."; }

  /// The block names of the pattern, in order ("mamba", "moe", "rom", "ffn").
  static std::vector<std::string> pattern_names() { return names(Seq{}); }

 private:
  template <std::size_t... I>
  static std::vector<std::string> names(std::index_sequence<I...>) {
    return {std::string(Block<I>::block_name)...};
  }
  template <std::size_t... I>
  static std::tuple<Block<I>...> make_blocks(const MambaConfig& c, const BlockConfigs& b, std::index_sequence<I...>) {
    return std::tuple<Block<I>...>(Block<I>(c.norm(), c.dims(), std::get<I>(b))...);
  }
  /// Each position's typed config, read from its section of `c` (defaults where it has none).
  /// A config's block_pattern, when it names one, must be the model type's (checked before any
  /// section is read, so a section is never read by the wrong block type).
  static void expect_pattern(const MambaConfig& c) {
    const std::vector<std::string> pattern = pattern_names();
    MOSS_EXPECTS(c.block_pattern.empty() || c.block_pattern == pattern, config_error, c.source, ": block_pattern is ",
                 detail::quoted_list(c.block_pattern), " but the model type's pattern is ",
                 detail::quoted_list(pattern));
  }
  template <std::size_t... I>
  static BlockConfigs configs_from(const MambaConfig& c, std::index_sequence<I...>) {
    expect_pattern(c);
    MOSS_EXPECTS(c.blocks.empty() || c.blocks.size() == sizeof...(I), config_error, c.source, ": blocks has ",
                 c.blocks.size(), " sections but the model type's pattern has ", sizeof...(I), " blocks ",
                 detail::quoted_list(pattern_names()));
    return BlockConfigs{Block<I>::Config::from_json(c.block_section(I))...};
  }
  /// Each block's section as it writes it.
  template <std::size_t... I>
  std::vector<io::Json> sections(std::index_sequence<I...>) const {
    std::vector<io::Json> out;
    (
        [&] {
          io::Json s = io::Json::object();
          std::get<I>(blocks_).config().to_json(s);
          out.push_back(std::move(s));
        }(),
        ...);
    return out;
  }
  /// The config with what the block types imply filled in; `config_error` on contradictions.
  static MambaConfig settle(MambaConfig c) {
    c.validate("LanguageModel");
    const std::vector<std::string> pattern = pattern_names();
    expect_pattern(c);
    if (c.block_pattern.empty()) c.block_pattern = pattern;
    MOSS_EXPECTS(c.n_layers % static_cast<index_t>(kPattern) == 0, config_error, "LanguageModel: num_hidden_layers is ",
                 c.n_layers, ", which is not a multiple of the block pattern's length ", kPattern, " (",
                 detail::quoted_list(pattern), ")");
    if (c.moss_variant.empty() && pattern != std::vector<std::string>{"mamba"}) c.moss_variant = "custom";
    return c;
  }
  /// A tied model's stored lm_head.weight must be the embedding matrix, bit for bit.
  template <class Src>
  void expect_tied_head(const Src& src) const {
    const std::vector<index_t> vd{config_.vocab_size, config_.d_model};
    const std::vector<float> head = src.template read_as<float>("lm_head.weight", vd);
    const std::vector<float> emb = src.template read_as<float>("backbone.embeddings.weight", vd);
    std::size_t first = head.size(), differ = 0;
    for (std::size_t i = 0; i < head.size(); ++i)
      if (std::memcmp(&head[i], &emb[i], sizeof(float)) != 0) {
        if (first == head.size()) first = i;
        ++differ;
      }
    if (differ == 0) return;
    raise<io_error>(src.where(), ": the config", config_.source == "config" ? "" : cat(" (", config_.source, ")"),
                    " ties the LM head to the embeddings (tie_word_embeddings true) but the checkpoint holds a ",
                    "different \"lm_head.weight\": element ", first, " (flat index) is ",
                    detail::float_text(head[first]), " where \"backbone.embeddings.weight\" holds ",
                    detail::float_text(emb[first]), " (", differ, " of ", head.size(),
                    " elements differ); set tie_word_embeddings to false to use the stored head, or remove it");
  }
  /// Why tensors were left unread, as far as the config explains it ("" when it does not).
  std::string unused_hint(const std::vector<std::string>& unread) const {
    const std::string layers = "backbone.layers.";
    index_t deepest = -1;
    bool conv_bias = false, proj_bias = false;
    for (const std::string& n : unread) {
      if (n.starts_with(layers)) {
        index_t i = 0;
        std::size_t k = layers.size();
        for (; k < n.size() && n[k] >= '0' && n[k] <= '9' && i < (index_t{1} << 40); ++k) i = i * 10 + (n[k] - '0');
        if (k > layers.size() && k < n.size() && n[k] == '.' && i >= config_.n_layers) deepest = std::max(deepest, i);
      }
      conv_bias = conv_bias || (!config_.use_conv_bias && n.ends_with("conv1d.bias"));
      proj_bias = proj_bias || (!config_.use_bias && (n.ends_with("in_proj.bias") || n.ends_with("out_proj.bias")));
    }
    std::string why;
    if (deepest >= 0)
      why += deepest == config_.n_layers ? cat("; the config has num_hidden_layers ", config_.n_layers,
                                               " but the checkpoint also holds layer ", deepest)
                                         : cat("; the config has num_hidden_layers ", config_.n_layers,
                                               " but the checkpoint holds layers up to ", deepest, " (layers ",
                                               config_.n_layers, " to ", deepest, " are unused)");
    if (conv_bias) why += "; the config has use_conv_bias false but the checkpoint holds conv1d.bias";
    if (proj_bias) why += "; the config has use_bias false but the checkpoint holds in_proj/out_proj biases";
    return why;
  }
  /// Calls f(integral_constant<I>) for the pattern position of layer i.
  template <class F>
  void at(index_t i, F&& f) const {
    detail::visit_index<kPattern>(static_cast<std::size_t>(i) % kPattern, std::forward<F>(f));
  }
  template <std::size_t I>
  static const typename Block<I>::Params& layer_params(const Params& p, index_t i) {
    return std::get<I>(p.layers)[static_cast<std::size_t>(i) / kPattern];
  }
  /// The shape checks of a training pass: parameters and gradients made for this model, tokens
  /// (batch ≥ 1, L + 1 ≥ 2).
  void check_train_args(const char* where, const Params& p, ConstView<std::int64_t, 2> tokens, const Grads& g) const {
    check_params(where, p);
    MOSS_EXPECTS(g.embeddings.present() && static_cast<index_t>(grads_size(g)) == config_.n_layers &&
                     g.lm_head.present() == !config_.tie_embeddings,
                 config_error, where, ": the gradients were not made for this model (use make_grads)");
    expect_valid(where, tokens);
    MOSS_EXPECTS(tokens.shape[0] >= 1 && tokens.shape[1] >= 2, shape_error, where, ": ", tokens.name, " is ",
                 shape_string(tokens.shape),
                 " (batch, seqlen + 1) but needs batch ≥ 1 and seqlen + 1 ≥ 2 (inputs and their next tokens)");
  }

  /// The forward and backward of a training pass over (batch, L) positions: `embed_rows(out)`
  /// looks the inputs up into `out` and returns their ids in backend memory (kept for the
  /// embedding's backward); `loss(ce)` sets ce.targets and runs the LM loss with its gradient.
  template <class Backend, class Embed, class Loss>
  void train_pass(const Backend& backend, const Params& p, index_t batch, index_t L, Grads& g,
                  const TrainOptions& options, Embed&& embed_rows, Loss&& loss) const {
    const index_t n = batch * L, D = config_.d_model;
    // Forward, keeping each block's activations.
    Buffer<float> stream = backend.template alloc<float>(n * D);
    ResidualStream<T> rs{stream.template view<2>({n, D}, "residual"), {}};
    const Buffer<std::int64_t> ids = embed_rows(rs.stream);
    typename PerTrain<Seq>::saved saved;
    RoutingReport* report = options.report;
    for (index_t i = 0; i < config_.n_layers; ++i) {
      if (report) report->set_scope("layers." + std::to_string(i));
      at(i, [&](auto I) {
        auto& s = std::get<I>(saved).emplace_back();
        std::get<I>(blocks_).forward_train(backend, layer_params<I>(p, i), rs, batch, L, s, options.activations,
                                           report);
      });
    }
    if (report) report->set_scope("");
    const bool had_pending = rs.pending.data() != nullptr;
    Buffer<T> normed = backend.template alloc<T>(n * D);
    norm_f_.apply(backend, p.norm_f, rs, normed.template view<2>({n, D}, "normed"));
    Buffer<float> stream_f = backend.template alloc<float>(n * D);
    copy(backend, stream_f.template view<2>({n, D}, "final stream"), ConstView<float, 2>(rs.stream));

    // The loss with the LM head, and the head's input gradient.
    const bool tied = config_.tie_embeddings;
    Buffer<T> dnormed = backend.template alloc<T>(n * D);
    CrossEntropyArgs<T> ce;
    ce.hidden = ConstView<T, 2>(normed.data(), {n, D}, "normed");
    ce.weight = tied ? p.embeddings : p.lm_head;
    ce.dhidden = dnormed.template view<2>({n, D}, "d normed");
    ce.dweight = tied ? g.embeddings.view() : g.lm_head.view();
    ce.ignore_index = options.ignore_index;
    ce.chunk_rows = options.chunk_rows;
    ce.dloss = options.dloss;
    ce.accumulate = options.accumulate;
    loss(ce);  // sets the targets, runs the loss and its gradient

    // Backward through the final norm, the blocks in reverse, the embeddings.
    ResidualGrad<T> rg{rs.stream, {}, false, options.dloss};  // the forward's stream buffer now holds its gradient
    norm_f_.backward(backend, p.norm_f, ConstView<float, 2>(stream_f.data(), {n, D}, "final stream"),
                     ConstView<T, 2>(dnormed.data(), {n, D}, "d normed"), rg, had_pending, g.norm_f,
                     options.accumulate);
    for (index_t i = config_.n_layers - 1; i >= 0; --i)
      at(i, [&](auto I) {
        const std::size_t k = static_cast<std::size_t>(i) / kPattern;
        std::get<I>(blocks_).backward(backend, layer_params<I>(p, i), std::get<I>(saved)[k], rg,
                                      std::get<I>(g.layers)[k], options.accumulate);
        std::get<I>(saved)[k] = {};  // free the block's activations as soon as they are used
      });
    embedding_backward(backend,
                       EmbeddingBackwardArgs<T>{.ids = ConstView<std::int64_t, 1>(ids.data(), {n}, "input_ids"),
                                                .dout = ConstView<float, 2>(rg.dstream),
                                                .dtable = g.embeddings.view(),
                                                .accumulate = tied || options.accumulate});
  }

  /// Checks `n` ids (host memory) against the vocabulary and copies them to the backend.
  template <class Backend>
  Buffer<std::int64_t> upload_ids(const Backend& backend, const std::int64_t* host_ids, index_t n) const {
    check_ids(host_ids, n);
    return upload(backend, host_ids, n);
  }
  /// Looks up `n` ids (host memory) into `out`; returns the ids copied to the backend.
  template <class Backend>
  Buffer<std::int64_t> embed(const Backend& backend, const Params& p, const std::int64_t* host_ids, index_t n,
                             TensorView<float, 2> out) const {
    Buffer<std::int64_t> ids = upload_ids(backend, host_ids, n);
    embedding(backend, EmbeddingArgs<T>{ConstView<std::int64_t, 1>(ids.data(), {n}, "input_ids"), p.embeddings, out,
                                        /*ids_checked=*/true});
    return ids;
  }
  template <class Backend>
  void head(const Backend& backend, const Params& p, ConstView<T, 2> x, TensorView<float, 2> logits) const {
    const Tensor<T, 2>& w = config_.tie_embeddings ? p.embeddings : p.lm_head;
    linear(backend, LinearArgs<T, float>{x, w, {}, logits});
  }
  static std::size_t grads_size(const Grads& g) {
    std::size_t n = 0;
    std::apply([&](const auto&... v) { ((n += v.size()), ...); }, g.layers);
    return n;
  }
  void check_params(const char* where, const Params& p) const {
    MOSS_EXPECTS(static_cast<index_t>(p.size()) == config_.n_layers && p.embeddings.data(), config_error, where,
                 ": the parameters hold ", p.size(), " layers but the model has ", config_.n_layers);
  }
  void check_cache(const char* where, const Cache& c, index_t batch) const {
    std::size_t n = 0;
    std::apply([&](const auto&... v) { ((n += v.size()), ...); }, c.layers);
    MOSS_EXPECTS(c.batch == batch && static_cast<index_t>(n) == config_.n_layers, shape_error, where,
                 ": the cache was made for batch ", c.batch, " and ", n, " layers but the call has batch ", batch,
                 " and the model ", config_.n_layers, " layers");
  }

  MambaConfig config_;
  Blocks blocks_;
  RmsNorm norm_f_;
};

/// A dense Mamba language model (Hugging Face `MambaForCausalLM`) in storage type T.
template <StorageType T>
using MambaLM = LanguageModel<Residual<RmsNorm, Mamba<T>>>;

/// Reads `dir/config.json` (or a config file path). `io_error` "checkpoint folder /x does not
/// exist" or "checkpoint folder /x has no config.json" when there is none to read.
inline MambaConfig load_mamba_config(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool is_file = path.extension() == ".json";
  MOSS_EXPECTS(fs::exists(path, ec), io_error, is_file ? "config file " : "checkpoint folder ", path.string(),
               " does not exist");
  const fs::path file = fs::is_directory(path, ec) ? path / "config.json" : path;
  MOSS_EXPECTS(fs::exists(file, ec), io_error, "checkpoint folder ", path.string(),
               " has no config.json (a Hugging Face checkpoint folder holds config.json and model.safetensors)");
  return MambaConfig::from_json(io::parse_json(io::read_text_file(file), file.string()), file.string());
}

}  // namespace moss
