// expect: moss::gather_rows: T must be float, moss::f16, moss::bf16 or (host only) double
#include "moss/ops/permute.hpp"

namespace ops_gather_rows {
void check(const moss::GatherRowsArgs<int>& a) { moss::validate(a, "gather_rows"); }
}  // namespace ops_gather_rows
