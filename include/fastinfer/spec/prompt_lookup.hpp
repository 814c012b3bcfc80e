// Prompt lookup decoding (Saxena 2023; vLLM's "ngram" speculator): the
// drafts are what followed the most recent earlier occurrence of the
// context's last n tokens, trying n = max_ngram first, down to min_ngram. No
// model at all. When the copied run reaches the end of the text it goes on
// copying from its own drafts (the match and the suffix are equal, so the
// text is read as periodic): a loop of period 1 still drafts k tokens. No
// model at all: it pays off where the output repeats the input (summaries,
// code edits, quoting) and costs almost nothing where it does not.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/spec/drafter.hpp"

namespace fastinfer::spec {

struct PromptLookupConfig {
  int max_ngram = 3;
  int min_ngram = 1;
};

class PromptLookup final : public Drafter {
 public:
  explicit PromptLookup(PromptLookupConfig config = {}) : c_(config) {
    FASTINFER_CHECK(c_.min_ngram >= 1 && c_.max_ngram >= c_.min_ngram, InvalidArgument,
                    "prompt lookup needs 1 <= min_ngram <= max_ngram, got ", c_.min_ngram, " and ", c_.max_ngram);
  }

  // The drafts alone (for tests and other callers): up to k tokens.
  std::vector<std::int32_t> lookup(const std::vector<std::int32_t>& context, int k) const {
    std::vector<std::int32_t> out;
    const int len = int(context.size());
    if (k <= 0) return out;
    for (int n = std::min(c_.max_ngram, len - 1); n >= c_.min_ngram; --n) {
      const std::int32_t* suffix = context.data() + (len - n);
      // Most recent earlier occurrence: start s < len - n, so something follows it.
      for (int s = len - n - 1; s >= 0; --s) {
        if (!std::equal(suffix, suffix + n, context.data() + s)) continue;
        const int from = s + n;
        for (int j = 0; j < k; ++j) {
          const int at = from + j;
          out.push_back(at < len ? context[std::size_t(at)] : out[std::size_t(at - len)]);
        }
        return out;
      }
    }
    return out;
  }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t, DraftProposal& out) override {
    out.clear();
    out.tokens = lookup(context, k);
  }

 private:
  PromptLookupConfig c_;
};

}  // namespace fastinfer::spec
