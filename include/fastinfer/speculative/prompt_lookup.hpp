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
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::speculative {

struct PromptLookupConfig {
  int max_ngram = 3;
  int min_ngram = 1;
  // Candidates per step: 1 drafts a chain (the most recent longest match);
  // more take every match (longest n first, most recent first), drop
  // duplicate continuations and propose them as a token tree (a trie, one
  // masked verification pass; needs a target that takes a custom mask).
  int max_candidates = 1;
};

class PromptLookup final : public Drafter {
 public:
  explicit PromptLookup(PromptLookupConfig config = {}) : c_(config) {
    FASTINFER_CHECK(c_.min_ngram >= 1 && c_.max_ngram >= c_.min_ngram, InvalidArgument,
                    "prompt lookup needs 1 <= min_ngram <= max_ngram, got ", c_.min_ngram, " and ", c_.max_ngram);
    FASTINFER_CHECK(c_.max_candidates >= 1, InvalidArgument, "prompt lookup needs max_candidates >= 1, got ",
                    c_.max_candidates);
  }

  const PromptLookupConfig& config() const { return c_; }

  // Up to max_candidates distinct continuations of up to k tokens, best
  // first (the first is lookup()'s).
  std::vector<std::vector<std::int32_t>> lookup_all(const std::vector<std::int32_t>& context, int k) const {
    std::vector<std::vector<std::int32_t>> out;
    const int len = int(context.size());
    if (k <= 0) return out;
    for (int n = std::min(c_.max_ngram, len - 1); n >= c_.min_ngram; --n) {
      const std::int32_t* suffix = context.data() + (len - n);
      for (int s = len - n - 1; s >= 0; --s) {
        if (!std::equal(suffix, suffix + n, context.data() + s)) continue;
        std::vector<std::int32_t> cont = continuation(context, s + n, k);
        if (std::find(out.begin(), out.end(), cont) == out.end()) out.push_back(std::move(cont));
        if (int(out.size()) >= c_.max_candidates) return out;
      }
    }
    return out;
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
        return continuation(context, s + n, k);
      }
    }
    return out;
  }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t, DraftProposal& out) override {
    out.clear();
    if (c_.max_candidates == 1) {
      out.tokens = lookup(context, k);
      return;
    }
    TokenTree tree;
    for (const auto& cand : lookup_all(context, k)) add_tree_path(tree, cand.data(), int(cand.size()));
    out.tokens = std::move(tree.tokens);
    out.parent = std::move(tree.parent);
  }

 private:
  // k tokens copied from context[from..]; past the end the copy reads its
  // own output (the match and the suffix are equal: the text is periodic).
  static std::vector<std::int32_t> continuation(const std::vector<std::int32_t>& context, int from, int k) {
    const int len = int(context.size());
    std::vector<std::int32_t> out;
    for (int j = 0; j < k; ++j) {
      const int at = from + j;
      out.push_back(at < len ? context[std::size_t(at)] : out[std::size_t(at - len)]);
    }
    return out;
  }

  PromptLookupConfig c_;
};

}  // namespace fastinfer::speculative
