// Loads a Hugging Face LlamaForCausalLM directory (config.json, optional
// generation_config.json, model.safetensors or sharded safetensors) into a
// LlamaConfig and zero-copy LlamaWeights.
//
// Hugging Face stores q_proj/k_proj rows in the order its rotate_half RoPE
// expects, so no permutation is done: the config says RopeStyle::HalfSplit.
// Anything the reference Llama cannot compute (another architecture, RoPE
// scaling, biases, another activation) is refused with a FormatError rather
// than producing plausible-looking nonsense.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/safetensors.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

namespace detail {

inline nlohmann::json hf_read_json_file(const std::filesystem::path& path) {
  auto map = MappedFile::open(path.string());
  const char* b = reinterpret_cast<const char*>(map->data());
  return parse_json_limited(b, b + map->size(), path.string(), 64);
}

// An int field: absent or null -> `fallback`; otherwise it must be an integer
// that fits an int.
inline int hf_int(const nlohmann::json& j, const char* key, int fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  FASTINFER_CHECK(it->is_number_integer(), FormatError, where, ": \"", key,
                  "\" must be an integer, got ", it->dump());
  const std::int64_t v = it->get<std::int64_t>();
  FASTINFER_CHECK(v >= std::numeric_limits<int>::min() && v <= std::numeric_limits<int>::max(),
                  FormatError, where, ": \"", key, "\" = ", v, " is out of range");
  return int(v);
}

inline int hf_required_int(const nlohmann::json& j, const char* key, const std::string& where) {
  FASTINFER_CHECK(j.contains(key) && !j.at(key).is_null(), FormatError, where, ": \"", key,
                  "\" is missing");
  return hf_int(j, key, 0, where);
}

inline float hf_float(const nlohmann::json& j, const char* key, float fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  FASTINFER_CHECK(it->is_number(), FormatError, where, ": \"", key, "\" must be a number, got ",
                  it->dump());
  return it->get<float>();
}

// bos/eos ids are an int, a list of ints (Llama 3 lists several EOS ids; we
// stop on the first) or null.
inline int hf_token_id(const nlohmann::json& j, const char* key, int fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_array()) {
    if (it->empty()) return fallback;
    nlohmann::json first = {{key, it->front()}};
    return hf_int(first, key, fallback, where);
  }
  return hf_int(j, key, fallback, where);
}

}  // namespace detail

// Builds a LlamaConfig from config.json's object and, when given (null when
// absent), generation_config.json's, whose bos/eos ids win as they do in
// transformers' generate(). `where` names the source in error messages.
inline LlamaConfig parse_hf_config(const nlohmann::json& cfg, const std::string& where,
                                   const nlohmann::json& generation_cfg = nlohmann::json()) {
  using detail::hf_int;
  FASTINFER_CHECK(cfg.is_object(), FormatError, where, ": not a JSON object");
  // The architecture: LlamaForCausalLM, or model_type "llama" when the list is absent.
  bool llama = false;
  std::string arch = "(none)";
  if (auto a = cfg.find("architectures"); a != cfg.end() && a->is_array() && !a->empty()) {
    for (const auto& name : *a) {
      if (name.is_string() && name.get<std::string>() == "LlamaForCausalLM") llama = true;
    }
    arch = a->dump();
  } else if (auto m = cfg.find("model_type"); m != cfg.end() && m->is_string()) {
    llama = m->get<std::string>() == "llama";
    arch = "model_type " + m->dump();
  }
  FASTINFER_CHECK(llama, FormatError, where, ": architecture ", arch,
                  " is not supported; fastinfer loads LlamaForCausalLM only");
  if (auto rs = cfg.find("rope_scaling"); rs != cfg.end() && !rs->is_null()) {
    std::string type;
    if (rs->is_object()) {
      for (const char* k : {"rope_type", "type"})
        if (rs->contains(k) && rs->at(k).is_string()) type = rs->at(k).get<std::string>();
    }
    FASTINFER_CHECK(type == "default", FormatError, where, ": rope_scaling ", rs->dump(),
                    " is not supported (plain RoPE only)");
  }
  if (auto act = cfg.find("hidden_act"); act != cfg.end() && !act->is_null())
    FASTINFER_CHECK(act->is_string() && act->get<std::string>() == "silu", FormatError, where,
                    ": hidden_act ", act->dump(), " is not supported (silu only)");
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    auto b = cfg.find(bias);
    FASTINFER_CHECK(b == cfg.end() || b->is_null() || (b->is_boolean() && !b->get<bool>()),
                    FormatError, where, ": \"", bias, "\" = ", b->dump(),
                    " is not supported (no biases)");
  }

  LlamaConfig c;
  c.dim = detail::hf_required_int(cfg, "hidden_size", where);
  c.hidden_dim = detail::hf_required_int(cfg, "intermediate_size", where);
  c.n_layers = detail::hf_required_int(cfg, "num_hidden_layers", where);
  c.n_heads = detail::hf_required_int(cfg, "num_attention_heads", where);
  c.n_kv_heads = hf_int(cfg, "num_key_value_heads", c.n_heads, where);
  c.vocab_size = detail::hf_required_int(cfg, "vocab_size", where);
  c.max_seq_len = detail::hf_required_int(cfg, "max_position_embeddings", where);
  if (c.n_heads > 0) {
    FASTINFER_CHECK(cfg.contains("head_dim") || c.dim % c.n_heads == 0, FormatError, where,
                    ": hidden_size ", c.dim, " is not a multiple of num_attention_heads ", c.n_heads,
                    " and head_dim is not given");
    c.head_dim = hf_int(cfg, "head_dim", c.dim / c.n_heads, where);
  }
  // transformers' LlamaConfig defaults, for fields older files omit.
  c.norm_eps = detail::hf_float(cfg, "rms_norm_eps", 1e-6f, where);
  c.rope_theta = detail::hf_float(cfg, "rope_theta", 10000.0f, where);
  c.rope_style = RopeStyle::HalfSplit;
  if (auto t = cfg.find("tie_word_embeddings"); t != cfg.end() && !t->is_null()) {
    FASTINFER_CHECK(t->is_boolean(), FormatError, where, ": tie_word_embeddings must be a boolean");
    c.shared_classifier = t->get<bool>();
  } else {
    c.shared_classifier = false;
  }
  c.bos_id = detail::hf_token_id(cfg, "bos_token_id", 1, where);
  c.eos_id = detail::hf_token_id(cfg, "eos_token_id", -1, where);
  if (generation_cfg.is_object()) {
    c.bos_id = detail::hf_token_id(generation_cfg, "bos_token_id", c.bos_id, where + " (generation_config)");
    c.eos_id = detail::hf_token_id(generation_cfg, "eos_token_id", c.eos_id, where + " (generation_config)");
  }
  try {
    c.validate();
  } catch (const InvalidArgument& e) {
    throw_error<FormatError>(where, ": ", e.what());
  }
  FASTINFER_CHECK(c.eos_id < c.vocab_size && c.bos_id < c.vocab_size, FormatError, where,
                  ": bos_token_id ", c.bos_id, " or eos_token_id ", c.eos_id,
                  " is outside the vocabulary (", c.vocab_size, ")");
  return c;
}

// config.json (+ generation_config.json when present) of a model directory.
inline LlamaConfig load_hf_config(const std::filesystem::path& dir) {
  const auto cfg_path = dir / "config.json";
  FASTINFER_CHECK(std::filesystem::exists(cfg_path), FormatError, dir.string(),
                  ": no config.json (not a Hugging Face model directory)");
  const nlohmann::json cfg = detail::hf_read_json_file(cfg_path);
  nlohmann::json gen;
  if (std::filesystem::exists(dir / "generation_config.json"))
    gen = detail::hf_read_json_file(dir / "generation_config.json");
  return parse_hf_config(cfg, cfg_path.string(), gen);
}

// Whether `dir` looks like a Hugging Face model directory we can try to load.
inline bool is_hf_model_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::exists(dir / "config.json", ec) &&
         (fs::exists(dir / "model.safetensors", ec) || fs::exists(dir / "model.safetensors.index.json", ec));
}

namespace detail {

// Views of checkpoint tensors with the shapes the config implies. Misaligned
// data (a header length that is not a multiple of 8) and norms stored as
// f16/bf16 are copied into aligned f32/heap buffers owned by `storage`.
class HfTensorBinder {
 public:
  HfTensorBinder(const SafetensorsCheckpoint& ckpt, std::vector<KeepAlive>& storage)
      : ckpt_(ckpt), storage_(storage) {}

  MatrixView matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    const SafetensorsTensor& t = checked(name, {rows, cols});
    MatrixView m;
    m.dtype = t.dtype();
    m.rows = rows;
    m.cols = cols;
    m.data = aligned(t, m.dtype == DType::F32 ? 4 : 2);
    return m;
  }

  const float* vector_f32(const std::string& name, std::int64_t n) const {
    const SafetensorsTensor& t = checked(name, {n});
    const DType dt = t.dtype();
    if (dt == DType::F32) return static_cast<const float*>(aligned(t, alignof(float)));
    auto buf = std::make_shared<std::vector<float>>(std::size_t(n));
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      (*buf)[std::size_t(i)] = dt == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    storage_.push_back(buf);
    return buf->data();
  }

 private:
  const SafetensorsTensor& checked(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const SafetensorsTensor& t = ckpt_.tensor(name);
    if (t.shape != shape) {
      auto str = [](const std::vector<std::int64_t>& s) {
        std::string r = "[";
        for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
        return r + "]";
      };
      throw_error<FormatError>(*t.path, ": tensor '", name, "' has shape ", str(t.shape),
                               " but config.json implies ", str(shape));
    }
    return t;
  }

  const void* aligned(const SafetensorsTensor& t, std::size_t alignment) const {
    if (reinterpret_cast<std::uintptr_t>(t.data) % alignment == 0) return t.data;
    auto buf = std::make_shared<std::vector<float>>((t.nbytes + 3) / 4);
    std::memcpy(buf->data(), t.data, t.nbytes);
    storage_.push_back(buf);
    return buf->data();
  }

  const SafetensorsCheckpoint& ckpt_;
  std::vector<KeepAlive>& storage_;
};

}  // namespace detail

// Weights of `config` from the checkpoint, under Hugging Face's tensor names.
// With tied embeddings, whichever of model.embed_tokens.weight and
// lm_head.weight the file stores serves as both (embed_tokens preferred).
inline LlamaWeights hf_weights_from_checkpoint(const LlamaConfig& config, const SafetensorsCheckpoint& ckpt) {
  config.validate();
  LlamaWeights w;
  w.config = config;
  w.storage = ckpt.storage();
  detail::HfTensorBinder bind(ckpt, w.storage);
  const std::int64_t dim = config.dim, vocab = config.vocab_size, hidden = config.hidden_dim;
  const std::string embed = "model.embed_tokens.weight", head = "lm_head.weight";
  if (config.shared_classifier) {
    const std::string& stored = ckpt.contains(embed) ? embed : head;
    FASTINFER_CHECK(ckpt.contains(stored), FormatError, ckpt.shards().front().path(),
                    ": tied embeddings but neither '", embed, "' nor '", head, "' is stored");
    w.token_embedding = bind.matrix(stored, vocab, dim);
    w.classifier = w.token_embedding;
  } else {
    w.token_embedding = bind.matrix(embed, vocab, dim);
    w.classifier = bind.matrix(head, vocab, dim);
  }
  w.final_norm = bind.vector_f32("model.norm.weight", dim);
  // num_hidden_layers sizes the layer table: its last layer must be stored
  // before a corrupt 10^7 allocates gigabytes of empty layers.
  const std::string last = "model.layers." + std::to_string(config.n_layers - 1) + ".input_layernorm.weight";
  FASTINFER_CHECK(ckpt.contains(last), FormatError, ckpt.shards().front().path(), ": num_hidden_layers ",
                  config.n_layers, " but the checkpoint has no '", last, "'");
  w.layers.resize(std::size_t(config.n_layers));
  for (int l = 0; l < config.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayerWeights& L = w.layers[std::size_t(l)];
    L.attn_norm = bind.vector_f32(p + "input_layernorm.weight", dim);
    L.wq = bind.matrix(p + "self_attn.q_proj.weight", config.q_dim(), dim);
    L.wk = bind.matrix(p + "self_attn.k_proj.weight", config.kv_dim(), dim);
    L.wv = bind.matrix(p + "self_attn.v_proj.weight", config.kv_dim(), dim);
    L.wo = bind.matrix(p + "self_attn.o_proj.weight", dim, config.q_dim());
    L.ffn_norm = bind.vector_f32(p + "post_attention_layernorm.weight", dim);
    L.w_gate = bind.matrix(p + "mlp.gate_proj.weight", hidden, dim);
    L.w_up = bind.matrix(p + "mlp.up_proj.weight", hidden, dim);
    L.w_down = bind.matrix(p + "mlp.down_proj.weight", dim, hidden);
  }
  return w;
}

// A whole Hugging Face Llama directory: config plus memory-mapped weights,
// converted to options.weight_dtype when that is set.
inline LlamaWeights load_hf_weights(const std::filesystem::path& dir, const LoadOptions& options = {}) {
  const LlamaConfig config = load_hf_config(dir);
  return apply_load_options(hf_weights_from_checkpoint(config, SafetensorsCheckpoint::open(dir)), options);
}

}  // namespace fastinfer
