// moss/ops/selective_scan.hpp: the Mamba-1 selective scan (REFERENCE.md §1), full sequence and
// one-token decode step.
//
//   Δ[b,d,t]   = softplus?(delta[b,d,t] + delta_bias[d])
//   h[b,d,n,t] = exp(Δ·A[d,n]) · h[b,d,n,t-1] + Δ · B[b,g(d),n,t] · u[b,d,t]   (h[-1] = initial state or 0)
//   y[b,d,t]   = Σ_n C[b,g(d),n,t] · h[b,d,n,t] + D[d] · u[b,d,t]
//   out[b,d,t] = y · silu(z[b,d,t])   (when z is given; else y)
// with g(d) = d / (dim / groups). All arithmetic is float32; the state is float32.
//
// Every tensor is a strided view: (batch, dim, L) activations may have unit stride along L
// ("channel-first") or along dim ("channel-last", the layout of a (batch, L, d_inner) buffer).
// B and C are (batch, groups, N, L) views; a constant (dim, N) B or C is the same view with
// groups = dim and zero strides on batch and L (see `constant_bc`).
#pragma once

#include "moss/backend/host.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Arguments of `selective_scan`. Optional inputs are views with a null `data`.
/// @tparam T storage type of u, delta, z, B, C and out (float, f16 or bf16).
template <class T>
struct SelectiveScanArgs {
  ConstView<T, 3> u;                    // (batch, dim, L)
  ConstView<T, 3> delta;                // (batch, dim, L)
  ConstView<float, 2> A;                // (dim, N)
  ConstView<T, 4> B;                    // (batch, groups, N, L)
  ConstView<T, 4> C;                    // (batch, groups, N, L)
  ConstView<float, 1> D;                // (dim), optional
  ConstView<T, 3> z;                    // (batch, dim, L), optional
  ConstView<float, 1> delta_bias;       // (dim), optional
  bool delta_softplus = false;
  ConstView<float, 3> initial_state;    // (batch, dim, N), optional
  TensorView<T, 3> out;                 // (batch, dim, L)
  TensorView<float, 3> final_state;     // (batch, dim, N), optional output
};

/// Arguments of `selective_scan_step`: one token per sequence, the state updated in place.
template <class T>
struct SelectiveScanStepArgs {
  TensorView<float, 3> state;           // (batch, dim, N), read and written
  ConstView<T, 2> u;                    // (batch, dim)
  ConstView<T, 2> delta;                // (batch, dim)
  ConstView<float, 2> A;                // (dim, N)
  ConstView<T, 3> B;                    // (batch, groups, N)
  ConstView<T, 3> C;                    // (batch, groups, N)
  ConstView<float, 1> D;                // (dim), optional
  ConstView<T, 2> z;                    // (batch, dim), optional
  ConstView<float, 1> delta_bias;       // (dim), optional
  bool delta_softplus = false;
  TensorView<T, 2> out;                 // (batch, dim)
};

/// The largest d_state the kernels support.
inline constexpr index_t kMaxStateSize = 256;

}  // namespace moss
