// expect: moss::selective_scan: the strategy is not a moss::ScanStrategy
#include "moss/ops/selective_scan.hpp"

namespace ops_selective_scan_strategy {
struct NotAStrategy {};
void run(const moss::SelectiveScanArgs<float>& a) { moss::selective_scan<NotAStrategy>(moss::Host{}, a); }
}  // namespace ops_selective_scan_strategy
