// Lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM
// Inference Using Lookahead Decoding") as a drafter, with the paper's two
// branches in ONE target forward pass.
//
// Lookahead branch: a 2-D window of W columns x L levels (L grows to N - 1
// during warm-up). Level j, column i is a guess for the token at root + i +
// j + 1 (root: the last emitted token). Fed level-major after the
// verification branch, it attends through a custom mask to
//   - the context (every accepted token, root included),
//   - level 0's columns 0..i (positions root + 1 .. root + i + 1), and
//   - its own column's levels 1..j (positions root + i + 2 .. root + i + j + 1),
// so each token sees exactly one token at every earlier position: a
// sequence, as the paper's Figure draws it (level 0 is causal among
// itself; a later level sees the earlier columns through level 0, not
// through its own level). window_layout() builds that mask; the test checks
// it against this sentence.
// After the pass, the argmax after the last level's column i is a guess for
// root + i + L + 1: once L = N - 1, column i with that output is an n-gram
// (level 0 .. level N-2, output) the model produced, added to the pool; the
// oldest level is dropped and the outputs become the newest level (during
// warm-up they are appended without dropping).
//
// Verification branch: up to G pool n-grams starting with the root token
// (newest first), merged into a trie (shared prefixes verified once) and
// proposed as a token tree (DraftProposal::parent): each node sees the
// context and its own ancestors only, so verification is the ordinary tree
// verification (greedy: longest path the argmax agrees with; sampling:
// SpecInfer's multi-round rejection with one-hot q). The pool is also fed
// with the prompt's and the accepted text's n-grams (as the reference
// implementation's prompt pool).
//
// Exactness never depends on the window: verification rows do not see it.
//
// Window shift: the window is anchored to the root, and a step that keeps a
// drafts moves the root by a + 1 positions, one more than the Jacobi step
// itself moves it. So after the step (n-grams collected, the outputs made
// the newest level), every level drops its first a columns: column i + a's
// guess, for old root + i + a + j + 1, is the guess for new root + i + j + 1
// at column i. The a columns freed on the right are refilled as level 0 was
// at the start (context tokens picked by a fixed hash; the paper's reference
// code fills with random tokens). A step without a Jacobi update (the window
// did not fit, or dynamic speculation made it a plain decode step) shifts
// by a + 1.
//
// Deviations from the paper, plainly:
//  - Level 0 starts as W tokens picked from the prompt by a fixed hash (the
//    paper: random prompt tokens); warm-up grows the window one level per
//    step from the last level's outputs.
//  - When a pass has no room for the whole window (max_rows, max_seq_len)
//    its tail is dropped and the window is not updated that step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "fastinfer/core/argmax.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::speculative {

struct LookaheadConfig {
  static constexpr int kMaxWindow = 256, kMaxNgram = 32, kMaxGuesses = 256;

  int window = 5;  // W: Jacobi window (guessed tokens fed per step)
  int ngram = 4;   // N: n-gram size (drafts are N - 1 tokens)
  int guesses = 5; // G: continuations kept per first token

  // Rows of the full window: W columns x (N - 1) levels.
  int window_rows() const { return window * (ngram - 1); }

  // Throws InvalidArgument naming the bad value. One step feeds W x (N - 1)
  // window tokens plus up to G x (N - 1) draft tokens; the pool keeps G
  // n-grams per token. Bounds far past the paper's settings (W, G <= 15,
  // N <= 8) keep a typo from sizing gigabytes.
  void validate() const {
    FASTINFER_CHECK(window >= 1, InvalidArgument, "lookahead window W must be >= 1, got ", window);
    FASTINFER_CHECK(ngram >= 2, InvalidArgument, "lookahead n-gram size N must be >= 2, got ", ngram);
    FASTINFER_CHECK(guesses >= 1, InvalidArgument, "lookahead guess set G must be >= 1, got ", guesses);
    FASTINFER_CHECK(window <= kMaxWindow && ngram <= kMaxNgram && guesses <= kMaxGuesses, InvalidArgument,
                    "lookahead W,N,G = ", window, ",", ngram, ",", guesses, " exceeds the limits ",
                    kMaxWindow, ",", kMaxNgram, ",", kMaxGuesses);
  }
};

class LookaheadPool final : public Drafter {
 public:
  static constexpr int kMaxWindow = LookaheadConfig::kMaxWindow, kMaxNgram = LookaheadConfig::kMaxNgram,
                       kMaxGuesses = LookaheadConfig::kMaxGuesses;

  // The greedy choice of a window row: first_argmax (std-only) unless the
  // caller passes its backend's (the programs pass cpu::argmax_token: the
  // same token, ~10x faster on a 32k vocabulary).
  using Argmax = std::int32_t (*)(const float* row, std::int64_t n);

  LookaheadPool(LookaheadConfig config, int vocab, Argmax argmax = &first_argmax)
      : c_(config), vocab_(vocab), argmax_(argmax) {
    c_.validate();
    FASTINFER_CHECK(vocab >= 1, InvalidArgument, "vocabulary size must be positive, got ", vocab);
  }

  const LookaheadConfig& config() const { return c_; }

  // --- the pool -------------------------------------------------------------
  // Adds the n-gram gram[0..N) (other lengths are ignored).
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

  // --- the 2-D window ---------------------------------------------------------
  // Depths (position after the root) and mask [W*L]^2 of a window of W
  // columns and L levels fed level-major (row e = level e / W, column e % W).
  static void window_layout(int w, int levels, std::vector<int>& depth, std::vector<std::uint8_t>& mask) {
    const int n = w * levels;
    depth.resize(std::size_t(n));
    mask.assign(std::size_t(n) * std::size_t(n), 0);
    for (int e = 0; e < n; ++e) {
      const int j = e / w, i = e % w;
      depth[std::size_t(e)] = i + j + 1;
      for (int f = 0; f <= e; ++f) {
        const int jf = f / w, i_f = f % w;
        if ((jf == 0 && i_f <= i) || (i_f == i && jf <= j)) mask[std::size_t(e) * std::size_t(n) + std::size_t(f)] = 1;
      }
    }
  }
  // Levels of the window, oldest first, W tokens each.
  const std::vector<std::vector<std::int32_t>>& levels() const { return levels_; }
  void set_levels(std::vector<std::vector<std::int32_t>> levels) {
    FASTINFER_CHECK(!levels.empty() && int(levels.size()) <= c_.ngram - 1, InvalidArgument, "a lookahead window has ",
                    levels.size(), " levels; 1 to N - 1 = ", c_.ngram - 1, " allowed");
    for (const auto& l : levels)
      FASTINFER_CHECK(int(l.size()) == c_.window, InvalidArgument, "a lookahead level holds ", l.size(),
                      " tokens, the window is W = ", c_.window);
    levels_ = std::move(levels);
  }
  // One Jacobi step: `outputs[i]` is the argmax after the last level's
  // column i. Collects the column n-grams once the window is full, then
  // makes the outputs the newest level.
  void jacobi_step(const std::vector<std::int32_t>& outputs) {
    FASTINFER_CHECK(int(outputs.size()) == c_.window, InvalidArgument, "a Jacobi step needs W = ", c_.window,
                    " outputs, got ", outputs.size());
    if (int(levels_.size()) == c_.ngram - 1) {
      std::vector<std::int32_t> gram(std::size_t(c_.ngram));
      for (int i = 0; i < c_.window; ++i) {
        for (std::size_t j = 0; j < levels_.size(); ++j) gram[j] = levels_[j][std::size_t(i)];
        gram.back() = outputs[std::size_t(i)];
        add_ngram(gram.data(), c_.ngram);
      }
      levels_.erase(levels_.begin());
    }
    levels_.push_back(outputs);
  }

  // --- Drafter -------------------------------------------------------------
  // Moves every level `a` columns to the left (the root moved a positions
  // further than one Jacobi step) and refills the freed columns from `context`.
  void shift_window(int a, const std::vector<std::int32_t>& context) {
    FASTINFER_CHECK(a >= 0, InvalidArgument, "a lookahead window shift must not be negative, got ", a);
    if (a == 0) return;
    for (auto& level : levels_) {
      const int keep = std::max(0, c_.window - a);
      std::copy(level.begin() + (c_.window - keep), level.end(), level.begin());
      for (int i = keep; i < c_.window; ++i) level[std::size_t(i)] = filler(context, i + a);
    }
  }

  void begin(const std::vector<std::int32_t>& prompt) override {
    pool_.clear();
    levels_.assign(1, std::vector<std::int32_t>(std::size_t(c_.window)));
    for (int i = 0; i < c_.window; ++i) levels_[0][std::size_t(i)] = filler(prompt, i);
    for (std::size_t s = 0; s + std::size_t(c_.ngram) <= prompt.size(); ++s) add_ngram(prompt.data() + s, c_.ngram);
    fed_text_ = int(prompt.size());
  }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t, DraftProposal& out) override {
    out.clear();
    if (context.empty()) return;
    if (k > 0) {
      TokenTree tree;
      for (const auto& cand : continuations(context.back()))
        add_tree_path(tree, cand.data(), std::min(k, int(cand.size())));
      out.tokens = std::move(tree.tokens);
      out.parent = std::move(tree.parent);
      // A one-node "tree" that is a chain still goes through the masked pass.
    }
    for (const auto& l : levels_) out.extra.insert(out.extra.end(), l.begin(), l.end());
    window_layout(c_.window, int(levels_.size()), out.extra_depth, out.extra_mask);
  }

  void observe(const std::vector<std::int32_t>& context, int accepted, const float* extra_logits,
               int n_extra) override {
    // Accepted text n-grams.
    const int len = int(context.size());
    for (int s = std::max(0, fed_text_ - c_.ngram + 1); s + c_.ngram <= len; ++s)
      add_ngram(context.data() + s, c_.ngram);
    fed_text_ = len;
    const int fed = window_rows_now();
    if (!extra_logits || n_extra < fed) {
      // The window did not fit this pass (or the step was a plain decode):
      // no Jacobi step, but the root still moved accepted + 1 positions.
      shift_window(accepted + 1, context);
      return;
    }
    std::vector<std::int32_t> outputs(std::size_t(c_.window));
    const float* last = extra_logits + std::size_t(fed - c_.window) * std::size_t(vocab_);
    for (int i = 0; i < c_.window; ++i)
      outputs[std::size_t(i)] = argmax_(last + std::size_t(i) * std::size_t(vocab_), vocab_);
    jacobi_step(outputs);
    shift_window(accepted, context);
  }

  // Rows of the window propose() feeds now: W x the levels it has grown to.
  int window_rows_now() const { return c_.window * int(levels_.size()); }

 private:
  // A stand-in guess for window column `i`: a context token picked by a
  // fixed hash (deterministic, so runs repeat).
  static std::int32_t filler(const std::vector<std::int32_t>& context, int i) {
    return context.empty() ? 0 : context[std::size_t(std::uint64_t(i + 1) * 2654435761u % context.size())];
  }

  LookaheadConfig c_;
  int vocab_;
  Argmax argmax_;
  std::unordered_map<std::int32_t, std::deque<std::vector<std::int32_t>>> pool_;
  std::vector<std::vector<std::int32_t>> levels_;  // the window, oldest level first
  int fed_text_ = 0;
};

}  // namespace fastinfer::speculative
