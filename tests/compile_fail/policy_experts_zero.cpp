// expect: moss::Experts<0>: a sparse block needs at least one expert
#include "moss/policy/experts.hpp"

namespace policy_experts_zero {
[[maybe_unused]] constexpr auto size = sizeof(moss::Experts<0>);
}  // namespace policy_experts_zero
