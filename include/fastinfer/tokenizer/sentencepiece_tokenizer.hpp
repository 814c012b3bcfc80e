// SentencePiece-style BPE over a scored vocabulary, exactly as llama2.c's
// run.c encode()/decode() do it: a dummy-prefix space, one piece per UTF-8
// code point (or its bytes as <0xNN> pieces when the code point is not in the
// vocabulary), then repeatedly merge the adjacent pair whose concatenation is
// the highest-scoring piece (leftmost on ties). run.c rescans every pair after
// each merge (quadratic); a max-heap of candidate pairs with lazy invalidation
// gives the same merges in O(n log n), which matters for long prompts.
//
// Vocabularies come from llama2.c's tokenizer.bin (int32 max_token_length,
// then per token: f32 score, int32 byte length, bytes; spaces stored as ' ')
// or from GGUF's tokenizer.ggml.{tokens,scores,token_type} (model "llama",
// spaces stored as U+2581, which we map to ' ' on load).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <ios>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/mapped_file.hpp"
#include "fastinfer/model/gguf.hpp"
#include "fastinfer/tokenizer/tokenizer.hpp"
#include "fastinfer/tokenizer/utf8.hpp"

namespace fastinfer {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // GGUF / SentencePiece token types.
  enum TokenType : std::int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

  // pieces use ' ' for spaces. types may be empty (all Normal, except that
  // <0xNN> pieces are byte pieces and bos/eos are control tokens).
  SentencePieceTokenizer(std::vector<std::string> pieces, std::vector<float> scores,
                         std::vector<std::int32_t> types, std::int32_t bos_id, std::int32_t eos_id,
                         std::int32_t unk_id = 0)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), types_(std::move(types)),
        bos_id_(bos_id), eos_id_(eos_id), unk_id_(unk_id) {
    const auto n = std::int32_t(pieces_.size());
    FASTINFER_CHECK(n > 0, InvalidArgument, "tokenizer vocabulary is empty");
    FASTINFER_CHECK(scores_.size() == pieces_.size(), InvalidArgument, "tokenizer has ", n,
                    " pieces but ", scores_.size(), " scores");
    FASTINFER_CHECK(types_.empty() || types_.size() == pieces_.size(), InvalidArgument,
                    "tokenizer has ", n, " pieces but ", types_.size(), " token types");
    for (std::int32_t id : {bos_id_, eos_id_, unk_id_})
      FASTINFER_CHECK(id >= -1 && id < n, InvalidArgument, "special token id ", id,
                      " is outside the vocabulary of ", n);
    const bool typed = !types_.empty();
    if (!typed) types_.assign(pieces_.size(), Normal);
    std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
    lookup_.reserve(pieces_.size());
    for (std::int32_t id = 0; id < n; ++id) {
      const std::string& p = pieces_[std::size_t(id)];
      const int byte = parse_byte_piece(p);
      if (byte >= 0 && (!typed || types_[std::size_t(id)] == Byte)) {
        if (byte_ids_[byte] < 0) byte_ids_[byte] = id;
        if (!typed) types_[std::size_t(id)] = Byte;
      }
      if (!typed && (id == bos_id_ || id == eos_id_)) types_[std::size_t(id)] = Control;
      // Text never matches control or unknown pieces from a typed (GGUF)
      // vocabulary; an untyped llama2.c vocabulary behaves as run.c does.
      const std::int32_t t = types_[std::size_t(id)];
      if (typed && (t == Control || t == Unknown || t == Unused || t == Byte)) continue;
      lookup_.emplace(p, id);  // first occurrence wins on duplicates
    }
  }

  // llama2.c tokenizer.bin. Throws FormatError naming the path and the token.
  static std::shared_ptr<SentencePieceTokenizer> from_llama2c(const std::string& path,
                                                              std::int32_t bos_id = 1,
                                                              std::int32_t eos_id = 2) {
    auto file = MappedFile::open(path);
    std::uint64_t pos = 0;
    auto read_i32 = [&](const char* what) {
      std::int32_t v;
      std::memcpy(&v, file->at(pos, 4, what), 4);
      pos += 4;
      return v;
    };
    const std::int32_t max_len = read_i32("max_token_length");
    FASTINFER_CHECK(max_len > 0, FormatError, path, ": max_token_length ", max_len, " is not positive");
    std::vector<std::string> pieces;
    std::vector<float> scores;
    while (pos < file->size()) {
      float score;
      std::memcpy(&score, file->at(pos, 4, "token score"), 4);
      pos += 4;
      const std::int32_t len = read_i32("token length");
      FASTINFER_CHECK(len >= 0 && len <= max_len, FormatError, path, ": token ", pieces.size(),
                      " has length ", len, " (max_token_length ", max_len, ")");
      const auto* bytes = file->at(pos, std::uint64_t(len), "token bytes");
      pos += std::uint64_t(len);
      pieces.emplace_back(reinterpret_cast<const char*>(bytes), std::size_t(len));
      scores.push_back(score);
    }
    return std::make_shared<SentencePieceTokenizer>(std::move(pieces), std::move(scores),
                                                    std::vector<std::int32_t>{}, bos_id, eos_id);
  }

  // GGUF tokenizer.ggml.* arrays (model "llama").
  static std::shared_ptr<SentencePieceTokenizer> from_gguf(const gguf::GgufFile& f) {
    const std::string model = f.get_string("tokenizer.ggml.model");
    FASTINFER_CHECK(model == "llama", FormatError, f.path(), ": tokenizer.ggml.model is '", model,
                    "'; only SentencePiece ('llama') vocabularies are supported");
    const auto& tokens = f.get_string_array("tokenizer.ggml.tokens");
    std::vector<std::string> pieces;
    pieces.reserve(tokens.size());
    for (std::string_view t : tokens) pieces.push_back(replace_all(t, "\xE2\x96\x81", " "));
    std::vector<float> scores(pieces.size(), 0.0f);
    if (f.has("tokenizer.ggml.scores")) {
      const auto s = f.get_number_array("tokenizer.ggml.scores");
      FASTINFER_CHECK(s.size() == pieces.size(), FormatError, f.path(), ": tokenizer.ggml.scores has ",
                      s.size(), " entries for ", pieces.size(), " tokens");
      for (std::size_t i = 0; i < s.size(); ++i) scores[i] = float(s[i]);
    }
    std::vector<std::int32_t> types;
    if (f.has("tokenizer.ggml.token_type")) {
      const auto t = f.get_number_array("tokenizer.ggml.token_type");
      FASTINFER_CHECK(t.size() == pieces.size(), FormatError, f.path(),
                      ": tokenizer.ggml.token_type has ", t.size(), " entries for ", pieces.size(), " tokens");
      for (std::size_t i = 0; i < t.size(); ++i) {
        // Any array type reads as double: a type of 1e20 or NaN must not
        // reach the (undefined) float-to-int conversion.
        FASTINFER_CHECK(t[i] >= 0.0 && t[i] <= double(Byte) && t[i] == double(std::int32_t(t[i])), FormatError,
                        f.path(), ": tokenizer.ggml.token_type[", i, "] is ", t[i], " (expected an integer in [0, ",
                        int(Byte), "])");
        types.push_back(std::int32_t(t[i]));
      }
    }
    const auto n = std::uint64_t(pieces.size());
    auto id_of = [&](const char* key, std::int64_t fallback) -> std::int32_t {
      if (!f.has(key)) return std::int32_t(fallback);
      const std::uint64_t v = f.get_uint(key);
      return v < n ? std::int32_t(v) : -1;  // llama.cpp writes 0xFFFFFFFF for "none"
    };
    try {
      return std::make_shared<SentencePieceTokenizer>(
          std::move(pieces), std::move(scores), std::move(types), id_of("tokenizer.ggml.bos_token_id", 1),
          id_of("tokenizer.ggml.eos_token_id", 2), id_of("tokenizer.ggml.unknown_token_id", 0));
    } catch (const InvalidArgument& e) {
      throw_error<FormatError>(f.path(), ": ", e.what());
    }
  }

  std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true) const override {
    std::vector<std::int32_t> out;
    if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    if (text.empty()) return out;

    // Initial symbols: the dummy prefix, then one per code point (run.c groups
    // a lead byte with up to 3 continuation bytes).
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() + 1);
    auto space = lookup_.find(" ");
    if (space != lookup_.end()) ids.push_back(space->second);
    std::string buf;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) buf.clear();
      buf.push_back(char(c));
      const bool next_continues = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_continues && buf.size() < 4) continue;
      auto it = lookup_.find(buf);
      if (it != lookup_.end()) {
        ids.push_back(it->second);
      } else {
        for (char b : buf) {
          const std::int32_t id = byte_ids_[static_cast<unsigned char>(b)];
          // No piece, no byte piece and no unknown token (GGUF's "none"):
          // as tokenizers' BPE without unk, an error, never id -1.
          FASTINFER_CHECK(id >= 0 || unk_id_ >= 0, InvalidArgument, "byte 0x", std::hex,
                          int(static_cast<unsigned char>(b)), std::dec,
                          " of the text has no piece and the vocabulary has no byte pieces or unknown token");
          ids.push_back(id >= 0 ? id : unk_id_);
        }
      }
      buf.clear();
    }

    merge(ids);
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  // Runs of byte pieces that are not valid UTF-8 come out as one U+FFFD per
  // byte, as tokenizers' ByteFallback decoder (run.c prints the raw bytes).
  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::string out, run;
    std::int32_t prev = bos_id_;  // the first piece loses its dummy-prefix space
    for (std::int32_t id : ids) {
      std::string piece = decode_token(prev, id);
      if (types_[std::size_t(id)] == Byte && piece.size() == 1) {
        run += piece;
      } else {
        out += utf8::decode_byte_run(run);
        run.clear();
        out += piece;
      }
      prev = id;
    }
    return out + utf8::decode_byte_run(run);
  }

  std::string decode_token(std::int32_t previous, std::int32_t token) const override {
    FASTINFER_CHECK(token >= 0 && token < vocab_size(), InvalidArgument, "token id ", token,
                    " is outside the vocabulary of ", vocab_size());
    const std::int32_t type = types_[std::size_t(token)];
    if (type == Control || type == Unused) return {};
    const std::string& p = pieces_[std::size_t(token)];
    if (type == Byte) {
      const int b = parse_byte_piece(p);
      if (b >= 0) return std::string(1, char(b));
    }
    if (previous == bos_id_ && !p.empty() && p[0] == ' ') return p.substr(1);
    return p;
  }

  std::int32_t vocab_size() const override { return std::int32_t(pieces_.size()); }
  std::int32_t bos_id() const override { return bos_id_; }
  std::int32_t eos_id() const override { return eos_id_; }
  std::int32_t unk_id() const { return unk_id_; }
  std::vector<std::pair<std::string, std::int32_t>> special_tokens() const override {
    std::vector<std::pair<std::string, std::int32_t>> out;
    for (std::size_t id = 0; id < pieces_.size(); ++id)
      if (types_[id] == Control && !pieces_[id].empty()) out.emplace_back(pieces_[id], std::int32_t(id));
    return out;
  }

  const std::string& piece(std::int32_t id) const { return pieces_.at(std::size_t(id)); }
  float score(std::int32_t id) const { return scores_.at(std::size_t(id)); }
  // The whole vocabulary (pieces with ' ' for spaces), e.g. to embed it in a GGUF.
  const std::vector<std::string>& pieces() const { return pieces_; }
  const std::vector<float>& scores() const { return scores_; }
  const std::vector<std::int32_t>& token_types() const { return types_; }
  // Id of the piece with exactly this text, or -1.
  std::int32_t find(const std::string& piece) const {
    auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

 private:
  // "<0xNN>" -> NN, else -1.
  static int parse_byte_piece(const std::string& p) {
    if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(p[3]), lo = hex(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  static std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
      if (s.compare(i, from.size(), from) == 0) {
        out += to;
        i += from.size();
      } else {
        out += s[i++];
      }
    }
    return out;
  }

  // Greedy best-score merging, equal to run.c's rescanning loop: a candidate
  // is (score, left position); stale candidates (a side already merged away
  // or grown) are dropped when popped.
  void merge(std::vector<std::int32_t>& ids) const {
    const std::size_t n = ids.size();
    if (n < 2) return;
    std::vector<std::int32_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = std::int32_t(i) - 1;
      next[i] = i + 1 < n ? std::int32_t(i + 1) : -1;
    }
    struct Candidate {
      float score;
      std::int32_t left, right;  // positions
      std::int32_t left_id, right_id, merged_id;
      bool operator<(const Candidate& o) const {  // max-heap: best score, then leftmost
        if (score != o.score) return score < o.score;
        return left > o.left;
      }
    };
    std::priority_queue<Candidate> heap;
    std::string pair;
    auto consider = [&](std::int32_t l, std::int32_t r) {
      if (l < 0 || r < 0) return;
      const std::int32_t a = ids[std::size_t(l)], b = ids[std::size_t(r)];
      pair = pieces_[std::size_t(a)];
      pair += pieces_[std::size_t(b)];
      auto it = lookup_.find(pair);
      if (it == lookup_.end()) return;
      heap.push({scores_[std::size_t(it->second)], l, r, a, b, it->second});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) consider(std::int32_t(i), std::int32_t(i + 1));
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      if (!alive[std::size_t(c.left)] || !alive[std::size_t(c.right)] || next[std::size_t(c.left)] != c.right ||
          ids[std::size_t(c.left)] != c.left_id || ids[std::size_t(c.right)] != c.right_id)
        continue;
      ids[std::size_t(c.left)] = c.merged_id;
      alive[std::size_t(c.right)] = false;
      next[std::size_t(c.left)] = next[std::size_t(c.right)];
      if (next[std::size_t(c.right)] >= 0) prev[std::size_t(next[std::size_t(c.right)])] = c.left;
      consider(prev[std::size_t(c.left)], c.left);
      consider(c.left, next[std::size_t(c.left)]);
    }
    std::size_t w = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (alive[i]) ids[w++] = ids[i];
    ids.resize(w);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<std::int32_t> types_;
  std::int32_t bos_id_, eos_id_, unk_id_;
  std::unordered_map<std::string, std::int32_t> lookup_;
  std::int32_t byte_ids_[256];
};

}  // namespace fastinfer
