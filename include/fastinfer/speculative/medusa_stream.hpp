// Medusa heads as the Engine's tree drafter (a FeatureStream, as EAGLE and
// MTP are): the heads read the target's hidden state of the newest computed
// position, len - 2 (the row whose logits gave the root, context[len - 1]):
// its feature (the residual stream) through the final RMSNorm, what
// last_hidden() holds in the batch-1 loop. Head d guesses the token d + 1 below the root, without knowing the
// root (Medusa's design: one hidden state, K guesses). The tree is
// DynamicTree's: paths by the product of the heads' probabilities, best
// first, `nodes` of them, so the trees of smaller budgets are the first
// nodes of a larger one (tree_ranks() gives the order; the Engine's switch
// prices budgets with it). Medusa keeps no KV of its own: only the newest
// feature is held.
//
// The heads are shared by every stream of an engine (their weights are tens
// of MB on a stand-in) and keep scratch of their own, so streams sharing
// them draft one at a time: the Engine drafts on its own thread. Their
// products run on the host (CpuBackend), as EAGLE's and MTP's do. An Engine
// step drafts its Medusa streams together (stage() each, then
// draft_staged(): FeatureTreeBatch): each head's products run once for
// every request's row, so the heads and the classifier they share stream
// once a step, not once per request. A tree is the one its stream drafts
// alone wherever the products are batch invariant (<= 32 rows on the CPU).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"

namespace fastinfer::speculative {

class MedusaStream final : public FeatureStream {
 public:
  // `tree`'s budget is each draft()'s `nodes`; its top_k and max_depth (0:
  // every head) shape every tree.
  MedusaStream(std::shared_ptr<MedusaHeads> heads, const DynamicTree& tree) : heads_(std::move(heads)), tree_(tree) {
    FASTINFER_CHECK(heads_ != nullptr, InvalidArgument, "Medusa drafting: no heads");
    tree_.validate_shape("Medusa drafting: a tree");
    depth_ = tree_.max_depth > 0 ? std::min(tree_.max_depth, heads_->num_heads()) : heads_->num_heads();
  }

  // Only the newest position's feature matters: an older one is ignored.
  void observe(std::int64_t first, const float* features, std::int64_t n) override {
    FASTINFER_CHECK(first >= 0 && n >= 0, InvalidArgument, "Medusa drafting: features of positions ", first,
                    " + ", n);
    if (n == 0 || first + n - 1 < newest_) return;
    const std::size_t d = std::size_t(heads_->dim());
    feature_.assign(features + std::size_t(n - 1) * d, features + std::size_t(n) * d);
    newest_ = first + n - 1;
  }

  bool ready(std::int64_t len) const override { return newest_ >= 0 && newest_ == len - 2; }

  const TokenTree& draft(const LlamaWeights& w, const std::int32_t* context, std::int64_t len, int nodes,
                         int threads = 1) override {
    stage(context, len, nodes);
    MedusaStream* self = this;
    draft_staged(&self, 1, w, threads);
    return tree_out_;
  }

  // draft() in two halves, for drafting several streams' trees together:
  // stage() takes draft()'s arguments and checks; draft_staged() grows every
  // staged tree (tree() holds it until the stream's next one).
  void stage(const std::int32_t* context, std::int64_t len, int nodes) {
    (void)context;  // the heads read the feature alone
    FASTINFER_CHECK(ready(len), InvalidArgument, "Medusa drafting: no tree after ", len,
                    " tokens: the newest feature held is of position ", newest_, " (needs ", len - 2, ")");
    FASTINFER_CHECK(nodes >= 0, InvalidArgument, "Medusa drafting: a tree of ", nodes, " nodes");
    nodes_ = nodes;
    tree_out_ = TokenTree{};
    ranks_.clear();
  }
  const TokenTree& tree() const { return tree_out_; }

  // The staged trees of streams[0 .. n): the heads' products of every
  // stream sharing heads with the first in one call per head (the first's
  // backend and scratch), the rest likewise, then each stream's tree.
  static void draft_staged(MedusaStream* const* streams, int n, const LlamaWeights& w, int threads) {
    std::vector<MedusaStream*> group;
    std::vector<bool> done(std::size_t(std::max(n, 0)), false);
    for (int first = 0; first < n; ++first) {
      if (done[std::size_t(first)]) continue;
      group.clear();
      for (int i = first; i < n; ++i)
        if (!done[std::size_t(i)] && streams[i]->heads_ == streams[first]->heads_) {
          group.push_back(streams[i]);
          done[std::size_t(i)] = true;
        }
      draft_group_(group, w, threads);
    }
  }

  const std::vector<int>& tree_ranks() const override { return ranks_; }
  // Every head reads the root's feature once, whatever the tree: one pass.
  DraftPasses passes() const override { return {0, 1}; }
  // The heads read the newest feature alone: nothing to commit.
  std::int64_t rows_to_commit(std::int64_t) const override { return 0; }

 private:
  // Streams sharing one set of heads.
  static void draft_group_(const std::vector<MedusaStream*>& group, const LlamaWeights& w, int threads) {
    MedusaStream& lead = *group.front();
    const std::size_t dim = std::size_t(w.config.dim);
    lead.rows_.clear();
    lead.guess_counts_.clear();
    lead.depths_.clear();
    lead.batch_guesses_.resize(group.size());
    lead.hidden_.resize(group.size() * dim);
    for (MedusaStream* s : group) {
      const int depth = std::min(s->depth_, s->nodes_);  // a tree of k nodes is at most k deep
      if (depth == 0) continue;
      DynamicTree t = s->tree_;
      t.budget = s->nodes_;
      cpu::rmsnorm(lead.hidden_.data() + lead.rows_.size() * dim, s->feature_.data(), w.final_norm,
                   w.config.dim, w.config.norm_eps);
      lead.rows_.push_back(s);
      lead.guess_counts_.push_back(guesses_needed(t));
      lead.depths_.push_back(depth);
    }
    if (lead.rows_.empty()) return;
    lead.backend_.set_threads(std::max(threads, 1));
    medusa_guesses_rows(lead.backend_, *lead.heads_, lead.hidden_.data(), w.classifier,
                        int(lead.rows_.size()), lead.guess_counts_.data(), lead.depths_.data(),
                        lead.batch_guesses_.data(), lead.scratch_);
    for (std::size_t r = 0; r < lead.rows_.size(); ++r)
      lead.rows_[r]->build_tree_(lead.batch_guesses_[r], lead.depths_[r]);
  }

  // The tree of the staged budget from this stream's guesses.
  void build_tree_(const HeadGuesses& guesses, int depth) {
    DynamicTree t = tree_;
    t.budget = nodes_;
    const std::vector<TreePath> paths = select_paths(t, guesses);  // best first, parents before children
    CandidateTree ct = build_candidate_tree(paths, guesses, depth);
    // Node i's rank: where its path came out of the best-first selection
    // (the ranks of a path's tokens, read back from the guesses: a head's
    // guesses are distinct tokens).
    for (int i = 0; i < ct.tree.size(); ++i) {
      TreePath path(std::size_t(ct.depth[std::size_t(i)]));
      for (int a = i; a >= 0; a = ct.tree.parent[std::size_t(a)]) {
        const std::size_t d = std::size_t(ct.depth[std::size_t(a)] - 1);
        const std::vector<std::int32_t>& g = guesses.tokens[d];
        path[d] = int(std::find(g.begin(), g.end(), ct.tree.tokens[std::size_t(a)]) - g.begin());
      }
      ranks_.push_back(int(std::find(paths.begin(), paths.end(), path) - paths.begin()));
    }
    tree_out_ = std::move(ct.tree);
  }

  std::shared_ptr<MedusaHeads> heads_;
  DynamicTree tree_;
  int depth_ = 0;
  int nodes_ = 0;  // the staged tree's budget
  CpuBackend backend_;
  std::vector<float> feature_;
  std::int64_t newest_ = -1;
  TokenTree tree_out_;
  std::vector<int> ranks_;
  // draft_group_'s scratch (the group's first stream's): the rows' hidden
  // states, their streams, guess counts, depths and guesses.
  std::vector<float> hidden_, scratch_;
  std::vector<MedusaStream*> rows_;
  std::vector<int> guess_counts_, depths_;
  std::vector<HeadGuesses> batch_guesses_;
};

}  // namespace fastinfer::speculative
