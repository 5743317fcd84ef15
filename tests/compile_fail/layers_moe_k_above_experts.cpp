// expect: moss::MoeFeedForward: the router picks more experts per token (R::k) than Experts<N> has
#include "moss/layers/feed_forward.hpp"

namespace layers_moe_k_above_experts {
[[maybe_unused]] constexpr auto size =
    sizeof(moss::MoeFeedForward<moss::TopK<3>, moss::Experts<2>, moss::Mlp<moss::Relu>, float>);
}  // namespace layers_moe_k_above_experts
