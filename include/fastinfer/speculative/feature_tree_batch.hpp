// FeatureTreeBatch: the token trees of an Engine step's EAGLE, MTP and
// Medusa requests, drafted together so that each head's weights stream once
// a step for all of them (feature_draft_stream.hpp's streams and
// draft_feature_trees, medusa_stream.hpp's draft_staged).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/model/weights.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
#include "fastinfer/speculative/medusa_stream.hpp"

namespace fastinfer::speculative {

// The trees of an Engine step's feature-drafting requests, drafted
// together: the EAGLE streams' levels share one head forward and one LM-head
// product each (draft_feature_trees), and so do the MTP streams'. Per step:
// clear(), add() each request, draft(). A tree is the one its stream drafts
// alone wherever the products are batch invariant (<= 32 rows a level on
// the CPU). Medusa streams sharing heads share each head's products
// (MedusaStream::draft_staged). A FeatureStream of another type drafts alone
// inside add().
//
// forwards() and rows_fed() count what the drafting cost, as
// BatchedDraftModel's do: each head type's passes once a step for all its
// streams (the most any of its trees needs: FeatureStream::passes), the rows
// committed and the nodes drafted.
class FeatureTreeBatch {
 public:
  void clear() {
    eagle_.clear();
    mtp_.clear();
    medusa_.clear();
    eagle_passes_ = mtp_passes_ = medusa_passes_ = 0;
  }
  // Stages `stream`'s tree after context[0 .. len) (draft()'s arguments and
  // checks); returns where the tree is after draft() (valid until the
  // stream's next one).
  const TokenTree* add(FeatureStream& stream, const LlamaWeights& w, const std::int32_t* context,
                       std::int64_t len, int nodes, int threads) {
    if (auto* eagle = dynamic_cast<EagleStream*>(&stream))
      return stage_(*eagle, eagle_, eagle_passes_, context, len, nodes);
    if (auto* mtp = dynamic_cast<MtpStream*>(&stream))
      return stage_(*mtp, mtp_, mtp_passes_, context, len, nodes);
    if (auto* medusa = dynamic_cast<MedusaStream*>(&stream)) {
      medusa->stage(context, len, nodes);
      medusa_.push_back(medusa);
      medusa_passes_ = std::max(medusa_passes_, medusa->passes().at(nodes));
      rows_ += nodes;
      return &medusa->tree();
    }
    forwards_ += stream.passes().at(nodes);
    rows_ += nodes;
    return &stream.draft(w, context, len, nodes, threads);
  }
  // Every staged tree: the commits, then the trees, level by level.
  void draft(const LlamaWeights& w, int threads) {
    draft_(eagle_, eagle_jobs_, w, threads);
    draft_(mtp_, mtp_jobs_, w, threads);
    if (!medusa_.empty()) MedusaStream::draft_staged(medusa_.data(), int(medusa_.size()), w, threads);
    forwards_ += eagle_passes_ + mtp_passes_ + medusa_passes_;
    eagle_passes_ = mtp_passes_ = medusa_passes_ = 0;
  }

  // Head passes and rows (commits and tree nodes) drafted so far.
  std::int64_t forwards() const { return forwards_; }
  std::int64_t rows_fed() const { return rows_; }

 private:
  template <typename Head>
  const TokenTree* stage_(FeatureDraftStream<Head>& stream, std::vector<FeatureDraftStream<Head>*>& staged,
                          int& passes, const std::int32_t* context, std::int64_t len, int nodes) {
    stream.stage(context, len, nodes);
    staged.push_back(&stream);
    passes = std::max(passes, stream.passes().at(nodes));
    rows_ += stream.staged_rows() + nodes;
    return &stream.tree();
  }
  template <typename Head>
  void draft_(std::vector<FeatureDraftStream<Head>*>& staged, std::vector<FeatureTreeJob<Head>>& jobs,
              const LlamaWeights& w, int threads) {
    if (staged.empty()) return;
    FeatureDraftStream<Head>::commit_staged(staged.data(), int(staged.size()), w, threads);
    jobs.clear();
    for (FeatureDraftStream<Head>* s : staged) jobs.push_back(s->tree_job());
    draft_feature_trees(jobs.data(), int(jobs.size()), w, shared_, threads);
  }

  std::vector<EagleStream*> eagle_;
  std::vector<MtpStream*> mtp_;
  std::vector<MedusaStream*> medusa_;
  std::vector<FeatureTreeJob<EagleHead>> eagle_jobs_;
  std::vector<FeatureTreeJob<MtpHeads>> mtp_jobs_;
  EagleDraftWorkspace shared_;
  int eagle_passes_ = 0, mtp_passes_ = 0, medusa_passes_ = 0;  // the staged trees' (clear() to draft())
  std::int64_t forwards_ = 0, rows_ = 0;
};

}  // namespace fastinfer::speculative
