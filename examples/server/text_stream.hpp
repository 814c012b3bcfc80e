// TextStream: turns a request's tokens into the text a client sees, one
// token at a time, with OpenAI's `stop` strings.
//
// Why it holds text back: a stop string may span several tokens ("The
// End" = " The" + " End"), and the client must never receive the part of
// it that arrived first. So the stream releases only the text that cannot
// be the beginning of a stop string, and, because a byte-level BPE token can
// end inside a UTF-8 character, only whole characters. What is held back is
// released by finish() when the request ends for another reason.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace fastinfer_server {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stops = {}) : stops_(std::move(stops)) {}

  // Adds the text of one token. Returns the text released now (possibly
  // empty); stopped() tells whether a stop string ended the text.
  std::string push(const std::string& piece) {
    if (stopped_) return {};
    pending_ += piece;
    std::size_t cut = std::string::npos;
    for (const std::string& s : stops_) {
      const std::size_t at = s.empty() ? std::string::npos : pending_.find(s);
      if (at < cut) cut = at;
    }
    if (cut != std::string::npos) {
      stopped_ = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      text_ += out;
      return out;
    }
    const std::size_t keep = std::max(stop_prefix_suffix_(), incomplete_utf8_suffix_());
    std::string out = pending_.substr(0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    text_ += out;
    return out;
  }

  // The request ended (length, end of text): releases what was held back.
  std::string finish() {
    std::string out;
    out.swap(pending_);
    text_ += out;
    return out;
  }

  bool stopped() const { return stopped_; }
  // Every byte released so far.
  const std::string& text() const { return text_; }

 private:
  // Length of the longest suffix of pending_ that is a proper prefix of a
  // stop string (it may still become one).
  std::size_t stop_prefix_suffix_() const {
    std::size_t best = 0;
    for (const std::string& s : stops_) {
      const std::size_t most = std::min(s.size() - (s.empty() ? 0 : 1), pending_.size());
      for (std::size_t n = most; n > best; --n)
        if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
          best = n;
          break;
        }
    }
    return best;
  }

  // Bytes of a UTF-8 character that has not been completed yet.
  std::size_t incomplete_utf8_suffix_() const {
    const std::size_t n = pending_.size();
    for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
      const auto c = static_cast<unsigned char>(pending_[n - back]);
      if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
      const std::size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
      return need > back ? back : 0;
    }
    return 0;
  }

  std::vector<std::string> stops_;
  std::string pending_, text_;
  bool stopped_ = false;
};

}  // namespace fastinfer_server
