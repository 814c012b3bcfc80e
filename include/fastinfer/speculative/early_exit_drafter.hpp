// Self-speculative early exit (LayerSkip, Draft & Verify): the target drafts
// for itself with its first `exit_layer` layers, then its own final norm and
// classifier (no extra weights); the full model verifies through
// speculative_generate, so the output is exactly the target's.
//
// The drafter shares the target's KV cache instead of keeping one of its own:
// layers below the exit layer compute the same keys and values in the draft
// as in the full model, so after each verification pass the draft layers'
// KV of every accepted token is already there (written by the target), and
// a proposal only feeds the tokens the target has not verified yet (the last
// emitted one) and its own drafts, through the draft layers only. Those
// shallow writes sit at positions at or above the target's verified length,
// and the next verification pass starts at that length and rewrites every
// layer there, so the target never reads a draft-only position.
//
// Bookkeeping: none. Whoever calls propose has verified every context token
// but the last one at full depth (speculative_generate after a chain step or
// the prompt's prefill; an Engine asks a request for drafts only when one
// token is unfed), so the proposal feeds from len - 1 (or from the cache's
// length, if shorter). It never writes below that, so it can never spoil a
// position the target relies on, even if a caller verified less: the
// target's pass then rewrites from its own verified length (and the drafts
// are merely worse).
//
// Use one model object for both the drafter and the verification target
// (ModelTarget over the same LlamaModel, or an Engine over it: then `seq` is
// the request's KV sequence, whose draft slots the batcher has reserved),
// with a chain verification (the proposal is a chain). Sampling follows
// DraftModel: greedy drafts the argmax, Exact draws from q with the
// speculative coin and hands q over, Coupled draws with plain sampling's
// coin.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/memory/paged_allocator.hpp"
#include "fastinfer/speculative/draft_model.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::speculative {

// Model: LlamaModel or anything with config(), kv() (contains, length) and
// forward_prefill_exit(tokens, n, start_pos, layers, seq).
template <typename Model>
class EarlyExitDrafter final : public Drafter {
 public:
  // exit_layer in [1, n_layers]; 0: half the layers (rounded up).
  EarlyExitDrafter(Model& target, int exit_layer, SamplingParams params,
                   AcceptanceRule rule = AcceptanceRule::Exact, SeqId seq = Model::kSoloSequence)
      : m_(target),
        seq_(seq),
        exit_(exit_layer == 0 ? (target.config().n_layers + 1) / 2 : exit_layer),
        params_(params),
        rule_(rule),
        ws_(target.config().vocab_size) {
    FASTINFER_CHECK(exit_ >= 1 && exit_ <= target.config().n_layers, InvalidArgument, "exit layer ", exit_layer,
                    " is outside [1, ", target.config().n_layers, "] (the model's layers)");
    cpu::validate(params);
  }

  int exit_layer() const { return exit_; }
  AcceptanceRule rule() const { return rule_; }
  void set_rule(AcceptanceRule rule) { rule_ = rule; }
  // Tokens fed through the draft layers so far (the draft's cost, in
  // exit_layer / n_layers of a full token each).
  std::int64_t draft_tokens() const { return fed_; }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t token_index,
               DraftProposal& out) override {
    out.clear();
    const int vocab = m_.config().vocab_size;
    const int len = int(context.size());
    // Feeding d1..d_{k-1} needs positions len .. len + k - 2.
    k = std::min(k, m_.config().max_seq_len - len + 1);
    if (k <= 0 || len < 1) return;
    const int cached = m_.kv().contains(seq_) ? int(m_.kv().length(seq_)) : 0;
    const int common = std::min(len - 1, cached);
    const float* logits = m_.forward_prefill_exit(context.data() + common, len - common, common, exit_, seq_);
    fed_ += len - common;
    for (int j = 0; j < k; ++j) {
      const std::int32_t d = pick_draft(logits, vocab, params_, rule_, token_index, j, k, out, ws_);
      out.tokens.push_back(d);
      if (j + 1 < k) {
        logits = m_.forward_prefill_exit(&d, 1, len + j, exit_, seq_);
        ++fed_;
      }
    }
  }

 private:
  Model& m_;
  SeqId seq_;
  int exit_;
  SamplingParams params_;
  AcceptanceRule rule_;
  cpu::SamplerWorkspace ws_;
  std::int64_t fed_ = 0;
};

}  // namespace fastinfer::speculative
