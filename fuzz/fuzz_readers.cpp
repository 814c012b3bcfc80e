// libFuzzer harness for every reader of an untrusted file: llama2.c
// checkpoints, GGUF, safetensors + config.json (a Hugging Face directory),
// tokenizer.json, llama2.c tokenizer.bin and Medusa heads files.
//
// One binary for all six (FASTINFER_FUZZ_TARGET picks the reader): the
// headers are compiled once with sanitizers instead of six times, which is
// most of the CI cost of fuzzing (fuzz/CMakeLists.txt, scripts/fuzz.sh).
//
// The contract checked: any input ends in success or a fastinfer::Error.
// Anything else (a signal, a sanitizer report, std::bad_alloc or another
// exception, a leak, more than -rss_limit_mb) is a finding.
//
// FASTINFER_FUZZ_MAKE_SEEDS=DIR writes small seed files for every target
// under DIR/<target>/ (tiny synthetic models in each format) and exits;
// the real shared models are added as seeds by scripts/fuzz.sh.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/model/gguf_loader.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/resource_limits.hpp"
#include "fastinfer/model/safetensors_writer.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"
#include "fastinfer/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace fastinfer;

namespace {

enum class Target { Llama2c, Gguf, Safetensors, TokenizerJson, TokenizerBin, MedusaHeads, EagleHead };

Target g_target = Target::Gguf;
fs::path g_dir;  // per-process scratch directory (tmpfs when there is one)

const char* const kTargetNames[] = {"llama2c", "gguf",         "safetensors", "tokenizer_json",
                                    "tokenizer_bin", "medusa_heads", "eagle_head"};
constexpr int kTargets = int(sizeof(kTargetNames) / sizeof(kTargetNames[0]));

void write_file(const fs::path& p, const std::uint8_t* data, std::size_t size) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// The tiny model every seed is made from: every tensor kind, two layers.
LlamaConfig tiny_config() {
  LlamaConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 300;
  c.max_seq_len = 32, c.head_dim = 8;
  return c;
}

// What a loaded model may still do wrong: an absurd size must be refused
// by the budget check, not allocated.
void check_config(const LlamaConfig& c) {
  c.validate();
  check_memory_budget(KVOptions{}, c, std::min(c.max_seq_len, 64), std::int64_t(256) << 20);
}

void exercise(const Tokenizer& tok) {
  static const char* const kTexts[] = {"Hello world", "\xC0\x80 \xED\xA0\x80 \xF4\x90\x80\x80", "</s><s> \xE2\x96\x81",
                                       ""};
  for (const char* text : kTexts) {
    for (bool special : {false, true}) {
      const auto ids = encode(tok, text, {true, special});
      (void)tok.decode(ids);
    }
  }
  std::vector<std::int32_t> all;
  for (std::int32_t id = 0; id < std::min(tok.vocab_size(), 600); ++id) all.push_back(id);
  (void)tok.decode(all);
}

void run_one(const std::uint8_t* data, std::size_t size) {
  switch (g_target) {
    case Target::Llama2c: {
      write_file(g_dir / "model.bin", data, size);
      check_config(load_llama2c((g_dir / "model.bin").string()).config);
      return;
    }
    case Target::Gguf: {
      write_file(g_dir / "model.gguf", data, size);
      const auto file = gguf::GgufFile::open((g_dir / "model.gguf").string());
      if (file->has("tokenizer.ggml.tokens")) exercise(*SentencePieceTokenizer::from_gguf(*file));
      check_config(load_gguf_llama(file).config);
      return;
    }
    case Target::Safetensors: {
      // [u32 n][n bytes of config.json][model.safetensors]
      std::uint32_t n = 0;
      if (size >= 4) std::memcpy(&n, data, 4);
      const std::size_t json = std::min<std::size_t>(n, size >= 4 ? size - 4 : 0);
      write_file(g_dir / "hf" / "config.json", data + std::min<std::size_t>(4, size), json);
      write_file(g_dir / "hf" / "model.safetensors", data + std::min<std::size_t>(4, size) + json,
                 size - std::min<std::size_t>(4, size) - json);
      check_config(load_hf_weights(g_dir / "hf").config);
      return;
    }
    case Target::TokenizerJson: {
      write_file(g_dir / "tok" / "tokenizer.json", data, size);
      exercise(HfBpeTokenizer::from_file(g_dir / "tok" / "tokenizer.json"));
      return;
    }
    case Target::TokenizerBin: {
      write_file(g_dir / "tokenizer.bin", data, size);
      exercise(*SentencePieceTokenizer::from_llama2c((g_dir / "tokenizer.bin").string()));
      return;
    }
    case Target::MedusaHeads: {
      write_file(g_dir / "heads.bin", data, size);
      const auto heads = speculative::MedusaHeads::load((g_dir / "heads.bin").string());
      heads.check_compatible(tiny_config());
      return;
    }
    case Target::EagleHead: {
      write_file(g_dir / "head.eagle", data, size);
      const auto head = speculative::EagleHead::load((g_dir / "head.eagle").string());
      head.check_compatible(tiny_config());
      return;
    }
  }
}

// A Hugging Face directory as one safetensors-target input:
// [u32 n][n bytes of config.json][model.safetensors].
void pack_hf(const fs::path& dir, const fs::path& out) {
  std::ifstream cj(dir / "config.json", std::ios::binary), st(dir / "model.safetensors", std::ios::binary);
  const std::string config((std::istreambuf_iterator<char>(cj)), {}), tensors((std::istreambuf_iterator<char>(st)), {});
  std::ofstream f(out, std::ios::binary);
  const std::uint32_t n = std::uint32_t(config.size());
  f.write(reinterpret_cast<const char*>(&n), 4);
  f << config << tensors;
}

void make_seeds(const fs::path& out) {
  const LlamaConfig c = tiny_config();
  const LlamaWeights w = make_synthetic(c, DType::F32, 7);
  for (const char* t : kTargetNames) fs::create_directories(out / t);
  // GGUF with a SentencePiece vocabulary of byte pieces and a few words.
  {
    std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      pieces.push_back(buf);
    }
    for (const char* p : {" ", "e", " the", "he", "ll", "o", " w", "or", "ld"}) pieces.push_back(p);
    while (pieces.size() < std::size_t(c.vocab_size)) pieces.push_back("x" + std::to_string(pieces.size()));
    std::vector<float> scores(pieces.size());
    for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = -float(i);
    const SentencePieceTokenizer tok(pieces, scores, {}, 1, 2, 0);
    GgufSaveOptions save;
    set_gguf_vocabulary(tok, save);
    save_gguf_llama(w, (out / "gguf" / "tiny.gguf").string(), save);
    // tokenizer.bin: int32 max_len, then per piece f32 score, int32 length, bytes.
    std::ofstream f(out / "tokenizer_bin" / "tiny.bin", std::ios::binary);
    const std::int32_t max_len = 8;
    f.write(reinterpret_cast<const char*>(&max_len), 4);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const std::int32_t len = std::int32_t(pieces[i].size());
      f.write(reinterpret_cast<const char*>(&scores[i]), 4);
      f.write(reinterpret_cast<const char*>(&len), 4);
      f.write(pieces[i].data(), len);
    }
  }
  // llama2.c: header of 7 int32 (vocab negative: unshared classifier), then f32 tensors.
  {
    std::ofstream f(out / "llama2c" / "tiny.bin", std::ios::binary);
    const std::int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len};
    f.write(reinterpret_cast<const char*>(h), sizeof h);
    std::vector<float> zeros(std::size_t(c.vocab_size) * c.dim * 2 + 8192, 0.25f);
    f.write(reinterpret_cast<const char*>(zeros.data()), std::streamsize(zeros.size() * 4));
  }
  // Hugging Face directory packed as [u32 n][config.json][model.safetensors].
  {
    const fs::path hf = g_dir / "seed_hf";
    save_hf_llama(w, hf);
    pack_hf(hf, out / "safetensors" / "tiny.pack");
  }
  // tokenizer.json: a small BPE with byte fallback, a merge and a special token.
  {
    std::ofstream f(out / "tokenizer_json" / "tiny.json");
    f << R"({"version":"1.0","added_tokens":[{"id":0,"content":"<unk>","special":true},)"
      << R"({"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],)"
      << R"("normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},)"
      << R"({"type":"Replace","pattern":{"String":" "},"content":"\u2581"}]},"pre_tokenizer":null,)"
      << R"("post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},)"
      << R"({"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},)"
      << R"("decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},)"
      << R"({"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},)"
      << R"("model":{"type":"BPE","byte_fallback":true,"fuse_unk":true,"unk_token":"<unk>","vocab":{"<unk>":0,"<s>":1,"</s>":2,)"
      << R"("<0x41>":3,"<0xC3>":4,"<0xA9>":5,"\u2581":6,"h":7,"e":8,"l":9,"o":10,"he":11,"ll":12,"\u2581he":13},)"
      << R"("merges":["h e","l l","\u2581 he"]}})";
  }
  speculative::MedusaHeads::random(3, 2, c.dim, c.vocab_size, true).save((out / "medusa_heads" / "tiny.heads").string());
  const auto eagle = speculative::EagleHead::random(4, speculative::EagleHeadShape::like(c));
  eagle.save((out / "eagle_head" / "tiny.eagle").string());
  eagle.save((out / "eagle_head" / "tiny-f16.eagle").string(), true);
  // The shared models (when present) as seeds too: real files reach paths
  // the tiny ones do not (f16 tensors, a 512-piece vocabulary, GGUF arrays).
  const char* shared_env = std::getenv("FASTINFER_SHARED_DIR");
  const fs::path shared = shared_env ? shared_env : "";
  if (shared.empty() || !fs::is_directory(shared / "models")) return;
  const auto copy = [&](const fs::path& from, const char* target) {
    if (fs::exists(from))
      fs::copy_file(from, out / target / from.filename(), fs::copy_options::overwrite_existing);
  };
  copy(shared / "models" / "stories260K.bin", "llama2c");
  copy(shared / "models" / "stories260K.gguf", "gguf");
  copy(shared / "models" / "stories260K-f16.gguf", "gguf");
  copy(shared / "tokenizers" / "llama2.bin", "tokenizer_bin");
  const fs::path ts = shared / "models" / "tinystories-656k";
  copy(ts / "tokenizer.json", "tokenizer_json");
  if (fs::exists(ts / "config.json") && fs::exists(ts / "model.safetensors"))
    pack_hf(ts, out / "safetensors" / "tinystories-656k.pack");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/fastinfer_fuzz_XXXXXX";
  const char* shm = fs::is_directory("/dev/shm") ? "/dev/shm/fastinfer_fuzz_XXXXXX" : nullptr;
  std::string t = shm ? shm : tmpl;
  g_dir = mkdtemp(t.data()) ? fs::path(t) : fs::path(mkdtemp(tmpl));
  fs::create_directories(g_dir / "hf");
  fs::create_directories(g_dir / "tok");
  if (const char* seeds = std::getenv("FASTINFER_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    fs::remove_all(g_dir);
    std::exit(0);
  }
  const char* name = std::getenv("FASTINFER_FUZZ_TARGET");
  bool found = false;
  for (int i = 0; name && i < kTargets; ++i)
    if (std::strcmp(name, kTargetNames[i]) == 0) g_target = Target(i), found = true;
  if (!found) {
    std::fprintf(stderr, "set FASTINFER_FUZZ_TARGET to llama2c, gguf, safetensors, tokenizer_json, tokenizer_bin, "
                         "medusa_heads or eagle_head\n");
    std::exit(2);
  }
  std::atexit([] { fs::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    run_one(data, size);
  } catch (const fastinfer::Error&) {
    // The contract: a bad file is an Error naming the problem.
  }
  return 0;
}
