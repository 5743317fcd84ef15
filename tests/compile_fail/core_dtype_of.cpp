// expect: moss::dtype_of: not a moss element type
#include "moss/core/dtype.hpp"

namespace core_dtype_of {
moss::DType tag() { return moss::dtype_of<double>; }
}  // namespace core_dtype_of
