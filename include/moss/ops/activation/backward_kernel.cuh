// moss/ops/activation/backward_kernel.cuh: the derivatives of the activations on the device and
// the kernel of `activation_backward` on CUDA (needs nvcc).
//
// `ActivationGradCuda<Act>` is the device form of ActivationGrad<Act>::derivative (float only),
// specialised for Relu, Gelu and Silu with the same formulas (CUDA's IEEE expf / erff, which
// agree with the host's to a few ulp). An activation of one's own runs `activation_backward`
// on CUDA once it specialises this too:
//   MOSS_HD static float derivative(float x);
#pragma once

#include <cuda_runtime.h>
#include <math.h>

#include <cmath>
#include <concepts>

#include "moss/core/config.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/tensor.hpp"
#include "moss/cuda/vector.cuh"
#include "moss/policy/activation.hpp"

namespace moss {

/// The float derivative of activation `Act` on host and device; specialised below for the
/// built-in activations (the primary template is left undefined).
template <class Act>
struct ActivationGradCuda;

namespace detail::act {

/// True for ±inf.
MOSS_HD bool is_inf(float x) { return x == HUGE_VALF || x == -HUGE_VALF; }

/// e^x in float: the IEEE form on the device (as the host's std::exp, to a few ulp).
MOSS_HD float exp_f(float x) {
#if MOSS_DEVICE_PASS
  return ::expf(x);
#else
  return std::exp(x);
#endif
}

/// erf(x) in float.
MOSS_HD float erf_f(float x) {
#if MOSS_DEVICE_PASS
  return ::erff(x);
#else
  return std::erf(x);
#endif
}

}  // namespace detail::act

/// ReLU: 1 for x > 0, else 0 (0 at the kink); NaN stays NaN.
template <>
struct ActivationGradCuda<Relu> {
  MOSS_HD static float derivative(float x) { return x > 0.0f ? 1.0f : (x != x ? x : 0.0f); }
};

/// GELU: Φ(x) + x · φ(x), the limits 0 and 1 at ∓∞.
template <>
struct ActivationGradCuda<Gelu> {
  MOSS_HD static float derivative(float x) {
    if (detail::act::is_inf(x)) return x > 0.0f ? 1.0f : 0.0f;
    const float cdf = 0.5f * (1.0f + detail::act::erf_f(x * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * detail::act::exp_f(-0.5f * x * x);
    return cdf + x * pdf;
  }
};

/// SiLU: σ(x) · (1 + x · (1 − σ(x))), the limits 0 and 1 at ∓∞.
template <>
struct ActivationGradCuda<Silu> {
  MOSS_HD static float derivative(float x) {
    if (detail::act::is_inf(x)) return x > 0.0f ? 1.0f : 0.0f;
    const float sigmoid = 1.0f / (1.0f + detail::act::exp_f(-x));
    return sigmoid * (1.0f + x * (1.0f - sigmoid));
  }
};

/// An activation whose backward runs on CUDA: an `Activation` with an `ActivationGradCuda`.
template <class Act>
concept CudaDifferentiableActivation = Activation<Act> && requires(float f) {
  { ActivationGradCuda<Act>::derivative(f) } -> std::same_as<float>;
};

namespace detail::act {

/// Pointers and sizes of one `activation_backward` launch (row strides in elements).
template <class T>
struct BackwardParams {
  const T* x;  // (rows, cols)
  index_t ldx;
  const T* up;  // (rows, cols), null when not gated
  index_t ldu;
  const T* dout;  // (rows, cols)
  index_t ldd;
  T* dx;  // (rows, cols), null when absent
  index_t lddx;
  T* dup;  // (rows, cols), null when absent
  index_t lddup;
  index_t rows;
  index_t cols;
  bool vector;  // 16-byte accesses (every view's rows whole, aligned vectors)
};

/// dx = (dout · up) · act'(x) and dup = dout · act(x) over a (rows, cols) tile: a grid-stride
/// loop over (row, chunk) pairs. A thread reads all inputs of its elements before it writes
/// their outputs, so an output may be an input itself.
template <class Act, class T>
__global__ void activation_backward_kernel(const BackwardParams<T> p) {
  constexpr int V = cuda::kVec16<T>;
  const int width = p.vector ? V : 1;
  const index_t chunks = (p.cols + width - 1) / width;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < p.rows * chunks;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / chunks, c = (i - r * chunks) * width;
    if (p.vector) {
      float x[V], d[V], u[V], dx[V], dup[V];
      cuda::load_vec<V>(p.x + r * p.ldx + c, x);
      cuda::load_vec<V>(p.dout + r * p.ldd + c, d);
      if (p.up) cuda::load_vec<V>(p.up + r * p.ldu + c, u);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dx[j] = (p.up ? d[j] * u[j] : d[j]) * ActivationGradCuda<Act>::derivative(x[j]);
        dup[j] = p.dup ? d[j] * Act::apply(x[j]) : 0.0f;
      }
      if (p.dx) cuda::store_vec<V>(p.dx + r * p.lddx + c, dx);
      if (p.dup) cuda::store_vec<V>(p.dup + r * p.lddup + c, dup);
    } else {
      const float x = to_float(p.x[r * p.ldx + c]);
      const float d = to_float(p.dout[r * p.ldd + c]);
      const float dx = (p.up ? d * to_float(p.up[r * p.ldu + c]) : d) * ActivationGradCuda<Act>::derivative(x);
      const float dup = p.dup ? d * Act::apply(x) : 0.0f;
      if (p.dx) p.dx[r * p.lddx + c] = from_float<T>(dx);
      if (p.dup) p.dup[r * p.lddup + c] = from_float<T>(dup);
    }
  }
}

}  // namespace detail::act

}  // namespace moss
