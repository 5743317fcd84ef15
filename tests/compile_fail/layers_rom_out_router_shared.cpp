// expect: moss::RoutedMamba: a router shared with Conv or Gate Proj reads the layer input
#include "moss/layers/routed_mamba.hpp"

namespace layers_rom_out_router_shared {
// One router for every projection, yet Out's reads Out's own input.
struct Scope {
  static constexpr std::string_view name = "out_on_own_input";
  template <class P>
  static constexpr std::string_view router = "router";
  template <class P>
  static constexpr bool on_layer_input = !std::is_same_v<P, moss::Out>;
  template <class W, class P>
  static constexpr bool weighs = W::template weighs<P>;
};
[[maybe_unused]] constexpr auto size = sizeof(moss::RoutedMamba<moss::TopK<1>, Scope, moss::Experts<>, float>);
}  // namespace layers_rom_out_router_shared
