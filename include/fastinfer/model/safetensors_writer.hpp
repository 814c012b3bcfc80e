// Writing Hugging Face checkpoints: a safetensors container writer, and
// save_hf_llama, which writes LlamaWeights as a LlamaForCausalLM directory
// (config.json, generation_config.json, model.safetensors) that
// load_hf_weights (model/hf_loader.hpp) and transformers read back.
//
// The file is written as the reader (model/safetensors.hpp) expects: an
// 8-byte little-endian header length, the JSON header padded with spaces so
// that the data section starts 8-byte aligned, then the tensors back to back
// in the order they were added (the format allows no holes).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"
#include "fastinfer/model/inflate.hpp"
#include "fastinfer/model/weights.hpp"

namespace fastinfer {

// Collects tensors (by reference: their data must stay alive until write()
// returns) and writes one .safetensors file.
class SafetensorsWriter {
 public:
  // dtype_name as safetensors spells it ("F32", "BF16", "F16", ...).
  void add_tensor(std::string name, std::string dtype_name, std::vector<std::int64_t> shape, const void* data,
                  std::uint64_t nbytes) {
    for (const auto& t : tensors_)
      FASTINFER_CHECK(t.name != name, InvalidArgument, "safetensors: tensor '", name, "' added twice");
    FASTINFER_CHECK(name != "__metadata__", InvalidArgument, "safetensors: '__metadata__' is not a tensor name");
    tensors_.push_back(Entry{std::move(name), std::move(dtype_name), std::move(shape), data, nbytes});
  }
  // A [rows][cols] matrix (f32, f16 or bf16; safetensors has no q8_0).
  void add_matrix(std::string name, const MatrixView& m) {
    FASTINFER_CHECK(m.dtype != DType::Q8_0, InvalidArgument, "safetensors: cannot store '", name,
                    "' as q8_0 (f32, f16 and bf16 only)");
    const char* dt = m.dtype == DType::F32 ? "F32" : m.dtype == DType::F16 ? "F16" : "BF16";
    add_tensor(std::move(name), dt, {m.rows, m.cols}, m.data, m.bytes());
  }
  void add_vector_f32(std::string name, const float* data, std::int64_t n) {
    add_tensor(std::move(name), "F32", {n}, data, std::uint64_t(n) * sizeof(float));
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // Writes the file; a failure (cannot open, disk full) is a FormatError naming the path.
  void write(const std::string& path) const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
      offset += t.nbytes;
    }
    std::string text = header.dump();
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
    FASTINFER_CHECK(f != nullptr, FormatError, path, ": cannot open for writing");
    std::uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = std::uint8_t(std::uint64_t(text.size()) >> (8 * i));
    bool ok = std::fwrite(len, 1, 8, f.get()) == 8 && std::fwrite(text.data(), 1, text.size(), f.get()) == text.size();
    for (const auto& t : tensors_)
      ok = ok && (t.nbytes == 0 || std::fwrite(t.data, 1, t.nbytes, f.get()) == t.nbytes);
    ok = std::fflush(f.get()) == 0 && ok;
    FASTINFER_CHECK(ok, FormatError, path, ": write failed (disk full?)");
  }

 private:
  struct Entry {
    std::string name, dtype;
    std::vector<std::int64_t> shape;
    const void* data;
    std::uint64_t nbytes;
  };
  std::vector<Entry> tensors_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// The config.json object transformers needs for `config`.
inline nlohmann::json hf_config_json(const LlamaConfig& c, DType dtype) {
  nlohmann::json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rms_norm_eps"] = c.norm_eps;  // a float: the double written reads back to the same float
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = c.shared_classifier;
  j["bos_token_id"] = c.bos_id;
  if (c.eos_id >= 0) j["eos_token_id"] = c.eos_id;
  j["torch_dtype"] = dtype == DType::BF16 ? "bfloat16" : dtype == DType::F16 ? "float16" : "float32";
  return j;
}

// Writes `weights` as a Hugging Face LlamaForCausalLM directory `dir`
// (created if needed): config.json, generation_config.json and
// model.safetensors. Q/K rows are permuted to the half-split RoPE layout
// Hugging Face uses when the weights are interleaved (llama2.c, GGUF). The
// tokenizer files of `tokenizer_from` (a Hugging Face directory; empty: none)
// are copied beside them, its generation_config.json too when it has one.
inline void save_hf_llama(const LlamaWeights& weights, const std::filesystem::path& dir,
                          const std::filesystem::path& tokenizer_from = {}) {
  namespace fs = std::filesystem;
  const LlamaWeights w = with_rope_style(weights, RopeStyle::HalfSplit);
  const LlamaConfig& c = w.config;
  c.validate();
  const bool shared = w.classifier.data == w.token_embedding.data;
  FASTINFER_CHECK(shared == c.shared_classifier, InvalidArgument, "config says shared_classifier = ",
                  c.shared_classifier, " but the classifier ", shared ? "is" : "is not", " the embedding");
  SafetensorsWriter st;
  st.set_metadata("format", "pt");
  st.add_matrix("model.embed_tokens.weight", w.token_embedding);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const LlamaLayerWeights& L = w.layers[std::size_t(l)];
    st.add_vector_f32(p + "input_layernorm.weight", L.attn_norm, c.dim);
    st.add_matrix(p + "self_attn.q_proj.weight", L.wq);
    st.add_matrix(p + "self_attn.k_proj.weight", L.wk);
    st.add_matrix(p + "self_attn.v_proj.weight", L.wv);
    st.add_matrix(p + "self_attn.o_proj.weight", L.wo);
    st.add_vector_f32(p + "post_attention_layernorm.weight", L.ffn_norm, c.dim);
    st.add_matrix(p + "mlp.gate_proj.weight", L.w_gate);
    st.add_matrix(p + "mlp.up_proj.weight", L.w_up);
    st.add_matrix(p + "mlp.down_proj.weight", L.w_down);
  }
  st.add_vector_f32("model.norm.weight", w.final_norm, c.dim);
  if (!shared) st.add_matrix("lm_head.weight", w.classifier);

  std::error_code ec;
  fs::create_directories(dir, ec);
  FASTINFER_CHECK(fs::is_directory(dir), FormatError, dir.string(), ": cannot create the directory");
  st.write((dir / "model.safetensors").string());
  auto write_json = [&](const fs::path& path, const nlohmann::json& j) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.string().c_str(), "wb"), &std::fclose);
    FASTINFER_CHECK(f != nullptr, FormatError, path.string(), ": cannot open for writing");
    const std::string text = j.dump(2) + "\n";
    FASTINFER_CHECK(std::fwrite(text.data(), 1, text.size(), f.get()) == text.size(), FormatError, path.string(),
                    ": write failed");
  };
  write_json(dir / "config.json", hf_config_json(c, w.token_embedding.dtype));
  bool copied_generation_config = false;
  if (!tokenizer_from.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                             "generation_config.json"}) {
      const fs::path src = tokenizer_from / name;
      if (!fs::exists(src) || fs::equivalent(src.parent_path(), dir, ec)) continue;
      fs::copy_file(src, dir / name, fs::copy_options::overwrite_existing);
      // A read-only source (a shared model store) must not make the copy read-only.
      fs::permissions(dir / name, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add, ec);
      copied_generation_config |= std::string(name) == "generation_config.json";
    }
  }
  if (!copied_generation_config) {
    nlohmann::json gen = {{"bos_token_id", c.bos_id}};
    if (c.eos_id >= 0) gen["eos_token_id"] = c.eos_id;
    write_json(dir / "generation_config.json", gen);
  }
}

}  // namespace fastinfer
