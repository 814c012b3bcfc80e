// The draft model of every Engine request that drafts with one
// (SpecDrafter::DraftModel), run as ONE model: each request has a sequence of
// its own in one KV pool, and a step's drafting is a few forward passes over
// all of them together: the catch-up (each request's tokens the draft has not
// seen: its prompt, the tokens verified since, chunked to the pass size),
// then one row per request per draft level. Per request, alone, a step cost
// 1 + (k - 1) one-row passes, each streaming every weight of the draft model
// for one token; 16 requests drafting 4 tokens each streamed the weights 64
// times a step, now 4 (batched matvecs read each weight once for all rows).
//
// A request's drafts are picked as speculative::DraftModel picks them
// (pick_draft: greedy argmax, the coupled rule's plain-sampling coin, or a
// draw from q with the Speculative coin); what a pass's batch-mates do to a
// row's bits is what they do to the target's rows (docs/benchmarks.md, batch
// invariance). The Engine's output never depends on the drafts: greedy rows
// emit the target's argmax chain, the coupled rule plain sampling's tokens.
//
// The pool is sized for `max_sequences` sequences of the draft's whole
// context (paged: a sequence holds only the blocks it fills). A request that
// ended gives its sequence back (release); when a step needs room that
// sequences of requests not drafting in it hold (preempted or waiting ones),
// they are dropped, and catch up from scratch when they draft again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/sched/request.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::engine {

// Whether a pass of `draft` over n rows costs at least the same pass of
// `target` on the same backend: it streams at least the target's weight
// bytes (an embedding table apart from the classifier is not streamed: one
// row a token), in the same types, does at least its multiply-adds per row
// and per attended key, and reads at least its KV bytes per key. Such a draft (the
// target's own weights, the usual "self-draft" stand-in) never makes a step
// faster. A plain step feeds B rows at price P(B); D of them drafting k
// tokens each cost k draft passes of at least P(D) and a verify pass of at
// least P(B), for at most B + kD tokens: (B + kD) / (P(B) + k P(D)) <=
// B / P(B) exactly when P(B) / B <= P(D) / D, which holds for D <= B (a pass
// reads the weights once for all its rows). The Engine's adaptive switch
// never drafts with it (SpecCandidate::never_pays).
template <typename Backend>
bool draft_costs_at_least(const LlamaModel<Backend>& draft, const LlamaModel<Backend>& target) {
  const auto row_macs = [](const LlamaConfig& c) {
    const double layer = 2.0 * double(c.dim) * c.q_dim() + 2.0 * double(c.dim) * c.kv_dim() +
                         3.0 * double(c.dim) * c.hidden_dim;
    return double(c.n_layers) * layer + double(c.vocab_size) * c.dim;
  };
  const auto key_macs = [](const LlamaConfig& c) { return double(c.n_layers) * c.q_dim(); };
  const auto same_types = [](const LlamaWeights& a, const LlamaWeights& b) {
    const LlamaLayerWeights &x = a.layers.front(), &y = b.layers.front();
    return a.classifier.dtype == b.classifier.dtype && x.wq.dtype == y.wq.dtype && x.wk.dtype == y.wk.dtype &&
           x.wv.dtype == y.wv.dtype && x.wo.dtype == y.wo.dtype && x.w_gate.dtype == y.w_gate.dtype &&
           x.w_down.dtype == y.w_down.dtype && x.w_up.dtype == y.w_up.dtype;
  };
  const auto streamed = [](const LlamaModel<Backend>& m) {
    const LlamaWeights& w = m.weights();
    const bool apart = w.classifier.data != w.token_embedding.data;
    return m.weights_bytes() - (apart ? w.token_embedding.bytes() : 0);
  };
  return same_types(draft.weights(), target.weights()) && streamed(draft) >= streamed(target) &&
         row_macs(draft.config()) >= row_macs(target.config()) &&
         key_macs(draft.config()) >= key_macs(target.config()) &&
         draft.kv().bytes_per_token() >= target.kv().bytes_per_token();
}

template <typename Backend = CpuBackend>
class BatchedDraftModel {
 public:
  // One request's drafting in a step.
  struct Job {
    sched::RequestId id = 0;
    const std::vector<sched::TokenId>* context = nullptr;  // prompt + output so far (not empty)
    int k = 0;                                             // drafts wanted (>= 1; fewer near the draft's context end)
    std::uint64_t token_index = 0;                         // the request's index of the first draft
    SamplingParams params{};
    speculative::DraftProposal* out = nullptr;             // cleared, then filled
  };

  // `weights`: the draft model's (views: shared, not copied); `max_batch`
  // rows per draft pass; `rule`: how sampled drafts are drawn (the Engine's
  // SpecConfig::sampled_rule, as DraftModel).
  BatchedDraftModel(const LlamaWeights& weights, int threads, int max_batch, int max_sequences, Backend backend,
                    speculative::AcceptanceRule rule)
      : model_(weights, options_(threads, max_batch, max_sequences), std::move(backend)),
        rule_(rule),
        ws_(weights.config.vocab_size) {}

  const LlamaModel<Backend>& model() const { return model_; }
  // Forward passes run so far, and the rows they fed (the draft's cost).
  std::int64_t forwards() const { return forwards_; }
  std::int64_t rows_fed() const { return rows_fed_; }
  // Requests whose sequence the pool holds.
  std::size_t sequences() const { return seqs_.size(); }

  // Tokens of `context` a propose() for request `id` would feed before its
  // first draft (Drafter::catch_up_tokens).
  std::int64_t catch_up_tokens(sched::RequestId id, const std::vector<sched::TokenId>& context) const {
    return std::int64_t(context.size()) - cached_prefix_(id, context);
  }

  // Every job's drafts, in a few passes over all of them. A job gets fewer
  // drafts where the draft model's context ends (drafts d1..d_{k-1} are fed
  // at positions len .. len + k - 2), none when its context does not fit:
  // the draft may be a checkpoint with a shorter context than the target's.
  // Throws InvalidArgument on a bad job (before any pass) and UsageError
  // when the pool cannot hold the jobs' sequences even after dropping every
  // other.
  void propose(const std::vector<Job>& jobs) {
    const LlamaConfig& c = model_.config();
    for (const Job& j : jobs) check_job_(j, c);
    k_.clear();
    for (const Job& j : jobs) {
      j.out->clear();
      const std::int64_t room = std::int64_t(c.max_seq_len) - std::int64_t(j.context->size()) + 1;
      k_.push_back(int(std::max<std::int64_t>(0, std::min<std::int64_t>(j.k, room))));
    }
    make_room_(jobs);
    // Catch-up: every job's unseen tokens, chunked to the pass size; a job's
    // first draft comes from the row of its last context token.
    next_.assign(jobs.size(), 0);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      if (k_[i] == 0) continue;
      next_[i] = cached_prefix_(jobs[i].id, *jobs[i].context);
      seqs_[jobs[i].id].assign(jobs[i].context->begin(), jobs[i].context->end());
    }
    for (bool pending = true; pending;) {
      pending = false;
      batch_.clear();
      batch_.logits = LogitsRows::PerEntry;
      rows_of_.clear();
      std::int32_t room = model_.max_batch();
      for (std::size_t i = 0; i < jobs.size() && room > 0; ++i) {
        const int len = int(jobs[i].context->size());
        if (k_[i] == 0 || next_[i] >= len) continue;
        const int n = std::min(len - next_[i], room);
        batch_.add(SeqId(jobs[i].id), jobs[i].context->data() + next_[i], n, next_[i]);
        next_[i] += n;
        room -= n;
        const bool last = next_[i] == len;
        batch_.logits_tail.push_back(last ? 1 : 0);
        if (last) rows_of_.push_back(i);
      }
      for (std::size_t i = 0; i < jobs.size(); ++i)
        pending = pending || (k_[i] > 0 && next_[i] < int(jobs[i].context->size()));
      const float* logits = forward_();
      for (std::size_t r = 0; r < rows_of_.size(); ++r) pick_(jobs[rows_of_[r]], 0, logits + r * std::size_t(c.vocab_size));
    }
    // Draft level j feeds draft j - 1 of every job that wants more.
    for (int j = 1;; ++j) {
      batch_.clear();
      batch_.logits = LogitsRows::Last;
      rows_of_.clear();
      for (std::size_t i = 0; i < jobs.size(); ++i) {
        if (j >= k_[i]) continue;
        const std::int32_t d = jobs[i].out->tokens.back();
        batch_.add(SeqId(jobs[i].id), &d, 1, ForwardBatch::kAppend);
        seqs_[jobs[i].id].push_back(d);
        rows_of_.push_back(i);
      }
      if (rows_of_.empty()) break;
      const float* logits = forward_();
      for (std::size_t r = 0; r < rows_of_.size(); ++r) pick_(jobs[rows_of_[r]], j, logits + r * std::size_t(c.vocab_size));
    }
  }

  // Forgets request `id`'s sequence (it ended); unknown ids are fine.
  void release(sched::RequestId id) {
    if (seqs_.erase(id) > 0) model_.kv().free_sequence(SeqId(id));
  }

 private:
  static ModelOptions options_(int threads, int max_batch, int max_sequences) {
    FASTINFER_CHECK(max_sequences >= 1, InvalidArgument, "batched draft model: max_sequences must be >= 1, got ",
                    max_sequences);
    ModelOptions o;
    o.threads = threads;
    o.max_batch = max_batch;
    o.kv.layout = KVLayoutKind::Paged;
    o.kv.max_sequences = max_sequences;
    return o;
  }

  void check_job_(const Job& j, const LlamaConfig& c) const {
    FASTINFER_CHECK(j.context && !j.context->empty() && j.out, InvalidArgument, "batched draft model: request ", j.id,
                    " has no context or no proposal to fill");
    FASTINFER_CHECK(j.k >= 1, InvalidArgument, "batched draft model: request ", j.id, " asks for ", j.k, " drafts");
    for (std::int32_t t : *j.context)
      FASTINFER_CHECK(t >= 0 && t < c.vocab_size, InvalidArgument, "context token ", t,
                      " is outside the draft model's vocabulary [0, ", c.vocab_size, ")");
  }

  // Positions of `context` whose KV request `id`'s sequence holds.
  int cached_prefix_(sched::RequestId id, const std::vector<sched::TokenId>& context) const {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? 0 : speculative::reusable_prefix(it->second, context);
  }

  // Creates the jobs' sequences and makes sure the pool can take the step:
  // sequences of requests not in `jobs` are dropped while blocks are short.
  void make_room_(const std::vector<Job>& jobs) {
    PagedAllocator& alloc = model_.kv().allocator();
    in_step_.clear();
    for (std::size_t i = 0; i < jobs.size(); ++i)
      if (k_[i] > 0) in_step_.push_back(jobs[i].id);
    std::sort(in_step_.begin(), in_step_.end());
    auto needed = [&] {
      std::int64_t blocks = 0;
      for (std::size_t i = 0; i < jobs.size(); ++i) {
        const Job& j = jobs[i];
        if (k_[i] == 0) continue;
        const std::int64_t end = std::int64_t(j.context->size()) + k_[i] - 1;
        const std::int64_t held = alloc.contains(SeqId(j.id)) ? std::int64_t(alloc.block_table(SeqId(j.id)).size()) : 0;
        blocks += std::max<std::int64_t>(0, alloc.blocks_for(end) - held);
      }
      return blocks;
    };
    auto drop_one_other = [&] {
      for (auto& kv : seqs_)
        if (!std::binary_search(in_step_.begin(), in_step_.end(), kv.first)) {
          release(kv.first);
          return true;
        }
      return false;
    };
    while (needed() > alloc.num_free_blocks())
      FASTINFER_CHECK(drop_one_other(), UsageError, "batched draft model: the draft KV pool (",
                      alloc.num_blocks(), " blocks) cannot hold the ", in_step_.size(), " drafting requests");
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      if (k_[i] == 0 || seqs_.count(j.id)) continue;
      while (!model_.kv().add_sequence(SeqId(j.id)))
        FASTINFER_CHECK(drop_one_other(), UsageError, "batched draft model: the draft KV pool has no room for request ",
                        j.id, "'s sequence");
      seqs_[j.id];
    }
  }

  const float* forward_() {
    ++forwards_;
    rows_fed_ += batch_.rows();
    return model_.forward(batch_);
  }

  void pick_(const Job& j, int level, const float* logits) {
    j.out->tokens.push_back(speculative::pick_draft(logits, model_.config().vocab_size, j.params, rule_,
                                                    j.token_index, level, j.k, *j.out, ws_));
  }

  LlamaModel<Backend> model_;
  speculative::AcceptanceRule rule_;
  cpu::SamplerWorkspace ws_;
  // Per request: the tokens whose KV its sequence holds, in position order.
  std::unordered_map<sched::RequestId, std::vector<sched::TokenId>> seqs_;
  std::int64_t forwards_ = 0;
  std::int64_t rows_fed_ = 0;
  // Per-call scratch, kept to avoid allocating per step.
  ForwardBatch batch_;
  std::vector<int> next_, k_;  // per job: the next token to feed, the drafts it gets
  std::vector<std::size_t> rows_of_;
  std::vector<sched::RequestId> in_step_;
};

}  // namespace fastinfer::engine
