// expect: moss::Experts<N>: N must be positive
#include "moss/policy/experts.hpp"

namespace policy_experts_negative {
[[maybe_unused]] constexpr auto size = sizeof(moss::Experts<-2>);
}  // namespace policy_experts_negative
