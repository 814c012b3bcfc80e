// Per-request speculation inside the Engine (engine.hpp): the engine's
// speculation settings (SpecConfig), one speculating request's drafter,
// verifier and acceptance history (RequestSpeculation), and the step's
// drafting and verification of one row. The Engine keeps the batch: which
// requests draft how many tokens this step (spec_policy.hpp's choose_drafts),
// the one forward pass, the commit.
//
// Why a class of its own: drafting needs the request's context and token
// index, verification its sampling stream, and both feed the per-request
// history the adaptive policy reads; none of that is the engine's business
// beyond "propose" and "verify".
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/engine/spec_policy.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/sched/request.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/eagle_tree.hpp"
#include "fastinfer/speculative/early_exit_drafter.hpp"
#include "fastinfer/speculative/feature_draft_stream.hpp"
#include "fastinfer/speculative/lookahead_pool.hpp"
#include "fastinfer/speculative/medusa_stream.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"
#include "fastinfer/speculative/prompt_lookup.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::engine {

// Speculation settings of an engine.
struct SpecConfig {
  SpecPolicy policy = SpecAdaptive{};
  // What submit(request) without a RequestSpec uses.
  RequestSpec defaults{};
  // Weights of the draft model (SpecDrafter::DraftModel): e.g. the target
  // loaded with bf16 weights. Views with keep-alives. Must have the target's
  // vocabulary. One draft model drafts for every such request, in batched
  // passes (batched_draft.hpp); its KV pool holds draft_max_sequences
  // sequences of its whole context (0: the scheduler's max_seqs).
  std::optional<LlamaWeights> draft_weights;
  int draft_threads = 1;
  int draft_max_batch = 512;  // rows of one draft pass (a longer catch-up is chunked)
  int draft_max_sequences = 0;
  // EAGLE (SpecDrafter::Eagle) and MTP (SpecDrafter::Mtp): the feature head
  // or modules every such request drafts with (each request holds a copy:
  // the weights are shared, the rows are its own) and the trees' depth and
  // top_k (MTP's depth capped at its modules); a request's k is its tree's
  // node budget. They must read the target's features (dim, vocabulary).
  std::optional<speculative::EagleHead> eagle_head;
  std::optional<speculative::MtpHeads> mtp_heads;
  speculative::EagleTreeConfig eagle_tree{};
  // Medusa (SpecDrafter::Medusa): the heads every such request drafts with,
  // shared (their scratch too: the engine drafts one request at a time on
  // its thread; do not run them elsewhere meanwhile), and the trees' top_k
  // and max_depth (0: every head); a request's k is its tree's node budget.
  std::shared_ptr<speculative::MedusaHeads> medusa_heads;
  speculative::DynamicTree medusa_tree{};
  // Lookahead (SpecDrafter::Lookahead): the Jacobi window (W columns, N - 1
  // levels) and the n-gram pool (G continuations per token) of every such
  // request; a request's k is its tree's node budget. A drafting step feeds
  // the window's W x (levels) rows beside the tree, so a step's budget
  // (max_tokens_per_step) must hold them, the root and one node. Smaller
  // than the paper's (and the batch-1 loop's) 5,4,5: in a batch the
  // window's rows are paid by every request each step, and on the 110M
  // stand-in (2 requests, Xeon, bf16) 5,4,5 ran at 0.84x of plain decoding
  // with every row drafting, 3,3,4 at 1.0-1.1x (docs/speculative.md).
  speculative::LookaheadConfig lookahead{3, 3, 4};
  // How a sampled (temperature > 0) speculating row verifies its drafts.
  // Coupled: the tokens are plain sampling's, whatever the drafts (a
  // request's tokens do not depend on its batch). Exact: Leviathan rejection
  // sampling, exact in distribution, but the tokens depend on how many drafts
  // each step got. TypicalLossy: Medusa's, not exact. Greedy rows ignore it.
  speculative::AcceptanceRule sampled_rule = speculative::AcceptanceRule::Coupled;
};

namespace detail {
inline void require_draft_weights(const SpecConfig& cfg) {
  FASTINFER_CHECK(cfg.draft_weights.has_value(), InvalidArgument,
                  "a request asks for a draft model but EngineConfig::spec.draft_weights is empty");
}
inline void require_eagle_head(const SpecConfig& cfg) {
  FASTINFER_CHECK(cfg.eagle_head.has_value() && !cfg.eagle_head->empty(), InvalidArgument,
                  "a request asks for EAGLE but EngineConfig::spec.eagle_head is empty");
}
inline void require_mtp_heads(const SpecConfig& cfg) {
  FASTINFER_CHECK(cfg.mtp_heads.has_value() && !cfg.mtp_heads->empty(), InvalidArgument,
                  "a request asks for MTP but EngineConfig::spec.mtp_heads is empty");
}
inline void require_medusa_heads(const SpecConfig& cfg) {
  FASTINFER_CHECK(cfg.medusa_heads != nullptr, InvalidArgument,
                  "a request asks for Medusa but EngineConfig::spec.medusa_heads is empty");
}
inline bool is_tree_drafter(SpecDrafter d) {
  return d == SpecDrafter::Eagle || d == SpecDrafter::Mtp || d == SpecDrafter::Medusa;
}
}  // namespace detail

// Refuses a RequestSpec the engine cannot serve, naming the bad value: k
// outside [1, max_tokens_per_step - 1] (one step feeds 1 + k tokens), a draft
// model without SpecConfig::draft_weights, EAGLE without
// SpecConfig::eagle_head, MTP without SpecConfig::mtp_heads, Medusa without
// SpecConfig::medusa_heads, a tree with typical acceptance, an exit layer
// outside the model, bad n-gram sizes.
// A plain (SpecDrafter::None) spec is always fine.
inline void validate_request_spec(const RequestSpec& s, const SpecConfig& cfg, int max_tokens_per_step,
                                  int n_layers) {
  if (s.drafter == SpecDrafter::None) return;
  FASTINFER_CHECK(s.k >= 1 && s.k < max_tokens_per_step, InvalidArgument, "speculation k must be in [1, ",
                  max_tokens_per_step - 1, "] (one step feeds 1 + k tokens), got ", s.k);
  if (s.drafter == SpecDrafter::DraftModel) detail::require_draft_weights(cfg);
  if (s.drafter == SpecDrafter::Eagle) detail::require_eagle_head(cfg);
  if (s.drafter == SpecDrafter::Mtp) detail::require_mtp_heads(cfg);
  if (s.drafter == SpecDrafter::Medusa) detail::require_medusa_heads(cfg);
  if (detail::is_tree_drafter(s.drafter) || s.drafter == SpecDrafter::Lookahead)
    FASTINFER_CHECK(
        cfg.sampled_rule != speculative::AcceptanceRule::TypicalLossy, InvalidArgument,
        "EAGLE, MTP, Medusa and lookahead trees in the engine verify with the exact or coupled rule; typical "
        "acceptance (lossy) is refused (SpecConfig::sampled_rule)");
  if (s.drafter == SpecDrafter::Lookahead) {
    cfg.lookahead.validate();
    FASTINFER_CHECK(
        cfg.lookahead.window_rows() + 2 <= max_tokens_per_step, InvalidArgument,
        "lookahead's window of W x (N - 1) = ", cfg.lookahead.window_rows(),
        " rows, the root and one draft do not fit a step of max_tokens_per_step = ", max_tokens_per_step);
  }
  if (s.drafter == SpecDrafter::EarlyExit)
    FASTINFER_CHECK(s.exit_layer >= 0 && s.exit_layer <= n_layers, InvalidArgument, "early-exit layer ",
                    s.exit_layer, " is outside [0, ", n_layers, "] (0: half the layers)");
  if (s.drafter == SpecDrafter::PromptLookup)
    FASTINFER_CHECK(s.lookup_min_ngram >= 1 && s.lookup_max_ngram >= s.lookup_min_ngram, InvalidArgument,
                    "prompt lookup needs 1 <= min_ngram <= max_ngram, got ", s.lookup_min_ngram, " and ",
                    s.lookup_max_ngram);
}

// One speculating request: its drafter, its verifier (its own sampling
// stream) and what its drafts have earned so far.
class RequestSpeculation {
 public:
  // `target` is the engine's model; the request's KV sequence is `seq`
  // (an early-exit drafter shares it). Throws as validate_request_spec.
  template <typename Backend>
  RequestSpeculation(const RequestSpec& spec, const SamplingParams& sampling, SeqId seq,
                     LlamaModel<Backend>& target, const SpecConfig& cfg)
      : spec_(spec), vocab_(target.config().vocab_size) {
    FASTINFER_CHECK(spec.drafter != SpecDrafter::None, InvalidArgument,
                    "RequestSpeculation: the request asks for no drafter");
    if (spec.drafter == SpecDrafter::PromptLookup) {
      drafter_ = std::make_unique<speculative::PromptLookup>(
          speculative::PromptLookupConfig{spec.lookup_max_ngram, spec.lookup_min_ngram});
    } else if (spec.drafter == SpecDrafter::EarlyExit) {
      drafter_ = std::make_unique<speculative::EarlyExitDrafter<LlamaModel<Backend>>>(
          target, spec.exit_layer, sampling, cfg.sampled_rule, seq);
    } else if (spec.drafter == SpecDrafter::Eagle) {
      detail::require_eagle_head(cfg);
      stream_ = std::make_unique<speculative::EagleStream>(*cfg.eagle_head, cfg.eagle_tree);
    } else if (spec.drafter == SpecDrafter::Mtp) {
      detail::require_mtp_heads(cfg);
      stream_ = std::make_unique<speculative::MtpStream>(*cfg.mtp_heads, cfg.eagle_tree);
    } else if (spec.drafter == SpecDrafter::Medusa) {
      detail::require_medusa_heads(cfg);
      stream_ = std::make_unique<speculative::MedusaStream>(cfg.medusa_heads, cfg.medusa_tree);
    } else if (spec.drafter == SpecDrafter::Lookahead) {
      auto pool = std::make_unique<speculative::LookaheadPool>(cfg.lookahead, vocab_, &cpu::argmax_token<>);
      lookahead_ = pool.get();
      drafter_ = std::move(pool);
    } else {
      // The draft model is the engine's, shared by every request
      // (batched_draft.hpp): no drafter of its own.
      detail::require_draft_weights(cfg);
    }
    verifier_ = std::make_unique<speculative::SpeculativeVerifier>(vocab_, sampling, cfg.sampled_rule);
  }

  const RequestSpec& spec() const { return spec_; }
  // Whether the engine's batched draft model drafts for it (propose() does not).
  bool uses_draft_model() const { return spec_.drafter == SpecDrafter::DraftModel; }
  // Whether its drafts cost forward passes priced per draft (the step-cost
  // fit's per_model_draft: an early-exit draft costs exit_layer / n_layers
  // of a token, a draft model's its own share; the fit learns one price for
  // whichever runs). A head's trees (EAGLE, MTP, Medusa) are priced by the
  // passes they share with other requests' trees instead (per_draft_pass and
  // per_draft_row, FeatureStream::passes): priced per node, the commit and
  // first level a tree of one node pays made a node look three times dearer
  // than it is, and the switch kept trees small. Prompt lookup and
  // lookahead cost no pass.
  bool drafts_cost_passes() const {
    return spec_.drafter == SpecDrafter::DraftModel || spec_.drafter == SpecDrafter::EarlyExit;
  }
  // EAGLE and MTP: the request's feature stream (the engine feeds it every
  // computed row's feature and asks it for trees); null for chain drafters.
  speculative::FeatureStream* feature_stream() { return stream_.get(); }
  const speculative::FeatureStream* feature_stream() const { return stream_.get(); }

  // What the policy weighs for it this step, `last` being its last token
  // (the root of a tree): at most max_k drafts. A lookahead request whose
  // pool holds no n-gram after `last` drafts no tree this step whatever its
  // k: it expects one token (the adaptive switch keeps it plain; its
  // window's n-grams for later steps are not priced), while SpecAlways
  // still feeds its window.
  SpecCandidate candidate(sched::TokenId last) const {
    SpecCandidate c;
    c.max_k = spec_.k;
    c.window_rows = double(window_rows());
    if (lookahead_ && lookahead_->continuations(last).empty()) {
      c.acceptance = 0.0;
      return c;
    }
    c.acceptance = acceptance_.value();
    c.model_drafter = drafts_cost_passes();
    c.depths = &acceptance_.depths();
    c.batched_drafter = uses_draft_model() || stream_;
    if (stream_) c.draft_passes = stream_->passes();
    if (stream_ || lookahead_) c.budgets = &acceptance_.budgets();  // trees: priced by node budget
    return c;
  }

  // Lookahead: whether the request drafts trees of its n-gram pool, and the
  // rows of the Jacobi window a drafting step feeds beside them (W x the
  // levels grown so far; 0 for other drafters).
  bool is_lookahead() const { return lookahead_ != nullptr; }
  int window_rows() const { return lookahead_ ? lookahead_->window_rows_now() : 0; }

  // Lookahead's tree of at most `nodes` nodes after `context` (prompt and
  // output so far; the next token is the request's token `index`) into
  // `tree` and, with `with_window`, its Jacobi window into out.extra with
  // its layout (out.tokens stays empty: the tree is the draft). Trimming a
  // prefix in node order keeps the trees nested in the budget, so the node
  // index is its rank (verify_tree).
  void propose_lookahead(const std::vector<sched::TokenId>& context, std::uint64_t index, int nodes,
                         bool with_window, speculative::TokenTree& tree, speculative::DraftProposal& out,
                         sched::RequestId id) {
    FASTINFER_CHECK(lookahead_ != nullptr, Error, "Engine: request ", id,
                    " does not draft with lookahead (bug)");
    sync_lookahead(context, index);
    lookahead_->propose(context, nodes > 0 ? lookahead_->config().ngram - 1 : 0, index, out);
    tree.tokens.assign(out.tokens.begin(), out.tokens.end());
    tree.parent.assign(out.parent.begin(), out.parent.end());
    speculative::trim_tree(tree, INT_MAX, std::max(nodes, 0));
    for (std::int32_t t : tree.tokens)
      FASTINFER_CHECK(t >= 0 && t < vocab_, Error, "Engine: the lookahead pool of request ", id,
                      " proposed token ", t, " outside the vocabulary");
    out.tokens.clear();
    out.parent.clear();
    if (!with_window) {
      out.extra.clear();
      out.extra_depth.clear();
      out.extra_mask.clear();
    }
  }

  // Lookahead: the pool catches up with the tokens committed in steps it was
  // not told about (prefill, plain decodes, steps without a tree or
  // window): their n-grams, and the window moved to the new root.
  // `context`: prompt and output, the next token being the request's token
  // `index`. Nothing for other drafters.
  void sync_lookahead(const std::vector<sched::TokenId>& context, std::uint64_t index) {
    if (!lookahead_) return;
    const std::int64_t len = std::int64_t(context.size());
    if (synced_ < 0) {
      // As speculative_generate: begin() with the prompt, whose first output
      // token is emitted before the first step moves the window.
      const std::int64_t prompt = len - std::int64_t(index);
      lookahead_->begin(std::vector<std::int32_t>(context.begin(), context.begin() + prompt));
      synced_ = prompt + 1;
    }
    if (len > synced_) {
      // As a step without the window that kept len - synced_ - 1 drafts.
      lookahead_->observe(context, int(len - synced_ - 1), nullptr, 0);
      synced_ = len;
    }
  }

  // Lookahead, after a step that fed its tree or window: `context` (prompt
  // and output, the step's emitted tokens included), the accepted path's
  // length, and the window's rows [n_window][vocab] (null, 0: not fed). The
  // pool takes the text's n-grams, makes the window's Jacobi step and moves
  // it to the new root, as the batch-1 loop's observe().
  void observe_lookahead(const std::vector<sched::TokenId>& context, int accepted, const float* window_rows,
                         int n_window) {
    if (!lookahead_) return;
    lookahead_->observe(context, accepted, window_rows, n_window);
    synced_ = std::int64_t(context.size());
  }

  // At most max_drafts drafts after `context` (prompt and output so far),
  // the next token being the request's token `index`. A drafter that
  // proposes a token outside the vocabulary is a bug: Error naming it.
  void propose(const std::vector<sched::TokenId>& context, int max_drafts, std::uint64_t index,
               speculative::DraftProposal& out, sched::RequestId id) {
    FASTINFER_CHECK(drafter_ != nullptr, Error, "Engine: request ", id,
                    " drafts with the engine's draft model or a tree, not a chain drafter of its own (bug)");
    drafter_->propose(context, max_drafts, index, out);
    if (int(out.tokens.size()) > max_drafts) out.tokens.resize(std::size_t(max_drafts));
    for (std::int32_t t : out.tokens)
      FASTINFER_CHECK(t >= 0 && t < vocab_, Error, "Engine: the drafter of request ", id, " proposed token ", t,
                      " outside the vocabulary");
  }

  // Verifies `drafts` against the target's rows (rows[0] the row of the
  // last committed token, then one per draft) and records the outcome.
  speculative::VerifyOutcome verify(const float* rows, const speculative::DraftProposal& drafts,
                                    std::uint64_t index) {
    const int m = int(drafts.tokens.size());
    const float* q = drafts.probs.empty() ? nullptr : drafts.probs.data();
    return record_(m, verifier_->verify(rows, drafts.tokens.data(), m, q, index));
  }

  // Whether verify_samples() may stand for verify(): the rule keeps drafts
  // by matching the target's own picks (greedy, or the Coupled rule), so the
  // engine has the backend pick the m + 1 rows where they are.
  bool verifies_from_samples() const { return verifier_->verifies_from_samples(); }
  // verify() from the target's picks: samples[i] plain decoding's token of
  // row i at request index index + i (LlamaModel::sample_logits).
  speculative::VerifyOutcome verify_samples(const std::int32_t* samples,
                                            const speculative::DraftProposal& drafts) {
    const int m = int(drafts.tokens.size());
    return record_(m, verifier_->verify_from_samples(samples, drafts.tokens.data(), m));
  }

  // Whether verify_exact_picks() may stand for verify() for these drafts:
  // the exact rule at temperature > 0 over a deterministic drafter's chain
  // (no distributions), so the backend picks the m + 1 rows where they are
  // (LlamaModel::accept_logits with exact_coins).
  bool verifies_from_exact_picks(const speculative::DraftProposal& drafts) const {
    return drafts.probs.empty() && verifier_->verifies_from_exact_picks();
  }
  // The exact rule's coins (acceptance, residual) of request index `index`.
  std::pair<float, float> exact_coins(std::uint64_t index) const { return verifier_->exact_coins(index); }
  // verify() from picks[i] = the exact rule's pick of row i with drafts[i]
  // (-1 for the bonus row i = m) and exact_coins(index + i).
  speculative::VerifyOutcome verify_exact_picks(const std::int32_t* picks,
                                                const speculative::DraftProposal& drafts) {
    const int m = int(drafts.tokens.size());
    return record_(m, verifier_->verify_from_exact_picks(picks, drafts.tokens.data(), m));
  }

  // The tree form: rows[0] the root's row (the last unfed token), then one
  // per node. The acceptance history is kept by node count (a request's k
  // is its node budget): E(k) reads as tokens per step with k nodes.
  speculative::VerifyOutcome verify_tree(const float* rows, const speculative::TokenTree& tree,
                                         std::uint64_t index) {
    return record_tree_(tree, verifier_->verify_tree(rows, tree, nullptr, index));
  }
  // verify_tree() from the target's picks (when verifies_from_samples()):
  // samples[r] is plain decoding's token of row r at request index index +
  // tree.row_depths()[r].
  speculative::VerifyOutcome verify_tree_samples(const std::int32_t* samples,
                                                 const speculative::TokenTree& tree) {
    return record_tree_(tree, verifier_->verify_tree_from_samples(samples, tree));
  }

  // Decode rows that fed drafts, drafts fed, drafts kept; the policy's
  // per-draft acceptance estimate.
  std::int64_t rows() const { return rows_; }
  std::int64_t drafted() const { return drafted_; }
  std::int64_t accepted() const { return accepted_; }
  double acceptance_estimate() const { return acceptance_.value(); }
  // The switch gave it no drafts this step (AcceptanceEstimate::idle).
  void idle() { acceptance_.idle(); }

 private:
  speculative::VerifyOutcome record_tree_(const speculative::TokenTree& tree, speculative::VerifyOutcome v) {
    // The ranks of the accepted path's nodes, where the stream knows them for this tree.
    path_ranks_.clear();
    const bool ranked = lookahead_ || (stream_ && int(stream_->tree_ranks().size()) == tree.size());
    for (int node : v.path)
      if (ranked) path_ranks_.push_back(lookahead_ ? node : stream_->tree_ranks()[std::size_t(node)]);
    acceptance_.update_tree(tree.size(), v.accepted, ranked ? &path_ranks_ : nullptr);
    ++rows_;
    drafted_ += tree.size();
    accepted_ += v.accepted;
    return v;
  }
  speculative::VerifyOutcome record_(int m, speculative::VerifyOutcome v) {
    acceptance_.update(m, v.accepted);
    ++rows_;
    drafted_ += m;
    accepted_ += v.accepted;
    return v;
  }

  RequestSpec spec_;
  int vocab_;
  std::unique_ptr<speculative::Drafter> drafter_;
  speculative::LookaheadPool* lookahead_ = nullptr;  // drafter_, when it is lookahead's
  std::int64_t synced_ = -1;  // lookahead: context length its window is anchored to (-1: not begun)
  std::unique_ptr<speculative::FeatureStream> stream_;
  std::unique_ptr<speculative::SpeculativeVerifier> verifier_;
  AcceptanceEstimate acceptance_;
  std::vector<int> path_ranks_;
  std::int64_t rows_ = 0, drafted_ = 0, accepted_ = 0;
};

}  // namespace fastinfer::engine
