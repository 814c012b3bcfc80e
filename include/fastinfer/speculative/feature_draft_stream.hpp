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
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/weights.hpp"
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
};

// A head type provides what feature_draft_generate asks of it (reset(),
// committed(), commit_accepted, expand_level), and a copy that shares its
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
    FASTINFER_CHECK(ready(len), InvalidArgument, "feature drafting: no tree after ", len,
                    " tokens: features held for [", base_, ", ", end(), ")");
    FASTINFER_CHECK(nodes >= 0, InvalidArgument, "feature drafting: a tree of ", nodes, " nodes");
    const std::size_t d = std::size_t(head_.dim());
    const std::int64_t first = base_ + head_.committed();  // first uncommitted position
    const int n = int(std::max<std::int64_t>(0, len - 1 - first));
    if (n > 0) {
      // The text from base() on, as the head type's commit reads it (its row
      // j's tokens follow position base() + j).
      text_.assign(context + base_, context + len);
      root_.resize(d);
      commit_accepted(head_, w, buffered_.data(), n, text_, root_.data(), threads);
      buffered_.erase(buffered_.begin(), buffered_.begin() + std::ptrdiff_t(std::size_t(n) * d));
      root_position_ = len - 1;
    }
    FASTINFER_CHECK(root_position_ == len - 1, InvalidArgument,
                    "feature drafting: the root feature is of position ", root_position_,
                    ", the context ends at ", len - 1, " (a context must not shrink between drafts)");
    tree_out_ = draft_feature_tree(head_, w, root_.data(), std::min(tree_.depth, nodes), tree_.top_k, nodes,
                                   ws_, threads);
    return tree_out_;
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
  std::vector<std::int32_t> text_;
  TokenTree tree_out_;
};

using EagleStream = FeatureDraftStream<EagleHead>;
using MtpStream = FeatureDraftStream<MtpHeads>;

}  // namespace fastinfer::speculative
