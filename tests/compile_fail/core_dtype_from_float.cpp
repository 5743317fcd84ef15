// expect: moss::from_float: T must be float, moss::f16 or moss::bf16
#include "moss/core/dtype.hpp"

namespace core_dtype_from_float {
double convert(float x) { return moss::from_float<double>(x); }
}  // namespace core_dtype_from_float
