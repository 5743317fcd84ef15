// moss/ops/cross_entropy.hpp: the language-model loss fused with the LM head, forward and
// backward in one pass.
//
// For hidden states H (tokens, D) in T (the normed input of the LM head), the head weight
// W (V, D) (lm_head.weight, or the embeddings when tied) and one target id per row:
//
//   logits[r, v] = Σ_k H[r, k] · W[v, k]                     (the LM head, docs/math.md §1.5)
//   loss_r       = logsumexp_v logits[r, :] − logits[r, target_r]
//   loss         = (1 / N) · Σ_{counted r} loss_r            in nats per counted token
//   N            = the number of rows whose target is not ignore_index (the count)
//
// and, for the gradient dloss of the final objective with respect to `loss` (1 by default),
//
//   dlogits[r, v] = dloss / N · (softmax(logits[r, :])[v] − [v = target_r])   (0 for ignored rows)
//   dH            = dlogits · W          (tokens, D), stored in T like H
//   dW            = dlogitsᵀ · H         (V, D), in compute_t<T>, written or added (`accumulate`)
//
// The rows are taken in chunks of `chunk_rows`: the (tokens × V) logits are never all kept, only
// one chunk's (chunk_rows × V) in compute_t<T>, which the loss, the softmax and dlogits reuse in
// place. Rows whose target is `ignore_index` (default −100, as PyTorch) add nothing to the loss,
// the count or either gradient (their dH rows are zero, their H is not read into anything); when
// every row is ignored the loss is 0, the count 0 and both gradients zero. Every sum runs in a
// fixed order independent of `chunk_rows`, so the results are bitwise the same for every chunk
// size and every repeat: the loss over counted rows ascending, dH[r, :] over v ascending,
// dW[v, :] over rows ascending (docs/math.md §4, docs/training.md). On the host T may be double
// (moss::HostReal), which computes in double. On CUDA (under nvcc, moss/ops/cross_entropy/cuda.cuh)
// T is a storage type, the GEMMs are cuBLAS's and the op synchronises once to return the loss;
// its results are bitwise repeatable for a given chunk_rows (see that file for how they differ
// from the host's).
#pragma once

#include <cstdint>

#include "moss/backend/host.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `cross_entropy`.
/// @tparam T storage type of hidden, weight and dhidden (float, f16, bf16; double on the host).
template <HostReal T>
struct CrossEntropyArgs {
  ConstView<T, 2> hidden;               // (tokens, d_model): H, the LM head's input, unit inner stride
  ConstView<T, 2> weight;               // (vocab, d_model): W, the LM head's weight, contiguous
  ConstView<std::int64_t, 1> targets;   // (tokens): target id of each row or ignore_index, any stride, host memory
  TensorView<T, 2> dhidden;             // (tokens, d_model), optional: dloss · d loss / dH, unit inner stride
  TensorView<compute_t<T>, 2> dweight;  // (vocab, d_model), optional: dloss · d loss / dW, contiguous
  std::int64_t ignore_index = -100;     // rows with this target count nothing (any value; it wins over a valid id)
  index_t chunk_rows = 1024;            // rows per chunk (≥ 1): the logits kept at once are (chunk_rows, vocab)
  compute_t<T> dloss = 1;               // gradient of the objective w.r.t. the returned mean loss
  bool accumulate = false;              // add into dweight instead of overwriting it (dhidden is always written)
};

/// What `cross_entropy` returns.
/// @tparam C compute_t<T> of the call.
template <class C>
struct CrossEntropyResult {
  C loss = 0;         // mean loss in nats over the counted rows; 0 when there are none
  index_t count = 0;  // rows whose target is not ignore_index
};

/// Checks `a` once at op entry: d_model ≥ 1, vocab ≥ 1 and chunk_rows ≥ 1 (`config_error`);
/// hidden (tokens, d_model) with unit inner stride and non-overlapping rows; weight (vocab,
/// d_model) contiguous; targets (tokens); dhidden (tokens, d_model) like hidden; dweight (vocab,
/// d_model) contiguous (`shape_error` naming the tensor, its shape and the expected shape). The
/// target values are checked by the op.
template <class T>
void validate(const CrossEntropyArgs<T>& a, const char* where) {
  expect_valid(where, a.hidden);
  expect_valid(where, a.weight);
  expect_valid(where, a.targets);
  const index_t tokens = a.hidden.shape[0];
  const index_t d = a.hidden.shape[1];
  const index_t vocab = a.weight.shape[0];
  MOSS_EXPECTS(d >= 1, config_error, where, ": ", a.hidden.name, " is ", shape_string(a.hidden.shape),
               " (tokens, d_model) but d_model must be at least 1");
  MOSS_EXPECTS(vocab >= 1, config_error, where, ": ", a.weight.name, " is ", shape_string(a.weight.shape),
               " (vocab, d_model) but vocab must be at least 1");
  MOSS_EXPECTS(a.chunk_rows >= 1, config_error, where, ": chunk_rows is ", a.chunk_rows, " but must be at least 1");
  expect_shape(where, a.weight, {vocab, d}, "(vocab, d_model)");
  expect_shape(where, a.targets, {tokens}, "(tokens)");
  expect_unit_inner_stride(where, a.hidden);
  MOSS_EXPECTS(tokens <= 1 || a.hidden.stride[0] >= d, shape_error, where, ": ", a.hidden.name, " has row stride ",
               a.hidden.stride[0], " but its rows are ", d, " wide (rows must not overlap)");
  expect_contiguous(where, a.weight);
  if (present(a.dhidden)) {
    expect_valid(where, a.dhidden);
    expect_shape(where, a.dhidden, {tokens, d}, "(tokens, d_model)");
    expect_unit_inner_stride(where, a.dhidden);
    MOSS_EXPECTS(tokens <= 1 || a.dhidden.stride[0] >= d, shape_error, where, ": ", a.dhidden.name, " has row stride ",
                 a.dhidden.stride[0], " but its rows are ", d, " wide (rows must not overlap)");
  }
  if (present(a.dweight)) {
    expect_valid(where, a.dweight);
    expect_shape(where, a.dweight, {vocab, d}, "(vocab, d_model)");
    expect_contiguous(where, a.dweight);
  }
}

/// Where `cross_entropy_resident` leaves its results: pointers into the backend's memory, written
/// by the queued work (on CUDA nothing waits for it; read them after a synchronisation).
struct CrossEntropyOutputs {
  float* loss = nullptr;                  // (1): the mean loss over the counted rows, 0 when none
  std::int64_t* count = nullptr;          // (1): the rows whose target is a valid id
  unsigned long long* bad_row = nullptr;  // (1), optional: lowered (atomic min) to each row whose target is
                                          // neither ignore_index nor in [0, vocab); the caller sets it to ~0
};

/// Checks `out` of `cross_entropy_resident` (loss and count present; `config_error` otherwise).
inline void validate(const CrossEntropyOutputs& out, const char* where) {
  MOSS_EXPECTS(out.loss && out.count, config_error, where, ": CrossEntropyOutputs needs loss and count");
}

}  // namespace moss

#include "moss/ops/cross_entropy/host.hpp"

// Under nvcc the CUDA implementation comes with the op, as the forwards' do.
#if defined(__CUDACC__)
#include "moss/ops/cross_entropy/cuda.cuh"
#endif
