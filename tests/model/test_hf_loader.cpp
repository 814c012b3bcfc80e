#include "fastinfer/model/hf_loader.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/model/load_model.hpp"
#include "shared_dir.hpp"

using fastinfer::DType;
using fastinfer::FormatError;
using fastinfer::LlamaConfig;
using fastinfer::LlamaWeights;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path scratch_root() { return fs::temp_directory_path() / ("fastinfer_test_hf_" + std::to_string(::getpid())); }
// Removes this process's scratch directories when the test program exits.
struct ScratchCleanup {
  ~ScratchCleanup() {
    std::error_code ec;
    fs::remove_all(scratch_root(), ec);
  }
} scratch_cleanup;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = scratch_root() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A tiny Llama: dim 8, hidden 12, 2 layers, 2 heads of 4, 1 KV head, vocab 10.
json tiny_config() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"hidden_size", 8},
              {"intermediate_size", 12},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 2},
              {"num_key_value_heads", 1},
              {"vocab_size", 10},
              {"max_position_embeddings", 32},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 500.0},
              {"tie_word_embeddings", false},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"hidden_act", "silu"},
              {"rope_scaling", nullptr}};
}

// Tensor name -> shape for a config (HF names).
std::map<std::string, std::vector<std::int64_t>> tensor_shapes(const json& c, bool embed, bool head) {
  const std::int64_t dim = c["hidden_size"], hidden = c["intermediate_size"], vocab = c["vocab_size"];
  const std::int64_t heads = c["num_attention_heads"], kv = c["num_key_value_heads"];
  const std::int64_t hd = c.contains("head_dim") ? c["head_dim"].get<std::int64_t>() : dim / heads;
  std::map<std::string, std::vector<std::int64_t>> t;
  if (embed) t["model.embed_tokens.weight"] = {vocab, dim};
  if (head) t["lm_head.weight"] = {vocab, dim};
  t["model.norm.weight"] = {dim};
  for (int l = 0; l < c["num_hidden_layers"].get<int>(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t[p + "input_layernorm.weight"] = {dim};
    t[p + "post_attention_layernorm.weight"] = {dim};
    t[p + "self_attn.q_proj.weight"] = {heads * hd, dim};
    t[p + "self_attn.k_proj.weight"] = {kv * hd, dim};
    t[p + "self_attn.v_proj.weight"] = {kv * hd, dim};
    t[p + "self_attn.o_proj.weight"] = {dim, heads * hd};
    t[p + "mlp.gate_proj.weight"] = {hidden, dim};
    t[p + "mlp.up_proj.weight"] = {hidden, dim};
    t[p + "mlp.down_proj.weight"] = {dim, hidden};
  }
  return t;
}

// Element i of tensor `name`: distinct across tensors, exact in bf16.
float value_of(const std::string& name, std::size_t i) {
  std::size_t h = 0;
  for (char c : name) h = h * 31 + std::size_t(c);
  return float(int((h + i * 7) % 61) - 30) / 16.0f;
}

// Writes tensors to one or more safetensors files (round-robin by name when
// shards > 1, with an index). `pad` adds that many spaces to each header so
// the data section can be misaligned on purpose.
void write_checkpoint(const fs::path& dir, const std::map<std::string, std::vector<std::int64_t>>& tensors,
                      const char* dtype, int shards = 1, std::size_t pad = 0,
                      const std::map<std::string, std::vector<std::int64_t>>& shape_override = {}) {
  std::vector<json> headers(static_cast<std::size_t>(shards), json::object());
  std::vector<std::vector<std::uint8_t>> data(static_cast<std::size_t>(shards));
  json weight_map = json::object();
  int k = 0;
  for (const auto& [name, real_shape] : tensors) {
    const std::size_t s = std::size_t(k++ % shards);
    std::int64_t n = 1;
    for (auto d : real_shape) n *= d;
    const std::size_t begin = data[s].size();
    for (std::int64_t i = 0; i < n; ++i) {
      const float v = value_of(name, std::size_t(i));
      if (std::string(dtype) == "F32") {
        std::uint8_t b[4];
        std::memcpy(b, &v, 4);
        data[s].insert(data[s].end(), b, b + 4);
      } else {
        const std::uint16_t h = std::string(dtype) == "BF16" ? fastinfer::f32_to_bf16(v) : fastinfer::f32_to_f16(v);
        data[s].push_back(std::uint8_t(h & 0xff));
        data[s].push_back(std::uint8_t(h >> 8));
      }
    }
    auto shape = shape_override.count(name) ? shape_override.at(name) : real_shape;
    headers[s][name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, data[s].size()}}};
    const std::string file = shards == 1 ? "model.safetensors"
                                         : "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) +
                                               ".safetensors";
    weight_map[name] = file;
  }
  for (int s = 0; s < shards; ++s) {
    const std::string file = shards == 1 ? "model.safetensors"
                                         : "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) +
                                               ".safetensors";
    std::string header = headers[std::size_t(s)].dump() + std::string(pad, ' ');
    std::ofstream out(dir / file, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(char((header.size() >> (8 * i)) & 0xff));
    out << header;
    out.write(reinterpret_cast<const char*>(data[std::size_t(s)].data()), std::streamsize(data[std::size_t(s)].size()));
  }
  if (shards > 1) std::ofstream(dir / "model.safetensors.index.json") << json{{"weight_map", weight_map}}.dump();
}

void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2); }

// A full tiny model directory.
fs::path tiny_model(const std::string& name, const json& config, const char* dtype = "F32", int shards = 1,
                    std::size_t pad = 0) {
  const fs::path dir = fresh_dir(name);
  write_json(dir / "config.json", config);
  const bool tied = config.value("tie_word_embeddings", false);
  write_checkpoint(dir, tensor_shapes(config, true, !tied), dtype, shards, pad);
  return dir;
}

std::string load_error(const fs::path& dir) {
  try {
    fastinfer::load_hf_weights(dir);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(no error)";
}

// Every matrix of `w` against the values written for it.
void check_values(const LlamaWeights& w) {
  auto check = [](const fastinfer::MatrixView& m, const std::string& name) {
    std::vector<float> row(std::size_t(m.cols));
    for (std::int64_t r = 0; r < m.rows; ++r) {
      fastinfer::cpu::reference::load_row(m.dtype, m.row_ptr(r), row.data(), m.cols);
      for (std::int64_t c = 0; c < m.cols; ++c) {
        INFO(name << " [" << r << "][" << c << "]");
        REQUIRE(row[std::size_t(c)] == value_of(name, std::size_t(r * m.cols + c)));
      }
    }
  };
  auto check_vec = [](const float* v, std::int64_t n, const std::string& name) {
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(v[i] == value_of(name, std::size_t(i)));
  };
  check(w.token_embedding, "model.embed_tokens.weight");
  check_vec(w.final_norm, w.config.dim, "model.norm.weight");
  for (int l = 0; l < w.config.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto& L = w.layers[std::size_t(l)];
    check(L.wq, p + "self_attn.q_proj.weight");
    check(L.wk, p + "self_attn.k_proj.weight");
    check(L.wv, p + "self_attn.v_proj.weight");
    check(L.wo, p + "self_attn.o_proj.weight");
    check(L.w_gate, p + "mlp.gate_proj.weight");
    check(L.w_up, p + "mlp.up_proj.weight");
    check(L.w_down, p + "mlp.down_proj.weight");
    check_vec(L.attn_norm, w.config.dim, p + "input_layernorm.weight");
    check_vec(L.ffn_norm, w.config.dim, p + "post_attention_layernorm.weight");
  }
}

}  // namespace

TEST_CASE("hf loader: tinystories-656k config and tied weights") {
  FASTINFER_REQUIRE_SHARED(dir, "models/tinystories-656k");
  REQUIRE(fastinfer::is_hf_model_dir(dir));
  const LlamaConfig c = fastinfer::load_hf_config(dir);
  CHECK(c.dim == 128);
  CHECK(c.hidden_dim == 384);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 16);
  CHECK(c.vocab_size == 2048);
  CHECK(c.max_seq_len == 512);
  CHECK(c.norm_eps == 1e-6f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.rope_style == fastinfer::RopeStyle::HalfSplit);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);
  CHECK(c.shared_classifier);

  const LlamaWeights w = fastinfer::load_hf_weights(dir);
  const auto file = fastinfer::SafetensorsFile::open((dir / "model.safetensors").string());
  // The file stores only lm_head.weight: it serves as the embedding too, zero-copy.
  CHECK(w.token_embedding.data == w.classifier.data);
  CHECK(std::memcmp(w.classifier.data, file.tensor("lm_head.weight").data, 2048 * 128 * 4) == 0);
  CHECK(w.token_embedding.rows == 2048);
  CHECK(w.token_embedding.cols == 128);
  CHECK(w.layers.size() == 2);
  CHECK(w.layers[1].wk.rows == 64);
  CHECK(w.layers[1].wo.cols == 128);
  CHECK(w.layers[0].w_down.rows == 128);
  CHECK(w.layers[0].w_down.cols == 384);
  CHECK(std::memcmp(w.layers[1].ffn_norm, file.tensor("model.layers.1.post_attention_layernorm.weight").data,
                    128 * 4) == 0);
  CHECK(w.final_norm[0] == 0.640625f);
}

TEST_CASE("hf loader: every tensor lands in its slot, in F32, BF16, F16 and sharded checkpoints") {
  for (const char* dtype : {"F32", "BF16", "F16"}) {
    for (int shards : {1, 3}) {
      INFO(dtype << " in " << shards << " shard(s)");
      const fs::path dir = tiny_model(std::string("slots_") + dtype + std::to_string(shards), tiny_config(), dtype, shards);
      const LlamaWeights w = fastinfer::load_hf_weights(dir);
      CHECK(w.config.rope_theta == 500.0f);
      CHECK(w.config.norm_eps == 1e-5f);
      CHECK_FALSE(w.config.shared_classifier);
      CHECK(w.token_embedding.dtype == (std::string(dtype) == "F32" ? DType::F32
                                        : std::string(dtype) == "BF16" ? DType::BF16 : DType::F16));
      CHECK(w.classifier.data != w.token_embedding.data);
      check_values(w);
      // The classifier is lm_head, not the embedding.
      std::vector<float> row(8);
      fastinfer::cpu::reference::load_row(w.classifier.dtype, w.classifier.row_ptr(3), row.data(), 8);
      CHECK(row[1] == value_of("lm_head.weight", 3 * 8 + 1));
    }
  }
}

TEST_CASE("hf loader: tied embeddings take whichever tensor the file stores") {
  json c = tiny_config();
  c["tie_word_embeddings"] = true;
  for (bool embed : {true, false}) {
    const fs::path dir = fresh_dir(embed ? "tied_embed" : "tied_head");
    write_json(dir / "config.json", c);
    write_checkpoint(dir, tensor_shapes(c, embed, !embed), "F32");
    const LlamaWeights w = fastinfer::load_hf_weights(dir);
    CHECK(w.config.shared_classifier);
    CHECK(w.classifier.data == w.token_embedding.data);
    float v;
    std::memcpy(&v, w.token_embedding.row_ptr(2), 4);
    CHECK(v == value_of(embed ? "model.embed_tokens.weight" : "lm_head.weight", 16));
  }
  const fs::path none = fresh_dir("tied_none");
  write_json(none / "config.json", c);
  write_checkpoint(none, tensor_shapes(c, false, false), "F32");
  CHECK_THAT(load_error(none), Catch::Contains("neither"));
}

TEST_CASE("hf loader: a misaligned data section is copied to aligned memory") {
  const fs::path dir = tiny_model("misaligned", tiny_config(), "F32", 1, 1);  // header length odd
  const LlamaWeights w = fastinfer::load_hf_weights(dir);
  CHECK(reinterpret_cast<std::uintptr_t>(w.layers[0].attn_norm) % alignof(float) == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(w.layers[0].wq.data) % alignof(float) == 0);
  check_values(w);
}

TEST_CASE("hf loader: weight_dtype converts the matrices at load") {
  const fs::path dir = tiny_model("convert", tiny_config());
  fastinfer::LoadOptions options;
  options.weight_dtype = DType::BF16;
  const LlamaWeights w = fastinfer::load_hf_weights(dir, options);
  CHECK(w.layers[0].wq.dtype == DType::BF16);
  check_values(w);  // the test values are exact in bf16
}

TEST_CASE("hf loader: config.json fields, head_dim and generation_config") {
  json c = tiny_config();
  c["head_dim"] = 6;  // q_dim 12 != hidden_size 8
  c["eos_token_id"] = json::array({7, 9});
  const fs::path dir = tiny_model("head_dim", c);
  write_json(dir / "generation_config.json", json{{"bos_token_id", 1}, {"eos_token_id", 3}});
  const LlamaWeights w = fastinfer::load_hf_weights(dir);
  CHECK(w.config.head_dim == 6);
  CHECK(w.config.q_dim() == 12);
  CHECK(w.layers[0].wo.cols == 12);
  CHECK(w.config.eos_id == 3);  // generation_config wins
  fs::remove(dir / "generation_config.json");
  CHECK(fastinfer::load_hf_config(dir).eos_id == 7);  // the first of a list

  json defaults = tiny_config();
  for (const char* k : {"num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings"}) defaults.erase(k);
  const LlamaConfig d = fastinfer::parse_hf_config(defaults, "defaults");
  CHECK(d.n_kv_heads == 2);
  CHECK(d.norm_eps == 1e-6f);
  CHECK(d.rope_theta == 10000.0f);
  CHECK_FALSE(d.shared_classifier);

  json by_type = tiny_config();
  by_type.erase("architectures");
  by_type["model_type"] = "llama";
  by_type["rope_scaling"] = {{"rope_type", "default"}};
  CHECK(fastinfer::parse_hf_config(by_type, "by_type").dim == 8);
}

TEST_CASE("hf loader: unsupported or broken configs are refused by name") {
  auto refused = [](json c, const std::string& needle) {
    try {
      fastinfer::parse_hf_config(c, "config.json");
      FAIL("accepted " << c.dump());
    } catch (const FormatError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  json c = tiny_config();
  c["architectures"] = {"MistralForCausalLM"};
  refused(c, "MistralForCausalLM");
  c = tiny_config();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  refused(c, "rope_scaling");
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  refused(c, "llama3");
  c = tiny_config();
  c["hidden_act"] = "gelu";
  refused(c, "gelu");
  c = tiny_config();
  c["attention_bias"] = true;
  refused(c, "attention_bias");
  c = tiny_config();
  c.erase("hidden_size");
  refused(c, "hidden_size");
  c = tiny_config();
  c["num_hidden_layers"] = 2.5;
  refused(c, "num_hidden_layers");
  c = tiny_config();
  c["num_key_value_heads"] = 3;  // does not divide 2 heads
  refused(c, "n_kv_heads");
  c = tiny_config();
  c["hidden_size"] = 9;  // not a multiple of 2 heads, no head_dim
  refused(c, "head_dim");
  c = tiny_config();
  c["eos_token_id"] = 10;
  refused(c, "outside the vocabulary");

  const fs::path empty = fresh_dir("no_config");
  CHECK_THAT(load_error(empty), Catch::Contains("config.json"));
  CHECK_FALSE(fastinfer::is_hf_model_dir(empty));
}

TEST_CASE("hf loader: checkpoint shapes and names must match the config") {
  json c = tiny_config();
  const fs::path dir = fresh_dir("bad_shape");
  write_json(dir / "config.json", c);
  write_checkpoint(dir, tensor_shapes(c, true, true), "F32", 1, 0,
                   {{"model.layers.1.self_attn.k_proj.weight", {8, 4}}});
  CHECK_THAT(load_error(dir), Catch::Contains("k_proj") && Catch::Contains("[8, 4]") && Catch::Contains("[4, 8]"));

  const fs::path missing = fresh_dir("missing");
  write_json(missing / "config.json", c);
  auto shapes = tensor_shapes(c, true, true);
  shapes.erase("model.layers.1.mlp.up_proj.weight");
  write_checkpoint(missing, shapes, "F32");
  CHECK_THAT(load_error(missing), Catch::Contains("model.layers.1.mlp.up_proj.weight"));

  // Same bytes, declared as I32: readable by the reader, refused by the loader.
  const fs::path i32 = fresh_dir("i32");
  write_json(i32 / "config.json", c);
  write_checkpoint(i32, tensor_shapes(c, true, true), "F32");
  std::fstream patch(i32 / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(patch)), {});
  const auto at = bytes.find("\"F32\"", bytes.find("model.norm.weight"));
  REQUIRE(at != std::string::npos);
  patch.seekp(std::streamoff(at));
  patch.write("\"I32\"", 5);
  patch.close();
  CHECK_THAT(load_error(i32), Catch::Contains("I32") && Catch::Contains("model.norm.weight"));
}

TEST_CASE("hf loader: load_model takes a directory as a Hugging Face checkpoint") {
  const fs::path dir = tiny_model("via_load_model", tiny_config(), "BF16");
  const LlamaWeights w = fastinfer::load_model(dir.string());
  CHECK(w.config.rope_style == fastinfer::RopeStyle::HalfSplit);
  CHECK(w.config.eos_id == 2);
  CHECK(w.layers[1].w_up.dtype == DType::BF16);
  check_values(w);
  fastinfer::LoadOptions f32;
  f32.weight_dtype = DType::F32;
  CHECK(fastinfer::load_model(dir.string(), f32).layers[1].w_up.dtype == DType::F32);
}
