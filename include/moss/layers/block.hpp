// moss/layers/block.hpp: what a block is. A block (Mamba, RoutedMamba, MoeFeedForward,
// FeedForward, or one's own) is one struct that `Residual` wraps and `LanguageModel` stacks:
//
//   using value_type = T;                                   // storage type
//   static constexpr std::string_view block_name;           // its name in config.json's block_pattern
//   struct Config {                                         // its own section of config.json
//     static Config from_json(const io::JsonRef& section);
//     void to_json(io::Json& section) const;
//   };
//   Block(const MambaDims& dims, Config config);            // dims: the model's shared sizes
//   struct Params; struct Cache;
//   Params init(backend, Rng&, index_t n_layers) const;
//   Params load(backend, const WeightSource&, const std::string& prefix) const;
//   void save(backend, const Params&, SafetensorsWriter&, const std::string& prefix) const;
//   Cache make_cache(backend, index_t batch) const;
//   void forward(backend, const Params&, ConstView<T, 3> x, TensorView<T, 3> out, Cache*[, RoutingReport*]) const;
//   void step(backend, const Params&, ConstView<T, 2> x, TensorView<T, 2> out, Cache&[, RoutingReport*]) const;
//   static constexpr bool capturable_step = true;           // optional: see CapturableStep
// `moss::BlockConfig` checks the config part. The helpers below check a block's input and output
// the same way in every block.
#pragma once

#include <concepts>

#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"

namespace moss {

/// A block's config section type: read from and written to its section of config.json.
template <class C>
concept BlockConfig = std::default_initializable<C> && requires(const C& c, const io::JsonRef& in, io::Json& out) {
  { C::from_json(in) } -> std::same_as<C>;
  c.to_json(out);
};

/// A block whose `step` only queues work on the backend's stream: no host synchronisation, no
/// host-side decision on device values, scratch only from the backend's stream-ordered `alloc`.
/// Such a step can be captured in a CUDA graph, and `generate` replays the whole model's decode
/// step as one graph when every block of the model says so (`static constexpr bool
/// capturable_step = true;`). Blocks that do not say so are run eagerly.
template <class B>
concept CapturableStep = requires {
  requires B::capturable_step;
};

namespace detail {

/// Checks the (batch, L, D) input and output of a block.
template <class T>
void expect_block_io(const char* where, const ConstView<T, 3>& x, const TensorView<T, 3>& out, index_t D) {
  expect_shape(where, x, {any, any, D}, "(batch, seqlen, d_model)");
  expect_shape(where, out, {x.shape[0], x.shape[1], D}, "(batch, seqlen, d_model)");
  expect_contiguous(where, x);
  expect_contiguous(where, out);
}

/// Checks the (batch, D) input and output of a one-token step.
template <class T>
void expect_step_io(const char* where, const ConstView<T, 2>& x, const TensorView<T, 2>& out, index_t D) {
  expect_shape(where, x, {any, D}, "(batch, d_model)");
  expect_shape(where, out, {x.shape[0], D}, "(batch, d_model)");
  expect_contiguous(where, x);
  expect_contiguous(where, out);
}

}  // namespace detail

}  // namespace moss
