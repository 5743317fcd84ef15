// moss/models/mamba_config.hpp: the configuration of a moss language model, read from and
// written to `config.json`.
//
// A Hugging Face `MambaForCausalLM` config (model_type "mamba") is read as it is. A moss model
// with sparse layers writes model_type "moss" and these keys besides the Mamba ones
// (docs: README.md, "The moss config.json"):
//   "moss_variant":  "mamba" | "moe-mamba" | "blackmamba" | "rom" | "rom-moe" | "custom"
//   "block_pattern": ["mamba", "moe"]    block names, repeated to num_hidden_layers
//   "moe": { the MoE feed-forward blocks ("moe")
//            "num_experts": 8, "top_k": 1, "router": "top1_switch" | "top_k" | "sinkhorn_top1" | <custom name>,
//            "normalize": false, "sinkhorn_training": false, "capacity_factor": 0.0,
//            "aux_loss_coef": 0.01, "z_loss_coef": 0.001,
//            "expert": "mlp" | "gated_mlp", "activation": "relu" | "gelu" | "silu", "d_ff": 2304 },
//   "rom": { the RoM mixers ("rom"): the same router keys, and
//            "scope": "shared" | "per_projection", "projections": ["conv", "gate", "out"],
//            "weight_placement": "out" | "gate" | "all" | "none" }
//   (a dense feed-forward block "ffn" reads "moe"'s expert, activation and d_ff)
// The layer types a model is built from must agree with these keys; the model fills in what
// a config leaves out from its types (`settle`), and refuses what contradicts them.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "moss/core/dispatch.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/json.hpp"
#include "moss/core/tensor.hpp"
#include "moss/policy/router.hpp"

namespace moss {

namespace detail {

/// ["a", "b"]: a list of names for messages.
inline std::string quoted_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
  return s + "]";
}

}  // namespace detail

/// The settings of one kind of sparse block of a moss model (REFERENCE.md §2–3): `"moe"` for
/// MoE feed-forward blocks, `"rom"` for RoM mixers. Empty strings and zero counts mean "as the
/// layer types say"; see `settle` in the layers.
struct MoeConfig {
  index_t num_experts = 0;               ///< X; 0: fixed by the type (moss::Experts<N>)
  index_t top_k = 0;                     ///< K; 0: the router type's
  std::string router;                    ///< "top1_switch", "top_k" or "sinkhorn_top1"
  bool normalize = false;                ///< TopK: renormalise the chosen weights
  bool sinkhorn_training = false;        ///< SinkhornTop1: training-mode balancing
  RouterSettings settings;               ///< capacity factor and loss coefficients
  std::string expert;                    ///< "mlp" or "gated_mlp" (feed-forward experts)
  std::string activation;                ///< "relu", "gelu" or "silu"
  index_t d_ff = 0;                      ///< hidden width of MLP experts; 0: 3 · d_model (MoE-Mamba's)
  std::string scope;                     ///< RoM: "shared" or "per_projection"
  std::vector<std::string> projections;  ///< RoM: the routed subset of {"conv", "gate", "out"}
  std::string weight_placement;          ///< RoM: "out", "gate", "all" or "none"

  /// The hidden width of MLP experts for d_model D.
  index_t resolved_d_ff(index_t D) const { return d_ff > 0 ? d_ff : 3 * D; }
};

/// Sizes and flags of a Mamba-1 language model (REFERENCE.md §1). Defaults are Mamba-130M's.
struct MambaConfig {
  index_t d_model = 768;                   ///< hidden_size (D)
  index_t n_layers = 24;                   ///< num_hidden_layers
  index_t vocab_size = 50280;              ///< V
  index_t d_state = 16;                    ///< state_size (N)
  index_t expand = 2;                      ///< E; d_inner = E·D
  index_t d_conv = 4;                      ///< conv_kernel (W)
  index_t dt_rank = 0;                     ///< time_step_rank (R); 0 means "auto" = ceil(D / 16)
  bool use_bias = false;                   ///< in_proj / out_proj biases
  bool use_conv_bias = true;               ///< conv1d bias
  bool tie_embeddings = true;              ///< lm_head shares the embedding matrix
  bool residual_in_fp32 = true;            ///< the residual stream is kept in float32
  float eps = 1e-5f;                       ///< layer_norm_epsilon
  std::int64_t bos_token_id = -1;          ///< -1: none
  std::int64_t eos_token_id = -1;          ///< -1: none
  std::optional<DType> dtype;              ///< the checkpoint's storage dtype (torch_dtype / dtype), if stated
  std::string moss_variant;                ///< a moss model's variant name; empty for a Hugging Face Mamba
  std::vector<std::string> block_pattern;  ///< block names repeated to n_layers; empty: as the model type says
  MoeConfig moe;                           ///< MoE feed-forward blocks' settings (and a dense "ffn" block's width)
  MoeConfig rom;                           ///< RoM mixers' settings

  index_t d_inner() const { return expand * d_model; }
  index_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }

  /// Throws `config_error` naming the first key with an impossible value.
  void validate(const std::string& where) const {
    auto positive = [&](const char* key, index_t v) {
      MOSS_EXPECTS(v > 0, config_error, where, ": ", key, " is ", v, ", expected > 0");
    };
    positive("hidden_size", d_model);
    positive("num_hidden_layers", n_layers);
    positive("vocab_size", vocab_size);
    positive("state_size", d_state);
    positive("expand", expand);
    positive("conv_kernel", d_conv);
    MOSS_EXPECTS(dt_rank >= 0, config_error, where, ": time_step_rank is ", dt_rank, ", expected > 0 or \"auto\"");
    MOSS_EXPECTS(d_state <= 256, unsupported_error, where, ": state_size is ", d_state,
                 "; moss supports state_size up to 256");
    MOSS_EXPECTS(std::isfinite(eps) && eps > 0, config_error, where, ": layer_norm_epsilon is ", eps,
                 ", expected a positive number");
    MOSS_EXPECTS(eos_token_id < vocab_size, config_error, where, ": eos_token_id ", eos_token_id,
                 " is outside the vocabulary of ", vocab_size);
  }

  /// Reads a Hugging Face `MambaConfig` object (unknown keys are ignored; missing keys keep
  /// the defaults of transformers' MambaConfig). `what` names the file in messages.
  static MambaConfig from_json(const json::Value& j, const std::string& what) {
    MOSS_EXPECTS(j.is_object(), config_error, what, ": a config must be a JSON object");
    MambaConfig c;
    c.d_model = 768;
    c.n_layers = 32;  // transformers' MambaConfig defaults
    c.vocab_size = 50280;
    auto get_int = [&](const char* key, index_t& out) {
      if (const json::Value* v = j.find(key); v && !v->is_null()) out = v->as_int();
    };
    auto get_bool = [&](const char* key, bool& out) {
      if (const json::Value* v = j.find(key); v && !v->is_null()) out = v->as_bool();
    };
    get_int("hidden_size", c.d_model);
    get_int("num_hidden_layers", c.n_layers);
    get_int("vocab_size", c.vocab_size);
    get_int("state_size", c.d_state);
    get_int("expand", c.expand);
    get_int("conv_kernel", c.d_conv);
    if (const json::Value* v = j.find("time_step_rank"); v && !v->is_null()) {
      if (v->is_string()) {
        MOSS_EXPECTS(v->as_string() == "auto", config_error, what, ": time_step_rank is \"", v->as_string(),
                     "\", expected an integer or \"auto\"");
        c.dt_rank = 0;
      } else {
        c.dt_rank = v->as_int();
        MOSS_EXPECTS(c.dt_rank > 0, config_error, what, ": time_step_rank is ", c.dt_rank, ", expected > 0");
      }
    }
    get_bool("use_bias", c.use_bias);
    get_bool("use_conv_bias", c.use_conv_bias);
    get_bool("tie_word_embeddings", c.tie_embeddings);
    get_bool("residual_in_fp32", c.residual_in_fp32);
    if (const json::Value* v = j.find("layer_norm_epsilon"); v && !v->is_null())
      c.eps = static_cast<float>(v->as_double());
    if (const json::Value* v = j.find("intermediate_size"); v && !v->is_null()) {
      const index_t inter = v->as_int();
      MOSS_EXPECTS(inter == c.expand * c.d_model, config_error, what, ": intermediate_size is ", inter,
                   " but expand · hidden_size = ", c.expand, " · ", c.d_model, " = ", c.expand * c.d_model);
    }
    get_int("bos_token_id", c.bos_token_id);
    get_int("eos_token_id", c.eos_token_id);
    // transformers 4 writes "torch_dtype", transformers 5 writes "dtype".
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (const json::Value* v = j.find(key); v && v->is_string()) {
        c.dtype = parse_storage_dtype(v->as_string(), (what + ": " + key).c_str());
        break;
      }
    }
    if (const json::Value* v = j.find("model_type"); v && v->is_string() && v->as_string() == "moss") read_moss(j, c);
    c.validate(what);
    return c;
  }

  /// The config as a Hugging Face `config.json` object.
  json::Value to_json() const {
    json::Value j = json::Object{};
    j.set("architectures", json::Value(json::Array{json::Value("MambaForCausalLM")}));
    j.set("model_type", json::Value("mamba"));
    j.set("hidden_size", json::Value(d_model));
    j.set("num_hidden_layers", json::Value(n_layers));
    j.set("vocab_size", json::Value(vocab_size));
    j.set("state_size", json::Value(d_state));
    j.set("expand", json::Value(expand));
    j.set("intermediate_size", json::Value(d_inner()));
    j.set("conv_kernel", json::Value(d_conv));
    j.set("time_step_rank", json::Value(resolved_dt_rank()));
    j.set("use_bias", json::Value(use_bias));
    j.set("use_conv_bias", json::Value(use_conv_bias));
    j.set("tie_word_embeddings", json::Value(tie_embeddings));
    j.set("residual_in_fp32", json::Value(residual_in_fp32));
    j.set("layer_norm_epsilon", json::Value(static_cast<double>(eps)));
    if (bos_token_id >= 0) j.set("bos_token_id", json::Value(bos_token_id));
    if (eos_token_id >= 0) j.set("eos_token_id", json::Value(eos_token_id));
    if (dtype) {
      const DType d = *dtype;
      j.set("dtype", json::Value(std::string(d == DType::f32 ? "float32" : d == DType::f16 ? "float16" : "bfloat16")));
    }
    if (is_moss()) write_moss(j);
    return j;
  }

  /// True for a moss model (anything but a plain Hugging Face Mamba).
  bool is_moss() const { return !moss_variant.empty() && moss_variant != "mamba"; }

 private:
  static std::vector<std::string> strings(const json::Value& v) {
    std::vector<std::string> out;
    for (const json::Value& e : v.as_array()) out.push_back(e.as_string());
    return out;
  }
  static void read_moss(const json::Value& j, MambaConfig& c) {
    if (const json::Value* v = j.find("moss_variant"); v && !v->is_null()) c.moss_variant = v->as_string();
    if (const json::Value* v = j.find("block_pattern"); v && !v->is_null()) c.block_pattern = strings(*v);
    read_section(j.find("moe"), c.moe);
    read_section(j.find("rom"), c.rom);
  }
  static void read_section(const json::Value* m, MoeConfig& e) {
    if (!m || m->is_null()) return;
    MOSS_EXPECTS(m->is_object(), config_error, m->where(), " must be an object");
    auto get_int = [&](const char* key, index_t& out) {
      if (const json::Value* v = m->find(key); v && !v->is_null()) out = v->as_int();
    };
    auto get_str = [&](const char* key, std::string& out) {
      if (const json::Value* v = m->find(key); v && !v->is_null()) out = v->as_string();
    };
    auto get_bool = [&](const char* key, bool& out) {
      if (const json::Value* v = m->find(key); v && !v->is_null()) out = v->as_bool();
    };
    auto get_num = [&](const char* key, auto& out) {
      if (const json::Value* v = m->find(key); v && !v->is_null())
        out = static_cast<std::decay_t<decltype(out)>>(v->as_double());
    };
    get_int("num_experts", e.num_experts);
    get_int("top_k", e.top_k);
    get_str("router", e.router);
    get_bool("normalize", e.normalize);
    get_bool("sinkhorn_training", e.sinkhorn_training);
    get_num("capacity_factor", e.settings.capacity_factor);
    get_num("aux_loss_coef", e.settings.aux_loss_coef);
    get_num("z_loss_coef", e.settings.z_loss_coef);
    get_str("expert", e.expert);
    get_str("activation", e.activation);
    get_int("d_ff", e.d_ff);
    get_str("scope", e.scope);
    if (const json::Value* v = m->find("projections"); v && !v->is_null()) e.projections = strings(*v);
    get_str("weight_placement", e.weight_placement);
    MOSS_EXPECTS(e.num_experts >= 0 && e.top_k >= 0 && e.d_ff >= 0, config_error, m->where(),
                 ": num_experts, top_k and d_ff must be ≥ 0");
    e.settings.validate(m->where().c_str());
  }
  void write_moss(json::Value& j) const {
    j.set("architectures", json::Value(json::Array{json::Value("MossForCausalLM")}));
    j.set("model_type", json::Value("moss"));
    j.set("moss_variant", json::Value(moss_variant));
    json::Array pattern;
    for (const auto& b : block_pattern) pattern.emplace_back(b);
    j.set("block_pattern", json::Value(std::move(pattern)));
    auto uses = [&](const char* block) {
      for (const auto& b : block_pattern)
        if (b == block) return true;
      return false;
    };
    if (uses("moe") || uses("ffn")) j.set("moe", write_section(moe, true));
    if (uses("rom")) j.set("rom", write_section(rom, false));
  }
  json::Value write_section(const MoeConfig& e, bool feed_forward) const {
    json::Value m = json::Object{};
    m.set("num_experts", json::Value(e.num_experts));
    m.set("top_k", json::Value(e.top_k));
    if (!e.router.empty()) m.set("router", json::Value(e.router));
    m.set("normalize", json::Value(e.normalize));
    m.set("sinkhorn_training", json::Value(e.sinkhorn_training));
    m.set("capacity_factor", json::Value(e.settings.capacity_factor));
    m.set("aux_loss_coef", json::Value(static_cast<double>(e.settings.aux_loss_coef)));
    m.set("z_loss_coef", json::Value(static_cast<double>(e.settings.z_loss_coef)));
    if (feed_forward) {
      if (!e.expert.empty()) m.set("expert", json::Value(e.expert));
      if (!e.activation.empty()) m.set("activation", json::Value(e.activation));
      m.set("d_ff", json::Value(e.resolved_d_ff(d_model)));
    } else {
      if (!e.scope.empty()) m.set("scope", json::Value(e.scope));
      json::Array a;
      for (const auto& p : e.projections) a.emplace_back(p);
      m.set("projections", json::Value(std::move(a)));
      if (!e.weight_placement.empty()) m.set("weight_placement", json::Value(e.weight_placement));
    }
    return m;
  }
};

}  // namespace moss
