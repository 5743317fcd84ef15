// expect: moss::TensorView: Rank must be at least 1
#include "moss/core/tensor.hpp"

namespace core_tensor_rank0 {
[[maybe_unused]] constexpr auto size = sizeof(moss::TensorView<float, 0>);
}  // namespace core_tensor_rank0
