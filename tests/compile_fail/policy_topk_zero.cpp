// expect: moss::TopK<K>: K must be at least 1
#include "moss/policy/router.hpp"

namespace policy_topk_zero {
[[maybe_unused]] constexpr auto size = sizeof(moss::TopK<0>);
}  // namespace policy_topk_zero
