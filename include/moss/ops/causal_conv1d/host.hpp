// moss/ops/causal_conv1d/host.hpp: the host backend of causal_conv1d, the oracle of the CUDA
// kernels and the CPU path of the model: plain loops over math.hpp in float32 (in float64 for
// T = double, the instantiation the gradient checks run on).
#pragma once

#include <vector>

#include "moss/backend/host.hpp"
#include "moss/ops/causal_conv1d.hpp"
#include "moss/ops/causal_conv1d/math.hpp"

namespace moss {

/// Runs the depthwise causal convolution on the CPU (any W ≥ 1, any strides). T is a storage
/// type or, on the host only, double (then every product and sum is float64).
template <HostReal T>
void causal_conv1d(const Host&, const CausalConv1dArgs<T>& args) {
  using R = compute_t<T>;
  validate(args, "causal_conv1d");
  const index_t batch = args.x.shape[0], dim = args.x.shape[1], seqlen = args.x.shape[2];
  const int width = static_cast<int>(args.weight.shape[1]);
  // inputs[W−1+t] is the input at time t (t ≥ −(W−1)), so output t reads inputs[t .. t+W−1].
  std::vector<R> w(width), inputs(static_cast<std::size_t>(width - 1 + seqlen));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      for (int k = 0; k < width; ++k) w[k] = detail::conv1d_widen(args.weight(d, k));
      const R bias = present(args.bias) ? detail::conv1d_widen(args.bias(d)) : R(0);
      for (int k = 0; k + 1 < width; ++k)
        inputs[k] = detail::conv1d_widen(detail::conv1d_input(args.x, args.initial_state, b, d, k - (width - 1)));
      for (index_t t = 0; t < seqlen; ++t) inputs[width - 1 + t] = detail::conv1d_widen(args.x(b, d, t));
      for (index_t t = 0; t < seqlen; ++t)
        args.out(b, d, t) =
            detail::conv1d_narrow<T>(detail::conv1d_output(w.data(), &inputs[t], width, bias, args.silu));
      if (present(args.final_state))
        for (int j = 0; j + 1 < width; ++j)
          args.final_state(b, d, j) = detail::conv1d_input(args.x, args.initial_state, b, d, seqlen - (width - 1) + j);
    }
  }
}

/// Runs one decode step on the CPU: out = conv(state, x), then the state shifts in x. T is a
/// storage type or, on the host only, double.
template <HostReal T>
void causal_conv1d_step(const Host&, const CausalConv1dStepArgs<T>& args) {
  using R = compute_t<T>;
  validate(args, "causal_conv1d_step");
  const index_t batch = args.x.shape[0], dim = args.x.shape[1];
  const int width = static_cast<int>(args.weight.shape[1]);
  std::vector<R> w(width), window(width);
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < dim; ++d) {
      for (int k = 0; k < width; ++k) w[k] = detail::conv1d_widen(args.weight(d, k));
      const R bias = present(args.bias) ? detail::conv1d_widen(args.bias(d)) : R(0);
      for (int k = 0; k + 1 < width; ++k) window[k] = detail::conv1d_widen(args.state(b, d, k));
      window[width - 1] = detail::conv1d_widen(args.x(b, d));
      args.out(b, d) = detail::conv1d_narrow<T>(detail::conv1d_output(w.data(), window.data(), width, bias, args.silu));
      for (int k = 0; k + 2 < width; ++k) args.state(b, d, k) = args.state(b, d, k + 1);
      if (width > 1) args.state(b, d, width - 2) = args.x(b, d);
    }
  }
}

}  // namespace moss
