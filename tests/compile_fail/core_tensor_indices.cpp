// expect: moss::TensorView: wrong number of indices
#include "moss/core/tensor.hpp"

namespace core_tensor_indices {
moss::index_t offset(const moss::TensorView<float, 2>& v) { return v.offset(1); }
}  // namespace core_tensor_indices
