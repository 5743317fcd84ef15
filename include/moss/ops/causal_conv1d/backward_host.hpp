// moss/ops/causal_conv1d/backward_host.hpp: the backward pass of causal_conv1d on the CPU
// (docs/math.md §4): plain loops in compute_t<T>, the reference of a future CUDA backward.
#pragma once

#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/causal_conv1d/math.hpp"
#include "moss/ops/causal_conv1d_backward.hpp"

namespace moss {

/// Writes the gradients of causal_conv1d's inputs that `args` asks for, on the CPU (any W ≥ 1,
/// any strides, T a storage type or double). Channel by channel: for each sequence b (in
/// order) the pre-activation is recomputed as the forward computes it, g = dout · silu'(pre)
/// (or dout), dweight and dbias take Σ_t over this sequence (t in order), and dx and
/// dinitial_state are gathered from g.
template <HostReal T>
void causal_conv1d_backward(const Host&, const CausalConv1dBackwardArgs<T>& args) {
  using R = compute_t<T>;
  validate(args, "causal_conv1d_backward");
  const index_t batch = args.x.shape[0], dim = args.x.shape[1], seqlen = args.x.shape[2];
  const int width = static_cast<int>(args.weight.shape[1]);
  const index_t span = width - 1 + seqlen;  // inputs from time −(W−1) to L−1
  const bool want_inputs = present(args.dx) || present(args.dinitial_state);
  // inputs[W−1+t] is the input at time t, as in the forward; dinputs the same positions' gradient.
  std::vector<R> w(width), inputs(static_cast<std::size_t>(span)), dinputs(static_cast<std::size_t>(span));
  std::vector<R> g(static_cast<std::size_t>(seqlen)), dw(width);
  for (index_t d = 0; d < dim; ++d) {
    for (int k = 0; k < width; ++k) w[k] = detail::conv1d_widen(args.weight(d, k));
    const R bias = present(args.bias) ? detail::conv1d_widen(args.bias(d)) : R(0);
    R db = R(0);
    for (int k = 0; k < width; ++k) dw[k] = R(0);
    for (index_t b = 0; b < batch; ++b) {
      for (int k = 0; k + 1 < width; ++k)
        inputs[k] = detail::conv1d_widen(detail::conv1d_input(args.x, args.initial_state, b, d, k - (width - 1)));
      for (index_t t = 0; t < seqlen; ++t) inputs[width - 1 + t] = detail::conv1d_widen(args.x(b, d, t));
      for (index_t t = 0; t < seqlen; ++t) {
        R grad = detail::conv1d_widen(args.dout(b, d, t));
        if (args.silu)
          grad *= detail::conv1d_silu_grad(detail::conv1d_output(w.data(), &inputs[t], width, bias, false));
        g[t] = grad;
      }
      for (index_t t = 0; t < seqlen; ++t) {
        db += g[t];
        for (int k = 0; k < width; ++k) dw[k] += g[t] * inputs[t + k];
      }
      if (!want_inputs) continue;
      // Input j (time j − (W−1)) feeds output t = j − k through weight k.
      for (index_t j = 0; j < span; ++j) {
        R acc = R(0);
        for (int k = 0; k < width; ++k) {
          const index_t t = j - k;
          if (t >= 0 && t < seqlen) acc += w[k] * g[t];
        }
        dinputs[j] = acc;
      }
      // final_state column i is the input at time L − (W−1) + i, position L + i of `inputs`.
      if (present(args.dfinal_state))
        for (int i = 0; i + 1 < width; ++i) dinputs[seqlen + i] += detail::conv1d_widen(args.dfinal_state(b, d, i));
      if (present(args.dx))
        for (index_t t = 0; t < seqlen; ++t) args.dx(b, d, t) = detail::conv1d_narrow<T>(dinputs[width - 1 + t]);
      if (present(args.dinitial_state))
        for (int i = 0; i + 1 < width; ++i) args.dinitial_state(b, d, i) = detail::conv1d_narrow<T>(dinputs[i]);
    }
    if (present(args.dweight))
      for (int k = 0; k < width; ++k) args.dweight(d, k) = args.accumulate ? args.dweight(d, k) + dw[k] : dw[k];
    if (present(args.dbias)) args.dbias(d) = args.accumulate ? args.dbias(d) + db : db;
  }
}

}  // namespace moss
