// A second model as the drafter: a smaller checkpoint with the target's
// vocabulary, or the target itself loaded more cheaply (bf16 weights: a
// "self-draft"). It keeps its own KV cache in sync with the accepted text by
// remembering which tokens its cache holds: each proposal first re-feeds the
// context from the first position where that record and the context differ
// (the rejected drafts' positions are simply overwritten, as LlamaModel
// allows), then decodes k tokens one by one.
//
// Greedy requests draft the draft model's argmax (deterministic, no
// distribution needed). Sampling requests draw from the draft's filtered
// distribution q (same temperature / top-k / top-p as the target) with the
// coin Philox(seed, Speculative, index * kCoinSlots + kDraftSlot), and hand q
// to the verifier for exact rejection sampling. With AcceptanceRule::Coupled
// (sample-and-match) they instead draw draft j with the coin plain sampling
// uses at that request index, cpu::sample_at_index(draft logits, index + j):
// common random numbers through the same inverse CDF (kept tokens in id
// order), so whenever q is close to p the draft equals the token the target
// will sample there and is kept. No q is needed then (probs stay empty).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"

namespace fastinfer::speculative {

// Draft j of a chain proposal from the drafter's logits, as the header
// comment says: greedy argmax, the coupled rule's plain-sampling coin, or a
// draw from q (written to out.probs row j, sized for k rows at j = 0).
inline std::int32_t pick_draft(const float* logits, int vocab, const SamplingParams& params, AcceptanceRule rule,
                               std::uint64_t token_index, int j, int k, DraftProposal& out,
                               cpu::SamplerWorkspace& ws) {
  if (params.temperature == 0.0f) return cpu::argmax_token(logits, vocab);
  if (rule == AcceptanceRule::Coupled) return cpu::sample_at_index(logits, vocab, params, token_index + std::uint64_t(j), ws);
  if (j == 0) out.probs.resize(std::size_t(k) * std::size_t(vocab));
  float* q = out.probs.data() + std::size_t(j) * std::size_t(vocab);
  cpu::sampling_distribution(logits, vocab, params, q, ws);
  return cpu::sample_from_weights(q, vocab, spec_coin(params.seed, token_index + std::uint64_t(j), kDraftSlot));
}

// Positions of `context` whose KV a draft cache holding `cached` (its
// tokens, in position order) keeps: the common prefix, short of the last
// context token, which is always fed again (its row gives the first draft).
// DraftModel and the Engine's batched draft model (engine/batched_draft.hpp).
inline int reusable_prefix(const std::vector<std::int32_t>& cached, const std::vector<std::int32_t>& context) {
  int common = 0;
  const int limit = std::min<int>(int(cached.size()), int(context.size()) - 1);
  while (common < limit && cached[std::size_t(common)] == context[std::size_t(common)]) ++common;
  return common;
}

// Model: LlamaModel or anything with config(), reset(), cached_length(),
// forward_prefill(tokens, n, start_pos) and forward_decode(token, pos).
template <typename Model>
class DraftModel final : public Drafter {
 public:
  // `rule`: the verifier's rule, which decides how sampled drafts are drawn
  // (above). Exact and TypicalLossy draw from q with the Speculative coin.
  DraftModel(Model model, SamplingParams params, AcceptanceRule rule = AcceptanceRule::Exact)
      : model_(std::move(model)), params_(params), rule_(rule), ws_(model_.config().vocab_size) {
    cpu::validate(params);
  }

  AcceptanceRule rule() const { return rule_; }
  void set_rule(AcceptanceRule rule) { rule_ = rule; }

  Model& model() { return model_; }
  // Draft tokens fed through the draft model so far (its cost).
  std::int64_t draft_forwards() const { return forwards_; }

  void begin(const std::vector<std::int32_t>&) override {
    model_.reset();
    cached_.clear();
  }

  std::int64_t catch_up_tokens(const std::vector<std::int32_t>& context) const override {
    return std::int64_t(context.size()) - cached_prefix_(context);
  }

  void propose(const std::vector<std::int32_t>& context, int k, std::uint64_t token_index,
               DraftProposal& out) override {
    out.clear();
    const int vocab = model_.config().vocab_size;
    const int max_len = model_.config().max_seq_len;
    const int len = int(context.size());
    // Feeding d1..d_{k-1} needs positions len .. len + k - 2.
    k = std::min(k, max_len - len + 1);
    if (k <= 0 || len < 1) return;
    for (std::int32_t t : context)
      FASTINFER_CHECK(t >= 0 && t < vocab, InvalidArgument, "context token ", t,
                      " is outside the draft model's vocabulary [0, ", vocab, ")");
    const int common = cached_prefix_(context);
    cached_.assign(context.begin(), context.end());
    const float* logits = model_.forward_prefill(context.data() + common, len - common, common);
    ++forwards_;
    for (int j = 0; j < k; ++j) {
      const std::int32_t d = pick_draft(logits, vocab, params_, rule_, token_index, j, k, out, ws_);
      out.tokens.push_back(d);
      if (j + 1 < k) {
        logits = model_.forward_decode(d, int(cached_.size()));
        cached_.push_back(d);
        ++forwards_;
      }
    }
  }

 private:
  // Positions of `context` whose KV the cache holds.
  int cached_prefix_(const std::vector<std::int32_t>& context) const {
    return std::min(reusable_prefix(cached_, context), model_.cached_length());
  }

  Model model_;
  SamplingParams params_;
  AcceptanceRule rule_;
  cpu::SamplerWorkspace ws_;
  std::vector<std::int32_t> cached_;  // the tokens whose KV the draft model holds, in position order
  std::int64_t forwards_ = 0;
};

}  // namespace fastinfer::speculative
