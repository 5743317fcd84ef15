// expect: moss::linear: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/linear.hpp"

namespace ops_linear_t {
void check(const moss::LinearArgs<int>& a) { moss::validate(a, "linear"); }
}  // namespace ops_linear_t
