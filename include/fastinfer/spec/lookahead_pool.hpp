// Lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM
// Inference Using Lookahead Decoding") as a drafter.
//
// Jacobi iteration: feed a window of W guessed tokens after the text and take
// the model's argmax at each of them as the new guesses, one step closer to
// the fixed point (the greedy continuation). Each guess that the model
// produced from the previous level's guess one column to the left forms, read
// along the diagonal over the last N - 1 levels, an n-gram the model itself
// has "seen": (level_{t-N+2}[p], level_{t-N+3}[p+1], .., level_t[p+N-2],
// output_t[p+N-1]). The n-grams go into a pool keyed by their first token
// (at most G continuations per key, most recent first, duplicates dropped);
// the drafts of a step are the pool's newest continuation of the last
// emitted token. The pool is also fed with the n-grams of the prompt and of
// the accepted text (as the reference implementation's prompt pool).
//
// Where this implementation differs from the paper, plainly:
//  - One candidate per step, verified as a chain. The paper verifies up to G
//    candidates at once through a custom attention mask; that needs the
//    masked forward pass (coming with the paged-KV model) and TokenTree
//    verification (speculative_verifier.hpp already has the math).
//  - The lookahead branch is one level (the current window) appended after
//    the drafts in the SAME causal forward pass: [last, d1..dm, w1..wW]. The
//    window is thus conditioned on the drafts being right (when they are
//    not, its outputs are poorer guesses, nothing worse). The older levels
//    are kept host-side, indexed by absolute position, only to read off the
//    diagonal n-grams. The paper's 2D window attends each level through the
//    mask instead.
// Exactness does not depend on any of this: only the verification rows
// decide what is emitted, and the causal mask keeps them blind to the window.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <unordered_map>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/spec/drafter.hpp"

namespace fastinfer::spec {

struct LookaheadConfig {
  int window = 5;  // W: Jacobi window (guessed tokens fed per step)
  int ngram = 4;   // N: n-gram size (drafts are N - 1 tokens)
  int guesses = 5; // G: continuations kept per first token
};

class LookaheadPool final : public Drafter {
 public:
  LookaheadPool(LookaheadConfig config, int vocab) : c_(config), vocab_(vocab) {
    FASTINFER_CHECK(c_.window >= 1, InvalidArgument, "lookahead window W must be >= 1, got ", c_.window);
    FASTINFER_CHECK(c_.ngram >= 2, InvalidArgument, "lookahead n-gram size N must be >= 2, got ", c_.ngram);
    FASTINFER_CHECK(c_.guesses >= 1, InvalidArgument, "lookahead guess set G must be >= 1, got ", c_.guesses);
    FASTINFER_CHECK(vocab >= 1, InvalidArgument, "vocabulary size must be positive, got ", vocab);
  }

  const LookaheadConfig& config() const { return c_; }

  // --- the pool -------------------------------------------------------------
  // Adds the n-gram gram[0..N) (shorter ones are ignored).
  void add_ngram(const std::int32_t* gram, int n) {
    if (n != c_.ngram) return;
    std::vector<std::int32_t> cont(gram + 1, gram + n);
    auto& list = pool_[gram[0]];
    auto same = std::find(list.begin(), list.end(), cont);
    if (same != list.end()) list.erase(same);
    list.push_front(std::move(cont));
    if (int(list.size()) > c_.guesses) list.pop_back();
  }
  // Continuations of `first`, newest first (empty when none).
  const std::deque<std::vector<std::int32_t>>& continuations(std::int32_t first) const {
    static const std::deque<std::vector<std::int32_t>> none;
    const auto it = pool_.find(first);
    return it == pool_.end() ? none : it->second;
  }
  std::size_t pool_keys() const { return pool_.size(); }

  // --- the Jacobi bookkeeping --------------------------------------------------
  // Records one lookahead step: `inputs` were fed at positions start.., and
  // outputs[i] is the model's argmax after inputs[i] (a guess for position
  // start + i + 1). Collects the diagonal n-grams and keeps the guesses.
  void jacobi_update(int start, const std::vector<std::int32_t>& inputs, const std::vector<std::int32_t>& outputs) {
    FASTINFER_CHECK(inputs.size() == outputs.size(), InvalidArgument, "Jacobi update with ", inputs.size(),
                    " inputs but ", outputs.size(), " outputs");
    levels_.push_back(Level{start, inputs});
    while (int(levels_.size()) > c_.ngram - 1) levels_.pop_front();
    // Diagonal n-grams ending at output position q = start + i + 1: level
    // L-1-j supplies position q - 1 - j (the newest level supplies q - 1).
    const int n = c_.ngram;
    std::vector<std::int32_t> gram(std::size_t(n), 0);
    if (int(levels_.size()) == n - 1) {
      for (std::size_t i = 0; i < outputs.size(); ++i) {
        const int q = start + int(i) + 1;
        gram[std::size_t(n - 1)] = outputs[i];
        bool ok = true;
        for (int j = 0; j < n - 1 && ok; ++j) {
          const Level& lv = levels_[levels_.size() - 1 - std::size_t(j)];
          const int pos = q - 1 - j;
          ok = pos >= lv.start && pos < lv.start + int(lv.tokens.size());
          if (ok) gram[std::size_t(n - 2 - j)] = lv.tokens[std::size_t(pos - lv.start)];
        }
        if (ok) add_ngram(gram.data(), n);
      }
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) guess_[start + int(i) + 1] = outputs[i];
  }
  // The window of W guesses for positions start..: the last Jacobi outputs
  // where known, else tokens of the text so far (the paper starts from
  // random prompt tokens).
  std::vector<std::int32_t> window(int start, const std::vector<std::int32_t>& context) const {
    std::vector<std::int32_t> w(std::size_t(c_.window));
    for (int i = 0; i < c_.window; ++i) {
      const auto it = guess_.find(start + i);
      w[std::size_t(i)] = it != guess_.end() ? it->second
                                             : context[std::size_t(std::uint64_t(start + i) * 2654435761u %
                                                                   context.size())];
    }
    return w;
  }

  // --- Drafter -------------------------------------------------------------
  void begin(const std::vector<std::int32_t>& prompt) override {
    pool_.clear();
    levels_.clear();
    guess_.clear();
    for (std::size_t s = 0; s + std::size_t(c_.ngram) <= prompt.size(); ++s) add_ngram(prompt.data() + s, c_.ngram);
    fed_text_ = int(prompt.size());
  }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t, DraftProposal& out) override {
    out.clear();
    if (context.empty()) return;
    const auto& cands = continuations(context.back());
    if (k > 0 && !cands.empty()) {
      const auto& best = cands.front();
      out.tokens.assign(best.begin(), best.begin() + std::min<std::ptrdiff_t>(k, std::ptrdiff_t(best.size())));
    }
    window_start_ = int(context.size() + out.tokens.size());
    // Guesses before the window start are settled text or drafts: drop them.
    guess_.erase(guess_.begin(), guess_.lower_bound(int(context.size())));
    out.extra = window(window_start_, context);
    fed_window_ = out.extra;
  }

  void observe(const std::vector<std::int32_t>& context, int, const float* extra_logits, int n_extra) override {
    // Accepted text n-grams.
    const int len = int(context.size());
    for (int s = std::max(0, fed_text_ - c_.ngram + 1); s + c_.ngram <= len; ++s)
      add_ngram(context.data() + s, c_.ngram);
    fed_text_ = len;
    if (!extra_logits || n_extra <= 0) return;
    std::vector<std::int32_t> inputs = fed_window_;
    n_extra = std::min(n_extra, int(inputs.size()));
    inputs.resize(std::size_t(n_extra));
    std::vector<std::int32_t> outputs(static_cast<std::size_t>(n_extra));
    for (int i = 0; i < n_extra; ++i)
      outputs[std::size_t(i)] = cpu::argmax_token(extra_logits + std::size_t(i) * std::size_t(vocab_), vocab_);
    jacobi_update(window_start_, inputs, outputs);
  }

 private:
  struct Level {
    int start;
    std::vector<std::int32_t> tokens;
  };
  LookaheadConfig c_;
  int vocab_;
  std::unordered_map<std::int32_t, std::deque<std::vector<std::int32_t>>> pool_;
  std::deque<Level> levels_;       // the last N - 1 Jacobi inputs, by absolute position
  std::map<int, std::int32_t> guess_;  // position -> latest Jacobi output
  std::vector<std::int32_t> fed_window_;  // the window of the last proposal
  int window_start_ = 0;
  int fed_text_ = 0;
};

}  // namespace fastinfer::spec
