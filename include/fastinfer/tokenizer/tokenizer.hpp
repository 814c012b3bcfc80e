// The one interface every tokenizer implements (SentencePiece-style from
// llama2.c / GGUF, BPE from Hugging Face tokenizer.json), so that examples and
// engines never care where the vocabulary came from.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fastinfer {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, with the BOS id first when `add_bos`.
  virtual std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true) const = 0;
  // Text of a whole sequence of ids (special ids such as BOS/EOS omitted).
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  // Text that id `token` adds when it follows `previous` (for streaming output).
  virtual std::string decode_token(std::int32_t previous, std::int32_t token) const = 0;

  virtual std::int32_t vocab_size() const = 0;
  virtual std::int32_t bos_id() const = 0;
  virtual std::int32_t eos_id() const = 0;

  // The text of each special (control) token with its id: what
  // encode(..., {parse_special = true}) recognises in input text.
  virtual std::vector<std::pair<std::string, std::int32_t>> special_tokens() const { return {}; }
};

// How text becomes ids. parse_special is llama.cpp's `parse_special` and the
// opposite of tokenizers' `split_special_tokens`: when true, the text of a
// special token typed in the input ("</s>", "<|end_story|>") becomes that
// token; when false (the default, safe for untrusted text) it is encoded as
// ordinary characters, so user text cannot inject control tokens.
struct EncodeOptions {
  bool add_bos = true;
  bool parse_special = false;
};

// Tokenizer::encode with an explicit choice of special-token parsing. With
// parse_special the text between special tokens is encoded piece by piece
// (encode(piece, false)) and BOS, when asked, leads.
inline std::vector<std::int32_t> encode(const Tokenizer& tok, std::string_view text, const EncodeOptions& o) {
  if (!o.parse_special) return tok.encode(text, o.add_bos);
  const auto specials = tok.special_tokens();
  std::vector<std::int32_t> out;
  if (o.add_bos && tok.bos_id() >= 0) out.push_back(tok.bos_id());
  std::size_t start = 0, i = 0;
  auto flush = [&](std::size_t end) {
    if (end > start) {
      const auto ids = tok.encode(text.substr(start, end - start), false);
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  while (i < text.size()) {
    std::size_t best_len = 0;
    std::int32_t best_id = -1;
    for (const auto& [piece, id] : specials)  // the longest special text here wins
      if (piece.size() > best_len && text.compare(i, piece.size(), piece) == 0) best_len = piece.size(), best_id = id;
    if (best_len == 0) {
      ++i;
      continue;
    }
    flush(i);
    out.push_back(best_id);
    i += best_len;
    start = i;
  }
  flush(text.size());
  return out;
}

}  // namespace fastinfer
