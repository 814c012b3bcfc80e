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
// products run on the host (CpuBackend), as EAGLE's and MTP's do.
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
    FASTINFER_CHECK(tree_.top_k >= 1 && tree_.max_depth >= 0, InvalidArgument,
                    "Medusa drafting: a tree needs top_k >= 1 and max_depth >= 0, got ", tree_.top_k, " and ",
                    tree_.max_depth);
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
    (void)context;  // the heads read the feature alone
    FASTINFER_CHECK(ready(len), InvalidArgument, "Medusa drafting: no tree after ", len,
                    " tokens: the newest feature held is of position ", newest_, " (needs ", len - 2, ")");
    FASTINFER_CHECK(nodes >= 0, InvalidArgument, "Medusa drafting: a tree of ", nodes, " nodes");
    tree_out_ = TokenTree{};
    ranks_.clear();
    const int depth = std::min(depth_, nodes);  // a tree of k nodes is at most k deep
    if (depth == 0) return tree_out_;
    DynamicTree t = tree_;
    t.budget = nodes;
    backend_.set_threads(std::max(threads, 1));
    hidden_.resize(feature_.size());
    cpu::rmsnorm(hidden_.data(), feature_.data(), w.final_norm, w.config.dim, w.config.norm_eps);
    medusa_guesses(backend_, *heads_, hidden_.data(), w.classifier, guesses_needed(t), depth, guesses_, scratch_);
    const std::vector<TreePath> paths = select_paths(t, guesses_);  // best first, parents before children
    CandidateTree ct = build_candidate_tree(paths, guesses_, depth);
    // Node i's rank: where its path came out of the best-first selection
    // (the ranks of a path's tokens, read back from the guesses: a head's
    // guesses are distinct tokens).
    for (int i = 0; i < ct.tree.size(); ++i) {
      TreePath path(std::size_t(ct.depth[std::size_t(i)]));
      for (int a = i; a >= 0; a = ct.tree.parent[std::size_t(a)]) {
        const std::size_t d = std::size_t(ct.depth[std::size_t(a)] - 1);
        const std::vector<std::int32_t>& g = guesses_.tokens[d];
        path[d] = int(std::find(g.begin(), g.end(), ct.tree.tokens[std::size_t(a)]) - g.begin());
      }
      ranks_.push_back(int(std::find(paths.begin(), paths.end(), path) - paths.begin()));
    }
    tree_out_ = std::move(ct.tree);
    return tree_out_;
  }

  const std::vector<int>& tree_ranks() const override { return ranks_; }

 private:
  std::shared_ptr<MedusaHeads> heads_;
  DynamicTree tree_;
  int depth_ = 0;
  CpuBackend backend_;
  std::vector<float> feature_, hidden_, scratch_;
  std::int64_t newest_ = -1;
  HeadGuesses guesses_;
  TokenTree tree_out_;
  std::vector<int> ranks_;
};

}  // namespace fastinfer::speculative
