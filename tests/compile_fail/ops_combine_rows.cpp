// expect: moss::combine_rows: T must be float, moss::f16 or moss::bf16
#include "moss/ops/permute.hpp"

namespace ops_combine_rows {
void check(const moss::CombineRowsArgs<double>& a) { moss::validate(a, "combine_rows"); }
}  // namespace ops_combine_rows
