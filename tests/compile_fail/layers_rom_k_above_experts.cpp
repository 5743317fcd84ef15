// expect: moss::RouterConfig<R, E>: the router picks more experts per token (R::k) than the fixed expert count
#include "moss/layers/routed_mamba.hpp"

namespace layers_rom_k_above_experts {
// RouterConfig is where every routed block's K meets its expert count (layers_moe_k_above_experts
// fails this assert too, besides MoeFeedForward's own).
[[maybe_unused]] constexpr auto size =
    sizeof(moss::RoutedMamba<moss::TopK<3>, moss::SharedRouting, moss::Experts<2>, float>);
}  // namespace layers_rom_k_above_experts
