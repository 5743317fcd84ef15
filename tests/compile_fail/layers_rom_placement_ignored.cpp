// expect: moss::RoutedMamba: this routing scope weights every routed projection by its own router
#include "moss/layers/routed_mamba.hpp"

namespace layers_rom_placement_ignored {
// PerProjectionRouting weights each projection by its own router: a placement means nothing.
using Variant = moss::RomVariant<moss::Routed<moss::Conv, moss::Gate, moss::Out>, moss::WeightGate>;
[[maybe_unused]] constexpr auto size =
    sizeof(moss::RoutedMamba<moss::TopK<1>, moss::PerProjectionRouting, moss::Experts<>, float, Variant>);
}  // namespace layers_rom_placement_ignored
