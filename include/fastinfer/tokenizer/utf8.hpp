// Strict UTF-8, as Rust's String::from_utf8 (and so Hugging Face tokenizers)
// reads it: no overlong forms (C0 80), no surrogates (ED A0 80), nothing
// above U+10FFFF. Byte-fallback decoding uses it to emit U+FFFD per byte of a
// run that is not valid UTF-8, never the invalid bytes themselves.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace fastinfer::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The UTF-8 sequence starting at s[i]: its length when valid, 0 when the
// bytes there are not one (a stray continuation byte, an overlong form, a
// surrogate, a code point past U+10FFFF), -1 when they are a valid start cut
// off by the end of s.
inline int classify(std::string_view s, std::size_t i) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;  // no overlong 3-byte forms
  else if (c == 0xED) n = 3, hi = 0x9F;  // no surrogates D800-DFFF
  else if (c >= 0xE1 && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;  // no overlong 4-byte forms
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;  // nothing past U+10FFFF
  else return 0;                         // 80-C1, F5-FF
  for (std::size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -1;
    const unsigned char b = at(i + k);
    if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return 0;
  }
  return int(n);
}

// Length of the valid sequence at s[i], 0 when there is none.
inline std::size_t sequence_length(std::string_view s, std::size_t i) {
  const int n = classify(s, i);
  return n > 0 ? std::size_t(n) : 0;
}

inline bool valid(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// The bytes of a byte-fallback run as text: themselves when they are valid
// UTF-8, else one U+FFFD per byte (tokenizers' ByteFallback decoder).
inline std::string decode_byte_run(std::string_view bytes) {
  if (valid(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() * kReplacement.size());
  for (std::size_t k = 0; k < bytes.size(); ++k) out += kReplacement;
  return out;
}

// Streaming: text arrives token by token, a character's bytes possibly split
// across tokens. push() returns what is complete and valid so far; a byte
// that can start no valid sequence becomes U+FFFD; an unfinished sequence is
// held back until the next push() or finish().
class Stream {
 public:
  std::string push(std::string_view piece) {
    pending_ += piece;
    std::string out;
    std::size_t i = 0;
    while (i < pending_.size()) {
      const int n = classify(pending_, i);
      if (n < 0) break;  // wait for the rest of the character
      if (n == 0) {
        out += kReplacement;
        ++i;
      } else {
        out.append(pending_, i, std::size_t(n));
        i += std::size_t(n);
      }
    }
    pending_.erase(0, i);
    return out;
  }
  // The end of the text: held-back bytes can no longer complete.
  std::string finish() {
    std::string out;
    for (std::size_t k = 0; k < pending_.size(); ++k) out += kReplacement;
    pending_.clear();
    return out;
  }

 private:
  std::string pending_;
};

}  // namespace fastinfer::utf8
