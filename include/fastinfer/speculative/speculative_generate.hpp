// Speculative generation at batch 1: draft, verify with one target forward
// pass, emit the accepted run plus one target token, repeat.
//
// The target is reached through a narrow adapter (ModelTarget below) with
// four verbs: config(), reset(), prefill(prompt) -> last logits,
// verify(tokens, n, start_pos, rows_out) -> every row's logits, and
// truncate(length) after a step. LlamaModel's contiguous cache needs nothing
// for truncate (a forward at start_pos overwrites from there); a paged,
// quantized KVCache adapter frees the rejected tail's blocks there (never a
// block shared with the prefix cache: only positions >= length, which this
// request wrote itself during the step).
//
// Stop rules are generate.hpp's, applied token by token inside an accepted
// run: a BOS (or EOS when config.eos_id >= 0) ends the request without being
// emitted, max_new_tokens and max_seq_len cap the output, so the result stops
// exactly where plain generation stops. Greedy output equals plain greedy
// output token for token (the verification rows are the same arithmetic as
// forward_decode's: LlamaModel's matmul gives matvec's bits for up to 16
// tokens, so keep 1 + k + lookahead window <= 16 for bit-identity). The first
// token is picked from the prompt's prefill exactly as generate() does.
// With SpeculativeOptions::rule = AcceptanceRule::Coupled the same holds at
// temperature > 0: every emitted token is the one generate() samples at that
// index with the same seed (speculative_verifier.hpp); make a DraftModel
// with the same rule so that its drafts share the target's coins.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/speculative/adaptive_draft_length.hpp"
#include "fastinfer/speculative/drafter.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::speculative {

// LlamaModel (or any model with its forward_prefill / forward_prefill_all
// verbs) as a verification target.
template <typename Model>
class ModelTarget {
 public:
  explicit ModelTarget(Model& model) : m_(model) {}
  const LlamaConfig& config() const { return m_.config(); }
  void reset() { m_.reset(); }
  const float* prefill(const std::vector<std::int32_t>& prompt) { return m_.forward_prefill(prompt, 0); }
  void verify(const std::int32_t* tokens, int n, int start_pos, float* rows) {
    m_.forward_prefill_all(tokens, n, start_pos, rows);
  }
  // The sequence is `length` tokens long; positions beyond hold rejected work.
  void truncate(int length) { (void)length; }
  // Token trees and lookahead windows: one pass with positions and a custom
  // mask (tree_batch.hpp); every row's logits, valid until the next call.
  const float* verify_batch(const ForwardBatch& batch) { return m_.forward(batch); }
  int max_rows() const { return m_.max_batch(); }
  static constexpr SeqId kSequence = Model::kSoloSequence;

 private:
  Model& m_;
};

struct SpeculativeOptions {
  int k = 4;  // most drafts per step
  // Temperature > 0: Exact (rejection sampling), Coupled (generate()'s tokens,
  // bit for bit) or TypicalLossy. Temperature 0: greedy unless TypicalLossy.
  AcceptanceRule rule = AcceptanceRule::Exact;
  TypicalAcceptanceLossy typical{};  // used only with AcceptanceRule::TypicalLossy
  // Dynamic speculation (adaptive_draft_length.hpp): when set, each step
  // drafts the k (<= this k) it chooses, 0 being a plain decode step, and
  // reports the step's timings back. Owned by the caller, so what it learnt
  // (pass prices, acceptance) carries over to the next request; its max_k
  // must be >= k.
  AdaptiveDraftLength* adaptive = nullptr;
};

struct SpeculativeStats {
  std::int64_t target_forwards = 0;  // verification passes (the prompt's prefill not counted)
  std::int64_t drafted = 0;          // draft tokens offered to the verifier
  std::int64_t accepted = 0;         // drafts kept
  std::int64_t step_tokens = 0;      // tokens emitted by verification passes
  std::int64_t k_sum = 0;            // drafts asked for, summed over passes
  std::int64_t plain_steps = 0;      // passes that asked for no drafts (k = 0)
  // Tokens emitted per target forward pass: 1.0 is plain decoding.
  double mean_accepted_per_step() const {
    return target_forwards > 0 ? double(step_tokens) / double(target_forwards) : 0.0;
  }
  double acceptance_rate() const { return drafted > 0 ? double(accepted) / double(drafted) : 0.0; }
  // Drafts asked for per pass (with dynamic speculation: its mean choice).
  double mean_draft_length() const { return target_forwards > 0 ? double(k_sum) / double(target_forwards) : 0.0; }
};

struct SpeculativeResult {
  GenerationResult generation;
  SpeculativeStats stats;
};

namespace detail {

// Whether Target has verify_batch(ForwardBatch) / max_rows() for trees.
template <typename Target, typename = void>
struct takes_custom_mask : std::false_type {};
template <typename Target>
struct takes_custom_mask<Target, std::void_t<decltype(std::declval<Target&>().verify_batch(
                                                 std::declval<const ForwardBatch&>())),
                                             decltype(std::declval<const Target&>().max_rows())>>
    : std::true_type {};

// The stop rules and token emission shared by speculative_generate and
// medusa_generate (medusa_tree.hpp). emit(t) appends `t` to the result and to
// `seq` and passes it to `on_token`, unless it is BOS or EOS (not emitted);
// room_left() is false once max_new_tokens or max_seq_len is reached. Both
// record the stop reason when they end generation (return false).
template <typename OnToken>
struct SpecTokenEmitter {
  using Clock = std::chrono::steady_clock;
  const LlamaConfig& c;
  const GenerationParams& params;
  GenerationResult& r;
  std::vector<std::int32_t>& seq;
  OnToken& on_token;
  Clock::time_point t0;     // start of the prefill: ttft counts from here
  Clock::time_point first;  // when the first token was emitted (end of prefill before)

  bool emit(std::int32_t t) {
    if (t == c.bos_id) {
      r.stopped_by = StopReason::Bos;
      return false;
    }
    if (c.eos_id >= 0 && t == c.eos_id) {
      r.stopped_by = StopReason::Eos;
      return false;
    }
    r.tokens.push_back(t);
    seq.push_back(t);
    if (r.tokens.size() == 1) {
      first = Clock::now();
      r.ttft_seconds = seconds_between(t0, first);
    }
    on_token(t);
    return true;
  }

  // Emits a verified step's tokens (the first `accepted` of them drafts the
  // target agreed with) and counts them in st; false when generation is over.
  bool emit_step(const std::vector<std::int32_t>& tokens, int accepted, SpeculativeStats& st) {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (!emit(tokens[i])) return false;
      ++st.step_tokens;
      if (int(i) < accepted) ++st.accepted;
      if (!room_left()) return false;
    }
    return true;
  }

  bool room_left() {
    if (int(r.tokens.size()) >= params.max_new_tokens) {
      r.stopped_by = StopReason::MaxNewTokens;
      return false;
    }
    if (int(seq.size()) >= c.max_seq_len) {
      r.stopped_by = StopReason::SeqLen;
      return false;
    }
    return true;
  }
};

// A verified tree step's statistics (drafted = the nodes offered, k_sum =
// the depth asked for) and, with dynamic speculation on, its report: the
// tree drafters' loops (medusa_generate, eagle_generate) share it.
inline void record_tree_step(SpeculativeStats& st, AdaptiveDraftLength* adaptive, const TokenTree& tree, int depth,
                             int n_pending, int rows, int accepted, double draft_seconds, double pass_seconds,
                             std::vector<std::int32_t>& depth_nodes) {
  ++st.target_forwards;
  st.drafted += tree.size();
  st.k_sum += depth;
  if (depth == 0) ++st.plain_steps;
  if (!adaptive) return;
  DraftStepReport step;
  step.k = depth;
  step.base_rows = std::max(n_pending, 1);
  step.rows = rows;
  step.depths = tree_depth_counts(tree, depth_nodes);
  step.nodes_at_depth = depth_nodes.data();
  step.accepted = std::min(accepted, step.depths);
  step.draft_seconds = draft_seconds;
  step.pass_seconds = pass_seconds;
  adaptive->report(step);
}

}  // namespace detail

template <typename Target, typename OnToken>
SpeculativeResult speculative_generate(Target& target, Drafter& drafter, const std::vector<std::int32_t>& prompt,
                                       const GenerationParams& params, const SpeculativeOptions& options,
                                       OnToken&& on_token) {
  const LlamaConfig& c = target.config();
  validate_generation(c, prompt, params);
  FASTINFER_CHECK(options.k >= 0, InvalidArgument, "speculation length k must not be negative, got ", options.k);
  FASTINFER_CHECK(!options.adaptive || options.adaptive->max_k() >= options.k, InvalidArgument,
                  "speculation length k = ", options.k, " exceeds the adaptive controller's max_k = ",
                  options.adaptive ? options.adaptive->max_k() : 0);
  using Clock = std::chrono::steady_clock;

  SpeculativeResult out;
  GenerationResult& r = out.generation;
  SpeculativeStats& st = out.stats;
  r.prompt_tokens = int(prompt.size());
  const int vocab = c.vocab_size;
  cpu::SamplerWorkspace workspace(vocab);
  SpeculativeVerifier verifier(vocab, sampling_params(params), options.rule, options.typical);
  DraftProposal proposal;
  std::vector<std::int32_t> batch;
  std::vector<float> rows;
  std::vector<std::int32_t> seq = prompt;

  target.reset();
  drafter.begin(prompt);
  const auto t0 = Clock::now();
  const float* logits = target.prefill(prompt);
  const auto t1 = Clock::now();
  r.prefill_seconds = seconds_between(t0, t1);

  // Emits `t` unless a stop rule fires first; false when generation is over.
  detail::SpecTokenEmitter<std::remove_reference_t<OnToken>> out_tokens{c, params, r, seq, on_token, t0, t1};

  // Positions below `valid` hold the right KV. After a chain step that is
  // everything but the last emitted token; after a tree step whose accepted
  // path left node order, the path's tokens are fed again ("pending") in
  // front of the next pass (tree_batch.hpp).
  int valid = int(prompt.size());
  ForwardBatch tree_batch;
  TokenTree tree;
  DraftStepReport step;                  // for options.adaptive
  std::vector<std::int32_t> depth_nodes;  // a tree's nodes per depth, for `step`
  bool going = out_tokens.room_left() && out_tokens.emit(pick_token(logits, vocab, params, 0, workspace));
  while (going && out_tokens.room_left()) {
    const int len = int(seq.size());
    const int remaining = std::min(params.max_new_tokens - int(r.tokens.size()), c.max_seq_len - len);
    const int n_pending = len - valid;
    const int k_cap = std::min(options.k, remaining - 1);
    const std::int64_t catch_up = options.adaptive ? drafter.catch_up_tokens(seq) : 0;
    const int k = options.adaptive
                      ? options.adaptive->choose(std::max(n_pending, 1), k_cap, catch_up, remaining)
                      : k_cap;
    const auto d0 = Clock::now();
    if (k > 0 || !options.adaptive)
      drafter.propose(seq, k, std::uint64_t(r.tokens.size()), proposal);
    else
      proposal.clear();  // a plain decode step: no drafts, no lookahead window
    const auto d1 = Clock::now();
    const std::uint64_t first_index = std::uint64_t(r.tokens.size());
    VerifyOutcome v;
    const float* extra_rows = nullptr;
    int n_extra = 0;
    bool masked = proposal.is_tree() || proposal.has_extra_layout();
    if (masked && options.rule == AcceptanceRule::TypicalLossy && !proposal.has_extra_layout()) {
      // Typical acceptance is defined here on chains: read the tree as one.
      proposal.tokens = proposal.first_chain();
      proposal.parent.clear();
      masked = false;
    }
    if (masked) {
      if constexpr (detail::takes_custom_mask<Target>::value) {
        tree.tokens = proposal.tokens;
        tree.parent = proposal.parent;
        if (tree.parent.empty())
          for (int i = 0; i < tree.size(); ++i) tree.parent.push_back(i - 1);
        // Row r's KV slot is valid + r < max_seq_len, and a pass holds at
        // most max_rows() rows: drop the tree's tail, then the window's.
        const int room = std::min(target.max_rows(), c.max_seq_len - valid) - n_pending;
        trim_tree(tree, std::max(0, k), std::max(0, room));
        n_extra = std::max(0, std::min(int(proposal.extra.size()), room - tree.size()));
        if (n_extra > 0 && !proposal.has_extra_layout()) {
          // Causal extras after a chain-shaped tree keep their old meaning.
          proposal.extra_depth.clear();
          for (int e = 0; e < int(proposal.extra.size()); ++e) proposal.extra_depth.push_back(tree.size() + 1 + e);
          proposal.extra_mask.assign(proposal.extra.size() * proposal.extra.size(), 0);
          for (std::size_t e = 0; e < proposal.extra.size(); ++e)
            for (std::size_t f = 0; f <= e; ++f) proposal.extra_mask[e * proposal.extra.size() + f] = 1;
        }
        build_tree_batch(tree_batch, Target::kSequence, seq.data() + valid, n_pending, valid, tree,
                         proposal.extra.data(), proposal.extra_depth.data(), proposal.extra_mask.data(), n_extra,
                         int(proposal.extra.size()));
        const float* all = target.verify_batch(tree_batch) + std::size_t(n_pending - 1) * std::size_t(vocab);
        v = verifier.verify_tree(all, tree, nullptr, first_index);
        extra_rows = all + std::size_t(1 + tree.size()) * std::size_t(vocab);
        valid = len + kept_in_place(v.path);
        st.drafted += tree.size();
        step.rows = int(tree_batch.rows());
        step.depths = tree_depth_counts(tree, depth_nodes);
        step.nodes_at_depth = depth_nodes.data();
      } else {
        throw_error<UsageError>("the drafter proposed a token tree or a lookahead window, but this target takes no "
                                "custom mask (needs verify_batch(ForwardBatch) and max_rows())");
      }
    } else {
      const int m = std::min(k, int(proposal.tokens.size()));
      // Extra (lookahead) tokens sit at positions len + m ..; all must be < max_seq_len.
      n_extra = std::max(0, std::min(int(proposal.extra.size()), c.max_seq_len - (len + m)));
      batch.assign(seq.begin() + valid, seq.end());
      batch.insert(batch.end(), proposal.tokens.begin(), proposal.tokens.begin() + m);
      batch.insert(batch.end(), proposal.extra.begin(), proposal.extra.begin() + n_extra);
      rows.resize(batch.size() * std::size_t(vocab));
      target.verify(batch.data(), int(batch.size()), valid, rows.data());
      const float* q = proposal.probs.empty() ? nullptr : proposal.probs.data();
      const float* own = rows.data() + std::size_t(n_pending - 1) * std::size_t(vocab);
      v = verifier.verify(own, batch.data() + n_pending, m, q, first_index);
      extra_rows = own + std::size_t(1 + m) * std::size_t(vocab);
      valid = len + v.accepted;
      st.drafted += m;
      step.rows = int(batch.size());
      step.depths = m;
    }
    ++st.target_forwards;
    st.k_sum += k;
    if (k == 0) ++st.plain_steps;
    step.k = k;
    step.catch_up_tokens = k > 0 ? catch_up : 0;
    step.base_rows = std::max(n_pending, 1);
    step.accepted = std::min(v.accepted, step.depths);
    going = out_tokens.emit_step(v.tokens, v.accepted, st);
    target.truncate(std::min(valid, int(seq.size()) - 1));
    if (going) drafter.observe(seq, v.accepted, n_extra > 0 ? extra_rows : nullptr, n_extra);
    if (options.adaptive) {
      const auto d2 = Clock::now();
      step.draft_seconds = seconds_between(d0, d1);
      step.pass_seconds = seconds_between(d1, d2);
      options.adaptive->report(step);
    }
  }
  if (!r.tokens.empty()) r.decode_seconds = seconds_between(out_tokens.first, Clock::now());
  return out;
}

// A plain generate() result in the same shape: every token after the first
// came from one target forward pass (plus the pass that picked BOS / EOS).
inline SpeculativeResult plain_as_speculative(GenerationResult r) {
  SpeculativeResult out;
  const std::int64_t n = std::int64_t(r.tokens.size());
  out.stats.step_tokens = n > 0 ? n - 1 : 0;
  out.stats.target_forwards =
      out.stats.step_tokens + (n > 0 && (r.stopped_by == StopReason::Bos || r.stopped_by == StopReason::Eos) ? 1 : 0);
  out.generation = std::move(r);
  return out;
}

template <typename Target>
SpeculativeResult speculative_generate(Target& target, Drafter& drafter, const std::vector<std::int32_t>& prompt,
                                       const GenerationParams& params, const SpeculativeOptions& options = {}) {
  return speculative_generate(target, drafter, prompt, params, options, [](std::int32_t) {});
}

}  // namespace fastinfer::speculative
