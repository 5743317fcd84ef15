// expect: moss::gather_rows: T must be float, moss::f16 or moss::bf16
#include "moss/ops/permute.hpp"

namespace ops_gather_rows {
void check(const moss::GatherRowsArgs<double>& a) { moss::validate(a, "gather_rows"); }
}  // namespace ops_gather_rows
