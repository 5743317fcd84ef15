// expect: moss::linear: Tout must be T or float
#include "moss/ops/linear.hpp"

namespace ops_linear_tout {
void check(const moss::LinearArgs<moss::f16, moss::bf16>& a) { moss::validate(a, "linear"); }
}  // namespace ops_linear_tout
