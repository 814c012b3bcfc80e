#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <unordered_map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "golden.hpp"
#include "shared_dir.hpp"

using fastinfer::HfBpeTokenizer;
using nlohmann::json;

namespace {

using fastinfer::testing::golden_ids;
using fastinfer::testing::golden_unescape;
using fastinfer::testing::read_golden_fields;

// An independent, deliberately naive BPE: rescan every adjacent pair, merge
// the lowest-rank one (leftmost on ties), repeat. Characters are known here.
std::vector<std::int32_t> naive_bpe(const HfBpeTokenizer& tok, const std::vector<std::string>& merges,
                                    const std::string& word) {
  std::vector<std::string> sym;
  for (std::size_t i = 0; i < word.size();) {
    std::size_t n = (static_cast<unsigned char>(word[i]) < 0x80) ? 1
                    : (static_cast<unsigned char>(word[i]) >> 5) == 6 ? 2
                    : (static_cast<unsigned char>(word[i]) >> 4) == 14 ? 3 : 4;
    sym.push_back(word.substr(i, n));
    i += n;
  }
  std::unordered_map<std::string, int> rank;  // "a\0b" -> rank; the first listing wins
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const auto sp = merges[r].find(' ');
    rank.emplace(merges[r].substr(0, sp) + '\0' + merges[r].substr(sp + 1), int(r));
  }
  for (;;) {
    int best = -1, best_rank = 1 << 30;
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find(sym[i] + '\0' + sym[i + 1]);
      if (it != rank.end() && it->second < best_rank) best = int(i), best_rank = it->second;
    }
    if (best < 0) break;
    sym[std::size_t(best)] += sym[std::size_t(best) + 1];
    sym.erase(sym.begin() + best + 1);
  }
  std::vector<std::int32_t> ids;
  for (const auto& s : sym) ids.push_back(tok.token_id(s));
  return ids;
}

// A small tokenizer.json to probe one behaviour at a time.
json tiny_tokenizer(const json& vocab, const json& merges, bool byte_fallback, bool fuse_unk) {
  return json{
      {"added_tokens", json::array({json{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                    json{{"id", 1}, {"content", "<s>"}, {"special", true}},
                                    json{{"id", 2}, {"content", "</s>"}, {"special", true}}})},
      {"normalizer", json{{"type", "Sequence"},
                          {"normalizers", json::array({json{{"type", "Prepend"}, {"prepend", "\u2581"}},
                                                       json{{"type", "Replace"},
                                                            {"pattern", {{"String", " "}}},
                                                            {"content", "\u2581"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       json{{"type", "TemplateProcessing"},
            {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                    json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
            {"special_tokens", json{{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       json{{"type", "Sequence"},
            {"decoders", json::array({json{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                      json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}},
                                      json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model", json{{"type", "BPE"},
                     {"unk_token", "<unk>"},
                     {"fuse_unk", fuse_unk},
                     {"byte_fallback", byte_fallback},
                     {"vocab", vocab},
                     {"merges", merges}}}};
}

json base_vocab() {
  json v = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\u2581", 3}, {"a", 4}, {"b", 5}, {"c", 6}};
  return v;
}

}  // namespace

TEST_CASE("tinystories tokenizer reproduces every golden encoding") {
  FASTINFER_REQUIRE_SHARED(dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(golden, "golden/tinystories-656k/tokenizer.txt");
  const auto tok = HfBpeTokenizer::from_directory(dir);
  CHECK(tok.vocab_size() == 2048);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.unk_id() == 0);
  const auto fields = read_golden_fields(golden);
  int checked = 0;
  for (std::size_t i = 0; i + 1 < fields.size(); ++i) {
    if (fields[i].first != "text") continue;
    REQUIRE(fields[i + 1].first == "ids");
    const std::string text = golden_unescape(fields[i].second);
    INFO("text: " << fields[i].second);
    CHECK(tok.encode(text) == golden_ids(fields[i + 1].second));
    auto no_bos = golden_ids(fields[i + 1].second);
    no_bos.erase(no_bos.begin());
    CHECK(tok.encode(text, false) == no_bos);
    ++checked;
  }
  CHECK(checked >= 18);
  CHECK(tok.encode("") == std::vector<std::int32_t>{1});
}

TEST_CASE("tinystories tokenizer reproduces every golden decoding, and streams the same text") {
  FASTINFER_REQUIRE_SHARED(dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(golden, "golden/tinystories-656k/tokenizer_decode.txt");
  const auto tok = HfBpeTokenizer::from_directory(dir);
  const auto fields = read_golden_fields(golden);
  int checked = 0;
  for (std::size_t i = 0; i + 2 < fields.size(); ++i) {
    if (fields[i].first != "ids") continue;
    REQUIRE(fields[i + 1].first == "decoded");
    REQUIRE(fields[i + 2].first == "roundtrip");
    const auto ids = golden_ids(fields[i].second);
    const std::string want = golden_unescape(fields[i + 1].second);
    INFO("ids: " << fields[i].second);
    CHECK(tok.decode(ids) == want);
    // Streaming token by token gives the same text.
    std::string streamed;
    std::int32_t prev = -1;
    for (auto id : ids) {
      streamed += tok.decode_token(prev, id);
      prev = id;
    }
    CHECK(streamed == want);
    // Lossless rows round-trip through encode.
    if (fields[i + 2].second == "ok") CHECK(tok.encode(want) == ids);
    ++checked;
  }
  CHECK(checked >= 18);
}

TEST_CASE("tinystories BPE equals a naive rescanning BPE on long random text") {
  FASTINFER_REQUIRE_SHARED(path, "models/tinystories-656k/tokenizer.json");
  const auto tok = HfBpeTokenizer::from_file(path);
  std::ifstream in(path);
  const json j = json::parse(in);
  const auto merges = j.at("model").at("merges").get<std::vector<std::string>>();
  // Words and letters of the alphabet, so that long merge chains happen.
  const std::vector<std::string> words = {"Once", "upon", "a", "time", "there", "was", "little", "girl",
                                          "named", "Lily", "she", "liked", "to", "play", "outside", ".",
                                          ",", "\"", "!", "e", "x", "q", "zz", "\n", "The", "dog", "and"};
  std::mt19937 rng(7);
  for (int trial = 0; trial < 30; ++trial) {
    std::string text;
    const int n = trial < 25 ? 1 + int(rng() % 40) : 300;  // ~1,600 characters: the naive side is quadratic
    for (int w = 0; w < n; ++w) {
      text += words[rng() % words.size()];
      if (rng() % 3) text += ' ';
    }
    const std::string norm = tok.normalize(text);
    INFO("text: " << text);
    REQUIRE(tok.bpe(norm) == naive_bpe(tok, merges, norm));
  }
}

TEST_CASE("BPE merges apply lowest rank first, leftmost on ties") {
  json vocab = base_vocab();
  vocab["aa"] = 7;
  vocab["bc"] = 8;
  vocab["ab"] = 9;
  vocab["\u2581a"] = 10;
  // Ranks: "b c" 0, "a b" 1, "a a" 2; "▁ a" last.
  const HfBpeTokenizer tok(tiny_tokenizer(vocab, {"b c", "a b", "a a", "\u2581 a"}, false, true), nullptr, "tiny");
  CHECK(tok.bpe("abc") == std::vector<std::int32_t>{4, 8});          // bc before ab
  CHECK(tok.bpe("aaa") == std::vector<std::int32_t>{7, 4});          // leftmost pair first
  CHECK(tok.bpe("aaaa") == std::vector<std::int32_t>{7, 7});
  CHECK(tok.bpe("\u2581aab") == std::vector<std::int32_t>{10, 9});  // ab (rank 1) first, then ▁a
  CHECK(tok.bpe("aab") == std::vector<std::int32_t>{4, 9});           // ab beats aa
  CHECK(tok.encode("aab") == std::vector<std::int32_t>{1, 10, 9});
  CHECK(tok.encode("aab", false) == std::vector<std::int32_t>{10, 9});
  CHECK(tok.decode({1, 10, 9, 2}) == "aab");
}

TEST_CASE("unknown characters become unk, fused when fuse_unk") {
  const json merges = json::array();
  const HfBpeTokenizer fused(tiny_tokenizer(base_vocab(), merges, true, true), nullptr, "tiny");
  const HfBpeTokenizer unfused(tiny_tokenizer(base_vocab(), merges, true, false), nullptr, "tiny");
  // byte_fallback is on, but without <0xNN> pieces it cannot apply.
  CHECK(fused.bpe("a\xC3\xA9xzb") == std::vector<std::int32_t>{4, 0, 5});
  CHECK(unfused.bpe("a\xC3\xA9xzb") == std::vector<std::int32_t>{4, 0, 0, 0, 5});
  // A malformed UTF-8 byte is one unknown character.
  CHECK(unfused.bpe("a\xFF" "b") == std::vector<std::int32_t>{4, 0, 5});
  CHECK(fused.decode({4, 0, 5}) == "ab");
}

TEST_CASE("byte_fallback uses <0xNN> pieces and the decoder reassembles UTF-8") {
  json vocab = base_vocab();
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    vocab[piece] = 7 + b;
  }
  const HfBpeTokenizer tok(tiny_tokenizer(vocab, json::array(), true, true), nullptr, "tiny");
  const std::int32_t c3 = 7 + 0xC3, a9 = 7 + 0xA9;
  CHECK(tok.encode("a\xC3\xA9") == std::vector<std::int32_t>{1, 3, 4, c3, a9});
  CHECK(tok.decode({1, 3, 4, c3, a9}) == "a\xC3\xA9");
  // A lone continuation byte is invalid UTF-8: one U+FFFD per byte.
  CHECK(tok.decode({4, a9, a9, 5}) == "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");
  // Streaming hands out raw bytes whose concatenation is the character.
  CHECK(tok.decode_token(4, c3) + tok.decode_token(c3, a9) == "\xC3\xA9");
  // Malformed input bytes fall back to their byte pieces too.
  CHECK(tok.bpe("\xFF") == std::vector<std::int32_t>{7 + 0xFF});
}

TEST_CASE("decoder strips one leading space only at the start of the text") {
  const HfBpeTokenizer tok(tiny_tokenizer(base_vocab(), json::array(), false, true), nullptr, "tiny");
  CHECK(tok.decode({3, 3, 4}) == " a");
  CHECK(tok.decode_token(-1, 3) == "");
  CHECK(tok.decode_token(1, 3) == "");
  CHECK(tok.decode_token(3, 3) == " ");
  CHECK(tok.decode_token(3, 2) == "");
  CHECK_THROWS_AS(tok.decode({4, 99}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(tok.decode_token(4, -1), fastinfer::InvalidArgument);
}

TEST_CASE("special tokens in the input text are not split out") {
  json vocab = base_vocab();
  vocab["<"] = 7;
  vocab["s"] = 8;
  vocab[">"] = 9;
  const HfBpeTokenizer tok(tiny_tokenizer(vocab, json::array(), false, false), nullptr, "tiny");
  CHECK(tok.encode("<s>", false) == std::vector<std::int32_t>{3, 7, 8, 9});
}

TEST_CASE("unsupported tokenizer components are refused by name") {
  auto with = [](const char* key, json value) {
    json j = tiny_tokenizer(base_vocab(), json::array(), false, true);
    j[key] = std::move(value);
    return j;
  };
  auto refused = [](const json& j, const std::string& needle) {
    try {
      HfBpeTokenizer tok(j, nullptr, "tiny.json");
      FAIL("accepted");
    } catch (const fastinfer::FormatError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  refused(with("pre_tokenizer", json{{"type", "ByteLevel"}}), "ByteLevel");
  refused(with("normalizer", json{{"type", "NFKC"}}), "NFKC");
  refused(with("normalizer", json{{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}}),
          "Regex");
  refused(with("decoder", json{{"type", "Metaspace"}}), "Metaspace");
  refused(with("post_processor", json{{"type", "BertProcessing"}}), "BertProcessing");
  json wp = tiny_tokenizer(base_vocab(), json::array(), false, true);
  wp["model"]["type"] = "WordPiece";
  refused(wp, "WordPiece");
  refused(tiny_tokenizer(base_vocab(), {"a q"}, false, true), "outside the vocabulary");
  refused(tiny_tokenizer(base_vocab(), {"abc"}, false, true), "one space");
  json bad_id = base_vocab();
  bad_id["x"] = 1 << 30;
  refused(tiny_tokenizer(bad_id, json::array(), false, true), "id of 'x'");
  json dup = base_vocab();
  dup["x"] = 4;
  refused(tiny_tokenizer(dup, json::array(), false, true), "used twice");
}

TEST_CASE("a broken tokenizer.json file is a FormatError naming it") {
  const auto dir = std::filesystem::temp_directory_path() / ("fastinfer_hf_tok_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", ";
  CHECK_THROWS_WITH(HfBpeTokenizer::from_directory(dir), Catch::Contains("tokenizer.json") && Catch::Contains("invalid JSON"));
  std::ofstream(dir / "tokenizer.json") << std::string(100, '[') + std::string(100, ']');
  CHECK_THROWS_WITH(HfBpeTokenizer::from_directory(dir), Catch::Contains("nested deeper"));
  std::ofstream(dir / "tokenizer.json") << tiny_tokenizer(base_vocab(), json::array(), false, true).dump();
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "<s>"}, "bos_token": "</s>"})";
  const auto tok = HfBpeTokenizer::from_directory(dir);
  CHECK(tok.eos_id() == 1);  // from tokenizer_config.json
  CHECK(tok.bos_id() == 1);  // the template's leading special token wins
  std::filesystem::remove_all(dir);
  CHECK_THROWS_WITH(HfBpeTokenizer::from_directory(dir), Catch::Contains("no tokenizer.json"));
}
