// moss/models/mamba_config.hpp: the configuration of a moss language model, read from and
// written to `config.json`.
//
// A Hugging Face `MambaForCausalLM` config (model_type "mamba") is read as it is: its keys are
// the model's shared sizes (`dims()`, every block receives them) and the LM's own settings. A
// moss model with other blocks writes model_type "moss" and these keys besides the Mamba ones
// (docs: README.md, "The moss config.json"):
//   "moss_variant":  "mamba" | "moe-mamba" | "blackmamba" | "rom" | "rom-moe" | "custom"
//   "block_pattern": ["mamba", "moe"]    block names, repeated to num_hidden_layers
//   "blocks":        [{...}, {...}]      one section per pattern position, each read by that
//                                        block type's `Config::from_json` (moss/layers/)
//
// Either model type may also say how its text is turned into token ids:
//   "tokenizer":     "bytes"               each UTF-8 byte of the text is one token, its value
//                                          0..255 (moss/io/bytes.hpp); needs vocab_size ≥ 256
// No key (or null) means the model has no tokenizer moss knows: it takes token ids only (a
// Hugging Face checkpoint's tokenizer.json is not read). Any other value is a `config_error`.
// So a pattern with two MoE blocks that use different routers is two sections. A config written
// by moss 0.1 (one "moe" and one "rom" section shared by every block of that name, a dense "ffn"
// block reading "moe") is read too: each position takes the section of its block's name.
// The block types of a model must agree with their sections: each block's `Config::from_json`
// fills in what a section leaves out from the type and refuses what contradicts it.
//
// A config moss cannot run exactly as its author meant is a `config_error` naming the key, never
// a run with other numbers: a model_type other than "mamba" or "moss", a hidden_act other than
// SiLU, dtype and torch_dtype that disagree, moss keys under model_type "mamba", a
// state-spaces/mamba_ssm config (d_model, n_layer, ssm_cfg), and sizes whose products overflow
// or exceed `max_tensor_elements` (every size derived here is computed with moss/core/checked.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "moss/core/checked.hpp"
#include "moss/core/dispatch.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/tensor.hpp"
#include "moss/io/json.hpp"
#include "moss/layers/mamba.hpp"
#include "moss/layers/residual.hpp"

namespace moss {

namespace detail {

/// ["a", "b"]: a list of names for messages.
inline std::string quoted_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
  return s + "]";
}

}  // namespace detail

/// Sizes and flags of a Mamba-1 language model (docs/math.md §1). Defaults are Mamba-130M's.
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
  std::vector<io::Json> blocks;            ///< the config section of each pattern position, as read
                                           ///< (empty: every block as its type's defaults say)
  std::string tokenizer;                   ///< "bytes" (moss/io/bytes.hpp) or empty: no tokenizer,
                                           ///< token ids only (config.json key "tokenizer")
  std::string source = "config";           ///< where the config came from, for messages ("dir/config.json")

  /// E·D; `config_error` "<source>: expand × hidden_size overflows (E × D)" when it does not fit.
  index_t d_inner() const { return checked_mul(expand, d_model, source + ": expand × hidden_size"); }
  /// time_step_rank, or ceil(D / 16) for "auto" (computed without overflow).
  index_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : d_model / 16 + (d_model % 16 != 0 ? 1 : 0); }
  /// The shared sizes every block of the model receives.
  MambaDims dims() const { return {d_model, d_inner(), d_state, d_conv, resolved_dt_rank(), use_bias, use_conv_bias}; }
  /// The settings of every norm of the model.
  NormSettings norm() const { return {d_model, eps, residual_in_fp32}; }
  /// The section of pattern position i as a path-aware view ("dir/config.json: blocks[1]"); an
  /// empty object when the config has none.
  io::JsonRef block_section(std::size_t i) const {
    static const io::Json empty = io::Json::object();
    const std::string path = source + ": blocks[" + std::to_string(i) + "]";
    return io::JsonRef::at_path(i < blocks.size() ? blocks[i] : empty, path);
  }

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
    MOSS_EXPECTS(tokenizer.empty() || tokenizer == "bytes", config_error, where, ": tokenizer is \"", tokenizer, "\"; ",
                 kTokenizerValues);
    MOSS_EXPECTS(tokenizer != "bytes" || vocab_size >= 256, config_error, where,
                 ": tokenizer \"bytes\" needs vocab_size ≥ 256 (one token per byte value 0..255), but vocab_size is ",
                 vocab_size);
    // Every size the model derives from the keys, checked for overflow and for tensors beyond
    // max_tensor_elements (the mixer's own MambaDims::validate repeats this in its terms).
    const std::string w(where);
    const index_t ED = checked_mul(expand, d_model, w + ": expand × hidden_size");
    const index_t R = resolved_dt_rank();
    const index_t XP = checked_add(R, 2 * d_state, w + ": time_step_rank + 2 × state_size");
    checked_elements(vocab_size, d_model, w + ": the embedding (vocab_size × hidden_size)");
    checked_elements(checked_mul(index_t{2}, ED, w + ": 2 × expand × hidden_size"), d_model,
                     w + ": in_proj.weight (2·expand·hidden_size × hidden_size)");
    checked_elements(ED, d_conv, w + ": conv1d.weight (expand·hidden_size × conv_kernel)");
    checked_elements(XP, ED, w + ": x_proj.weight ((time_step_rank + 2·state_size) × expand·hidden_size)");
    checked_elements(ED, R, w + ": dt_proj.weight (expand·hidden_size × time_step_rank)");
    checked_elements(ED, d_state, w + ": A_log (expand·hidden_size × state_size)");
  }

  /// Reads a Hugging Face `MambaConfig` object (model_type "mamba") or a moss one (model_type
  /// "moss"). Keys that only concern training or initialisation are ignored, and so are Hugging
  /// Face's tokenizer keys (tokenizer_class, pad_token_id, ...); moss's own "tokenizer" is read.
  /// Missing keys keep the defaults of transformers' MambaConfig. `config_error` naming the key for anything moss
  /// would not run as written (see the top of this file). `what` names the file in messages.
  static MambaConfig from_json(const io::Json& doc, const std::string& what) {
    const io::JsonRef j(doc, what);
    MOSS_EXPECTS(j.is_object(), config_error, what, ": a config must be a JSON object, not ", j.kind());
    expect_hf_layout(j);
    const std::string model_type = read_model_type(j);
    MambaConfig c;
    c.source = what;
    c.d_model = 768;
    c.n_layers = 32;  // transformers' MambaConfig defaults
    c.vocab_size = 50280;
    j.read("hidden_size", c.d_model);
    j.read("num_hidden_layers", c.n_layers);
    j.read("vocab_size", c.vocab_size);
    j.read("state_size", c.d_state);
    j.read("expand", c.expand);
    j.read("conv_kernel", c.d_conv);
    if (auto v = j.find("time_step_rank"); v && !v->is_null()) {
      if (v->is_string()) {
        MOSS_EXPECTS(v->as_string() == "auto", config_error, v->where(), " is \"", v->as_string(),
                     "\", expected an integer or \"auto\"");
        c.dt_rank = 0;
      } else {
        c.dt_rank = v->as_int();
        MOSS_EXPECTS(c.dt_rank > 0, config_error, v->where(), " is ", c.dt_rank, ", expected > 0");
      }
    }
    j.read("use_bias", c.use_bias);
    j.read("use_conv_bias", c.use_conv_bias);
    j.read("tie_word_embeddings", c.tie_embeddings);
    j.read("residual_in_fp32", c.residual_in_fp32);
    j.read("layer_norm_epsilon", c.eps);
    if (auto v = j.find("hidden_act"); v && !v->is_null()) {
      const std::string act = v->as_string();
      MOSS_EXPECTS(act == "silu" || act == "swish", config_error, v->where(), " is \"", act,
                   "\", but moss's Mamba mixer applies SiLU after the conv and to the gate: it supports "
                   "hidden_act \"silu\" (or its alias \"swish\") only");
    }
    j.read("bos_token_id", c.bos_token_id);
    j.read("eos_token_id", c.eos_token_id);
    c.dtype = read_dtype(j);
    c.tokenizer = read_tokenizer(j);
    if (model_type == "moss") {
      read_moss(j, c);
    } else {
      expect_no_moss_keys(j);
    }
    c.validate(what);
    if (auto v = j.find("intermediate_size"); v && !v->is_null()) {
      const index_t inter = v->as_int();
      const index_t ed = c.d_inner();  // validate checked that it fits
      MOSS_EXPECTS(inter == ed, config_error, v->where(), " is ", inter, " but expand · hidden_size = ", c.expand,
                   " · ", c.d_model, " = ", ed);
    }
    return c;
  }

  /// The config as a `config.json` object (Hugging Face's keys; a moss model adds its own).
  io::Json to_json() const {
    io::Json j = io::Json::object();
    j["architectures"] = io::Json::array({is_moss() ? "MossForCausalLM" : "MambaForCausalLM"});
    j["model_type"] = is_moss() ? "moss" : "mamba";
    j["hidden_size"] = d_model;
    j["num_hidden_layers"] = n_layers;
    j["vocab_size"] = vocab_size;
    j["state_size"] = d_state;
    j["expand"] = expand;
    j["intermediate_size"] = d_inner();
    j["conv_kernel"] = d_conv;
    j["time_step_rank"] = resolved_dt_rank();
    j["use_bias"] = use_bias;
    j["use_conv_bias"] = use_conv_bias;
    j["tie_word_embeddings"] = tie_embeddings;
    j["residual_in_fp32"] = residual_in_fp32;
    j["layer_norm_epsilon"] = io::json_number(eps);
    j["hidden_act"] = "silu";
    if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
    if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
    if (dtype) {
      const DType d = *dtype;
      j["dtype"] = d == DType::f32 ? "float32" : d == DType::f16 ? "float16" : "bfloat16";
    }
    if (!tokenizer.empty()) j["tokenizer"] = tokenizer;
    if (is_moss()) {
      j["moss_variant"] = moss_variant;
      j["block_pattern"] = block_pattern;
      io::Json sections = io::Json::array();
      for (const io::Json& b : blocks) sections.push_back(b);
      j["blocks"] = std::move(sections);
    }
    return j;
  }

  /// True for a moss model (anything but a plain Hugging Face Mamba).
  bool is_moss() const { return !moss_variant.empty() && moss_variant != "mamba"; }

 private:
  static constexpr const char* kTokenizerValues =
      "moss accepts \"bytes\" (each UTF-8 byte one token, 0..255) or no tokenizer key (token ids only)";

  /// The config's "tokenizer": "bytes", or empty when the key is absent or null; `config_error`
  /// naming the key and the accepted values for anything else (another string, "", a number).
  static std::string read_tokenizer(const io::JsonRef& j) {
    const std::optional<io::JsonRef> v = j.find("tokenizer");
    if (!v || v->is_null()) return {};
    MOSS_EXPECTS(v->is_string(), config_error, v->where(), " is ", v->kind(), "; ", kTokenizerValues);
    const std::string t = v->as_string();
    MOSS_EXPECTS(t == "bytes", config_error, v->where(), " is \"", t, "\"; ", kTokenizerValues);
    return t;
  }

  /// `config_error` for a config in the layout of the original state-spaces/mamba repository
  /// (mamba_ssm's MambaConfig: d_model, n_layer, ssm_cfg, no hidden_size).
  static void expect_hf_layout(const io::JsonRef& j) {
    if (j.find("hidden_size")) return;
    std::vector<std::string> found;
    for (const char* key : {"d_model", "n_layer", "ssm_cfg"})
      if (j.find(key)) found.push_back(key);
    MOSS_EXPECTS(found.empty(), config_error, j.where(), " is a state-spaces/mamba (mamba_ssm) config (it has ",
                 detail::quoted_list(found),
                 " and no \"hidden_size\"); moss loads the Hugging Face transformers MambaForCausalLM "
                 "config.json (model_type \"mamba\", hidden_size, num_hidden_layers, state_size, ...): use a "
                 "\"-hf\" checkpoint (e.g. state-spaces/mamba-130m-hf) or convert this one with transformers' "
                 "convert_mamba_ssm_checkpoint_to_pytorch.py");
  }

  /// The config's model_type: "mamba" (a Hugging Face Mamba) or "moss"; `config_error` naming
  /// the value for any other or a missing one.
  static std::string read_model_type(const io::JsonRef& j) {
    const std::optional<io::JsonRef> v = j.find("model_type");
    MOSS_EXPECTS(v && !v->is_null(), config_error, j.where(),
                 ": model_type is missing; moss reads \"mamba\" (a Hugging Face MambaForCausalLM config) and "
                 "\"moss\" (a config moss wrote)");
    const std::string t = v->as_string();
    MOSS_EXPECTS(t == "mamba" || t == "moss", config_error, v->where(), " is \"", t,
                 "\"; moss reads \"mamba\" (a Hugging Face MambaForCausalLM config) and \"moss\" (a config moss "
                 "wrote)");
    return t;
  }

  /// The storage dtype of "dtype" (transformers 5) and "torch_dtype" (transformers 4); `config_error`
  /// when both are present and name different dtypes.
  static std::optional<DType> read_dtype(const io::JsonRef& j) {
    std::optional<DType> d;
    std::string first_where, first_text;
    for (const char* key : {"dtype", "torch_dtype"}) {
      const std::optional<io::JsonRef> v = j.find(key);
      if (!v || v->is_null()) continue;
      const std::string text = v->as_string();
      const DType t = parse_storage_dtype(text, v->where().c_str());
      MOSS_EXPECTS(!d || *d == t, config_error, v->where(), " is \"", text, "\" but ", first_where, " is \"",
                   first_text, "\"; both name the checkpoint's storage dtype and must agree");
      if (!d) {
        d = t;
        first_where = v->where();
        first_text = text;
      }
    }
    return d;
  }

  /// `config_error` for moss's own keys in a config whose model_type is "mamba": they would be
  /// ignored, so the model would not be the one the file describes.
  static void expect_no_moss_keys(const io::JsonRef& j) {
    for (const char* key : {"moss_variant", "block_pattern", "blocks"}) {
      const std::optional<io::JsonRef> v = j.find(key);
      if (!v || v->is_null()) continue;
      if (std::string(key) == "moss_variant" && v->is_string() && v->as_string() == "mamba") continue;
      raise<config_error>(v->where(),
                          " is a moss key, but model_type is \"mamba\" (a Hugging Face Mamba, which "
                          "has no such key); a moss model's config says model_type \"moss\"");
    }
  }

  static void read_moss(const io::JsonRef& j, MambaConfig& c) {
    j.read("moss_variant", c.moss_variant);
    j.read("block_pattern", c.block_pattern);
    if (auto b = j.find("blocks"); b && !b->is_null()) {
      MOSS_EXPECTS(b->is_array(), config_error, b->where(), " is ", b->kind(), ", expected an array of sections");
      for (std::size_t i = 0; i < b->size(); ++i) {
        const io::JsonRef s = b->at(i);
        MOSS_EXPECTS(s.is_object(), config_error, s.where(), " is ", s.kind(), ", expected an object");
        c.blocks.push_back(s.json());
      }
      MOSS_EXPECTS(c.block_pattern.empty() || c.blocks.size() == c.block_pattern.size(), config_error, b->where(),
                   " has ", c.blocks.size(), " sections but block_pattern has ", c.block_pattern.size(), " blocks");
      return;
    }
    // moss 0.1: one section per block name ("ffn" blocks read "moe").
    for (const std::string& name : c.block_pattern) {
      const std::string key = name == "ffn" ? "moe" : name;
      auto s = j.find(key);
      if (s && !s->is_null()) {
        MOSS_EXPECTS(s->is_object(), config_error, s->where(), " is ", s->kind(), ", expected an object");
        c.blocks.push_back(s->json());
      } else {
        c.blocks.push_back(io::Json::object());
      }
    }
  }
};

}  // namespace moss
