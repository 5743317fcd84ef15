// expect: moss::RoutedMamba: the weight placement puts g on a projection this variant does not route
#include "moss/layers/routed_mamba.hpp"

namespace layers_rom_placement_unrouted {
// WeightOut multiplies Out Proj's experts, but only Conv Proj is routed.
using Variant = moss::RomVariant<moss::Routed<moss::Conv>, moss::WeightOut>;
[[maybe_unused]] constexpr auto size =
    sizeof(moss::RoutedMamba<moss::TopK<1>, moss::SharedRouting, moss::Experts<>, float, Variant>);
}  // namespace layers_rom_placement_unrouted
