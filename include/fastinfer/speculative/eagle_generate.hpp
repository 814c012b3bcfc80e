// EAGLE generation at batch 1 (EAGLE-1's feature drafter, EAGLE-2's dynamic
// tree): each step
//   1. drafts a tree with the head (eagle_head.hpp) from the predicted
//      feature of the last emitted token, growing and reranking it as
//      eagle_tree.hpp says;
//   2. verifies it in ONE target pass through the shared tree machinery
//      (tree_batch.hpp's layout, SpeculativeVerifier::verify_tree: greedy,
//      exact multi-round rejection with deterministic candidates, or the
//      coupled rule);
//   3. reads the target's features of the accepted path (pending rows and
//      accepted nodes of that same pass, LlamaModel::last_features()) into
//      the head's committed rows, so the next step drafts from true features.
//
// Head positions: the head's committed row p holds (f_p, token p + 1). After
// a step the sequence has `len` tokens and the head len - 1 rows; the last
// row's output is the predicted feature of position len - 1 (the root),
// whose LM head gives the depth-1 drafts.
//
// KV rollback of the target is tree_batch.hpp's: accepted nodes off the
// top-1 chain are recomputed as pending tokens at the front of the next pass.
// Exactness is the verifier's and does not depend on the head: greedy output
// is plain greedy's, the coupled rule's output is plain sampling's bit for bit
// (while a pass stays within cpu::gemm_detail::kDotMaxTokens rows, as for
// Medusa: the default budget keeps pending + nodes <= 32).
//
// The tree builder and the loop are templates on the drafting head, so that
// MTP modules (mtp_heads.hpp, mtp_generate.hpp) reuse them: a head type
// provides reset(), clear_tree(), check_compatible(config) and the free
// functions max_tree_depth (the deepest tree it drafts), level_rows (level
// d >= 2 of the tree as a part of EagleHead::expand_together: EAGLE's one
// head every level, MTP's module d) and commit_accepted (the target's
// features of the accepted text into the head; the root feature out), found
// by ADL.
#pragma once

#include <algorithm>
#include <chrono>
#include <limits>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/speculative/adaptive_draft_length.hpp"
#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/eagle_tree.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::speculative {

// Seconds spent in each part of EAGLE's steps, summed over steps (a profile
// of the loop: bench_eagle reports it per step). head = the head's layer on
// tree rows, lm_head = final norm + classifier over drafted features,
// tree = top-k, expansion and rerank bookkeeping, pass = building the tree
// batch and the target's forward, verify = the verifier and the step's
// bookkeeping (the accepted rows' features, emitting), commit = the head's
// committed rows (its KV append and the next root feature).
struct EagleTimings {
  double head = 0, lm_head = 0, tree = 0, pass = 0, verify = 0, commit = 0;
  std::int64_t steps = 0, head_rows = 0, lm_rows = 0;
};

struct EagleOptions {
  EagleTreeConfig tree{};
  // Exact (rejection sampling over the tree) or Coupled (plain sampling's
  // tokens); greedy at temperature 0 either way. TypicalLossy is refused.
  AcceptanceRule rule = AcceptanceRule::Exact;
  // Dynamic speculation (adaptive_draft_length.hpp): each step's tree depth
  // (0: a plain step), at most tree.depth. Not owned; null: full depth.
  AdaptiveDraftLength* adaptive = nullptr;
  // Where a step's time goes (not owned; null: not measured).
  EagleTimings* timings = nullptr;
};

namespace detail {
// Adds the time since the last lap to one EagleTimings field (nothing when
// timings is null: the clock is not even read).
class Lap {
 public:
  explicit Lap(EagleTimings* t) : t_(t) {
    if (t_) last_ = std::chrono::steady_clock::now();
  }
  void to(double EagleTimings::*field, int rows = 0) {
    if (!t_) return;
    const auto now = std::chrono::steady_clock::now();
    t_->*field += std::chrono::duration<double>(now - last_).count();
    if (field == &EagleTimings::head) t_->head_rows += rows;
    if (field == &EagleTimings::lm_head) t_->lm_rows += rows;
    last_ = now;
  }

 private:
  EagleTimings* t_;
  std::chrono::steady_clock::time_point last_{};
};
}  // namespace detail

// The EagleHead's side of the template: the same head at every level (any
// depth), and its committed row p reads (f_p, token p + 1).
inline int max_tree_depth(const EagleHead&) { return std::numeric_limits<int>::max(); }
inline EagleHead::TreeRows level_rows(EagleHead& head, int /*level*/, const float* features,
                                      const std::int32_t* tokens, const int* parent_rows, int n, float* out) {
  return EagleHead::TreeRows{{&head, features, tokens, n, out}, parent_rows, 0};
}
// features [n][dim]: the target's features of positions head.committed()..;
// seq: the whole text so far (it holds the token after each of them).
inline void commit_accepted(EagleHead& head, const LlamaWeights& w, const float* features, int n,
                            const std::vector<std::int32_t>& seq, float* root, int threads) {
  FASTINFER_CHECK(head.committed() + n < int(seq.size()), InvalidArgument, "EAGLE head: ", n,
                  " rows past position ", head.committed(), " need more than ", seq.size(), " tokens");
  head.commit(w, features, seq.data() + head.committed() + 1, n, root, threads);
}

// Scratch of the tree builder, kept across steps so that drafting allocates
// nothing once warm. A tree's bookkeeping (builder .. row_feats) is its
// job's; the rest holds a level's rows of every job drafting together.
struct EagleDraftWorkspace {
  DraftTreeBuilder builder;
  std::vector<int> picked, ranks, cand_row, front;  // ranks: the tree's (DraftTreeBuilder::rerank)
  std::vector<float> row_feats;  // the features drafted so far, one row per expanded node
  std::vector<int> parent_rows, first_row;
  std::vector<std::int32_t> tokens, top;
  std::vector<float> feats_in, feats_out, logits, norm, probs;
  std::vector<EagleHead::TreeRows> parts;
};

// One tree of draft_feature_trees: draft_feature_tree's arguments.
template <typename Head>
struct FeatureTreeJob {
  Head* head = nullptr;
  const float* root_feature = nullptr;  // [dim]
  int depth = 0, top_k = 1, budget = 0;
  EagleDraftWorkspace* ws = nullptr;  // the tree's bookkeeping
  TokenTree* out = nullptr;           // the tree
};

// EAGLE-2 draft trees of several heads at once (an Engine step's requests):
// depth-1 candidates from each root feature, then for depth 2.. the top_k
// candidates of the level above are expanded, and the `budget` best of each
// tree are kept. Level by level, every job's rows share ONE head forward
// (EagleHead::expand_together, through the head type's level_rows) and one
// LM-head product, so the head's layer and the target's classifier are
// streamed once a level for all jobs. Each job's tree is the one it drafts
// alone wherever the products are batch invariant (EagleHead::expand_together);
// `shared` holds the level's rows (it may be a job's own ws).
template <typename Head>
void draft_feature_trees(FeatureTreeJob<Head>* jobs, int count, const LlamaWeights& w,
                         EagleDraftWorkspace& shared, int threads = 1, EagleTimings* timings = nullptr) {
  detail::Lap lap(timings);
  const int vocab = w.config.vocab_size;
  const std::size_t d = std::size_t(w.config.dim), v = std::size_t(vocab);
  // Whether a job drafts at all (a tree of no level or no node is empty).
  const auto drafts = [&](int j) { return jobs[j].depth > 0 && jobs[j].budget > 0; };
  int max_depth = 0, max_top_k = 0, roots = 0;
  for (int j = 0; j < count; ++j) {
    FeatureTreeJob<Head>& job = jobs[j];
    job.head->clear_tree();
    job.ws->builder.clear();
    job.ws->row_feats.clear();
    *job.out = TokenTree{};
    job.ws->ranks.clear();
    if (!drafts(j)) continue;
    max_depth = std::max(max_depth, job.depth);
    max_top_k = std::max(max_top_k, job.top_k);
    ++roots;
  }
  if (roots == 0) return;
  shared.top.resize(std::size_t(max_top_k));
  shared.probs.resize(std::size_t(max_top_k));
  const auto add_children = [&](FeatureTreeJob<Head>& job, int parent, const float* logits) {
    top_tokens(logits, vocab, job.top_k, shared.top.data(), shared.probs.data());
    job.ws->builder.add_children(parent, shared.top.data(), shared.probs.data(), std::min(job.top_k, vocab));
  };
  // Depth 1: every root's LM head in one product.
  shared.feats_in.resize(std::size_t(roots) * d);
  for (int j = 0, r = 0; j < count; ++j)
    if (drafts(j))
      std::copy(jobs[j].root_feature, jobs[j].root_feature + d,
                shared.feats_in.begin() + long(std::size_t(r++) * d));
  shared.logits.resize(std::size_t(roots) * v);
  EagleHead::lm_logits(w, shared.feats_in.data(), roots, shared.logits.data(), shared.norm, threads);
  lap.to(&EagleTimings::lm_head, roots);
  for (int j = 0, r = 0; j < count; ++j) {
    if (!drafts(j)) continue;
    add_children(jobs[j], -1, shared.logits.data() + std::size_t(r++) * v);
    jobs[j].ws->cand_row.assign(std::size_t(jobs[j].ws->builder.size()), -1);
  }
  for (int level = 2; level <= max_depth; ++level) {
    // Each job's frontier: the rows of this level, job after job.
    shared.first_row.assign(std::size_t(count), -1);
    int total = 0;
    for (int j = 0; j < count; ++j) {
      EagleDraftWorkspace& ws = *jobs[j].ws;
      if (!drafts(j) || level > jobs[j].depth) continue;
      ws.front = ws.builder.frontier(level - 1, jobs[j].top_k);
      if (ws.front.empty()) continue;
      shared.first_row[std::size_t(j)] = total;
      total += int(ws.front.size());
    }
    if (total == 0) break;
    shared.feats_in.resize(std::size_t(total) * d);
    shared.feats_out.resize(std::size_t(total) * d);
    shared.tokens.resize(std::size_t(total));
    shared.parent_rows.resize(std::size_t(total));
    shared.parts.clear();
    for (int j = 0; j < count; ++j) {
      const int at = shared.first_row[std::size_t(j)];
      if (at < 0) continue;
      EagleDraftWorkspace& ws = *jobs[j].ws;
      const int n = int(ws.front.size());
      for (int i = 0; i < n; ++i) {
        const DraftCandidate& cand = ws.builder.candidates()[std::size_t(ws.front[std::size_t(i)])];
        const int prow = cand.parent < 0 ? -1 : ws.cand_row[std::size_t(cand.parent)];
        const float* f = prow < 0 ? jobs[j].root_feature : ws.row_feats.data() + std::size_t(prow) * d;
        std::copy(f, f + d, shared.feats_in.begin() + long(std::size_t(at + i) * d));
        shared.tokens[std::size_t(at + i)] = cand.token;
        shared.parent_rows[std::size_t(at + i)] = prow;
      }
      shared.parts.push_back(level_rows(*jobs[j].head, level, shared.feats_in.data() + std::size_t(at) * d,
                                        shared.tokens.data() + at, shared.parent_rows.data() + at, n,
                                        shared.feats_out.data() + std::size_t(at) * d));
    }
    lap.to(&EagleTimings::tree);
    EagleHead::expand_together(w, shared.parts.data(), int(shared.parts.size()), threads);
    lap.to(&EagleTimings::head, total);
    shared.logits.resize(std::size_t(total) * v);
    EagleHead::lm_logits(w, shared.feats_out.data(), total, shared.logits.data(), shared.norm, threads);
    lap.to(&EagleTimings::lm_head, total);
    for (int j = 0; j < count; ++j) {
      const int at = shared.first_row[std::size_t(j)];
      if (at < 0) continue;
      EagleDraftWorkspace& ws = *jobs[j].ws;
      const int n = int(ws.front.size());
      const int r0 = int(ws.row_feats.size() / d);  // rows drafted so far (the head's tree rows, for EAGLE)
      ws.row_feats.insert(ws.row_feats.end(), shared.feats_out.begin() + long(std::size_t(at) * d),
                          shared.feats_out.begin() + long(std::size_t(at + n) * d));
      for (int i = 0; i < n; ++i) {
        ws.cand_row[std::size_t(ws.front[std::size_t(i)])] = r0 + i;
        add_children(jobs[j], ws.front[std::size_t(i)], shared.logits.data() + std::size_t(at + i) * v);
      }
      ws.cand_row.resize(std::size_t(ws.builder.size()), -1);
    }
  }
  for (int j = 0; j < count; ++j)
    if (drafts(j))
      *jobs[j].out = jobs[j].ws->builder.rerank(jobs[j].budget, jobs[j].ws->picked, &jobs[j].ws->ranks);
  lap.to(&EagleTimings::tree);
}

// One EAGLE-2 draft tree (draft_feature_trees with one job).
template <typename Head>
TokenTree draft_feature_tree(Head& head, const LlamaWeights& w, const float* root_feature, int depth,
                             int top_k, int budget, EagleDraftWorkspace& ws, int threads = 1,
                             EagleTimings* timings = nullptr) {
  TokenTree tree;
  FeatureTreeJob<Head> job{&head, root_feature, depth, top_k, budget, &ws, &tree};
  draft_feature_trees(&job, 1, w, ws, threads, timings);
  return tree;
}

inline TokenTree eagle_draft_tree(EagleHead& head, const LlamaWeights& w, const float* root_feature, int depth,
                                  int top_k, int budget, EagleDraftWorkspace& ws, int threads = 1,
                                  EagleTimings* timings = nullptr) {
  return draft_feature_tree(head, w, root_feature, depth, top_k, budget, ws, threads, timings);
}

// Feature-drafted generation (EAGLE, MTP) on a LlamaModel (its solo
// sequence; needs forward with a custom mask and last_features()). Same stop
// rules and first token as generate(); stats as medusa_generate's (drafted =
// tree nodes offered, k_sum = tree depths).
template <typename Model, typename Head, typename OnToken>
SpeculativeResult feature_draft_generate(Model& model, Head& head, const std::vector<std::int32_t>& prompt,
                                         const GenerationParams& params, const EagleOptions& options,
                                         OnToken&& on_token) {
  const LlamaConfig& c = model.config();
  validate_generation(c, prompt, params);
  head.check_compatible(c);
  options.tree.validate();
  FASTINFER_CHECK(options.rule != AcceptanceRule::TypicalLossy, InvalidArgument,
                  "EAGLE and MTP verify with the exact or coupled rule; typical acceptance (lossy) is Medusa's only");
  using Clock = std::chrono::steady_clock;
  constexpr SeqId seq_id = Model::kSoloSequence;
  const LlamaWeights& w = model.weights();
  const int vocab = c.vocab_size, dim = c.dim, threads = model.threads();
  const std::size_t d = std::size_t(dim);

  SpeculativeResult out;
  GenerationResult& r = out.generation;
  SpeculativeStats& st = out.stats;
  r.prompt_tokens = int(prompt.size());
  cpu::SamplerWorkspace workspace(vocab);
  SpeculativeVerifier verifier(vocab, sampling_params(params), options.rule);
  EagleDraftWorkspace ws;
  ForwardBatch batch;
  std::vector<float> feats, root(d);
  std::vector<std::int32_t> depth_nodes;
  std::vector<std::int32_t> seq = prompt;

  model.reset();
  head.reset();
  const auto t0 = Clock::now();
  // Prefill in forward_prefill's own chunks (so the last logits are
  // generate()'s), keeping every position's feature for the head.
  const int n_prompt = int(prompt.size());
  feats.resize(std::size_t(n_prompt) * d);
  const float* logits = nullptr;
  for (int done = 0; done < n_prompt;) {
    const int chunk = std::min(model.max_batch(), n_prompt - done);
    logits = model.forward_prefill(prompt.data() + done, chunk, done);
    const float* f = model.last_features();
    std::copy(f, f + std::size_t(chunk) * d, feats.begin() + long(std::size_t(done) * d));
    done += chunk;
  }
  const auto t1 = Clock::now();
  r.prefill_seconds = seconds_between(t0, t1);

  detail::SpecTokenEmitter<std::remove_reference_t<OnToken>> out_tokens{c, params, r, seq, on_token, t0, t1};
  bool going = out_tokens.room_left() && out_tokens.emit(pick_token(logits, vocab, params, 0, workspace));
  // The head reads (f_p, token p + 1) for every prompt position.
  if (going && out_tokens.room_left()) commit_accepted(head, w, feats.data(), n_prompt, seq, root.data(), threads);
  int valid = n_prompt;  // positions whose target KV is right
  while (going && out_tokens.room_left()) {
    const int len = int(seq.size());
    const int remaining = std::min(params.max_new_tokens - int(r.tokens.size()), c.max_seq_len - len);
    const int depth_cap =
        std::max(0, std::min({options.tree.depth, max_tree_depth(head), remaining - 1, c.max_seq_len - len}));
    const int n_pending = len - valid;
    const int depth = options.adaptive ? options.adaptive->choose(std::max(n_pending, 1), depth_cap) : depth_cap;
    // A pass holds at most max_batch rows and node i takes KV slot len + i.
    const int budget = std::max(0, std::min({options.tree.budget, model.max_batch() - n_pending, c.max_seq_len - len}));
    const auto d0 = Clock::now();
    const TokenTree tree =
        draft_feature_tree(head, w, root.data(), depth, options.tree.top_k, budget, ws, threads, options.timings);
    const auto d1 = Clock::now();
    detail::Lap lap(options.timings);
    build_tree_batch(batch, seq_id, seq.data() + valid, n_pending, valid, tree);
    const float* rows = model.forward(batch) + std::size_t(n_pending - 1) * std::size_t(vocab);
    lap.to(&EagleTimings::pass);
    const std::uint64_t first_index = std::uint64_t(r.tokens.size());
    const VerifyOutcome v = verifier.verify_tree(rows, tree, nullptr, first_index);
    lap.to(&EagleTimings::verify);
    if (options.timings) ++options.timings->steps;
    // The target's features of positions len - 1 (the root's row) and of the
    // accepted nodes: the head's next committed rows.
    const int n_new = int(v.path.size()) + 1;
    feats.resize(std::size_t(n_new) * d);
    const float* f = model.last_features();
    for (int j = 0; j < n_new; ++j) {
      const int row = j == 0 ? n_pending - 1 : n_pending + v.path[std::size_t(j - 1)];
      std::copy(f + std::size_t(row) * d, f + std::size_t(row + 1) * d, feats.begin() + long(std::size_t(j) * d));
    }
    valid = len + kept_in_place(v.path);
    detail::record_tree_step(st, options.adaptive, tree, depth, n_pending, int(batch.rows()), v.accepted,
                             seconds_between(d0, d1), seconds_between(d1, Clock::now()), depth_nodes);
    going = out_tokens.emit_step(v.tokens, v.accepted, st);
    // Every token of the step was emitted when generation goes on.
    lap.to(&EagleTimings::verify);
    if (going) commit_accepted(head, w, feats.data(), n_new, seq, root.data(), threads);
    lap.to(&EagleTimings::commit);
  }
  if (!r.tokens.empty()) r.decode_seconds = seconds_between(out_tokens.first, Clock::now());
  return out;
}

template <typename Model, typename OnToken>
SpeculativeResult eagle_generate(Model& model, EagleHead& head, const std::vector<std::int32_t>& prompt,
                                 const GenerationParams& params, const EagleOptions& options, OnToken&& on_token) {
  return feature_draft_generate(model, head, prompt, params, options, std::forward<OnToken>(on_token));
}

template <typename Model>
SpeculativeResult eagle_generate(Model& model, EagleHead& head, const std::vector<std::int32_t>& prompt,
                                 const GenerationParams& params, const EagleOptions& options = {}) {
  return eagle_generate(model, head, prompt, params, options, [](std::int32_t) {});
}

}  // namespace fastinfer::speculative
