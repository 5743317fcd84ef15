// expect: moss::grouped_linear: T must be float, moss::f16 or moss::bf16
#include "moss/ops/grouped_linear.hpp"

namespace ops_grouped_linear {
void check(const moss::GroupedLinearArgs<double>& a) { moss::validate(a, "grouped_linear"); }
}  // namespace ops_grouped_linear
