// SentencePiece tokenizer: the llama2.c goldens exactly, decode(encode(s)) == s,
// the heap-based merge against a direct transcription of run.c's quadratic
// loop on random text, GGUF vocabularies, and malformed tokenizer files.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "fastinfer/model/gguf.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"
#include "fastinfer/tokenizer/utf8.hpp"
#include "shared_dir.hpp"

using namespace fastinfer;
namespace fs = std::filesystem;

namespace {

struct GoldenCase {
  std::string text;
  std::vector<std::int32_t> ids;
};

std::vector<GoldenCase> read_goldens(const fs::path& p) {
  std::ifstream in(p);
  std::vector<GoldenCase> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("text: ", 0) == 0) {
      out.push_back({line.substr(6), {}});
    } else if (line.rfind("ids:", 0) == 0) {
      std::istringstream s(line.substr(4));
      std::int32_t id;
      while (s >> id) out.back().ids.push_back(id);
    }
  }
  return out;
}

// run.c's encode(), transcribed: linear lookups over the vocabulary and a full
// rescan of every pair after each merge. The oracle for the heap version.
std::vector<std::int32_t> run_c_encode(const SentencePieceTokenizer& t, const std::string& text) {
  auto lookup = [&](const std::string& s) -> std::int32_t {
    for (std::int32_t i = 0; i < t.vocab_size(); ++i)
      if (t.piece(i) == s) return i;
    return -1;
  };
  std::vector<std::int32_t> tokens{1};
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
    const std::int32_t id = lookup(buf);
    if (id != -1) tokens.push_back(id);
    else
      for (char c : buf) tokens.push_back(std::int32_t(static_cast<unsigned char>(c)) + 3);
    buf.clear();
  }
  while (true) {
    float best = -1e10f;
    std::int32_t best_id = -1;
    std::size_t best_i = 0;
    for (std::size_t i = 1; i + 1 < tokens.size(); ++i) {  // from 1: BOS never merges
      const std::int32_t id = lookup(t.piece(tokens[i]) + t.piece(tokens[i + 1]));
      if (id != -1 && t.score(id) > best) best = t.score(id), best_id = id, best_i = i;
    }
    if (best_id == -1) break;
    tokens[best_i] = best_id;
    tokens.erase(tokens.begin() + std::ptrdiff_t(best_i) + 1);
  }
  return tokens;
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("fastinfer_test_sp_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("llama2 tokenizer reproduces every llama2.c golden encoding and decodes back") {
  FASTINFER_REQUIRE_SHARED(tok_path, "tokenizers/llama2.bin");
  FASTINFER_REQUIRE_SHARED(golden_path, "golden/tokenizer_llama2.txt");
  const auto tok = SentencePieceTokenizer::from_llama2c(tok_path.string());
  CHECK(tok->vocab_size() == 32000);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  const auto cases = read_goldens(golden_path);
  REQUIRE(cases.size() >= 8);
  for (const auto& c : cases) {
    INFO("text: '" << c.text << "'");
    CHECK(tok->encode(c.text) == c.ids);
    CHECK(tok->decode(c.ids) == c.text);
    // streaming decode gives the same text
    std::string streamed;
    for (std::size_t i = 1; i < c.ids.size(); ++i) streamed += tok->decode_token(c.ids[i - 1], c.ids[i]);
    CHECK(streamed == c.text);
  }
  CHECK(tok->encode("").size() == 1);
  CHECK(tok->encode("", false).empty());
  CHECK(tok->encode("Hello", false) == std::vector<std::int32_t>{15043});
  CHECK(tok->decode_token(1, 2) == "");  // EOS adds no text
  CHECK_THROWS_AS(tok->decode_token(1, 32000), InvalidArgument);
}

TEST_CASE("heap merging equals run.c's rescanning merge on random text") {
  FASTINFER_REQUIRE_SHARED(tok_path, "tokenizers/llama2.bin");
  const auto tok = SentencePieceTokenizer::from_llama2c(tok_path.string());
  const std::vector<std::string> alphabet = {"a", "e", "t", "o", "n", " ", " ", "th", "in", "er", ",", ".", "\n",
                                             "\t", "1", "9", "Q", "\xC3\xA9", "\xE2\x80\x94", "\xF0\x9F\x9A\x80",
                                             "\xE6\x97\xA5", "\x80", "\xFF", "zz", "  "};
  std::mt19937 rng(42);
  for (int trial = 0; trial < 60; ++trial) {
    std::string text;
    const int len = int(rng() % 24);
    for (int i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    INFO("text: '" << text << "'");
    const auto ids = tok->encode(text);
    CHECK(ids == run_c_encode(*tok, text));
    // Valid UTF-8 decodes to itself. A byte-fallback run that is not valid
    // UTF-8 decodes to one U+FFFD per byte, as Hugging Face's ByteFallback
    // decoder does (exact cases in tests/model/test_hostile_input.cpp), so
    // the decoded text is always valid UTF-8.
    const std::string decoded = tok->decode(ids);
    if (utf8::valid(text)) {
      CHECK(decoded == text);
    } else {
      CHECK(utf8::valid(decoded));
      CHECK(decoded.find(utf8::kReplacement) != std::string::npos);
    }
  }
}

TEST_CASE("GGUF vocabularies: U+2581 spaces, byte tokens by type, control tokens skip text") {
  // A toy SentencePiece vocabulary written as GGUF arrays.
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<0x0A>", "<0x41>", "\xE2\x96\x81",
                                     "a", "b", "ab", "\xE2\x96\x81" "ab", "\xE2\x96\x81" "a", "<s>x"};
  std::vector<float> scores = {0, 0, 0, 0, 0, -1, -2, -2, -1, -0.5f, -3, -1};
  std::vector<std::int32_t> types = {2, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1, 1};
  gguf::GgufWriter w;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_float32_array("tokenizer.ggml.scores", scores);
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
  w.set_uint32("tokenizer.ggml.unknown_token_id", 0);
  const auto p = temp_path("vocab.gguf");
  w.write(p.string());
  const auto f = gguf::GgufFile::open(p.string());
  const auto tok = SentencePieceTokenizer::from_gguf(*f);
  CHECK(tok->vocab_size() == 12);
  CHECK(tok->piece(9) == " ab");
  // " ab" merges via " a"? No: the best pair first is ("a","b") -> "ab" (-1)
  // vs (" ","a") -> " a" (-3); then (" ","ab") -> " ab".
  CHECK(tok->encode("ab") == std::vector<std::int32_t>{1, 9});
  CHECK(tok->encode("A\n") == std::vector<std::int32_t>{1, 5, 4, 3});  // byte fallback by type
  CHECK(tok->encode("z") == std::vector<std::int32_t>{1, 5, 0});       // no byte piece for 'z': unk
  CHECK(tok->decode({1, 9, 4, 3, 2}) == "abA\n");
  CHECK(tok->decode_token(9, 9) == " ab");
  CHECK(tok->find("<s>") == -1);  // control pieces are never matched from text
  fs::remove(p);

  gguf::GgufWriter bad;
  bad.set_string("tokenizer.ggml.model", "gpt2");
  bad.set_string_array("tokenizer.ggml.tokens", tokens);
  bad.write(p.string());
  CHECK_THROWS_WITH(SentencePieceTokenizer::from_gguf(*gguf::GgufFile::open(p.string())),
                    Catch::Contains("'gpt2'"));
  gguf::GgufWriter short_scores;
  short_scores.set_string("tokenizer.ggml.model", "llama");
  short_scores.set_string_array("tokenizer.ggml.tokens", tokens);
  short_scores.set_float32_array("tokenizer.ggml.scores", {1.0f});
  short_scores.write(p.string());
  CHECK_THROWS_WITH(SentencePieceTokenizer::from_gguf(*gguf::GgufFile::open(p.string())),
                    Catch::Contains("scores has 1 entries for 12 tokens"));
  fs::remove(p);
}

TEST_CASE("the stand-in vocabulary of stories260K.gguf loads and round-trips its pieces") {
  FASTINFER_REQUIRE_SHARED(gguf_path, "models/stories260K.gguf");
  const auto f = gguf::GgufFile::open(gguf_path.string());
  const auto tok = SentencePieceTokenizer::from_gguf(*f);
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->piece(3) == " <3>");
  CHECK(tok->decode({1, 400, 461}) == "<400> <461>");
  // It has no single-character or byte pieces, so text maps to <unk>.
  CHECK(tok->encode("x", false) == std::vector<std::int32_t>{0});
}

TEST_CASE("malformed tokenizer.bin files are FormatErrors naming the problem") {
  const auto p = temp_path("bad_tokenizer.bin");
  auto write = [&](const std::vector<std::uint8_t>& b) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  };
  auto le32 = [](std::int32_t v) {
    std::vector<std::uint8_t> b(4);
    std::memcpy(b.data(), &v, 4);
    return b;
  };
  auto cat = [](std::vector<std::vector<std::uint8_t>> parts) {
    std::vector<std::uint8_t> out;
    for (auto& x : parts) out.insert(out.end(), x.begin(), x.end());
    return out;
  };
  write({});
  CHECK_THROWS_AS(SentencePieceTokenizer::from_llama2c(p.string()), FormatError);
  write(cat({le32(0)}));
  CHECK_THROWS_WITH(SentencePieceTokenizer::from_llama2c(p.string()), Catch::Contains("max_token_length 0"));
  write(cat({le32(4), le32(0), le32(9), {'a', 'b'}}));
  CHECK_THROWS_WITH(SentencePieceTokenizer::from_llama2c(p.string()), Catch::Contains("length 9"));
  write(cat({le32(4), le32(0), le32(3), {'a', 'b'}}));
  CHECK_THROWS_WITH(SentencePieceTokenizer::from_llama2c(p.string()), Catch::Contains("outside the file"));
  write(cat({le32(4), le32(0), le32(1), {'a'}, le32(0)}));  // truncated length field
  CHECK_THROWS_AS(SentencePieceTokenizer::from_llama2c(p.string()), FormatError);
  fs::remove(p);
}
