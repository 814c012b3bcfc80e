// When speculation pays inside continuous batching: the per-request drafter
// choice (RequestSpec), the policies that switch it on and off per step
// (SpecPolicy), and the adaptive switch's model of the world.
//
// Why a switch at all: a speculating decode row feeds 1 + k tokens and emits
// 1 + (accepted drafts) tokens. At batch 1 on a memory-bound model the pass
// costs about the same for 1 or 1 + k tokens, so every accepted draft is
// nearly free. In a large batch the step is already compute-bound: k more
// rows cost k rows' worth of time, and since a row can never emit more than
// it feeds, speculation then lowers throughput.
//
// The adaptive switch measures rather than guesses:
//  - StepCostFit: every step is timed and the engine fits, online, by least
//    squares with exponential forgetting, seconds = base + per_token * tokens
//    + per_model_draft * tokens drafted by a draft model of the request's own
//    + per_draft_pass * passes of the engine's batched draft model
//    + per_draft_row * rows those passes fed (a draft model's passes are part
//    of the step's cost; prompt lookup costs nothing) + per_key * keys its
//    attention read (each sequence's context once per block of its new rows,
//    attention_key_reads: without it the base drifts up as every context
//    grows, and a draft price fitted from a few early steps sinks to nothing
//    as the base outgrows them). Passes and rows are
//    separate columns because a request that starts drafting first feeds the
//    draft model what it has not seen (its prompt, at first): many rows in
//    few passes, cheap per row, which priced per pass made drafting look
//    ten times dearer than it is.
//  - AcceptanceEstimate: per request, the probability that a draft is
//    accepted, from its own verification history (accepted drafts are
//    successes, a rejection is a failure), with forgetting and a prior; and
//    the same history per depth (speculative::DraftAcceptance, the one batch-1
//    dynamic speculation uses), whose expected tokens for k drafts need not
//    be geometric (a prompt-lookup match is mostly all right or all wrong);
//    for a tree drafter, the history per node budget (BudgetAcceptance).
//  - choose_drafts: given the plain step (tokens, rows), it adds speculating
//    rows, best acceptance first, each with the k that maximises expected
//    emitted tokens per second, only while that beats the step without it.
//    With acceptance a, a row drafting k emits E(a, k) = 1 + a + ... + a^k
//    tokens in expectation (drafts accepted in order until the first miss);
//    with a per-depth history, 1 + sum_d prod_{j<=d} p_j; with a budget
//    history, 1 + what trees of at most k nodes kept.
// Backend-free: standard library only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <variant>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/speculative/adaptive_draft_length.hpp"
#include "fastinfer/speculative/draft_passes.hpp"

namespace fastinfer::engine {

// ---- per request -------------------------------------------------------------

enum class SpecDrafter {
  None,          // plain decoding
  PromptLookup,  // n-gram match in the prompt and output (speculative/prompt_lookup.hpp)
  DraftModel,    // EngineConfig::spec.draft_weights, one DraftModel per request
  EarlyExit,     // the target's first exit_layer layers (speculative/early_exit_drafter.hpp), sharing the
                 // request's KV
  Eagle,         // EngineConfig::spec.eagle_head: a token tree of at most k nodes from the target's features
  Mtp,           // EngineConfig::spec.mtp_heads: as Eagle, tree level d from MTP module d
  Medusa,        // EngineConfig::spec.medusa_heads: a tree of at most k nodes from the heads' guesses
  Lookahead,     // EngineConfig::spec.lookahead: a tree of at most k nodes from the request's n-gram pool,
                 // and the Jacobi window fed beside it (speculative/lookahead_pool.hpp)
};

struct RequestSpec {
  SpecDrafter drafter = SpecDrafter::None;
  std::int32_t k = 4;  // most drafts per step (Eagle, Mtp, Medusa, Lookahead: tree nodes)
  std::int32_t lookup_max_ngram = 3;         // PromptLookup
  std::int32_t lookup_min_ngram = 1;
  std::int32_t exit_layer = 0;               // EarlyExit: draft layers; 0: half the model's
};

// ---- policies (a closed set of tags) -------------------------------------------

// Speculate where the fitted cost model says it raises tokens per second.
struct SpecAdaptive {
  double forget = 0.95;           // weight of the past per step, cost fit and acceptance
  std::int32_t warmup_steps = 8;  // the fit's steps before its model is used
  // Before that, among several candidates one drafts one token every
  // explore_every-th step (choose_drafts); a lone candidate every step.
  std::int32_t explore_every = 4;
  // With a valid fit, after this many steps in which nothing was drafted,
  // the first candidate that expects anything of its drafts drafts its
  // max_k once: a price learnt from one cold
  // step (a first tree commits the whole prompt to its head) would
  // otherwise never be looked at again. 0: never.
  std::int32_t revisit_every = 32;
  // With a valid fit, every probe_every-th step one tree drafter that drafts
  // fewer nodes than its max_k, and whose history holds less than one
  // (forgotten) tree of max_k, drafts its max_k instead: one such tree tells
  // what every smaller budget keeps (BudgetAcceptance), while a budget never
  // drafted is known only by its prior, so a switch that settled on small
  // trees early would never learn that larger ones pay. 0: never.
  std::int32_t probe_every = 16;
};
struct SpecAlways {};  // every speculating request drafts its k each decode (as room allows)
struct SpecNever {};   // drafters are kept but never asked
// Speculate only while at most max_rows requests are running.
struct SpecMaxBatch {
  std::int32_t max_rows = 8;
};

using SpecPolicy = std::variant<SpecAdaptive, SpecAlways, SpecNever, SpecMaxBatch>;

template <typename P>
struct SpecPolicyTraits {
  static_assert(sizeof(P) == 0,
                "not a speculation policy: use SpecAdaptive, SpecAlways, SpecNever or SpecMaxBatch");
};
template <>
struct SpecPolicyTraits<SpecAdaptive> {
  static constexpr const char* name = "adaptive";
};
template <>
struct SpecPolicyTraits<SpecAlways> {
  static constexpr const char* name = "always";
};
template <>
struct SpecPolicyTraits<SpecNever> {
  static constexpr const char* name = "never";
};
template <>
struct SpecPolicyTraits<SpecMaxBatch> {
  static constexpr const char* name = "max_batch";
};

inline const char* spec_policy_name(const SpecPolicy& p) {
  return std::visit([](auto t) { return SpecPolicyTraits<decltype(t)>::name; }, p);
}

// ---- the model ---------------------------------------------------------------

// Expected tokens emitted by a row that drafts k tokens, each accepted with
// probability a given the ones before it: 1 + a + a^2 + ... + a^k.
inline double expected_emitted(double a, std::int32_t k) {
  a = std::clamp(a, 0.0, 1.0);
  double sum = 1.0, term = 1.0;
  for (std::int32_t i = 0; i < k; ++i) sum += (term *= a);
  return sum;
}

// seconds(step) = base + per_token * tokens + per_model_draft * model_drafts
//               + per_draft_pass * draft_passes + per_draft_row * draft_rows
//               + per_key * keys.
// model_drafts: tokens drafted by a model this step (each costs rows of a
// draft pass); draft_passes: forward passes of the engine's batched draft
// model (batched_draft.hpp), which every request drafting with it shares: a
// pass streams the draft's weights once whatever its rows; draft_rows: the
// rows those passes fed (catch-up and draft levels); keys: the keys the
// step's attention reads (attention_key_reads).
struct StepCostModel {
  double base = 0;
  double per_token = 0;
  double per_model_draft = 0;
  double per_draft_pass = 0;
  double per_draft_row = 0;
  double per_key = 0;
  bool valid = false;  // false: not enough evidence yet

  double seconds(double tokens, double model_drafts, double draft_passes = 0, double draft_rows = 0,
                 double keys = 0) const {
    return base + per_token * tokens + per_model_draft * model_drafts + per_draft_pass * draft_passes +
           per_draft_row * draft_rows + per_key * keys;
  }
};

// Keys the attention reads for n new rows of one sequence, the first at
// position p: an attention kernel reads a sequence's keys once for a block
// of its new rows (backend/cpu/attention.hpp widens each K/V tile once for
// up to kAttentionRowBlock queries; GPU kernels tile queries as well), so a
// block costs the keys its last row sees. A decode row reads p + 1; four
// drafts beside it add four, not four contexts. Counted per row, the fit
// read a step of 16 decoding requests at context 100 as mostly attention
// (1.9 us a key) and priced 4 drafts each at 2.7 ms more for a 2.4 ms step,
// where always drafting them ran 1.4x faster than plain decoding
// (bench_engine BM_EngineSpeculation/16/1 and /16/2, 15M stand-in). What the
// extra rows' dot products cost is per row, in the tokens' price.
inline constexpr std::int64_t kAttentionRowBlock = 16;
inline double attention_key_reads(double p, double n) {
  if (n <= 0) return 0.0;
  const double blocks = std::ceil(n / double(kAttentionRowBlock));
  // Block j's last row sits at p + min((j + 1) B, n) - 1.
  const double full = blocks - 1.0;
  return blocks * p + double(kAttentionRowBlock) * full * (full + 1.0) / 2.0 + n;
}

// Weighted least squares over (1, tokens, model_drafts, draft_passes,
// draft_rows, keys) -> seconds, every older step's weight multiplied by `forget`
// per new step, so the fit follows a machine whose load changes. A tiny ridge keeps it
// solvable when a column never varies (no draft model), or two move together
// (one drafting request: as many passes as drafts); the coefficients are
// kept >= 0. Once the data stop telling the slope (every step the same
// tokens: a steady batch whose rows all draft the same k), the last model
// they told stays: forgetting the evidence is no reason to forget the model
// (before, the switch fell back to exploring, plain decoding three steps in
// four, whenever two requests' trees kept the same size for a while).
class StepCostFit {
 public:
  explicit StepCostFit(double forget = 0.95, std::int32_t min_steps = 8) : forget_(forget), min_steps_(min_steps) {
    FASTINFER_CHECK(forget > 0.0 && forget <= 1.0, InvalidArgument, "StepCostFit: forget must be in (0, 1], got ",
                    forget);
    FASTINFER_CHECK(min_steps >= 2, InvalidArgument, "StepCostFit: min_steps must be >= 2, got ", min_steps);
  }

  void add(double tokens, double model_drafts, double draft_passes, double draft_rows, double seconds) {
    add(tokens, model_drafts, draft_passes, draft_rows, 0.0, seconds);
  }
  // `draft_seconds`, where the caller times it, is the part of `seconds`
  // spent drafting: a second equation, draft_seconds = the draft columns'
  // price, that ties those prices to their own clock. Without it, a switch
  // exploring one draft at a time adds a token and a fixed number of head
  // passes together, and the fit cannot tell a token's price from a pass's
  // (an Engine trace of two EAGLE requests read 1.2 ms a head pass where
  // the drafting's clock says 0.2). draft_seconds < 0: not timed.
  void add(double tokens, double model_drafts, double draft_passes, double draft_rows, double keys,
           double seconds, double draft_seconds = -1.0) {
    const double x[kTerms] = {1.0, tokens, model_drafts, draft_passes, draft_rows, keys};
    const double d[kTerms] = {0.0, 0.0, model_drafts, draft_passes, draft_rows, 0.0};
    // Weighted far above a step's equation: the drafting's own clock says
    // what it cost, the step's total only what is left over for it.
    const double w = draft_seconds >= 0.0 ? kDraftWeight : 0.0;
    for (int i = 0; i < kTerms; ++i) {
      for (int j = 0; j < kTerms; ++j) a_[i][j] = forget_ * a_[i][j] + x[i] * x[j] + w * d[i] * d[j];
      b_[i] = forget_ * b_[i] + x[i] * seconds + w * d[i] * draft_seconds;
    }
    ++steps_;
    const StepCostModel m = fit_();
    if (m.valid) model_ = m;
  }

  std::int64_t steps() const { return steps_; }

  // The last model the steps could tell (valid false: none yet).
  StepCostModel model() const { return model_; }

 private:
  static constexpr int kTerms = 6;
  static constexpr double kDraftWeight = 100.0;

  StepCostModel fit_() const {
    StepCostModel m;
    if (steps_ < min_steps_) return m;
    double a[kTerms][kTerms];
    double b[kTerms];
    // Each column's ridge in its own scale (keys run to thousands a step, drafts to a few).
    for (int i = 0; i < kTerms; ++i) {
      b[i] = b_[i];
      for (int j = 0; j < kTerms; ++j) a[i][j] = a_[i][j] + (i == j && i > 0 ? 1e-9 * a_[i][i] + 1e-12 : 0.0);
    }
    // Tokens never varied: no slope to read; wait for evidence.
    const double mean = a_[0][1] / a_[0][0];
    if (a_[1][1] / a_[0][0] - mean * mean < 0.25) return m;
    // Non-negative: a column whose price comes out below zero is held at
    // zero and the rest solved again without it, the most negative first.
    // Clamping it alone kept the other prices of the solve that needed the
    // negative one (a pass price inflated by as much as a negative row
    // price took off: the fit tests show it).
    double c[kTerms];
    bool held[kTerms] = {};
    for (int round = 0; round < kTerms; ++round) {
      double ar[kTerms][kTerms], br[kTerms];
      for (int i = 0; i < kTerms; ++i) {
        br[i] = held[i] ? 0.0 : b[i];
        for (int j = 0; j < kTerms; ++j) ar[i][j] = held[i] || held[j] ? double(i == j) : a[i][j];
      }
      if (!solve(ar, br, c)) return m;
      int worst = -1;
      for (int i = 0; i < kTerms; ++i)
        if (!held[i] && c[i] < 0.0 && (worst < 0 || c[i] < c[worst])) worst = i;
      if (worst < 0) break;
      held[worst] = true;
    }
    m.base = std::max(c[0], 0.0);
    m.per_token = std::max(c[1], 0.0);
    m.per_model_draft = std::max(c[2], 0.0);
    m.per_draft_pass = std::max(c[3], 0.0);
    m.per_draft_row = std::max(c[4], 0.0);
    m.per_key = std::max(c[5], 0.0);
    m.valid = m.per_token > 0.0 || m.base > 0.0;
    return m;
  }

  // Gaussian elimination with partial pivoting.
  static bool solve(double a[kTerms][kTerms], double b[kTerms], double x[kTerms]) {
    for (int col = 0; col < kTerms; ++col) {
      int piv = col;
      for (int r = col + 1; r < kTerms; ++r)
        if (std::fabs(a[r][col]) > std::fabs(a[piv][col])) piv = r;
      if (!(std::fabs(a[piv][col]) > 1e-300)) return false;
      std::swap(a[piv], a[col]);
      std::swap(b[piv], b[col]);
      for (int r = col + 1; r < kTerms; ++r) {
        const double f = a[r][col] / a[col][col];
        for (int k = col; k < kTerms; ++k) a[r][k] -= f * a[col][k];
        b[r] -= f * b[col];
      }
    }
    for (int r = kTerms - 1; r >= 0; --r) {
      double s = b[r];
      for (int k = r + 1; k < kTerms; ++k) s -= a[r][k] * x[k];
      x[r] = s / a[r][r];
    }
    for (int i = 0; i < kTerms; ++i)
      if (!std::isfinite(x[i])) return false;
    return true;
  }

  double forget_;
  std::int32_t min_steps_;
  double a_[kTerms][kTerms] = {};
  double b_[kTerms] = {};
  std::int64_t steps_ = 0;
  StepCostModel model_;
};

// Expected tokens per step of a tree drafter, by node budget. Its trees are
// nested in the budget (EAGLE-2's rerank: the tree of budget k is the k best
// candidates, each after its parent), so one verified tree of K nodes tells
// what every budget k <= K would have kept: the accepted path's nodes of
// rank < k (ranks rise along a path; greedy verification stops where the
// path leaves the smaller tree, and sampled verification nearly so). Why
// not the per-depth history: it reads a tree of K nodes as a chain of K and
// credits depth 1 with what the tree's width won, so one node looks nearly
// as good as four, and once the switch drafts one, four look no better.
// What budget k keeps is a sum over ranks, sum_{j <= k} [rank j - 1 is on
// the path], so the history is kept per rank: how often the node of rank
// j - 1 was kept, over the trees that had one (those of at least j nodes).
// Each update forgets every rank's history a step (with the prior at
// geometric acceptance `prior`: rank j - 1 kept with probability prior^j),
// so a budget the switch stopped drafting drifts back to the prior and is
// tried again.
class BudgetAcceptance {
 public:
  explicit BudgetAcceptance(std::int32_t max_budget = 64, double prior = 0.5, double prior_weight = 2.0,
                            double forget = 0.95)
      : prior_(prior), prior_weight_(prior_weight), forget_(forget) {
    FASTINFER_CHECK(max_budget >= 0 && max_budget <= 4096, InvalidArgument,
                    "budget acceptance: max_budget must be in [0, 4096], got ", max_budget);
    FASTINFER_CHECK(prior >= 0.0 && prior <= 1.0 && prior_weight > 0.0 && forget > 0.0 && forget <= 1.0,
                    InvalidArgument, "budget acceptance: prior ", prior, " must be in [0, 1], prior_weight ",
                    prior_weight, " > 0 and forget ", forget, " in (0, 1]");
    kept_.assign(std::size_t(max_budget) + 1, 0.0);
    trials_.assign(std::size_t(max_budget) + 1, 0.0);
  }

  std::int32_t max_budget() const { return std::int32_t(kept_.size()) - 1; }

  // One verified tree of `nodes` nodes that kept `accepted`; path_ranks:
  // the ranks of the accepted path's nodes (rerank's), or null where the
  // drafter does not rank its nodes: then only budget `nodes` is observed.
  void update(std::int32_t nodes, std::int32_t accepted, const std::vector<int>* path_ranks = nullptr) {
    FASTINFER_CHECK(nodes >= 0 && accepted >= 0 && accepted <= nodes &&
                        (!path_ranks || std::int32_t(path_ranks->size()) == accepted),
                    InvalidArgument, "budget acceptance: ", accepted, " kept of ", nodes, " nodes with ",
                    path_ranks ? path_ranks->size() : 0, " ranks");
    if (path_ranks)
      for (int r : *path_ranks)
        FASTINFER_CHECK(r >= 0 && r < nodes, InvalidArgument, "budget acceptance: rank ", r, " in a tree of ",
                        nodes, " nodes");
    if (nodes == 0) return;
    forget_step();
    const std::int32_t top = std::min(nodes, max_budget());
    for (std::int32_t j = 1; j <= top; ++j) trials_[std::size_t(j)] += 1.0;
    // Without ranks the kept nodes are taken as the best ranked (a chain's are).
    for (std::int32_t i = 0; i < accepted; ++i) {
      const int rank = path_ranks ? (*path_ranks)[std::size_t(i)] : i;
      if (rank < top) kept_[std::size_t(rank) + 1] += 1.0;
    }
  }

  // A step without a tree (the switch drafted nothing): every rank's
  // history forgets a step, as update() does.
  void forget_step() {
    for (std::size_t k = 1; k < kept_.size(); ++k) {
      kept_[k] *= forget_;
      trials_[k] *= forget_;
    }
  }

  // Expected tokens of a step drafting a tree of k nodes: 1 + the chance
  // that each of the ranks 0 .. k - 1 is kept (a larger budget keeps at
  // least what a smaller one does), each from the trees that had that rank,
  // prior^j over prior_weight trees where none did. So a budget not drafted
  // lately is what the budgets below it keep plus the prior's worth of
  // the nodes beyond them. Kept per budget instead (what a tree of at most
  // k nodes kept, over the trees of at least k), a budget's history mixed
  // its first node's luck into the price of its last: a request drafting
  // one node that probed two saw the second node at nothing whenever the
  // probe's first node was rejected (budget 2 then kept less than budget
  // 1's long history, and the larger budget is never worth less), and
  // with an absolute prior a head whose trees of 2 kept 0.96 drafts saw
  // budgets 3 and 4 at 0.875 and 0.94, so trees of 4 were never drafted
  // again.
  double expected_tokens(std::int32_t k) const {
    double kept = 0.0, node = 1.0;
    for (std::int32_t j = 1; j <= std::min(k, max_budget()); ++j)
      kept += (kept_[std::size_t(j)] + (node *= prior_) * prior_weight_) /
              (trials_[std::size_t(j)] + prior_weight_);
    return 1.0 + kept;
  }

  // Verified trees (forgotten as the history is) that told budget k.
  double observed(std::int32_t k) const {
    return k >= 1 && k <= max_budget() ? trials_[std::size_t(k)] : 0.0;
  }

 private:
  double prior_, prior_weight_, forget_;
  // Index j in 1..max_budget: trees that kept their node of rank j - 1, trees that had one.
  std::vector<double> kept_, trials_;
};

// Per-draft acceptance probability of one request: successes (accepted
// drafts) over trials (accepted drafts + rejections), with forgetting and a
// prior of `prior_trials` trials at `prior` (so a new request starts at the
// prior and its own history takes over within a few steps).
class AcceptanceEstimate {
 public:
  explicit AcceptanceEstimate(double prior = 0.5, double prior_trials = 2.0, double forget = 0.95)
      : prior_(prior), prior_trials_(prior_trials), forget_(forget) {}

  // One verification: `drafted` drafts offered, `accepted` kept in order.
  void update(std::int32_t drafted, std::int32_t accepted) {
    if (drafted <= 0) return;
    successes_ = forget_ * successes_ + accepted;
    trials_ = forget_ * trials_ + accepted + (accepted < drafted ? 1 : 0);
    depths_.update(std::min(drafted, depths_.max_depth()), std::min(drafted, depths_.max_depth()),
                   std::min(accepted, depths_.max_depth()));
  }
  // A verified tree: update() and the budget history (BudgetAcceptance::update).
  void update_tree(std::int32_t nodes, std::int32_t accepted, const std::vector<int>* path_ranks) {
    budgets_.update(nodes, accepted, path_ranks);
    update(nodes, accepted);
  }
  // A step in which the request could have drafted and did not: its
  // histories forget a step, drifting back to the prior, so that a request
  // turned away by its first few rejections is drafted again once they are
  // old. Without it the verdict stood for the request's whole life: 16
  // EAGLE requests at nodes 1 (bench_eagle BM_EngineEagle110M, the eight
  // prompts cycled) split after the first drafts into the requests of
  // prompts 1, 2, 4, 5, which drafted every step, and the others, which
  // never drafted again until the first had finished.
  void idle() {
    successes_ *= forget_;
    trials_ *= forget_;
    depths_.forget_step();
    budgets_.forget_step();
  }
  double value() const { return (successes_ + prior_ * prior_trials_) / (trials_ + prior_trials_); }
  const speculative::DraftAcceptance& depths() const { return depths_; }
  const BudgetAcceptance& budgets() const { return budgets_; }

 private:
  double prior_, prior_trials_, forget_;
  double successes_ = 0, trials_ = 0;
  speculative::DraftAcceptance depths_{64, prior_, prior_trials_, forget_};
  BudgetAcceptance budgets_{64, prior_, prior_trials_, forget_};
};

// One request that could speculate in the coming step.
struct SpecCandidate {
  double acceptance = 0.5;   // per-draft acceptance probability
  std::int32_t max_k = 4;    // most drafts it may feed
  bool model_drafter = false;  // its drafts cost draft-model rows (per_model_draft)
  // Its per-depth history (AcceptanceEstimate::depths()); null: geometric in `acceptance`.
  const speculative::DraftAcceptance* depths = nullptr;
  // Its drafts come from a drafter whose passes every request shares: the
  // engine's batched draft model (one pass a draft: draft_passes as it is)
  // or a head's trees (FeatureStream::passes). The step runs as many passes
  // as the candidate needing most (per_draft_pass), and k rows of them are
  // this request's (per_draft_row).
  bool batched_drafter = false;
  speculative::DraftPasses draft_passes{};
  // Batched drafter: rows the draft model (or the head) must feed before
  // this request's first draft beyond the one a drafting step always feeds
  // (the tokens it has not seen: its prompt when it first drafts, its output
  // since it last drafted), and tokens the request may still generate (<= 0:
  // unknown).
  // Drafting now pays that catch-up once; it is charged spread over the
  // steps the request can still draft in, remaining / E(k), as the batch-1
  // controller charges it (adaptive_draft_length.hpp).
  double catch_up_rows = 0;
  double remaining_tokens = 0;
  // Its context length: its decode row sits at context - 1 (the keys its
  // drafts' rows add: attention_key_reads).
  double context = 0;
  // A tree drafter's history by node budget (AcceptanceEstimate::budgets());
  // when set, it prices k rather than `depths`.
  const BudgetAcceptance* budgets = nullptr;
  // Target rows a drafting step feeds beside its drafts, whatever their
  // number (lookahead's Jacobi window): paid at k >= 1, nothing at k = 0.
  double window_rows = 0;
  // Its drafting can never make a step faster (a draft model that costs at
  // least the target a pass: draft_costs_at_least): SpecAdaptive neither
  // drafts with it nor explores it; SpecAlways and SpecMaxBatch still do.
  bool never_pays = false;

  // The most drafts SpecAdaptive may give it.
  std::int32_t adaptive_max_k() const { return never_pays ? 0 : std::max(max_k, 0); }
  double expected(std::int32_t k) const {
    if (budgets) return budgets->expected_tokens(k);
    return depths ? depths->expected_tokens(k) : expected_emitted(acceptance, k);
  }
};

// Drafts per candidate (0 = plain decode this step) that maximise expected
// emitted tokens per second of the step, given the plain step's tokens and
// emitted rows. Greedy over candidates, best acceptance first (ties: input
// order): each takes the k that raises the step's ratio most, or 0. The
// batched drafters' passes are shared, so no single request would pay for
// them alone: the greedy runs once per pass count P (0 to the most any
// candidate's max_k needs), P passes paid up front and each batched drafter
// taking a k that needs at most P (SpecCandidate::draft_passes) at its rows'
// price (k rows and its catch-up's share), and the best P wins.
// A candidate that never pays (SpecCandidate::never_pays) gets 0 throughout.
// With an invalid cost model one candidate (the first that may draft)
// explores and the others decode plainly: the fit learns what drafting
// costs from one request's steps, not from a batch that all pays its
// catch-up at once. Alone it drafts its
// max_k (at batch 1 drafting is what usually pays); among others it drafts
// one token, the cheapest step that still shows the draft's columns (with a
// same-size draft model, exploring at k 4 cost 16 requests 10 %), but a
// head's tree its max_k: one tree tells every budget (BudgetAcceptance),
// and trees of one node only would show the fit a token and a commit pass
// that always come together.
inline std::vector<std::int32_t> choose_drafts(const StepCostModel& cost, double plain_tokens,
                                               double plain_rows, const std::vector<SpecCandidate>& cands,
                                               double plain_keys = 0) {
  std::vector<std::int32_t> k(cands.size(), 0);
  if (!cost.valid) {
    // The first candidate that may draft at all explores.
    for (std::size_t i = 0; i < cands.size(); ++i) {
      const std::int32_t most = cands[i].adaptive_max_k();
      if (most == 0) continue;
      k[i] = cands.size() == 1 || cands[i].draft_passes.levels > 0 ? most : std::min(most, 1);
      break;
    }
    return k;
  }
  std::vector<std::size_t> order(cands.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return cands[a].acceptance > cands[b].acceptance; });
  std::int32_t max_passes = 0;
  for (const SpecCandidate& c : cands)
    if (c.batched_drafter) max_passes = std::max(max_passes, c.draft_passes.at(c.adaptive_max_k()));
  // Rows of the batched draft model a candidate adds at k drafts.
  auto draft_rows = [](const SpecCandidate& c, std::int32_t kk) {
    if (!c.batched_drafter || kk <= 0) return 0.0;
    const double steps = c.remaining_tokens > 0 ? std::max(1.0, c.remaining_tokens / c.expected(kk)) : 1.0;
    return double(kk) + std::max(c.catch_up_rows, 0.0) / steps;
  };
  // Keys a candidate's decode row reads more with `fed` rows beside it.
  auto draft_keys = [](const SpecCandidate& c, double fed) {
    const double p = std::max(c.context - 1.0, 0.0);
    return fed > 0 ? attention_key_reads(p, 1.0 + fed) - attention_key_reads(p, 1.0) : 0.0;
  };
  std::vector<std::int32_t> trial(cands.size(), 0);
  double best_rate = -1.0;
  for (std::int32_t passes = 0; passes <= max_passes; ++passes) {
    double emitted = std::max(plain_rows, 1.0), tokens = std::max(plain_tokens, 1.0);
    double drafts = 0.0, rows = 0.0, keys = std::max(plain_keys, 0.0);
    std::fill(trial.begin(), trial.end(), 0);
    for (std::size_t i : order) {
      const SpecCandidate& c = cands[i];
      double best = emitted / cost.seconds(tokens, drafts, passes, rows, keys);
      const double window = std::max(c.window_rows, 0.0);
      for (std::int32_t kk = 1;
           kk <= c.adaptive_max_k() && (!c.batched_drafter || c.draft_passes.at(kk) <= passes); ++kk) {
        const double e = emitted + c.expected(kk) - 1.0;
        const double r = e / cost.seconds(tokens + kk + window, drafts + (c.model_drafter ? kk : 0), passes,
                                          rows + draft_rows(c, kk), keys + draft_keys(c, kk + window));
        if (r > best * (1.0 + 1e-9)) {
          best = r;
          trial[i] = kk;
        }
      }
      const double fed = trial[i] > 0 ? trial[i] + window : 0.0;
      emitted += c.expected(trial[i]) - 1.0;
      tokens += fed;
      rows += draft_rows(c, trial[i]);
      keys += draft_keys(c, fed);
      if (c.model_drafter) drafts += trial[i];
    }
    const double rate = emitted / cost.seconds(tokens, drafts, passes, rows, keys);
    if (rate > best_rate * (1.0 + 1e-9)) {
      best_rate = rate;
      k = trial;
    }
  }
  return k;
}

// Drafts per candidate this step as `policy` decides: SpecAlways every
// max_k, SpecNever none, SpecMaxBatch every max_k while at most max_rows
// requests run, SpecAdaptive choose_drafts over the fitted cost (the plain
// step's tokens: the last step's, at least one per running request; `step`:
// steps measured so far, which paces the exploration before the fit is
// valid and SpecAdaptive::probe_every; the plain step's keys: the last step's; `idle`: steps in a row
// that drafted nothing, which paces SpecAdaptive::revisit_every).
inline std::vector<std::int32_t> drafts_under_policy(const SpecPolicy& policy, const StepCostModel& cost,
                                                     double last_plain_tokens, std::int64_t running,
                                                     const std::vector<SpecCandidate>& cands,
                                                     std::int64_t step = 0, double last_plain_keys = 0,
                                                     std::int64_t idle = 0) {
  return std::visit(
      [&](const auto& pol) -> std::vector<std::int32_t> {
        using P = std::decay_t<decltype(pol)>;
        std::vector<std::int32_t> out(cands.size(), 0);
        if constexpr (std::is_same_v<P, SpecAlways>) {
          for (std::size_t i = 0; i < out.size(); ++i) out[i] = cands[i].max_k;
        } else if constexpr (std::is_same_v<P, SpecMaxBatch>) {
          if (running <= pol.max_rows)
            for (std::size_t i = 0; i < out.size(); ++i) out[i] = cands[i].max_k;
        } else if constexpr (std::is_same_v<P, SpecAdaptive>) {
          const bool rest = !cost.valid && cands.size() > 1 && step % std::max(pol.explore_every, 1) != 0;
          if (!rest)
            out = choose_drafts(cost, std::max(last_plain_tokens, double(running)), double(running), cands,
                                last_plain_keys);
          const bool none = std::all_of(out.begin(), out.end(), [](std::int32_t k) { return k == 0; });
          if (cost.valid && none && pol.revisit_every > 0 && idle >= pol.revisit_every) {
            // The first candidate that expects anything of its drafts (a
            // lookahead request with no n-gram for its root expects nothing).
            for (std::size_t i = 0; i < cands.size(); ++i)
              if (cands[i].adaptive_max_k() > 0 && cands[i].expected(cands[i].max_k) > 1.0 + 1e-9) {
                out[i] = cands[i].max_k;
                break;
              }
          }
          if (cost.valid && pol.probe_every > 0 && step % pol.probe_every == 0 && !cands.empty()) {
            // One probe a step, taking turns from probe to probe.
            const std::size_t first = std::size_t(step / pol.probe_every) % cands.size();
            for (std::size_t n = 0; n < cands.size(); ++n) {
              const std::size_t i = (first + n) % cands.size();
              const SpecCandidate& c = cands[i];
              if (c.budgets && out[i] > 0 && out[i] < c.adaptive_max_k() &&
                  c.budgets->observed(c.max_k) < 1.0) {
                out[i] = c.max_k;
                break;
              }
            }
          }
        }
        return out;
      },
      policy);
}

}  // namespace fastinfer::engine
