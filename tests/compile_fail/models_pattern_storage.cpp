// expect: moss::Pattern<...>: every block must have the same storage type
#include "moss/models/language_model.hpp"

namespace models_pattern_storage {
using F32 = moss::Residual<moss::RmsNorm, moss::Mamba<float>>;
using BF16 = moss::Residual<moss::RmsNorm, moss::Mamba<moss::bf16>>;
[[maybe_unused]] constexpr auto size = sizeof(moss::Pattern<F32, BF16>);
}  // namespace models_pattern_storage
