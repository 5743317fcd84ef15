// expect: moss::MambaCore: Scan is not a moss::ScanStrategy for this storage type
#include "moss/layers/mamba.hpp"

namespace layers_mamba_core_scan {
struct NotAStrategy {};
[[maybe_unused]] constexpr auto size = sizeof(moss::MambaCore<float, NotAStrategy>);
}  // namespace layers_mamba_core_scan
