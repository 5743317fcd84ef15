// moss/train/clip.hpp: global-norm gradient clipping.
//
//   norm  = sqrt(Σ_tensors Σ_i g_i²)       float64 accumulation, tensors in list order, elements
//                                          in index order (bitwise the same on every run)
//   scale = max_norm / norm                 applied (g ← g · scale, scale rounded once to the
//                                          gradient's type) only when norm > max_norm
// Unlike PyTorch's clip_grad_norm_ there is no 1e-6 added to the norm, so a clipped gradient has
// norm max_norm up to rounding. A non-finite norm (an inf or NaN anywhere in the gradients) is
// returned and the gradients are left as they are: the caller decides (moss's trainer skips the
// optimiser step and counts it as a skipped step).
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "moss/backend/host.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// A range (std::vector, std::array, std::span, ...) of 1-D gradient views of float or double,
/// const or not. Gradients of any rank are passed as 1-D views of their (contiguous) memory.
template <class Views>
concept GradientList = requires(const Views& vs) {
  {*std::begin(vs)};
  requires std::remove_cvref_t<decltype(*std::begin(vs))>::rank == 1;
  requires std::is_floating_point_v<
      std::remove_const_t<typename std::remove_cvref_t<decltype(*std::begin(vs))>::element_type>>;
};

/// *out = Σ_views Σ_i g_i² in float64, tensors in list order and elements in index order (the
/// square of `global_norm`, before the root; a resident training step keeps it in the backend's
/// memory, moss/train/resident.hpp).
template <GradientList Views>
void global_norm_sq_into(const Host&, const Views& grads, double* out) {
  double sum = 0.0;
  for (const auto& g : grads) {
    expect_valid("global_norm", g);
    const index_t n = g.shape[0];
    for (index_t i = 0; i < n; ++i) {
      const double x = static_cast<double>(g.data[i * g.stride[0]]);
      sum += x * x;
    }
  }
  *out = sum;
}

/// The global L2 norm of all the gradients in `grads` (formula and order: this header's
/// comment), in double. Views may be strided; `shape_error` for a view with a negative stride or
/// a null pointer with elements.
template <GradientList Views>
double global_norm(const Host& host, const Views& grads) {
  double sum = 0.0;
  global_norm_sq_into(host, grads, &sum);
  return std::sqrt(sum);
}

/// g ← g · s on the host (in index order; the CUDA overload gives the same bits).
inline void scale(const Host&, TensorView<float, 1> g, float s) {
  expect_valid("scale", g);
  for (index_t i = 0; i < g.shape[0]; ++i) g.data[i * g.stride[0]] *= s;
}

/// Scales every gradient by max_norm / norm when the global norm exceeds `max_norm` (this
/// header's comment) and returns the norm before clipping. A non-finite norm is returned with the
/// gradients untouched. `config_error` when max_norm is not finite and > 0.
template <GradientList Views>
double clip_by_global_norm(const Host& host, const Views& grads, double max_norm) {
  MOSS_EXPECTS(std::isfinite(max_norm) && max_norm > 0, config_error, "clip_by_global_norm: max_norm is ", max_norm,
               ", expected finite and > 0");
  const double norm = global_norm(host, grads);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / norm;
  for (const auto& g : grads) {
    using R = std::remove_const_t<typename std::remove_cvref_t<decltype(g)>::element_type>;
    static_assert(!std::is_const_v<typename std::remove_cvref_t<decltype(g)>::element_type>,
                  "moss::clip_by_global_norm: the gradient views must be mutable");
    const R s = static_cast<R>(scale);
    const index_t n = g.shape[0];
    for (index_t i = 0; i < n; ++i) g.data[i * g.stride[0]] *= s;
  }
  return norm;
}

}  // namespace moss

// Under nvcc the CUDA overloads (AdamW, the global norm, scale) come with the header.
#if defined(__CUDACC__)
#include "moss/train/optimizer_cuda.cuh"
#endif
