// expect: moss::RoutedMamba: Gate Proj's router must read the layer input
#include "moss/layers/routed_mamba.hpp"

namespace layers_rom_gate_router_input {
// A scope whose Gate router reads the projection's own input instead of the layer input.
struct Scope {
  static constexpr std::string_view name = "gate_on_own_input";
  template <class P>
  static constexpr std::string_view router = "router";
  template <class P>
  static constexpr bool on_layer_input = !std::is_same_v<P, moss::Gate>;
  template <class W, class P>
  static constexpr bool weighs = W::template weighs<P>;
};
[[maybe_unused]] constexpr auto size = sizeof(moss::RoutedMamba<moss::TopK<1>, Scope, moss::Experts<>, float>);
}  // namespace layers_rom_gate_router_input
