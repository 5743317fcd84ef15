// expect: moss::Routed<...>: every projection must be moss::Conv, moss::Gate or moss::Out
#include "moss/policy/rom.hpp"

namespace policy_routed_projection {
[[maybe_unused]] constexpr auto size = sizeof(moss::Routed<moss::Conv, int>);
}  // namespace policy_routed_projection
