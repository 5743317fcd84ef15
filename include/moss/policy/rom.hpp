// moss/policy/rom.hpp: the choices of a Routing Mamba layer (REFERENCE.md §3).
//
//   routing scope     SharedRouting (default: one decision for every routed projection) or
//                     PerProjectionRouting (the paper's "naive" baseline: a router per projection)
//   routed set        Routed<Conv, Gate, Out> (default) or any non-empty subset; the rest is dense
//   weight placement  WeightOut (default), WeightGate, WeightAll, WeightNone: which projections
//                     the combine weight g multiplies
// bundled as the layer's fifth slot: RomVariant<Routed<Conv, Gate, Out>, WeightOut>.
#pragma once

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace moss {

/// One routing decision per layer, reused by every routed projection (RoM).
struct SharedRouting {
  static constexpr bool shared = true;
  static constexpr std::string_view name = "shared";
};
/// An independent router per routed projection (the "naive" variant RoM compares against):
/// Conv and Gate routers read the layer input, the Out router reads y ⊙ silu(z); every routed
/// projection is a standard MoE weighted by its own router's g.
struct PerProjectionRouting {
  static constexpr bool shared = false;
  static constexpr std::string_view name = "per_projection";
};

/// A routing-scope policy.
template <class S>
concept RoutingScope = std::same_as<S, SharedRouting> || std::same_as<S, PerProjectionRouting>;

/// The x branch of in_proj (D → ED).
struct Conv {
  static constexpr std::string_view name = "conv";
};
/// The z branch of in_proj (D → ED).
struct Gate {
  static constexpr std::string_view name = "gate";
};
/// out_proj (ED → D).
struct Out {
  static constexpr std::string_view name = "out";
};

/// The set of routed projections, a non-empty subset of {Conv, Gate, Out} in any order.
template <class... P>
struct Routed {
  static_assert(sizeof...(P) >= 1, "moss::Routed<...>: route at least one projection (else use moss::Mamba)");
  static_assert(((std::is_same_v<P, Conv> || std::is_same_v<P, Gate> || std::is_same_v<P, Out>)&&...),
                "moss::Routed<...>: every projection must be moss::Conv, moss::Gate or moss::Out");
  static constexpr bool conv = (std::is_same_v<P, Conv> || ...);
  static constexpr bool gate = (std::is_same_v<P, Gate> || ...);
  static constexpr bool out = (std::is_same_v<P, Out> || ...);
  static_assert(int(conv) + int(gate) + int(out) == int(sizeof...(P)),
                "moss::Routed<...>: a projection is listed twice");
};

/// Where the combine weight g multiplies (REFERENCE.md §3's table). With K = 1 and
/// renormalised weights every placement gives the unweighted layer.
enum class Placement : std::uint8_t { out, gate, all, none };

/// g multiplies the Out Proj experts only (the default).
struct WeightOut {
  static constexpr Placement placement = Placement::out;
  static constexpr std::string_view name = "out";
};
/// g multiplies the Gate Proj experts only.
struct WeightGate {
  static constexpr Placement placement = Placement::gate;
  static constexpr std::string_view name = "gate";
};
/// g multiplies Conv, Gate and Out Proj experts.
struct WeightAll {
  static constexpr Placement placement = Placement::all;
  static constexpr std::string_view name = "all";
};
/// g multiplies nothing: experts are summed unweighted.
struct WeightNone {
  static constexpr Placement placement = Placement::none;
  static constexpr std::string_view name = "none";
};

/// A weight-placement policy.
template <class W>
concept WeightPlacement = requires {
  { W::placement } -> std::convertible_to<Placement>;
};

/// The variant of a RoM layer: which projections are routed and where g multiplies.
template <class Projections = Routed<Conv, Gate, Out>, WeightPlacement Weight = WeightOut>
struct RomVariant {
  using projections = Projections;
  using weight = Weight;
  static constexpr bool conv = Projections::conv;
  static constexpr bool gate = Projections::gate;
  static constexpr bool out = Projections::out;
  static constexpr Placement placement = Weight::placement;
  /// Whether g multiplies the outputs of projection conv / gate / out.
  static constexpr bool weights_conv = placement == Placement::all;
  static constexpr bool weights_gate = placement == Placement::all || placement == Placement::gate;
  static constexpr bool weights_out = placement == Placement::all || placement == Placement::out;
};

}  // namespace moss
