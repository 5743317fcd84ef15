// expect: moss::linear: T must be float, moss::f16 or moss::bf16
#include "moss/ops/linear.hpp"

namespace ops_linear_t {
void check(const moss::LinearArgs<double>& a) { moss::validate(a, "linear"); }
}  // namespace ops_linear_t
