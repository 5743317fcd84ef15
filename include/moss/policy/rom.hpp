// moss/policy/rom.hpp: the choices of a Routing Mamba layer (docs/math.md §3), each a type
// with behaviour, so a new choice is one struct:
//
//   projections       Conv (x branch of in_proj, D → ED), Gate (z branch, D → ED), Out (ED → D)
//   routed set        Routed<Conv, Gate, Out> (default) or any non-empty subset; the rest is dense
//   weight placement  which projections the combine weight g multiplies:
//                     `template <class P> static constexpr bool weighs` (WeightOut, WeightGate,
//                     WeightAll, WeightNone, or yours)
//   routing scope     which router routes each projection, and what it reads:
//                     `template <class P> static constexpr std::string_view router` (projections
//                     naming the same router share one decision) and
//                     `template <class P> static constexpr bool on_layer_input` (false: the router
//                     reads the projection's own input, e.g. Out's y ⊙ silu(z)), and
//                     `template <class W, class P> static constexpr bool weighs` (whether g
//                     multiplies P under placement W)
//                     (SharedRouting, PerProjectionRouting, or yours)
// The layer's fifth slot bundles the routed set and the placement: RomVariant<Routed<...>, Weight>.
#pragma once

#include <concepts>
#include <string_view>
#include <type_traits>

namespace moss {

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

/// One of the three projections of a RoM mixer.
template <class P>
concept RomProjection = std::same_as<P, Conv> || std::same_as<P, Gate> || std::same_as<P, Out>;

/// The set of routed projections, a non-empty subset of {Conv, Gate, Out} in any order.
template <class... P>
struct Routed {
  static_assert(sizeof...(P) >= 1, "moss::Routed<...>: route at least one projection (else use moss::Mamba)");
  static_assert((RomProjection<P> && ...),
                "moss::Routed<...>: every projection must be moss::Conv, moss::Gate or moss::Out");
  /// Whether projection Q is routed.
  template <class Q>
  static constexpr bool routes = (std::is_same_v<P, Q> || ...);
  static_assert(int(routes<Conv>) + int(routes<Gate>) + int(routes<Out>) == int(sizeof...(P)),
                "moss::Routed<...>: a projection is listed twice");
};

/// g multiplies the Out Proj experts only (the default).
struct WeightOut {
  static constexpr std::string_view name = "out";
  template <class P>
  static constexpr bool weighs = std::is_same_v<P, Out>;
};
/// g multiplies the Gate Proj experts only.
struct WeightGate {
  static constexpr std::string_view name = "gate";
  template <class P>
  static constexpr bool weighs = std::is_same_v<P, Gate>;
};
/// g multiplies Conv, Gate and Out Proj experts.
struct WeightAll {
  static constexpr std::string_view name = "all";
  template <class P>
  static constexpr bool weighs = true;
};
/// g multiplies nothing: experts are summed unweighted.
struct WeightNone {
  static constexpr std::string_view name = "none";
  template <class P>
  static constexpr bool weighs = false;
};

/// A weight-placement policy: which projections g multiplies.
template <class W>
concept WeightPlacement = requires {
  { W::name } -> std::convertible_to<std::string_view>;
  { W::template weighs<Conv> } -> std::convertible_to<bool>;
  { W::template weighs<Gate> } -> std::convertible_to<bool>;
  { W::template weighs<Out> } -> std::convertible_to<bool>;
};

/// One routing decision per layer, made on the layer input and reused by every routed
/// projection (RoM); g multiplies where the placement says.
struct SharedRouting {
  static constexpr std::string_view name = "shared";
  template <class P>
  static constexpr std::string_view router = "router";
  template <class P>
  static constexpr bool on_layer_input = true;
  template <class W, class P>
  static constexpr bool weighs = W::template weighs<P>;
};

/// An independent router per routed projection (the "naive" variant RoM compares against):
/// Conv and Gate routers read the layer input, the Out router reads y ⊙ silu(z); every routed
/// projection is a standard MoE weighted by its own router's g (the placement does not apply).
struct PerProjectionRouting {
  static constexpr std::string_view name = "per_projection";
  template <class P>
  static constexpr std::string_view router = std::is_same_v<P, Conv>   ? std::string_view("router_conv")
                                             : std::is_same_v<P, Gate> ? std::string_view("router_gate")
                                                                       : std::string_view("router_out");
  template <class P>
  static constexpr bool on_layer_input = !std::is_same_v<P, Out>;
  template <class W, class P>
  static constexpr bool weighs = true;
};

/// A routing-scope policy.
template <class S>
concept RoutingScope = requires {
  { S::name } -> std::convertible_to<std::string_view>;
  { S::template router<Conv> } -> std::convertible_to<std::string_view>;
  { S::template router<Gate> } -> std::convertible_to<std::string_view>;
  { S::template router<Out> } -> std::convertible_to<std::string_view>;
  { S::template on_layer_input<Out> } -> std::convertible_to<bool>;
  { S::template weighs<WeightOut, Out> } -> std::convertible_to<bool>;
};

/// The variant of a RoM layer: which projections are routed and where g multiplies.
template <class Projections = Routed<Conv, Gate, Out>, WeightPlacement Weight = WeightOut>
struct RomVariant {
  using projections = Projections;
  using weight = Weight;
  /// Whether projection P is routed.
  template <class P>
  static constexpr bool routes = Projections::template routes<P>;
};

}  // namespace moss
