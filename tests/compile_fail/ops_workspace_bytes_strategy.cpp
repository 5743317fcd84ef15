// expect: moss::workspace_bytes: the strategy is not a moss::ScanStrategy
#include "moss/ops/selective_scan.hpp"

namespace ops_workspace_bytes_strategy {
struct NotAStrategy {};
std::size_t bytes(const moss::SelectiveScanArgs<float>& a) {
  return moss::workspace_bytes<NotAStrategy>(moss::Host{}, a);
}
}  // namespace ops_workspace_bytes_strategy
