// The BPE model of a Hugging Face tokenizer.json (the "tokenizers" library's
// format), behind fastinfer's Tokenizer interface.
//
// Supported, with the tokenizers library's semantics:
//  - normalizer: Prepend, Replace (literal String pattern), a Sequence of them, or null;
//  - pre_tokenizer: null (the whole normalized text is one word);
//  - model BPE: merges by rank (lowest first, leftmost on ties), byte_fallback
//    to <0xNN> pieces when the vocabulary has them, otherwise unk, with
//    consecutive unknowns fused when fuse_unk; ignore_merges;
//  - post_processor: TemplateProcessing (its "single" template) or null;
//  - decoder: Replace, ByteFallback, Fuse, Strip, a Sequence of them, or null.
// Anything else (Metaspace or ByteLevel pre-tokenizers, NFKC, regex patterns,
// WordPiece/Unigram models, subword prefixes) is refused at load with a
// FormatError naming the component, never silently approximated.
//
// Added tokens are NOT split out of input text by encode(): "<|end_story|>"
// typed in a prompt is encoded as ordinary characters, so user text cannot
// inject control tokens (fastinfer::encode with parse_special opts in). Special added tokens are skipped when decoding.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/tokenizer/tokenizer.hpp"
#include "fastinfer/tokenizer/utf8.hpp"

namespace fastinfer {

class HfBpeTokenizer final : public Tokenizer {
 public:
  // Ids of a vocabulary above this are refused: a corrupt id must not size a
  // multi-gigabyte table.
  static constexpr std::int64_t kMaxTokenId = 1 << 24;
  // Ids the vocabulary may leave unused below its largest id.
  static constexpr std::int64_t kMaxIdHoles = 1 << 16;

  // Reads tokenizer.json; BOS/EOS names come from its post-processor and, when
  // present beside it, tokenizer_config.json ("bos_token", "eos_token").
  static HfBpeTokenizer from_file(const std::filesystem::path& tokenizer_json) {
    const std::string where = tokenizer_json.string();
    auto map = MappedFile::open(where);
    const char* b = reinterpret_cast<const char*>(map->data());
    const nlohmann::json j = parse_json(b, b + map->size(), where);
    nlohmann::json config;
    const auto cfg_path = tokenizer_json.parent_path() / "tokenizer_config.json";
    if (std::filesystem::exists(cfg_path)) {
      auto cmap = MappedFile::open(cfg_path.string());
      const char* c = reinterpret_cast<const char*>(cmap->data());
      config = parse_json(c, c + cmap->size(), cfg_path.string());
    }
    return HfBpeTokenizer(j, config, where);
  }
  // The tokenizer of a model directory (its tokenizer.json).
  static HfBpeTokenizer from_directory(const std::filesystem::path& dir) {
    FASTINFER_CHECK(std::filesystem::exists(dir / "tokenizer.json"), FormatError, dir.string(),
                    ": no tokenizer.json");
    return from_file(dir / "tokenizer.json");
  }
  // From parsed JSON: `tokenizer` is tokenizer.json, `config` tokenizer_config.json
  // (null when absent); `where` names the source in errors.
  HfBpeTokenizer(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& where) {
    try {
      load(tokenizer, config, where);
    } catch (const nlohmann::json::exception& e) {
      throw_error<FormatError>(where, ": unexpected JSON: ", e.what());
    }
  }

  std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true) const override {
    std::vector<std::int32_t> word = bpe(normalize(text));
    if (!add_bos) return word;
    if (!has_template_) {
      if (bos_id_ >= 0) word.insert(word.begin(), bos_id_);
      return word;
    }
    std::vector<std::int32_t> out;
    out.reserve(word.size() + template_.size());
    for (const auto& item : template_) {
      if (item.is_sequence)
        out.insert(out.end(), word.begin(), word.end());
      else
        out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    return out;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (std::int32_t id : ids) {
      check_id(id);
      if (!special_[std::size_t(id)]) tokens.push_back(pieces_[std::size_t(id)]);
    }
    if (!has_decoder_) return join(tokens, " ");
    for (const auto& d : decoders_) apply(d, tokens);
    return join(tokens, "");
  }

  // Streaming: the text `token` adds after `previous` (-1 at the start). Byte
  // pieces come out as raw bytes, so a multi-byte character arrives over
  // several calls and the concatenation is valid UTF-8; Strip's leading cut
  // applies to the first token after the start (previous -1 or BOS), and its
  // trailing cut is not applied (the end is not known yet).
  std::string decode_token(std::int32_t previous, std::int32_t token) const override {
    check_id(token);
    if (special_[std::size_t(token)]) return {};
    // Only BOS opens a text: a special token met mid-text (unk) is merely skipped.
    const bool at_start = previous < 0 || previous == bos_id_;
    if (!has_decoder_) return at_start ? pieces_[std::size_t(token)] : " " + pieces_[std::size_t(token)];
    std::string s = pieces_[std::size_t(token)];
    for (const auto& d : decoders_) {
      switch (d.kind) {
        case Decoder::Replace: s = replace_all(s, d.from, d.to); break;
        case Decoder::ByteFallback: {
          const int byte = parse_byte_piece(s);
          if (byte >= 0) s = std::string(1, char(byte));
          break;
        }
        case Decoder::Fuse: break;
        case Decoder::Strip:
          if (at_start) s = strip(s, d.from, d.start, 0);
          break;
      }
    }
    return s;
  }

  std::int32_t vocab_size() const override { return std::int32_t(pieces_.size()); }
  std::int32_t bos_id() const override { return bos_id_; }
  std::int32_t eos_id() const override { return eos_id_; }
  std::int32_t unk_id() const { return unk_id_; }
  std::vector<std::pair<std::string, std::int32_t>> special_tokens() const override {
    std::vector<std::pair<std::string, std::int32_t>> out;
    for (std::size_t id = 0; id < pieces_.size(); ++id)
      if (special_[id] && !pieces_[id].empty()) out.emplace_back(pieces_[id], std::int32_t(id));
    return out;
  }

  // The id of a vocabulary piece or added token, -1 when absent.
  std::int32_t token_id(const std::string& piece) const {
    auto it = vocab_.find(piece);
    return it == vocab_.end() ? -1 : it->second;
  }
  // The piece of an id (InvalidArgument when out of range).
  const std::string& piece(std::int32_t id) const {
    check_id(id);
    return pieces_[std::size_t(id)];
  }
  bool is_special(std::int32_t id) const {
    check_id(id);
    return special_[std::size_t(id)];
  }

  // The normalizer chain alone (Prepend adds nothing to an empty string).
  std::string normalize(std::string_view text) const {
    std::string s(text);
    for (const auto& n : normalizers_) {
      if (n.kind == Normalizer::Prepend) {
        if (!s.empty()) s = n.to + s;
      } else {
        s = replace_all(s, n.from, n.to);
      }
    }
    return s;
  }

  // The BPE model alone, over one already-normalized word. Merges run from a
  // min-heap of (rank, position) over a linked list of symbols, as the
  // tokenizers library does: O(n log n), not a rescan per merge.
  std::vector<std::int32_t> bpe(std::string_view word) const {
    std::vector<std::int32_t> out;
    if (word.empty()) return out;
    if (ignore_merges_) {
      auto it = model_vocab_.find(std::string(word));
      if (it != model_vocab_.end()) return {it->second};
    }
    struct Symbol {
      std::int32_t id;
      std::int32_t prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto push = [&](std::int32_t id) {
      const std::int32_t n = std::int32_t(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    };
    bool last_was_unk = false;
    std::string ch;
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t len = utf8_char_len(word, i);
      ch.assign(word.data() + i, len);
      i += len;
      auto it = model_vocab_.find(ch);
      if (it != model_vocab_.end()) {
        push(it->second);
        last_was_unk = false;
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (unsigned char c : ch) all = all && byte_ids_[c] >= 0;
        if (all) {
          for (unsigned char c : ch) push(byte_ids_[c]);
          last_was_unk = false;
          continue;
        }
      }
      FASTINFER_CHECK(unk_id_ >= 0, InvalidArgument, "character '", ch,
                      "' is not in the vocabulary and the tokenizer has no unk token");
      if (!(fuse_unk_ && last_was_unk)) push(unk_id_);
      last_was_unk = true;
    }
    const std::int32_t n = std::int32_t(symbols.size());
    symbols.back().next = -1;

    struct Candidate {
      std::int32_t rank, pos, new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::vector<Candidate> heap_storage;
    heap_storage.reserve(std::size_t(n));
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(
        std::greater<Candidate>(), std::move(heap_storage));
    auto consider = [&](std::int32_t pos) {
      const std::int32_t next = symbols[std::size_t(pos)].next;
      if (next < 0) return;
      const Merge* m = find_merge(symbols[std::size_t(pos)].id, symbols[std::size_t(next)].id);
      if (m != nullptr) heap.push({m->rank, pos, m->new_id});
    };
    for (std::int32_t p = 0; p + 1 < n; ++p) consider(p);
    while (!heap.empty()) {
      const Candidate top = heap.top();
      heap.pop();
      Symbol& left = symbols[std::size_t(top.pos)];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[std::size_t(left.next)];
      // A stale entry: one of the pair has merged with something else since.
      const Merge* m = find_merge(left.id, right.id);
      if (m == nullptr || m->new_id != top.new_id) continue;
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[std::size_t(right.next)].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    for (std::int32_t p = 0; p >= 0; p = symbols[std::size_t(p)].next) out.push_back(symbols[std::size_t(p)].id);
    return out;
  }

 private:
  struct Normalizer {
    enum Kind { Prepend, Replace } kind;
    std::string from, to;
  };
  struct Decoder {
    enum Kind { Replace, ByteFallback, Fuse, Strip } kind;
    std::string from, to;  // Replace pattern/content; Strip: `from` is the character
    int start = 0, stop = 0;
  };
  struct TemplateItem {
    bool is_sequence = false;
    std::vector<std::int32_t> ids;
  };
  struct Merge {
    std::int32_t rank, new_id;
  };

  void load(const nlohmann::json& j, const nlohmann::json& config, const std::string& where) {
    FASTINFER_CHECK(j.is_object(), FormatError, where, ": not a JSON object");
    const nlohmann::json& model = at(j, "model", where);
    const std::string type = model.value("type", std::string("BPE"));
    FASTINFER_CHECK(type == "BPE", FormatError, where, ": model type ", type,
                    " is not supported (BPE only)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = model.find(k);
      FASTINFER_CHECK(it == model.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()),
                      FormatError, where, ": model.", k, " ", it->dump(), " is not supported");
    }
    if (auto d = model.find("dropout"); d != model.end() && !d->is_null())
      FASTINFER_CHECK(d->is_number() && d->get<double>() == 0.0, FormatError, where,
                      ": BPE dropout is not supported (inference is deterministic)");
    byte_fallback_ = model.value("byte_fallback", false);
    fuse_unk_ = model.value("fuse_unk", false);
    ignore_merges_ = model.value("ignore_merges", false);

    // Vocabulary and added tokens share one id space.
    const nlohmann::json& vocab = at(model, "vocab", where);
    FASTINFER_CHECK(vocab.is_object() && !vocab.empty(), FormatError, where, ": model.vocab is not a non-empty object");
    std::int64_t max_id = -1;
    auto check_new_id = [&](const nlohmann::json& v, const std::string& piece) {
      FASTINFER_CHECK(v.is_number_integer() && v.get<std::int64_t>() >= 0 && v.get<std::int64_t>() < kMaxTokenId,
                      FormatError, where, ": id of '", piece, "' is ", v.dump(), " (must be in [0, ",
                      kMaxTokenId, "))");
      max_id = std::max(max_id, v.get<std::int64_t>());
      return std::int32_t(v.get<std::int64_t>());
    };
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::int32_t id = check_new_id(it.value(), it.key());
      model_vocab_.emplace(it.key(), id);
    }
    std::vector<std::pair<std::string, std::int32_t>> added;
    std::vector<std::int32_t> special_ids;
    if (auto a = j.find("added_tokens"); a != j.end() && a->is_array()) {
      for (const auto& t : *a) {
        FASTINFER_CHECK(t.is_object() && t.contains("id") && t.contains("content") && t.at("content").is_string(),
                        FormatError, where, ": malformed added token ", t.dump());
        const std::string content = t.at("content").get<std::string>();
        const std::int32_t id = check_new_id(t.at("id"), content);
        added.emplace_back(content, id);
        if (t.value("special", false)) special_ids.push_back(id);
      }
    }
    // Ids index a dense table: a few holes are tolerated, but one stray id
    // of 2^24 must not size a 500 MB table for a 100-entry vocabulary.
    const std::int64_t entries = std::int64_t(model_vocab_.size() + added.size());
    FASTINFER_CHECK(max_id < entries + kMaxIdHoles, FormatError, where, ": id ", max_id, " leaves ",
                    max_id + 1 - entries, " unused ids in a vocabulary of ", entries, " entries (at most ",
                    kMaxIdHoles, ")");
    pieces_.assign(std::size_t(max_id + 1), std::string());
    std::vector<bool> filled(pieces_.size(), false);
    for (const auto& [piece, id] : model_vocab_) {
      FASTINFER_CHECK(!filled[std::size_t(id)], FormatError, where, ": id ", id, " is used twice");
      pieces_[std::size_t(id)] = piece;
      filled[std::size_t(id)] = true;
    }
    vocab_ = model_vocab_;
    for (const auto& [piece, id] : added) {
      // An added token usually repeats a vocabulary entry; a different piece
      // under the same id is a broken file.
      FASTINFER_CHECK(!filled[std::size_t(id)] || pieces_[std::size_t(id)] == piece, FormatError, where,
                      ": added token '", piece, "' reuses id ", id, " of '", pieces_[std::size_t(id)], "'");
      pieces_[std::size_t(id)] = piece;
      filled[std::size_t(id)] = true;
      vocab_.emplace(piece, id);
    }
    special_.assign(pieces_.size(), false);
    for (std::int32_t id : special_ids) special_[std::size_t(id)] = true;

    unk_id_ = -1;
    if (auto u = model.find("unk_token"); u != model.end() && u->is_string()) {
      unk_id_ = token_id(u->get<std::string>());
      FASTINFER_CHECK(unk_id_ >= 0, FormatError, where, ": unk_token ", u->dump(), " is not in the vocabulary");
    }
    byte_ids_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      static const char* hex = "0123456789ABCDEF";
      const std::string p = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
      auto it = model_vocab_.find(p);
      if (it != model_vocab_.end()) byte_ids_[std::size_t(b)] = it->second;
    }

    // Merges: "a b" strings (older files) or ["a", "b"] pairs (newer ones).
    const nlohmann::json& merges = model.contains("merges") ? model.at("merges") : nlohmann::json::array();
    FASTINFER_CHECK(merges.is_array(), FormatError, where, ": model.merges is not an array");
    merges_.reserve(merges.size());
    std::int32_t rank = 0;
    for (const auto& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const auto space = s.find(' ');
        FASTINFER_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
                        FormatError, where, ": merge \"", s, "\" is not two pieces separated by one space");
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else {
        FASTINFER_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), FormatError,
                        where, ": merge ", m.dump(), " is not a pair of pieces");
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      }
      const auto ia = model_vocab_.find(a), ib = model_vocab_.find(b), ic = model_vocab_.find(a + b);
      FASTINFER_CHECK(ia != model_vocab_.end() && ib != model_vocab_.end() && ic != model_vocab_.end(),
                      FormatError, where, ": merge '", a, "' + '", b, "' uses a piece outside the vocabulary");
      // A pair listed twice keeps its last rank, as tokenizers' map does.
      merges_.insert_or_assign(pair_key(ia->second, ib->second), Merge{rank, ic->second});
      ++rank;
    }

    load_normalizer(j.contains("normalizer") ? j.at("normalizer") : nlohmann::json(), where);
    if (auto p = j.find("pre_tokenizer"); p != j.end() && !p->is_null())
      throw_error<FormatError>(where, ": pre_tokenizer ", p->value("type", p->dump()),
                               " is not supported (null only: the whole text is one word)");
    load_decoder(j.contains("decoder") ? j.at("decoder") : nlohmann::json(), where);
    load_post_processor(j.contains("post_processor") ? j.at("post_processor") : nlohmann::json(), where);

    // BOS: the template's leading special token, else tokenizer_config.json.
    // EOS: tokenizer_config.json, else a conventional "</s>".
    bos_id_ = -1;
    if (has_template_ && !template_.empty() && !template_.front().is_sequence && !template_.front().ids.empty())
      bos_id_ = template_.front().ids.front();
    auto config_token = [&](const char* key) -> std::int32_t {
      if (!config.is_object() || !config.contains(key)) return -1;
      const nlohmann::json& v = config.at(key);
      std::string s;
      if (v.is_string()) s = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v.at("content").is_string()) s = v.at("content").get<std::string>();
      return s.empty() ? -1 : token_id(s);
    };
    if (bos_id_ < 0) bos_id_ = config_token("bos_token");
    if (bos_id_ < 0) bos_id_ = token_id("<s>");
    eos_id_ = config_token("eos_token");
    if (eos_id_ < 0) eos_id_ = token_id("</s>");
  }

  void load_normalizer(const nlohmann::json& n, const std::string& where) {
    if (n.is_null()) return;
    const std::string type = n.value("type", std::string());
    if (type == "Sequence") {
      for (const auto& sub : at(n, "normalizers", where)) load_normalizer(sub, where);
    } else if (type == "Prepend") {
      normalizers_.push_back({Normalizer::Prepend, {}, at(n, "prepend", where).get<std::string>()});
    } else if (type == "Replace") {
      normalizers_.push_back({Normalizer::Replace, literal_pattern(n, where), at(n, "content", where).get<std::string>()});
    } else {
      throw_error<FormatError>(where, ": normalizer ", type.empty() ? n.dump() : type,
                               " is not supported (Prepend, Replace, Sequence)");
    }
  }

  void load_decoder(const nlohmann::json& d, const std::string& where) {
    if (d.is_null()) return;
    has_decoder_ = true;
    const std::string type = d.value("type", std::string());
    if (type == "Sequence") {
      for (const auto& sub : at(d, "decoders", where)) load_decoder(sub, where);
    } else if (type == "Replace") {
      decoders_.push_back({Decoder::Replace, literal_pattern(d, where), at(d, "content", where).get<std::string>()});
    } else if (type == "ByteFallback") {
      decoders_.push_back({Decoder::ByteFallback, {}, {}});
    } else if (type == "Fuse") {
      decoders_.push_back({Decoder::Fuse, {}, {}});
    } else if (type == "Strip") {
      Decoder s{Decoder::Strip, at(d, "content", where).get<std::string>(), {}};
      FASTINFER_CHECK(!s.from.empty() && utf8_char_len(s.from, 0) == s.from.size(), FormatError, where,
                      ": Strip content '", s.from, "' is not one character");
      s.start = d.value("start", 0);
      s.stop = d.value("stop", 0);
      FASTINFER_CHECK(s.start >= 0 && s.stop >= 0, FormatError, where, ": Strip counts must not be negative");
      decoders_.push_back(s);
    } else {
      throw_error<FormatError>(where, ": decoder ", type.empty() ? d.dump() : type,
                               " is not supported (Replace, ByteFallback, Fuse, Strip, Sequence)");
    }
  }

  void load_post_processor(const nlohmann::json& p, const std::string& where) {
    if (p.is_null()) return;
    const std::string type = p.value("type", std::string());
    FASTINFER_CHECK(type == "TemplateProcessing", FormatError, where, ": post_processor ",
                    type.empty() ? p.dump() : type, " is not supported (TemplateProcessing only)");
    has_template_ = true;
    const nlohmann::json& specials = p.contains("special_tokens") ? p.at("special_tokens") : nlohmann::json::object();
    for (const auto& item : at(p, "single", where)) {
      TemplateItem t;
      if (item.contains("Sequence")) {
        t.is_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = at(item.at("SpecialToken"), "id", where).get<std::string>();
        if (specials.contains(name) && specials.at(name).contains("ids")) {
          for (const auto& id : specials.at(name).at("ids")) {
            const std::int64_t v = id.get<std::int64_t>();
            FASTINFER_CHECK(v >= 0 && v < std::int64_t(pieces_.size()), FormatError, where,
                            ": template token '", name, "' has id ", v, " outside the vocabulary");
            t.ids.push_back(std::int32_t(v));
          }
        } else {
          const std::int32_t id = token_id(name);
          FASTINFER_CHECK(id >= 0, FormatError, where, ": template token '", name, "' is unknown");
          t.ids.push_back(id);
        }
      } else {
        throw_error<FormatError>(where, ": template item ", item.dump(), " is not understood");
      }
      template_.push_back(std::move(t));
    }
  }

  // JSON errors and absurd nesting become FormatErrors naming the file.
  static nlohmann::json parse_json(const char* begin, const char* end, const std::string& where) {
    try {
      return nlohmann::json::parse(begin, end, [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > 64) throw_error<FormatError>(where, ": JSON nested deeper than 64 levels");
        return true;
      });
    } catch (const nlohmann::json::exception& e) {
      throw_error<FormatError>(where, ": invalid JSON: ", e.what());
    }
  }

  static const nlohmann::json& at(const nlohmann::json& j, const char* key, const std::string& where) {
    FASTINFER_CHECK(j.is_object() && j.contains(key), FormatError, where, ": missing \"", key, "\" in ",
                    j.dump().substr(0, 200));
    return j.at(key);
  }

  static std::string literal_pattern(const nlohmann::json& n, const std::string& where) {
    const nlohmann::json& pat = at(n, "pattern", where);
    FASTINFER_CHECK(pat.is_object() && pat.contains("String") && pat.at("String").is_string(), FormatError,
                    where, ": Replace pattern ", pat.dump(), " is not supported (literal String only)");
    std::string s = pat.at("String").get<std::string>();
    FASTINFER_CHECK(!s.empty(), FormatError, where, ": Replace pattern is empty");
    return s;
  }

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  const Merge* find_merge(std::int32_t a, std::int32_t b) const {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // Length of the UTF-8 character at s[i]; a malformed byte counts as one
  // character of its own (it then falls back to <0xNN> or unk).
  static std::size_t utf8_char_len(std::string_view s, std::size_t i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + n > s.size()) return 1;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
    return n;
  }

  // <0xNN> -> NN, else -1 (tokenizers accepts either hex case here).
  static int parse_byte_piece(const std::string& s) {
    if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; ++k) {
      const char c = s[std::size_t(k)];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }

  static std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
    std::string out;
    out.reserve(s.size());
    std::size_t pos = 0;
    for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size())
      out.append(s, pos, hit - pos).append(to);
    return out.append(s, pos, std::string::npos);
  }

  static std::string strip(const std::string& s, const std::string& c, int start, int stop) {
    std::size_t b = 0, e = s.size();
    for (int k = 0; k < start && e - b >= c.size() && s.compare(b, c.size(), c) == 0; ++k) b += c.size();
    for (int k = 0; k < stop && e - b >= c.size() && s.compare(e - c.size(), c.size(), c) == 0; ++k) e -= c.size();
    return s.substr(b, e - b);
  }

  static std::string join(const std::vector<std::string>& parts, const char* sep) {
    std::string out;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (i) out += sep;
      out += parts[i];
    }
    return out;
  }

  // One decoder step over the whole token list, as tokenizers' decode_chain.
  static void apply(const Decoder& d, std::vector<std::string>& tokens) {
    switch (d.kind) {
      case Decoder::Replace:
        for (auto& t : tokens) t = replace_all(t, d.from, d.to);
        return;
      case Decoder::ByteFallback: {
        // Runs of <0xNN> pieces become their bytes when those form valid
        // (strict) UTF-8, else one U+FFFD per byte.
        std::vector<std::string> out;
        std::string bytes;
        auto flush = [&] {
          if (bytes.empty()) return;
          out.push_back(utf8::decode_byte_run(bytes));
          bytes.clear();
        };
        for (auto& t : tokens) {
          const int b = parse_byte_piece(t);
          if (b >= 0) {
            bytes.push_back(char(b));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        return;
      }
      case Decoder::Fuse: {
        std::string all = join(tokens, "");
        tokens.assign(1, std::move(all));
        return;
      }
      case Decoder::Strip:
        for (auto& t : tokens) t = strip(t, d.from, d.start, d.stop);
        return;
    }
  }

  void check_id(std::int32_t id) const {
    FASTINFER_CHECK(id >= 0 && id < vocab_size(), InvalidArgument, "token id ", id,
                    " is outside the vocabulary [0, ", vocab_size(), ")");
  }

  std::unordered_map<std::string, std::int32_t> model_vocab_;  // BPE pieces
  std::unordered_map<std::string, std::int32_t> vocab_;        // plus added tokens
  std::vector<std::string> pieces_;                            // id -> piece or added content
  std::vector<bool> special_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<std::int32_t, 256> byte_ids_{};
  std::vector<Normalizer> normalizers_;
  std::vector<Decoder> decoders_;
  bool has_decoder_ = false;
  std::vector<TemplateItem> template_;
  bool has_template_ = false;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
};

}  // namespace fastinfer
