// The one interface every tokenizer implements (SentencePiece-style from
// llama2.c / GGUF, BPE from Hugging Face tokenizer.json), so that examples and
// engines never care where the vocabulary came from.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
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
};

}  // namespace fastinfer
