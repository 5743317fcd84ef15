// expect: moss::Residual: the mixer's Config must have from_json and to_json
#include "moss/layers/residual.hpp"

namespace layers_residual_config {
struct Mixer {
  using value_type = float;
  struct Params {};
  struct Cache {};
  struct Config {};  // no from_json / to_json
  static constexpr std::string_view block_name = "mixer";
};
[[maybe_unused]] constexpr auto size = sizeof(moss::Residual<moss::RmsNorm, Mixer>);
}  // namespace layers_residual_config
