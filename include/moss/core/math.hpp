// moss/core/math.hpp: scalar float32 math that host loops and CUDA kernels share, written once
// so both backends round the same way wherever the device has an accurate equivalent.
#pragma once

#include <cmath>

#include "moss/core/config.hpp"

namespace moss {

/// e^x in float32 (the device's accurate expf; a few ulp from the host's).
MOSS_HD float exp_f32(float x) {
#if MOSS_DEVICE_PASS
  return ::expf(x);
#else
  return std::exp(x);
#endif
}

/// The logistic sigmoid 1 / (1 + e^-x) in float32.
MOSS_HD float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

}  // namespace moss
