// FeatureDraftStream<Head>: one sequence's feature drafting (EAGLE's head,
// MTP's modules) when the target's passes are not the drafter's own (the
// Engine's ragged batch, engine/engine.hpp). EagleStream and MtpStream name
// the two. feature_draft_generate (eagle_generate.hpp) runs the target itself
// and hands the head the features of the rows it just computed; here the
// features arrive by position from
// whatever pass computed them (a prefill chunk, a plain decode row, the
// pending rows and accepted nodes of a tree pass, a recompute after
// preemption), and the head reads them only when a tree is asked for.
//
// Positions. The head's committed row j reads the target's feature at
// position base() + j and the embedding of the token after it (the head's
// row p of eagle_generate.hpp, shifted by base(); MTP's module k the token
// k positions on, as mtp_heads.hpp says). base() is the first
// position observed: 0 normally, the first computed position when a prefix
// cache supplied the ones before (the head then never sees those: its drafts
// read less context; the target's verification does not care). The head's
// attention is RoPE'd at its own row index: the shift changes no score
// beyond rounding, since a rotary score depends on position differences.
//
// Lazy commit. observe() only copies the feature rows; draft() first commits
// every buffered row whose next token the context holds (the head type's
// commit_accepted, as the batch-1 loop calls it), which gives the root
// feature (the predicted feature of the context's last position, the tree's
// root). A sequence that decodes plainly for a while pays one copy of dim
// floats a token, no head work; the copies it holds are bounded: past
// kMaxBuffered rows the oldest half is dropped and the head starts afresh
// after them (a request the switch keeps plain for a long context holds at
// most kMaxBuffered x dim floats, and its next tree reads that recent
// context only).
//
// Several streams at once. An Engine step drafts for many requests:
// FeatureTreeBatch stages each one (draft()'s checks), commits every EAGLE
// stream's buffered rows in one head forward (EagleHead::commit_together),
// then grows all trees level by level with one head forward and one LM-head
// product a level (draft_feature_trees). draft() is the one-stream case.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/draft_passes.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/eagle_tree.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"

namespace fastinfer::speculative {

// What the Engine holds per request, whichever head drafts.
class FeatureStream {
 public:
  virtual ~FeatureStream() = default;
  // The target's features of positions first .. first + n - 1 ([n][dim],
  // each computed with its true context). Positions already held are
  // skipped; a position past the first one not yet held restarts the
  // stream there (what came before is unknown to it).
  virtual void observe(std::int64_t first, const float* features, std::int64_t n) = 0;
  // Whether a tree can follow a context of len tokens: every feature up to
  // position len - 2 is held, and at least one (the root needs a
  // predecessor).
  virtual bool ready(std::int64_t len) const = 0;
  // A tree of at most `nodes` nodes after context[0 .. len) (its last token
  // the root; ready(len) must hold), valid until the next draft(): the
  // buffered rows up to position len - 2 are committed first, the features
  // past them kept for later.
  virtual const TokenTree& draft(const LlamaWeights& w, const std::int32_t* context, std::int64_t len,
                                 int nodes, int threads) = 0;
  // The last tree's node ranks (DraftTreeBuilder::rerank): node i is the
  // ranks[i]-th best, and a budget of k would have drafted the nodes of rank
  // < k. Empty: unknown.
  virtual const std::vector<int>& tree_ranks() const = 0;
  // The head's forward passes a tree drafted beside other streams' costs
  // (FeatureTreeBatch runs each pass once for all of them): commit passes
  // for the new rows, then one a tree level. What the Engine's cost fit
  // prices drafting by.
  virtual DraftPasses passes() const = 0;
  // Rows a tree after a context of len tokens would commit first: the
  // features held but not yet through the head (every row since the last
  // tree, or the whole prompt before the first). The Engine's switch prices
  // them as catch-up (SpecCandidate::catch_up_rows); 0 for a drafter that
  // commits nothing.
  virtual std::int64_t rows_to_commit(std::int64_t len) const = 0;
};

// A head type provides what feature_draft_generate asks of it (reset(),
// committed(), commit_accepted, level_rows), and a copy that shares its
// weights: EagleHead (its weights are shared by copies), MtpHeads (a vector
// of them).
template <typename Head>
class FeatureDraftStream final : public FeatureStream {
 public:
  static constexpr std::int64_t kMaxBuffered = 1024;

  // `head` is copied (its weights are shared, its rows are this stream's);
  // `tree` gives the depth and top_k of every tree (MTP: the depth capped at
  // its modules); its budget is each draft()'s `nodes`.
  FeatureDraftStream(const Head& head, const EagleTreeConfig& tree) : head_(head), tree_(tree) {
    FASTINFER_CHECK(!head_.empty(), InvalidArgument, "feature drafting: the head is empty");
    tree_.validate();
    tree_.depth = std::min(tree_.depth, max_tree_depth(head_));
    head_.reset();
  }

  void observe(std::int64_t first, const float* features, std::int64_t n) override {
    FASTINFER_CHECK(first >= 0 && n >= 0, InvalidArgument, "feature drafting: features of positions ", first,
                    " + ", n);
    if (n == 0) return;
    if (!started_ || first > end()) {
      head_.reset();
      base_ = first;
      buffered_.clear();
      root_position_ = -1;
      started_ = true;
    }
    const std::int64_t skip = end() - first;  // >= 0 here
    if (skip >= n) return;
    const std::size_t d = std::size_t(head_.dim());
    buffered_.insert(buffered_.end(), features + std::size_t(skip) * d, features + std::size_t(n) * d);
    const std::int64_t rows = std::int64_t(buffered_.size() / d);
    if (rows > kMaxBuffered) {  // keep the newest half; the head restarts after the dropped rows
      const std::int64_t drop = rows - kMaxBuffered / 2;
      base_ = end() - rows + drop;
      head_.reset();
      buffered_.erase(buffered_.begin(), buffered_.begin() + std::ptrdiff_t(std::size_t(drop) * d));
      root_position_ = -1;
    }
  }

  // First position of the head's rows, and one past the last feature held.
  std::int64_t base() const { return base_; }
  std::int64_t end() const {
    return base_ + head_.committed() + std::int64_t(buffered_.size() / std::size_t(head_.dim()));
  }
  int committed() const { return head_.committed(); }

  bool ready(std::int64_t len) const override { return started_ && base_ <= len - 2 && end() >= len - 1; }

  const TokenTree& draft(const LlamaWeights& w, const std::int32_t* context, std::int64_t len, int nodes,
                         int threads = 1) override {
    stage(context, len, nodes);
    FeatureDraftStream* self = this;
    commit_staged(&self, 1, w, threads);
    FeatureTreeJob<Head> job = tree_job();
    draft_feature_trees(&job, 1, w, ws_, threads);
    return tree_out_;
  }

  // draft() in three steps, so that several streams can take each together
  // (FeatureTreeBatch): stage() makes draft()'s checks and notes the rows to
  // commit; commit_staged() commits them, giving each stream its root
  // feature; tree_job() is the tree for draft_feature_trees, which lands it
  // in tree().
  void stage(const std::int32_t* context, std::int64_t len, int nodes) {
    FASTINFER_CHECK(ready(len), InvalidArgument, "feature drafting: no tree after ", len,
                    " tokens: features held for [", base_, ", ", end(), ")");
    FASTINFER_CHECK(nodes >= 0, InvalidArgument, "feature drafting: a tree of ", nodes, " nodes");
    staged_rows_ = int(rows_to_commit(len));
    FASTINFER_CHECK(staged_rows_ > 0 || root_position_ == len - 1, InvalidArgument,
                    "feature drafting: the root feature is of position ", root_position_,
                    ", the context ends at ", len - 1, " (a context must not shrink between drafts)");
    // The text from base() on, as the head type's commit reads it (its row
    // j's tokens follow position base() + j).
    if (staged_rows_ > 0) text_.assign(context + base_, context + len);
    root_.resize(std::size_t(head_.dim()));
    nodes_ = nodes;
  }
  // Every stream's staged rows: EAGLE heads in one forward
  // (EagleHead::commit_together), MTP modules in one forward a module
  // (MtpHeads::commit_together).
  static void commit_staged(FeatureDraftStream* const* streams, int count, const LlamaWeights& w,
                            int threads) {
    if constexpr (std::is_same_v<Head, EagleHead>) {
      std::vector<EagleHead::Rows>& parts = streams[0]->commit_parts_;
      parts.clear();
      for (int i = 0; i < count; ++i) {
        FeatureDraftStream& s = *streams[i];
        if (s.staged_rows_ > 0)
          parts.push_back({&s.head_, s.buffered_.data(), s.text_.data() + s.head_.committed() + 1,
                           s.staged_rows_, s.root_.data()});
      }
      EagleHead::commit_together(w, parts.data(), int(parts.size()), threads);
    } else {
      std::vector<MtpHeads::Commit>& parts = streams[0]->commit_parts_;
      parts.clear();
      for (int i = 0; i < count; ++i) {
        FeatureDraftStream& s = *streams[i];
        if (s.staged_rows_ > 0)
          parts.push_back({&s.head_, s.buffered_.data(), s.staged_rows_, s.text_.data(), int(s.text_.size()),
                           s.root_.data()});
      }
      MtpHeads::commit_together(w, parts.data(), int(parts.size()), threads);
    }
    for (int i = 0; i < count; ++i) {
      FeatureDraftStream& s = *streams[i];
      if (s.staged_rows_ == 0) continue;
      s.buffered_.erase(
          s.buffered_.begin(),
          s.buffered_.begin() + std::ptrdiff_t(std::size_t(s.staged_rows_) * std::size_t(s.head_.dim())));
      s.root_position_ = std::int64_t(s.text_.size()) + s.base_ - 1;
      s.staged_rows_ = 0;
    }
  }
  // The staged tree's job (head, root feature, depth, top_k and budget).
  FeatureTreeJob<Head> tree_job() {
    const int depth = std::min(tree_.depth, nodes_);
    return FeatureTreeJob<Head>{&head_, root_.data(), depth, tree_.top_k, nodes_, &ws_, &tree_out_};
  }
  // The last tree drafted.
  const TokenTree& tree() const { return tree_out_; }
  const std::vector<int>& tree_ranks() const override { return ws_.ranks; }
  // EAGLE commits in one head forward, MTP in one a module; a level is one
  // forward (MTP: module d's).
  DraftPasses passes() const override {
    if constexpr (std::is_same_v<Head, EagleHead>)
      return {1, tree_.depth};
    else
      return {head_.module_count(), tree_.depth};
  }
  // Rows the staged tree commits first.
  int staged_rows() const { return staged_rows_; }
  std::int64_t rows_to_commit(std::int64_t len) const override {
    return started_ ? std::max<std::int64_t>(0, len - 1 - (base_ + head_.committed())) : 0;
  }

 private:
  Head head_;
  EagleTreeConfig tree_;
  EagleDraftWorkspace ws_;
  bool started_ = false;
  std::int64_t base_ = 0;
  std::vector<float> buffered_;  // features of positions base_ + committed() .. end()
  std::vector<float> root_;      // the head's predicted feature of position root_position_
  std::int64_t root_position_ = -1;
  int nodes_ = 0;        // the staged tree's budget
  int staged_rows_ = 0;  // buffered rows the staged tree commits first
  std::vector<std::int32_t> text_;
  // commit_staged's scratch (the first stream's): its head type's parts.
  std::vector<std::conditional_t<std::is_same_v<Head, EagleHead>, EagleHead::Rows, MtpHeads::Commit>>
      commit_parts_;
  TokenTree tree_out_;
};

using EagleStream = FeatureDraftStream<EagleHead>;
using MtpStream = FeatureDraftStream<MtpHeads>;

}  // namespace fastinfer::speculative
