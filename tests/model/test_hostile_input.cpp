// Hostile input at the library level (issue 18): every reproducer found by
// corrupting model files, configs and tokenizers, kept as a regression test.
// Each case must end in a fastinfer::Error naming the field and the limit,
// before anything of the asked size is allocated; never an out-of-bounds
// read, an undefined conversion (run under the ASan + UBSan build), a
// std::bad_alloc or silent nonsense.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/workload_flags.hpp"
#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/engine/workload.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/resource_limits.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"
#include "fastinfer/tokenizer/utf8.hpp"
#include "file_bytes.hpp"
#include "shared_dir.hpp"

namespace fs = std::filesystem;
using namespace fastinfer;
using Catch::Contains;

namespace {

using TempDir = testing::ScratchDir;
using testing::read_bytes;
using testing::write_bytes;
template <typename T>
void put(std::string& file, std::size_t at, T v) {
  testing::put_at(file, at, v);
}
template <typename T>
T get(const std::string& file, std::size_t at) {
  return testing::get_at<T>(file, at);
}
// Offset of the value-type field of metadata `key` (the value follows it).
std::size_t gguf_value_at(const std::string& file, const std::string& key) {
  return testing::gguf_value_offset(file, key) - 4;
}

constexpr std::uint32_t kGgufInt32 = 5, kGgufFloat32 = 6;

std::shared_ptr<const gguf::GgufFile> open_gguf(const fs::path& dir, const std::string& bytes) {
  write_bytes(dir / "m.gguf", bytes);
  return gguf::GgufFile::open((dir / "m.gguf").string());
}

LlamaConfig tiny() { return synthetic_config("tiny"); }

// A tokenizer.json BPE with byte pieces <0x41>, <0x80>, <0xA9>, <0xC0>, <0xC3>
// and specials <s>, </s>: enough for byte-fallback decoding.
nlohmann::json byte_fallback_tokenizer() {
  return nlohmann::json::parse(R"({
    "added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                     {"id": 1, "content": "<s>", "special": true},
                     {"id": 2, "content": "</s>", "special": true}],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null,
    "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
    "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
              "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "<0x80>": 4, "<0xA9>": 5,
                        "<0xC0>": 6, "<0xC3>": 7, "a": 8, "b": 9},
              "merges": []}})");
}

}  // namespace

TEST_CASE("checked size arithmetic: exact below 2^63, a LimitError naming the size above", "[hostile]") {
  CHECK(checked_mul(std::int64_t(1) << 31, std::int64_t(1) << 31, "x") == std::int64_t(1) << 62);
  CHECK_THROWS_AS(checked_mul(std::int64_t(1) << 32, std::int64_t(1) << 31, "KV pool bytes"), LimitError);
  CHECK_THROWS_WITH(checked_mul(std::int64_t(1) << 32, std::int64_t(1) << 31, "KV pool bytes"),
                    Contains("KV pool bytes"));
  CHECK(checked_add(std::numeric_limits<std::int64_t>::max() - 1, 1, "x") == std::numeric_limits<std::int64_t>::max());
  CHECK_THROWS_AS(checked_add(std::numeric_limits<std::int64_t>::max(), 1, "x"), LimitError);
  CHECK(checked_int32(2147483647, "x") == 2147483647);
  CHECK_THROWS_WITH(checked_int32(2147483648LL, "blocks"), Contains("blocks 2147483648"));
}

TEST_CASE("config: non-finite or non-positive eps and rope theta, bos beyond the vocabulary are refused by name",
          "[hostile]") {
  const float bad[] = {std::nanf(""), INFINITY, -1.0f, 0.0f};
  for (float v : bad) {
    LlamaConfig c = tiny();
    c.norm_eps = v;
    CHECK_THROWS_WITH(c.validate(), Contains("norm_eps"));
    c = tiny();
    c.rope_theta = v;
    CHECK_THROWS_WITH(c.validate(), Contains("rope_theta"));
  }
  LlamaConfig c = tiny();
  c.bos_id = c.vocab_size;
  CHECK_THROWS_WITH(c.validate(), Contains("bos_id 512"));
  c = tiny();
  c.eos_id = c.vocab_size + 5;
  CHECK_THROWS_WITH(c.validate(), Contains("eos_id"));
  c = tiny();
  c.max_seq_len = 2147483647;
  CHECK_THROWS_WITH(c.validate(), Contains("max_seq_len 2147483647"));
  c.max_seq_len = kMaxContext;
  CHECK_NOTHROW(c.validate());
  // The fuzzer's find: 268435458 heads x head_dim 8 overflowed q_dim()'s int.
  c = tiny();
  c.n_heads = c.n_kv_heads = 268435458;
  c.head_dim = 8;
  CHECK_THROWS_WITH(c.validate(), Contains("exceeds the width limit"));
  c.n_heads = c.n_kv_heads = int(kMaxWidth / 8);
  CHECK_NOTHROW(c.validate());
}

TEST_CASE("next_power_of_two refuses what an int32 cannot hold instead of narrowing", "[hostile]") {
  CHECK(kv::next_power_of_two(1000000) == 1 << 20);
  CHECK(kv::next_power_of_two(std::int64_t(1) << 30) == 1 << 30);
  CHECK_THROWS_AS(kv::next_power_of_two((std::int64_t(1) << 30) + 1), InvalidArgument);
  CHECK_THROWS_AS(kv::next_power_of_two(2147483647), InvalidArgument);
}

TEST_CASE("kv_pool_bytes is what the KV cache allocates, for every layout and quant", "[hostile]") {
  const LlamaWeights w = make_synthetic("tiny");
  for (auto layout : {KVLayoutKind::Contiguous, KVLayoutKind::Paged, KVLayoutKind::Window})
    for (auto quant : {kv::QuantKind::F32, kv::QuantKind::BF16, kv::QuantKind::Int8, kv::QuantKind::Int4}) {
      ModelOptions o;
      o.kv.layout = layout;
      o.kv.quant = quant;
      o.kv.window = 64;
      o.kv.max_sequences = 3;
      LlamaModel<> model(w, o);
      LlamaConfig kvc = model.config();
      kvc.head_dim = (kvc.head_dim + 7) / 8 * 8;
      const auto k = kv_cache_config(o.kv, kvc, model.max_batch());
      INFO(kv_layout_name(layout) << " " << kv::quant_name(quant));
      CHECK(kv_pool_bytes(k, layout, quant) == std::int64_t(model.kv_bytes()));
    }
}

TEST_CASE("a KV cache over the memory budget is a LimitError before anything is allocated", "[hostile]") {
  // A context of 2^24 (contiguous: 21 GB of f32 KV for tiny) against the
  // default budget of 4 GiB: refused by the arithmetic, not by bad_alloc.
  LlamaConfig c = tiny();
  c.max_seq_len = kMaxContext;
  LlamaWeights w = make_synthetic(c);
  CHECK_THROWS_AS(LlamaModel<>(w, ModelOptions{}), LimitError);
  CHECK_THROWS_WITH(LlamaModel<>(w, ModelOptions{}), Contains("memory budget of 4.00 GiB"));
  // A huge paged block for a short run (--block-size 1048576): over a small budget.
  ModelOptions paged;
  paged.kv.layout = KVLayoutKind::Paged;
  paged.kv.block_size = 1 << 20;
  paged.memory_budget = std::int64_t(256) << 20;
  CHECK_THROWS_AS(LlamaModel<>(make_synthetic("tiny"), paged), LimitError);
  // Pool block counts past int32 are a LimitError, not a wrapped count.
  KVOptions many;
  many.layout = KVLayoutKind::Paged;
  many.block_size = 1;
  many.max_sequences = 4096;
  CHECK_THROWS_AS(kv_cache_config(many, c, 512), LimitError);
  // Budget 0 turns the check off; a normal model fits the default.
  CHECK_NOTHROW(LlamaModel<>(make_synthetic("tiny"), ModelOptions{}));
}

TEST_CASE("non-finite logits end greedy and sampled generation with a NumericError", "[hostile]") {
  LlamaWeights w = make_synthetic("tiny");
  const std::vector<float> nan_norm(std::size_t(w.config.dim), std::nanf(""));
  w.final_norm = nan_norm.data();
  LlamaModel<> model(w);
  for (float temperature : {0.0f, 1.0f}) {
    GenerationParams p;
    p.max_new_tokens = 4;
    p.temperature = temperature;
    INFO("temperature " << temperature);
    CHECK_THROWS_AS(generate(model, {1, 5, 7}, p, [](std::int32_t) {}), NumericError);
  }
  cpu::SamplerWorkspace ws;
  std::vector<float> logits(40, 0.0f);
  logits[33] = INFINITY;
  CHECK_THROWS_AS(pick_token(logits.data(), 40, GenerationParams{}, 0, ws), NumericError);
}

TEST_CASE("GGUF: an unknown_token_id of 0xFFFFFFFF is an error on encoding a character without a piece, not pieces_[-1]",
          "[hostile][gguf]") {
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.gguf");
  TempDir dir;
  std::string bytes = read_bytes(path);
  {
    // As converted (llama.cpp's llama2.c converter writes placeholder pieces
    // "<3>".. and no byte pieces): every character becomes unk (0).
    const auto tok = SentencePieceTokenizer::from_gguf(*open_gguf(dir.dir, bytes));
    REQUIRE(tok->unk_id() == 0);
    const auto ids = tok->encode("a\xE2\x82\xAC");
    CHECK(ids.size() >= 5);
    CHECK(std::count(ids.begin(), ids.end(), 0) >= 4);
  }
  put<std::uint32_t>(bytes, gguf_value_at(bytes, "tokenizer.ggml.unknown_token_id") + 4, 0xFFFFFFFFu);
  const auto tok = SentencePieceTokenizer::from_gguf(*open_gguf(dir.dir, bytes));
  CHECK(tok->unk_id() == -1);
  CHECK_THROWS_WITH(tok->encode("a\xE2\x82\xAC"), Contains("no byte pieces or unknown token"));
  CHECK(tok->encode("") == std::vector<std::int32_t>{tok->bos_id()});
}

TEST_CASE("GGUF: a token_type array typed f32 holding 1e20 or NaN is a FormatError", "[hostile][gguf]") {
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.gguf");
  TempDir dir;
  for (float v : {1e20f, std::nanf(""), -1.0f, 2.5f}) {
    std::string bytes = read_bytes(path);
    const std::size_t types = gguf_value_at(bytes, "tokenizer.ggml.token_type");
    put<std::uint32_t>(bytes, types + 4, kGgufFloat32);  // same element size as int32
    const auto count = get<std::uint64_t>(bytes, types + 8);
    for (std::uint64_t i = 0; i < count; ++i) put<float>(bytes, types + 16 + 4 * i, 1.0f);
    put<float>(bytes, types + 16 + 4 * 10, v);
    INFO("type value " << v);
    CHECK_THROWS_WITH(SentencePieceTokenizer::from_gguf(*open_gguf(dir.dir, bytes)),
                      Contains("tokenizer.ggml.token_type[10]"));
  }
}

TEST_CASE("GGUF: NaN eps, a context of 2^31-1, bos beyond the vocabulary, overlapping tensors are refused",
          "[hostile][gguf]") {
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.gguf");
  TempDir dir;
  const std::string original = read_bytes(path);
  auto load = [&](const std::string& bytes) { return load_gguf_llama(open_gguf(dir.dir, bytes)); };
  {
    std::string b = original;
    const std::size_t eps = gguf_value_at(b, "llama.attention.layer_norm_rms_epsilon");
    REQUIRE(get<std::uint32_t>(b, eps) == kGgufFloat32);
    for (float v : {std::nanf(""), -1e-5f, INFINITY}) {
      put<float>(b, eps + 4, v);
      CHECK_THROWS_WITH(load(b), Contains("norm_eps"));
    }
  }
  {
    std::string b = original;
    put<std::uint32_t>(b, gguf_value_at(b, "llama.context_length") + 4, 2147483647u);
    CHECK_THROWS_WITH(load(b), Contains("max_seq_len 2147483647"));
    put<std::uint32_t>(b, gguf_value_at(b, "llama.context_length") + 4, 1000000u);
    const LlamaWeights w = load(b);
    CHECK(w.config.max_seq_len == 1000000);
    // 2^20 tokens of f32 KV for 5 layers: 1.25 GiB, over a 64 MiB budget.
    ModelOptions o;
    o.memory_budget = std::int64_t(64) << 20;
    CHECK_THROWS_WITH(LlamaModel<>(w, o), Contains("context 1000000"));
  }
  {
    std::string b = original;
    put<std::uint32_t>(b, gguf_value_at(b, "tokenizer.ggml.bos_token_id") + 4, 600u);
    CHECK_THROWS_WITH(load(b), Contains("bos_id 600"));
  }
  {
    // output_norm.weight's offset set to token_embd.weight's: two tensors, one range.
    std::string b = original;
    const auto info_offset = [&](const std::string& name) { return testing::gguf_tensor_offset_field(b, name); };
    put<std::uint64_t>(b, info_offset("output_norm.weight"), get<std::uint64_t>(b, info_offset("token_embd.weight")));
    write_bytes(dir.dir / "o.gguf", b);
    CHECK_THROWS_WITH(gguf::GgufFile::open((dir.dir / "o.gguf").string()), Contains("overlap"));
  }
}

TEST_CASE("load_model: max_context (--ctx-size) replaces the file's context, within kMaxContext", "[hostile][gguf]") {
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.gguf");
  LoadOptions o;
  CHECK(load_model(path.string(), o).config.max_seq_len == 128);  // what llama.cpp's converter wrote
  o.max_context = 512;
  CHECK(load_model(path.string(), o).config.max_seq_len == 512);
  o.max_context = kMaxContext + 1;
  CHECK_THROWS_AS(load_model(path.string(), o), InvalidArgument);
  o.max_context = 64;
  CHECK(load_model("synthetic:tiny", o).config.max_seq_len == 64);
}

TEST_CASE("Hugging Face: 10^7 layers, a context of 2^30, bad eps or theta are refused before allocating",
          "[hostile][hf]") {
  FASTINFER_REQUIRE_SHARED(src, "models/tinystories-656k");
  TempDir dir;
  const fs::path model = dir.dir / "m";
  fs::create_directories(model);
  fs::create_symlink(fs::absolute(src / "model.safetensors"), model / "model.safetensors");
  const nlohmann::json config = nlohmann::json::parse(read_bytes(src / "config.json"));
  auto load_with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json c = config;
    c[key] = value;
    write_bytes(model / "config.json", c.dump());
    return load_hf_weights(model);
  };
  CHECK_THROWS_WITH(load_with("num_hidden_layers", 10000000), Contains("num_hidden_layers 10000000"));
  CHECK_THROWS_WITH(load_with("max_position_embeddings", 1 << 30), Contains("max_seq_len 1073741824"));
  CHECK_THROWS_WITH(load_with("rms_norm_eps", -1e-6), Contains("norm_eps"));
  CHECK_THROWS_WITH(load_with("rope_theta", 0), Contains("rope_theta"));
  CHECK(load_with("max_position_embeddings", 1000000).config.max_seq_len == 1000000);
}

TEST_CASE("tokenizer.json: one vocabulary id of 2^24-1 is a FormatError, not a 500 MB table", "[hostile][tokenizer]") {
  nlohmann::json j = byte_fallback_tokenizer();
  j["model"]["vocab"]["zz"] = (1 << 24) - 1;
  CHECK_THROWS_WITH(HfBpeTokenizer(j, nullptr, "t.json"), Contains("unused ids"));
  j["model"]["vocab"]["zz"] = 10;
  CHECK(HfBpeTokenizer(j, nullptr, "t.json").vocab_size() == 11);
}

TEST_CASE("strict UTF-8: overlong forms, surrogates and code points past U+10FFFF are invalid", "[hostile][tokenizer]") {
  CHECK(utf8::valid("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));
  CHECK(utf8::valid("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  for (const char* bad : {"\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80",
                          "\x80", "\xC3", "\xFF"})
    CHECK_FALSE(utf8::valid(bad));
  CHECK(utf8::decode_byte_run("\xC0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(utf8::decode_byte_run("\xC3\xA9") == "\xC3\xA9");
  // Streaming: a character split over tokens is held back, not cut.
  utf8::Stream s;
  CHECK(s.push("a\xE2") == "a");
  CHECK(s.push("\x82") == "");
  CHECK(s.push("\xAC!") == "\xE2\x82\xAC!");
  CHECK(s.push("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(s.push("\xC3") == "");
  CHECK(s.finish() == "\xEF\xBF\xBD");
}

TEST_CASE("byte-fallback decoding emits U+FFFD per byte of an invalid run, as Hugging Face tokenizers",
          "[hostile][tokenizer]") {
  const HfBpeTokenizer hf(byte_fallback_tokenizer(), nullptr, "t.json");
  // <0xC0><0x80> (overlong NUL) -> two U+FFFD; <0xC3><0xA9> -> é; a <0x41> b.
  CHECK(hf.decode({6, 4}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(hf.decode({7, 5}) == "\xC3\xA9");
  CHECK(hf.decode({8, 3, 9}) == "aAb");
  FASTINFER_REQUIRE_SHARED(bin, "tokenizers/llama2.bin");
  const auto sp = SentencePieceTokenizer::from_llama2c(bin.string());
  const auto byte = [&](int b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    return sp->find(name);
  };
  REQUIRE(byte(0xC0) >= 0);
  CHECK(sp->decode({byte(0xC0), byte(0x80)}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(sp->decode({byte(0xED), byte(0xA0), byte(0x80)}) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(sp->decode({byte(0xC3), byte(0xA9)}) == "\xC3\xA9");
}

TEST_CASE("parse_special is an explicit choice: special-token text is plain text unless asked", "[hostile][tokenizer]") {
  const HfBpeTokenizer hf(byte_fallback_tokenizer(), nullptr, "t.json");
  const auto plain = encode(hf, "a</s>b", {false, false});
  const auto parsed = encode(hf, "a</s>b", {false, true});
  CHECK(std::find(plain.begin(), plain.end(), 2) == plain.end());
  CHECK(parsed == std::vector<std::int32_t>{8, 2, 9});
  CHECK(encode(hf, "a</s>b", {true, true}).front() == hf.bos_id());
  FASTINFER_REQUIRE_SHARED(path, "models/stories260K.gguf");
  const auto sp = SentencePieceTokenizer::from_gguf(*gguf::GgufFile::open(path.string()));
  const std::string eos = sp->piece(sp->eos_id());
  const auto ids = encode(*sp, "Hi" + eos, {true, true});
  CHECK(ids.back() == sp->eos_id());
  const auto as_text = encode(*sp, "Hi" + eos, {true, false});
  CHECK(std::count(as_text.begin(), as_text.end(), sp->eos_id()) == 0);
}

TEST_CASE("workload lengths and lookahead sizes out of range are usage errors", "[hostile]") {
  using engine::LengthRange;
  for (const char* bad : {"2147483647", "4294967297", "1:99999999999", "0", "5:3", "12abc", "-1"})
    CHECK_THROWS_AS(fastinfer::examples::parse_length_range(bad), InvalidArgument);
  CHECK(fastinfer::examples::parse_length_range("16777216").max == 16777216);
  CHECK(fastinfer::examples::parse_length_range("32:128").min == 32);
  const speculative::LookaheadConfig huge{1000000, 1000000, 1000000}, paper{15, 8, 15};
  CHECK_THROWS_WITH(speculative::LookaheadPool(huge, 512), Contains("exceeds the limits"));
  CHECK_NOTHROW(speculative::LookaheadPool(paper, 512));
}

TEST_CASE("Medusa heads: a header asking for 8.6 GB is refused against the file size before allocating",
          "[hostile]") {
  // Found by fuzz/fuzz_readers.cpp: dim 32784 with two heads sized the heads
  // before the file's 2 KB were compared with the header's claim.
  TempDir dir;
  std::string header = "FIMEDUSA";
  for (std::uint32_t v : {1u, 2u, 32784u, 300u, 0u, 1u}) header.append(reinterpret_cast<const char*>(&v), 4);
  write_bytes(dir.dir / "h.bin", header + std::string(2048, '\0'));
  CHECK_THROWS_WITH(speculative::MedusaHeads::load((dir.dir / "h.bin").string()), Contains("truncated"));
}
