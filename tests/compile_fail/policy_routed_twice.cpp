// expect: moss::Routed<...>: a projection is listed twice
#include "moss/policy/rom.hpp"

namespace policy_routed_twice {
[[maybe_unused]] constexpr auto size = sizeof(moss::Routed<moss::Conv, moss::Gate, moss::Conv>);
}  // namespace policy_routed_twice
