// moss/models/variants.hpp: the named model variants, each a LanguageModel over a block pattern
// (docs/math.md §2–3). Each is one type; `moss_variant` in its config.json names it.
//
//   MambaLM<T>          dense Mamba (Hugging Face MambaForCausalLM)              ["mamba"]
//   MoeMambaLM<T, K>    MoE-Mamba: Mamba and Switch MoE feed-forward alternating  ["mamba", "moe"]
//                       (Top1Switch, ReLU MLP experts; TopK<K> for K > 1)
//   BlackMambaLM<T>     BlackMamba: Mamba and Sinkhorn top-1 SwiGLU experts       ["mamba", "moe"]
//   RomLM<T, K>         Routing Mamba: every mixer a RoM layer (TopK<K>, shared)  ["rom"]
//   RomMoeLM<T, K>      the hybrid RoM + FFN-MoE (both routed top-K)              ["rom", "moe"]
// K, the experts per token, is 1 by default (the papers' models); `dispatch_variant` builds K = 1
// and 2 from a config's "top_k". The expert count comes from the config (`num_experts` of each
// routed block); write your own pattern with `LanguageModel<Pattern<...>>`
// (examples/02_rom_model.cpp).
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
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
namespace detail {
/// The router of the named MoE blocks: Switch for the papers' top-1, TopK<K> (the K largest,
/// weights their softmax probabilities) for K > 1.
template <int K>
using MoeRouter = std::conditional_t<K == 1, Top1Switch, TopK<K>>;
}  // namespace detail

/// MoE-Mamba's feed-forward block: Switch top-1 (top-K for K > 1) over ReLU MLP experts.
template <StorageType T, ExpertCount E = Experts<>, int K = 1>
using SwitchMoeBlock = Residual<RmsNorm, MoeFeedForward<detail::MoeRouter<K>, E, Mlp<Relu>, T>>;
/// BlackMamba's feed-forward block: Sinkhorn top-1 over SwiGLU experts.
template <StorageType T, ExpertCount E = Experts<>>
using SinkhornMoeBlock = Residual<RmsNorm, MoeFeedForward<SinkhornTop1, E, GatedMlp<Silu>, T>>;
/// A RoM block: top-1 (top-K), one routing decision shared by Conv, Gate and Out, g on Out.
template <StorageType T, ExpertCount E = Experts<>, int K = 1>
using RomBlock = Residual<RmsNorm, RoutedMamba<TopK<K>, SharedRouting, E, T>>;

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

/// MoE-Mamba (Pióro et al. 2024); K experts per token (1: Switch, the paper's).
template <StorageType T, int K = 1>
using MoeMambaLM = detail::NamedModel<Pattern<MambaBlock<T>, SwitchMoeBlock<T, Experts<>, K>>, detail::MoeMambaName>;
/// BlackMamba-style: Mamba alternating with Sinkhorn-routed SwiGLU experts.
template <StorageType T>
using BlackMambaLM = detail::NamedModel<Pattern<MambaBlock<T>, SinkhornMoeBlock<T>>, detail::BlackMambaName>;
/// Routing Mamba (Zhan et al. 2025); K experts per token (1: the paper's main setting).
template <StorageType T, int K = 1>
using RomLM = detail::NamedModel<RomBlock<T, Experts<>, K>, detail::RomName>;
/// The hybrid RoM + FFN-MoE, both routed top-K.
template <StorageType T, int K = 1>
using RomMoeLM =
    detail::NamedModel<Pattern<RomBlock<T, Experts<>, K>, SwitchMoeBlock<T, Experts<>, K>>, detail::RomMoeName>;

/// The names `dispatch_variant` knows, as a config's `moss_variant` spells them.
inline constexpr std::string_view kVariantNames = "mamba, moe-mamba, blackmamba, rom, rom-moe";

/// The experts per token of a named variant's routed blocks: their sections' "top_k" (1 when no
/// section says), which must agree (`config_error` naming the two sections otherwise).
inline index_t variant_top_k(const MambaConfig& config) {
  index_t k = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < config.blocks.size(); ++i) {
    index_t ki = 0;
    if (!config.block_section(i).read("top_k", ki)) continue;
    MOSS_EXPECTS(k == 0 || ki == k, config_error, config.source, ": blocks[", i, "].top_k is ", ki, " but blocks[",
                 first, "].top_k is ", k, "; a named variant (moss_variant \"", config.moss_variant,
                 "\") routes every block with one K");
    if (k == 0) first = i;
    k = ki;
  }
  return k == 0 ? 1 : k;
}

/// Calls f(type_tag<Model>{}) with the named model type of `config` in storage type T
/// ("" or "mamba": MambaLM); MoE-Mamba, RoM and RoM + MoE with the K of `variant_top_k`, 1 or 2.
/// A custom pattern has no built-in type, nor another K: `unsupported_error`.
template <StorageType T, class F>
decltype(auto) dispatch_variant(const MambaConfig& config, F&& f) {
  const std::string v = config.moss_variant.empty() ? "mamba" : config.moss_variant;
  if (v == "mamba") return std::forward<F>(f)(type_tag<MambaLM<T>>{});
  if (v == "blackmamba") return std::forward<F>(f)(type_tag<BlackMambaLM<T>>{});  // Sinkhorn: top-1 (the type checks)
  if (v == "moe-mamba" || v == "rom" || v == "rom-moe") {
    const index_t k = variant_top_k(config);
    MOSS_EXPECTS(k == 1 || k == 2, unsupported_error, config.source, ": top_k is ", k, " but the built-in ", v,
                 " types route 1 or 2 experts per token (moss::MoeMambaLM, RomLM and RomMoeLM take K as their second "
                 "template argument: a program that names the type with K = ",
                 k, " runs it)");
    if (v == "moe-mamba")
      return k == 2 ? std::forward<F>(f)(type_tag<MoeMambaLM<T, 2>>{}) : std::forward<F>(f)(type_tag<MoeMambaLM<T>>{});
    if (v == "rom")
      return k == 2 ? std::forward<F>(f)(type_tag<RomLM<T, 2>>{}) : std::forward<F>(f)(type_tag<RomLM<T>>{});
    return k == 2 ? std::forward<F>(f)(type_tag<RomMoeLM<T, 2>>{}) : std::forward<F>(f)(type_tag<RomMoeLM<T>>{});
  }
  raise<unsupported_error>("moss_variant \"", v, "\" has no built-in model type; supported: ", kVariantNames,
                           " (a custom pattern runs from a program that names its type)");
}

}  // namespace moss
