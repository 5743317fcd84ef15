// expect: moss::Pattern<...>: list at least one block type
#include "moss/models/language_model.hpp"

namespace models_pattern_empty {
[[maybe_unused]] constexpr auto size = sizeof(moss::Pattern<>);
}  // namespace models_pattern_empty
