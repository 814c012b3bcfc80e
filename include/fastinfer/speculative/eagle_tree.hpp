// EAGLE-2's dynamic draft tree (Li et al. 2024, "EAGLE-2: Faster Inference
// of Language Models with Dynamic Draft Trees"), as bookkeeping: which nodes
// to expand and which to verify. The head's forward (eagle_head.hpp) and the
// target's pass (eagle_generate.hpp) live elsewhere; this header is
// standard-library only so that the policy is testable on its own.
//
// Every candidate carries a score, the product of the draft probabilities
// along its path from the root (EAGLE-2's "value": the head's calibrated
// confidence approximates the chance that the whole path is accepted).
//   expand  at depth d, only the top_k candidates of depth d by score get a
//           head forward; each adds its top_k children (score x child prob)
//   rerank  after the last depth, the `budget` best candidates of ALL depths
//           by score are verified. A child's score is at most its parent's
//           (probabilities are <= 1; float rounding of score * p with p <= 1
//           never exceeds score) and ties go to the earlier-made candidate,
//           so a chosen node's parent is always chosen before it: the
//           selection is a tree. (rerank still checks it and skips an orphan.)
// The verified TokenTree lists the top-1 chain (the best child of each chosen
// node, from the root) first, then the other nodes by depth, then score: the
// chain's KV is then already in place when greedy acceptance follows it
// (tree_batch.hpp, kept_in_place).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::speculative {

// The default tree is the one that decodes fastest on the memory-bound 110M
// stand-in (bench_eagle BM_EagleTrees110M, docs/speculative.md): every draft
// level streams the head's layer and the target's classifier, and a pass's
// cost grows with its rows well before 16 on a CPU, so 4 nodes (1.8 tokens
// per pass) beat 16 (2.2). Wider trees accept more where passes are cheap.
struct EagleTreeConfig {
  int depth = 3;   // most levels below the root
  int top_k = 2;   // children per expanded node, and nodes expanded per depth
  int budget = 4;  // nodes verified (rows of the target's pass beyond the pending ones)

  void validate() const {
    FASTINFER_CHECK(depth >= 0 && depth <= 64 && top_k >= 1 && top_k <= kMaxTreeChildren && budget >= 0 &&
                        budget <= 4096,
                    InvalidArgument, "EAGLE tree needs depth in [0, 64], top_k in [1, ", kMaxTreeChildren,
                    "], budget in [0, 4096]; got depth ", depth, ", top_k ", top_k, ", budget ", budget);
  }
};

struct DraftCandidate {
  std::int32_t token = 0;
  int parent = -1;     // an earlier candidate, or -1 (a child of the root)
  int depth = 1;       // 1-based
  float prob = 0.0f;   // the head's probability of `token` given the parent
  double score = 0.0;  // product of prob along the path
};

class DraftTreeBuilder {
 public:
  void clear() { c_.clear(); }
  const std::vector<DraftCandidate>& candidates() const { return c_; }
  int size() const { return int(c_.size()); }

  // Adds the children of `parent` (-1: the root): tokens[i] with draft
  // probability probs[i].
  void add_children(int parent, const std::int32_t* tokens, const float* probs, int n) {
    FASTINFER_CHECK(parent >= -1 && parent < size(), InvalidArgument, "draft tree: parent ", parent,
                    " is not a candidate (", size(), " so far)");
    const double base = parent < 0 ? 1.0 : c_[std::size_t(parent)].score;
    const int depth = parent < 0 ? 1 : c_[std::size_t(parent)].depth + 1;
    for (int i = 0; i < n; ++i) {
      FASTINFER_CHECK(probs[i] >= 0.0f && probs[i] <= 1.0f, InvalidArgument, "draft tree: probability ", probs[i],
                      " is outside [0, 1]");
      c_.push_back(DraftCandidate{tokens[i], parent, depth, probs[i], base * double(probs[i])});
    }
  }

  // The (at most) top_k candidates of `depth` by score, best first: the nodes
  // EAGLE-2 expands next.
  std::vector<int> frontier(int depth, int top_k) const {
    std::vector<int> out;
    for (int i = 0; i < size(); ++i)
      if (c_[std::size_t(i)].depth == depth) out.push_back(i);
    const auto better = [&](int a, int b) { return before_(a, b); };
    const std::size_t keep = std::min(out.size(), std::size_t(std::max(0, top_k)));
    std::partial_sort(out.begin(), out.begin() + long(keep), out.end(), better);
    out.resize(keep);
    return out;
  }

  // The `budget` best candidates as a tree (see the file comment for the
  // order); picked[i] is the candidate behind tree node i, ranks[i] its
  // place among the chosen, best first (the tree of budget k is the nodes of
  // rank < k: trees are nested in the budget, and ranks rise along a path).
  TokenTree rerank(int budget, std::vector<int>& picked, std::vector<int>* ranks = nullptr) const {
    std::vector<int> order(c_.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return before_(a, b); });
    // A candidate's place among the chosen, best first; -1: not chosen.
    std::vector<int> rank_of(c_.size(), -1);
    const auto chosen = [&](int i) { return rank_of[std::size_t(i)] >= 0; };
    int n = 0;
    for (int i : order) {
      if (n >= budget) break;
      const int p = c_[std::size_t(i)].parent;
      if (p >= 0 && !chosen(p)) continue;  // an orphan: cannot happen with scores <= parent's
      rank_of[std::size_t(i)] = n++;
    }
    // Top-1 chain from the root: the best chosen child at each level.
    picked.clear();
    std::vector<char> in_chain(c_.size(), 0);
    for (int at = -1;;) {
      int best = -1;
      for (int i = 0; i < size(); ++i)
        if (chosen(i) && c_[std::size_t(i)].parent == at && (best < 0 || before_(i, best))) best = i;
      if (best < 0) break;
      picked.push_back(best);
      in_chain[std::size_t(best)] = 1;
      at = best;
    }
    std::vector<int> rest;
    for (int i : order)
      if (chosen(i) && !in_chain[std::size_t(i)]) rest.push_back(i);
    std::stable_sort(rest.begin(), rest.end(),
                     [&](int a, int b) { return c_[std::size_t(a)].depth < c_[std::size_t(b)].depth; });
    picked.insert(picked.end(), rest.begin(), rest.end());
    if (ranks) {
      ranks->clear();
      for (int i : picked) ranks->push_back(rank_of[std::size_t(i)]);
    }
    std::vector<int> node_of(c_.size(), -1);
    TokenTree tree;
    for (std::size_t k = 0; k < picked.size(); ++k) {
      const DraftCandidate& d = c_[std::size_t(picked[k])];
      node_of[std::size_t(picked[k])] = int(k);
      tree.tokens.push_back(d.token);
      tree.parent.push_back(d.parent < 0 ? -1 : node_of[std::size_t(d.parent)]);
    }
    return tree;
  }

 private:
  // Higher score first; a tie goes to the earlier candidate.
  bool before_(int a, int b) const {
    const double sa = c_[std::size_t(a)].score, sb = c_[std::size_t(b)].score;
    return sa != sb ? sa > sb : a < b;
  }

  std::vector<DraftCandidate> c_;
};

// The n most probable tokens of a distribution, best first (ties: the lower
// id), with their softmax probabilities. One pass keeping a sorted top-n
// (n is a tree's top_k, a few) and one pass of float exponentials for the
// normaliser: the head drafts this for every expanded node, so it must not
// sort or exponentiate in double the whole vocabulary.
inline void top_tokens(const float* logits, int vocab, int n, std::int32_t* tokens, float* probs) {
  n = std::min(n, vocab);
  if (n <= 0) return;
  int have = 0;
  for (int t = 0; t < vocab; ++t) {
    const float x = logits[t];
    if (have == n && !(x > logits[tokens[n - 1]])) continue;  // equal: the lower id stays ahead
    int j = have < n ? have++ : n - 1;
    for (; j > 0 && x > logits[tokens[j - 1]]; --j) tokens[j] = tokens[j - 1];
    tokens[j] = std::int32_t(t);
  }
  const float mx = logits[tokens[0]];
  double total = 0;
  for (int t = 0; t < vocab; ++t) total += double(std::exp(logits[t] - mx));
  for (int r = 0; r < n; ++r) probs[r] = float(double(std::exp(logits[tokens[r]] - mx)) / total);
}

}  // namespace fastinfer::speculative
