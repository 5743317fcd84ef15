// expect: moss::Routed<...>: route at least one projection
#include "moss/policy/rom.hpp"

namespace policy_routed_empty {
[[maybe_unused]] constexpr auto size = sizeof(moss::Routed<>);
}  // namespace policy_routed_empty
