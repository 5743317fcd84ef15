// expect: moss::combine_rows: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/permute.hpp"

namespace ops_combine_rows {
void check(const moss::CombineRowsArgs<int>& a) { moss::validate(a, "combine_rows"); }
}  // namespace ops_combine_rows
