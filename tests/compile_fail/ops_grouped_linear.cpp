// expect: moss::grouped_linear: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/grouped_linear.hpp"

namespace ops_grouped_linear {
void check(const moss::GroupedLinearArgs<int>& a) { moss::validate(a, "grouped_linear"); }
}  // namespace ops_grouped_linear
