// expect: moss::LanguageModel: every block type must be wrapped in moss::Residual<Norm, Mixer>
#include "moss/models/language_model.hpp"

namespace models_block_not_residual {
[[maybe_unused]] constexpr auto size = sizeof(moss::LanguageModel<moss::Mamba<float>>);
}  // namespace models_block_not_residual
