// moss/models/variants.hpp: the named model variants, each a LanguageModel over a block pattern
// (docs/math.md §2–3). Each is one type; `moss_variant` in its config.json names it.
//
//   MambaLM<T>       dense Mamba (Hugging Face MambaForCausalLM)                 ["mamba"]
//   MoeMambaLM<T>    MoE-Mamba: Mamba and Switch MoE feed-forward alternating     ["mamba", "moe"]
//                    (Top1Switch, ReLU MLP experts)
//   BlackMambaLM<T>  BlackMamba: Mamba and Sinkhorn top-1 SwiGLU experts          ["mamba", "moe"]
//   RomLM<T>         Routing Mamba: every mixer a RoM layer (TopK<1>, shared)     ["rom"]
//   RomMoeLM<T>      the hybrid RoM + FFN-MoE                                      ["rom", "moe"]
// The expert count comes from the config (`moe.num_experts`, `rom.num_experts`); write your own
// pattern with `LanguageModel<Pattern<...>>` (examples/02_rom_model.cpp).
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "moss/core/dispatch.hpp"
#include "moss/layers/feed_forward.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/residual.hpp"
#include "moss/layers/routed_mamba.hpp"
#include "moss/models/language_model.hpp"

namespace moss {

/// A dense Mamba block.
template <StorageType T>
using MambaBlock = Residual<RmsNorm, Mamba<T>>;
/// MoE-Mamba's feed-forward block: Switch top-1 over ReLU MLP experts.
template <StorageType T, ExpertCount E = Experts<>>
using SwitchMoeBlock = Residual<RmsNorm, MoeFeedForward<Top1Switch, E, Mlp<Relu>, T>>;
/// BlackMamba's feed-forward block: Sinkhorn top-1 over SwiGLU experts.
template <StorageType T, ExpertCount E = Experts<>>
using SinkhornMoeBlock = Residual<RmsNorm, MoeFeedForward<SinkhornTop1, E, GatedMlp<Silu>, T>>;
/// A RoM block: top-1, one routing decision shared by Conv, Gate and Out, g on Out.
template <StorageType T, ExpertCount E = Experts<>>
using RomBlock = Residual<RmsNorm, RoutedMamba<TopK<1>, SharedRouting, E, T>>;

namespace detail {

/// A LanguageModel whose config carries the variant's name.
template <class Stack, class Name>
class NamedModel : public LanguageModel<Stack> {
 public:
  static constexpr std::string_view variant = Name::value;
  explicit NamedModel(MambaConfig c) : LanguageModel<Stack>(named(std::move(c))) {}
  NamedModel(MambaConfig c, const typename LanguageModel<Stack>::BlockConfigs& blocks)
      : LanguageModel<Stack>(named(std::move(c)), blocks) {}

 private:
  static MambaConfig named(MambaConfig c) {
    if (c.moss_variant.empty()) c.moss_variant = std::string(variant);
    MOSS_EXPECTS(c.moss_variant == variant, config_error, "the config's moss_variant is \"", c.moss_variant,
                 "\" but the model type is \"", variant, "\"");
    return c;
  }
};

struct MoeMambaName {
  static constexpr std::string_view value = "moe-mamba";
};
struct BlackMambaName {
  static constexpr std::string_view value = "blackmamba";
};
struct RomName {
  static constexpr std::string_view value = "rom";
};
struct RomMoeName {
  static constexpr std::string_view value = "rom-moe";
};

}  // namespace detail

/// MoE-Mamba (Pióro et al. 2024).
template <StorageType T>
using MoeMambaLM = detail::NamedModel<Pattern<MambaBlock<T>, SwitchMoeBlock<T>>, detail::MoeMambaName>;
/// BlackMamba-style: Mamba alternating with Sinkhorn-routed SwiGLU experts.
template <StorageType T>
using BlackMambaLM = detail::NamedModel<Pattern<MambaBlock<T>, SinkhornMoeBlock<T>>, detail::BlackMambaName>;
/// Routing Mamba (Zhan et al. 2025).
template <StorageType T>
using RomLM = detail::NamedModel<RomBlock<T>, detail::RomName>;
/// The hybrid RoM + FFN-MoE.
template <StorageType T>
using RomMoeLM = detail::NamedModel<Pattern<RomBlock<T>, SwitchMoeBlock<T>>, detail::RomMoeName>;

/// The names `dispatch_variant` knows, as a config's `moss_variant` spells them.
inline constexpr std::string_view kVariantNames = "mamba, moe-mamba, blackmamba, rom, rom-moe";

/// Calls f(type_tag<Model>{}) with the named model type of `config` in storage type T
/// ("" or "mamba": MambaLM). A custom pattern has no built-in type: `unsupported_error`.
template <StorageType T, class F>
decltype(auto) dispatch_variant(const MambaConfig& config, F&& f) {
  const std::string v = config.moss_variant.empty() ? "mamba" : config.moss_variant;
  if (v == "mamba") return std::forward<F>(f)(type_tag<MambaLM<T>>{});
  if (v == "moe-mamba") return std::forward<F>(f)(type_tag<MoeMambaLM<T>>{});
  if (v == "blackmamba") return std::forward<F>(f)(type_tag<BlackMambaLM<T>>{});
  if (v == "rom") return std::forward<F>(f)(type_tag<RomLM<T>>{});
  if (v == "rom-moe") return std::forward<F>(f)(type_tag<RomMoeLM<T>>{});
  raise<unsupported_error>("moss_variant \"", v, "\" has no built-in model type; supported: ", kVariantNames,
                           " (a custom pattern runs from a program that names its type)");
}

}  // namespace moss
