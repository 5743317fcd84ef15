// moss/models/mamba_config.hpp: the configuration of a Mamba language model, read from and
// written to Hugging Face's `config.json` (`MambaForCausalLM`).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "moss/core/dispatch.hpp"
#include "moss/core/dtype.hpp"
#include "moss/core/error.hpp"
#include "moss/core/json.hpp"
#include "moss/core/tensor.hpp"

namespace moss {

/// Sizes and flags of a Mamba-1 language model (REFERENCE.md §1). Defaults are Mamba-130M's.
struct MambaConfig {
  index_t d_model = 768;          ///< hidden_size (D)
  index_t n_layers = 24;          ///< num_hidden_layers
  index_t vocab_size = 50280;     ///< V
  index_t d_state = 16;           ///< state_size (N)
  index_t expand = 2;             ///< E; d_inner = E·D
  index_t d_conv = 4;             ///< conv_kernel (W)
  index_t dt_rank = 0;            ///< time_step_rank (R); 0 means "auto" = ceil(D / 16)
  bool use_bias = false;          ///< in_proj / out_proj biases
  bool use_conv_bias = true;      ///< conv1d bias
  bool tie_embeddings = true;     ///< lm_head shares the embedding matrix
  bool residual_in_fp32 = true;   ///< the residual stream is kept in float32
  float eps = 1e-5f;              ///< layer_norm_epsilon
  std::int64_t bos_token_id = -1; ///< -1: none
  std::int64_t eos_token_id = -1; ///< -1: none
  std::optional<DType> dtype;     ///< the checkpoint's storage dtype (torch_dtype / dtype), if stated

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
        MOSS_EXPECTS(v->as_string() == "auto", config_error, what, ": time_step_rank is \"",
                     v->as_string(), "\", expected an integer or \"auto\"");
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
    return j;
  }
};

}  // namespace moss
