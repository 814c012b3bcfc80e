// Dynamic speculation: how many tokens to draft in the next step, chosen from
// what speculation has measurably cost and returned so far, so that it is
// never (much) slower than plain decoding.
//
// Why measure rather than fix k: whether k drafts pay depends on two numbers
// that change with the drafter, the text and the machine. (1) Acceptance: a
// prompt-lookup draft on stories is right 10-30 % of the time, a quantized
// self-draft 90 %+. (2) The price of a pass over n rows relative to one row:
// 1.2x for 2 rows on a memory-bound f32 model, 1.8x on the same model in bf16
// (the arithmetic is no longer hidden behind the weight stream), 6x for 9 rows
// on an overhead-bound tiny model. A fixed k loses wherever the two disagree
// with the k's author; Hugging Face's dynamic speculation lookahead (stop
// drafting when the draft's confidence drops) and vLLM/SGLang's acceptance-
// driven draft lengths adapt acceptance only. Here both sides are measured:
//
//  - Acceptance per depth (DraftAcceptance): p_i = P(draft i kept | drafts
//    1..i-1 kept, i asked), exponentially forgotten counts, each depth's prior being the estimate of
//    the depth before (so one observed depth speaks for unobserved deeper
//    ones). A draft the drafter did not offer (no prompt-lookup match) counts
//    as not kept: E(k) below is what asking for k returns, offered or not.
//    Expected tokens of a step asking for k: E(k) = 1 + sum_i prod_{j<=i} p_j.
//  - Rows a step feeds: the pending rows (known) + the drafts' nodes per depth
//    (EWMA, a tree has several per depth, a chain 0 or 1) + rows that come
//    with any drafting step (lookahead's window; EWMA).
//  - Seconds of a target pass over n rows (wall time, including the step's
//    host work): c(1) + b (n - 1), c(1) from the plain steps, b (one more
//    row) pooled over every drafting step, because each step feeds its own
//    row count and a table per count would be read from one or two noisy
//    samples. Row counts seen often enough (kTrusted samples) use their own
//    average, which catches the curve's bends (a caller may seed such a
//    table from a benchmark: set_pass_seconds).
//  - Seconds of drafting k tokens: d k, d pooled per drafted token.
//  Every average is robust to the spikes of a shared machine (a pass
//  descheduled for 20x its time): a sample is clipped to twice the current
//  estimate (or half) before it enters, so one spike moves it by at most
//  cost_weight.
//
//  - Seconds of catching up, e c: a drafter with state of its own (a draft
//    model's KV cache) sits out the plain steps and must first feed the c
//    tokens it missed (Drafter::catch_up_tokens); e is learnt from the steps
//    that did (c > k + 1), as what their drafting took beyond d k.
//
// choose() takes the k in [0, max_k] maximising E(k) / T(k). k = 0 is a plain
// decode step. A step that must first catch the drafter up (c > k + 1 missed
// tokens: a new request's prompt, or the plain steps since it last drafted)
// adds that catch-up e c to T(k), spread over the drafting steps that pay it
// back: the measured length of a drafting run (consecutive drafting steps;
// a refresh step does not end one), at most the request's remaining tokens
// / E(k) when the caller says how many remain. Unpriced, a draft model whose
// drafting was about even with plain decoding caught up each new 300-token
// prompt (0.4 s on the 110M stand-in) for a few steps of drafting, and came
// out at 0.84-0.91x of plain where drafting never would have run at all;
// spread over the rest of the request, it still paid each catch-up for runs
// of two or three steps.
// While k = 0 wins, a probe (drafting at the best k >= 1) is made
// once the plain steps since the last probe add up to enough time that the
// probe's extra cost (the model's, or the last probe's measured one if more,
// plus its catch-up e c) is at most `probe_budget` of it; probes are how it
// comes back when drafting starts to pay. Why the catch-up is priced on its
// own: it grows with every plain step. Priced as a lump from the last probe,
// each probe cost a fixed share of the plain time before it (a q8_0 self-draft
// of the 110M stand-in: ~0.1 of a plain step per missed token, so ~10 % of
// the time went to probes against a 2 % budget); priced per token, a drafter
// whose catch-up grows faster than the budget is probed again only where its
// gap is small (a new request: the prompt is fed to it anyway). While some k >= 1 wins, every
// `refresh_every`-th step is plain, keeping the one-row price current (the
// machine's load changes it). The very first steps measure a plain pass, then
// probe at max_k.
//
// Standard library only: the caller times its own passes and reports them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastinfer/core/error.hpp"

namespace fastinfer::speculative {

struct AdaptiveDraftConfig {
  double cost_weight = 0.1;      // EWMA weight of a new timing (pass and draft seconds)
  double accept_forget = 0.95;   // weight of the past per acceptance observation
  double prior_acceptance = 0.5; // depth 1's prior; deeper depths take the depth above's estimate
  double prior_weight = 2.0;     // trials the prior counts for
  double probe_budget = 0.02;    // at most this share of the plain steps' time goes to probes
  std::int32_t refresh_every = 32;  // while speculating, one plain step in this many
  std::int32_t max_rows = 4096;     // largest pass the cost table keeps
};

// What one step did, for AdaptiveDraftLength::report.
struct DraftStepReport {
  std::int32_t k = 0;          // drafts asked for (what choose() returned, or a cap below it)
  std::int32_t base_rows = 1;  // rows the step feeds without drafts (last token + recomputed pending)
  std::int32_t rows = 1;       // rows of the target pass
  std::int32_t accepted = 0;   // drafts kept (a tree: the accepted path's length)
  // nodes_at_depth[d] for d in [0, depths): draft nodes at depth d + 1 (a
  // chain of m tokens: m ones; nullptr with depths = m means that chain).
  const std::int32_t* nodes_at_depth = nullptr;
  std::int32_t depths = 0;
  double draft_seconds = 0;  // drafter's propose()
  double pass_seconds = 0;   // the target pass and the step's host work
  // Tokens the drafter fed to catch up before drafting (what choose() was
  // told: Drafter::catch_up_tokens), 0 for a plain step.
  std::int64_t catch_up_tokens = 0;
};

struct AdaptiveDraftStats {
  std::int64_t steps = 0;         // reported steps
  std::int64_t steps_at_zero = 0; // of those, plain decode steps (k = 0)
  std::int64_t k_sum = 0;         // sum of k asked
  std::int64_t probes = 0;        // steps drafted while the model preferred k = 0
  double mean_draft_length() const { return steps > 0 ? double(k_sum) / double(steps) : 0.0; }
};

// Per-depth acceptance of one drafter (or one request's drafter): p_d =
// P(draft d kept | drafts 1..d-1 kept, d asked for), from counts forgotten by
// `forget` per observation; depth 1's prior is `prior` with `prior_weight`
// trials, each deeper depth's prior is the estimate of the depth above. Also
// the Engine's per-request history (engine/spec_policy.hpp).
class DraftAcceptance {
 public:
  explicit DraftAcceptance(std::int32_t max_depth = 16, double prior = 0.5, double prior_weight = 2.0,
                           double forget = 0.95)
      : prior_(prior), prior_weight_(prior_weight), forget_(forget) {
    FASTINFER_CHECK(max_depth >= 0 && max_depth <= 1024, InvalidArgument,
                    "draft acceptance: max_depth must be in [0, 1024], got ", max_depth);
    FASTINFER_CHECK(prior >= 0.0 && prior <= 1.0 && prior_weight > 0.0, InvalidArgument,
                    "draft acceptance: prior must be in [0, 1] and prior_weight > 0, got ", prior, " and ",
                    prior_weight);
    FASTINFER_CHECK(forget > 0.0 && forget <= 1.0, InvalidArgument, "draft acceptance: forget must be in (0, 1], got ",
                    forget);
    succ_.assign(std::size_t(max_depth) + 1, 0.0);
    trials_.assign(std::size_t(max_depth) + 1, 0.0);
  }

  std::int32_t max_depth() const { return std::int32_t(succ_.size()) - 1; }

  // One verification that asked for k drafts, was offered `offered` depths and
  // kept `accepted` (<= offered <= k; a draft not offered counts as not kept).
  void update(std::int32_t k, std::int32_t offered, std::int32_t accepted) {
    FASTINFER_CHECK(k >= 0 && offered >= 0 && offered <= k && accepted >= 0 && accepted <= offered, InvalidArgument,
                    "draft acceptance: ", accepted, " kept of ", offered, " offered at k ", k);
    for (std::int32_t d = 1; d <= std::min(k, max_depth()) && accepted >= d - 1; ++d) {
      succ_[std::size_t(d)] = forget_ * succ_[std::size_t(d)] + (accepted >= d ? 1.0 : 0.0);
      trials_[std::size_t(d)] = forget_ * trials_[std::size_t(d)] + 1.0;
    }
  }
  // A step without a verification (the caller chose not to draft): the
  // counts forget a step as an observation would, so an estimate no longer
  // fed drifts back towards its prior rather than holding its last verdict.
  void forget_step() {
    for (std::size_t d = 1; d < succ_.size(); ++d) {
      succ_[d] *= forget_;
      trials_[d] *= forget_;
    }
  }
  double acceptance(std::int32_t d) const {
    double p = prior_;
    for (std::int32_t i = 1; i <= std::min(d, max_depth()); ++i) p = estimate(i, p);
    return p;
  }
  // Expected tokens a step asking for k emits: 1 + sum_d prod_{j<=d} p_j.
  double expected_tokens(std::int32_t k) const {
    double e = 1.0, run = 1.0, p = prior_;
    for (std::int32_t i = 1; i <= std::min(k, max_depth()); ++i) {
      p = estimate(i, p);
      e += (run *= p);
    }
    return e;
  }

 private:
  double estimate(std::int32_t d, double prior) const {
    return (succ_[std::size_t(d)] + prior * prior_weight_) / (trials_[std::size_t(d)] + prior_weight_);
  }

  double prior_, prior_weight_, forget_;
  std::vector<double> succ_, trials_;  // index 1..max_depth
};

class AdaptiveDraftLength {
 public:
  explicit AdaptiveDraftLength(std::int32_t max_k, AdaptiveDraftConfig config = {}) : c_(config), max_k_(max_k) {
    FASTINFER_CHECK(max_k >= 0 && max_k <= 1024, InvalidArgument, "adaptive draft length: max_k must be in [0, 1024], got ",
                    max_k);
    FASTINFER_CHECK(c_.cost_weight > 0.0 && c_.cost_weight <= 1.0, InvalidArgument,
                    "adaptive draft length: cost_weight must be in (0, 1], got ", c_.cost_weight);
    FASTINFER_CHECK(c_.accept_forget > 0.0 && c_.accept_forget <= 1.0, InvalidArgument,
                    "adaptive draft length: accept_forget must be in (0, 1], got ", c_.accept_forget);
    FASTINFER_CHECK(c_.prior_acceptance >= 0.0 && c_.prior_acceptance <= 1.0 && c_.prior_weight > 0.0, InvalidArgument,
                    "adaptive draft length: prior_acceptance must be in [0, 1] and prior_weight > 0, got ",
                    c_.prior_acceptance, " and ", c_.prior_weight);
    FASTINFER_CHECK(c_.probe_budget > 0.0 && c_.probe_budget <= 1.0, InvalidArgument,
                    "adaptive draft length: probe_budget must be in (0, 1], got ", c_.probe_budget);
    FASTINFER_CHECK(c_.refresh_every >= 2, InvalidArgument, "adaptive draft length: refresh_every must be >= 2, got ",
                    c_.refresh_every);
    FASTINFER_CHECK(c_.max_rows >= 1 + max_k, InvalidArgument, "adaptive draft length: max_rows ", c_.max_rows,
                    " cannot hold a pass of 1 + max_k = ", 1 + max_k, " rows");
    accept_ = DraftAcceptance(max_k, c_.prior_acceptance, c_.prior_weight, c_.accept_forget);
    nodes_.assign(std::size_t(max_k) + 1, -1.0);
  }

  std::int32_t max_k() const { return max_k_; }
  const AdaptiveDraftStats& stats() const { return stats_; }

  // Seeds (or overrides) the price of a pass over `rows` rows, e.g. from
  // bench_speculative's BM_Forward110M; later measurements move it.
  void set_pass_seconds(std::int32_t rows, double seconds) {
    FASTINFER_CHECK(rows >= 1 && rows <= c_.max_rows, InvalidArgument, "adaptive draft length: a pass of ", rows,
                    " rows is outside [1, ", c_.max_rows, "]");
    FASTINFER_CHECK(std::isfinite(seconds) && seconds > 0.0, InvalidArgument,
                    "adaptive draft length: pass seconds must be finite and > 0, got ", seconds);
    grow(rows);
    pass_[std::size_t(rows)] = seconds;
    samples_[std::size_t(rows)] = std::max(samples_[std::size_t(rows)], kTrusted);
  }

  // The k for the next step, at most min(max_k, cap); `base_rows` as in the
  // report; `catch_up_tokens` what a drafting step would first feed the
  // drafter (Drafter::catch_up_tokens); `remaining_tokens` how many tokens
  // the request may still emit (-1: not known), the horizon over which a
  // catch-up is paid back (see the top).
  std::int32_t choose(std::int32_t base_rows = 1, std::int32_t cap = 1 << 30, std::int64_t catch_up_tokens = 0,
                      std::int64_t remaining_tokens = -1) {
    FASTINFER_CHECK(base_rows >= 1, InvalidArgument, "adaptive draft length: base_rows must be >= 1, got ", base_rows);
    FASTINFER_CHECK(catch_up_tokens >= 0, InvalidArgument, "adaptive draft length: catch_up_tokens must be >= 0, got ",
                    catch_up_tokens);
    FASTINFER_CHECK(remaining_tokens >= -1, InvalidArgument,
                    "adaptive draft length: remaining_tokens must be >= 0 (or -1: unknown), got ",
                    remaining_tokens);
    refreshing_ = false;  // set again below if this is a refresh step
    const std::int32_t kmax = std::max(0, std::min(max_k_, cap));
    if (kmax == 0 || !(one_row() > 0.0)) return 0;  // first: the plain price
    if (!probed_) {  // then: what drafting costs and returns
      probing_ = true;
      return kmax;
    }
    const std::int32_t best = best_k(base_rows, 0, kmax, catch_up_tokens, remaining_tokens);
    if (best == 0) {
      const std::int32_t probe = best_k(base_rows, 1, kmax);
      // Priced at the larger of the model's extra cost and what the last
      // probe really cost over a plain step beyond its catch-up, plus this
      // one's catch-up (see the top).
      const double extra = std::max(expected_seconds(base_rows, probe) - expected_seconds(base_rows, 0),
                                    last_probe_extra_) +
                           catch_up_seconds(catch_up_tokens);
      if (plain_seconds_since_probe_ * c_.probe_budget >= extra) {
        ++stats_.probes;
        probing_ = true;
        return probe;
      }
      return 0;
    }
    if (spec_steps_since_plain_ + 1 >= c_.refresh_every) {
      refreshing_ = true;
      return 0;
    }
    return best;
  }

  // What the step chosen above did. Throws InvalidArgument on an inconsistent
  // report, leaving every estimate as it was.
  void report(const DraftStepReport& r) {
    validate(r);
    ++stats_.steps;
    stats_.k_sum += r.k;
    // The extra rows' price, against the plain price before this step enters.
    if (r.rows > 1 && one_row() > 0.0) {
      const double per_row = std::max(0.0, (r.pass_seconds - one_row()) / double(r.rows - 1));
      if (per_row_ < 0.0) per_row_ = per_row;
      else per_row_ += c_.cost_weight * (std::min(per_row, 2.0 * per_row_ + 0.05 * one_row()) - per_row_);
    }
    add_pass(r.rows, r.pass_seconds);
    if (r.k == 0) {
      probing_ = false;
      if (!refreshing_ && run_ > 0) ewma(run_steps_, double(run_));  // a drafting run ended
      if (!refreshing_) run_ = 0;
      refreshing_ = false;
      ++stats_.steps_at_zero;
      plain_seconds_since_probe_ += r.pass_seconds;
      spec_steps_since_plain_ = 0;
      return;
    }
    // Drafting seconds split into k drafts and the catch-up: a step that
    // caught up more than a speculating step's usual re-feed (k + 1 tokens)
    // prices the catch-up from the per-draft price; the others the drafts.
    // With no per-draft price yet (the first probe of a draft model catches
    // up the prompt) both start at the step's seconds per token fed.
    double caught_up = 0.0;
    if (r.catch_up_tokens > std::int64_t(r.k) + 1) {
      if (!(draft_per_token_ > 0.0)) draft_per_token_ = r.draft_seconds / double(r.catch_up_tokens + r.k);
      caught_up = std::max(0.0, r.draft_seconds - draft_per_token_ * double(r.k));
      robust_ewma(catch_up_per_token_, caught_up / double(r.catch_up_tokens));
    } else {
      robust_ewma(draft_per_token_, r.draft_seconds / double(r.k));
    }
    if (probing_)
      last_probe_extra_ = std::max(0.0, r.draft_seconds - caught_up + r.pass_seconds - pass_at(r.base_rows));
    probing_ = false;
    probed_ = true;
    ++run_;
    ++spec_steps_since_plain_;
    plain_seconds_since_probe_ = 0.0;
    std::int32_t nodes = 0;
    for (std::int32_t d = 1; d <= r.k; ++d) {
      const std::int32_t at = d <= r.depths ? (r.nodes_at_depth ? r.nodes_at_depth[d - 1] : 1) : 0;
      nodes += at;
      ewma(nodes_[std::size_t(d)], double(at));
    }
    accept_.update(r.k, r.depths, r.accepted);
    ewma(extra_rows_, double(std::max(0, r.rows - r.base_rows - nodes)));
  }

  // ---- the model, public for tests and reports ----
  // p_d: probability that draft d is kept given drafts 1..d-1 were.
  double acceptance(std::int32_t d) const { return accept_.acceptance(d); }
  double expected_tokens(std::int32_t k) const { return accept_.expected_tokens(k); }
  double expected_rows(std::int32_t base_rows, std::int32_t k) const {
    if (k == 0) return double(base_rows);
    double rows = double(base_rows) + std::max(extra_rows_, 0.0);
    for (std::int32_t d = 1; d <= k; ++d) rows += nodes_[std::size_t(d)] >= 0.0 ? nodes_[std::size_t(d)] : 1.0;
    return rows;
  }
  // Seconds of a pass over `rows` rows (fractional: linear in between); 0
  // before any measurement.
  double pass_seconds(double rows) const {
    const std::int32_t lo = std::max(1, std::int32_t(std::floor(rows)));
    const double f = rows - double(lo);
    const double a = pass_at(lo);
    return f > 0.0 ? a + f * (pass_at(lo + 1) - a) : a;
  }
  double draft_seconds(std::int32_t k) const { return k > 0 && draft_per_token_ > 0.0 ? draft_per_token_ * k : 0.0; }
  // Seconds of feeding the drafter `tokens` it missed (0 until a catch-up was measured).
  double catch_up_seconds(std::int64_t tokens) const {
    return tokens > 0 && catch_up_per_token_ > 0.0 ? catch_up_per_token_ * double(tokens) : 0.0;
  }
  double expected_seconds(std::int32_t base_rows, std::int32_t k) const {
    return draft_seconds(k) + pass_seconds(expected_rows(base_rows, k));
  }
  // Expected tokens per second of a step asking for k, charged its share of
  // a catch-up of `catch_up_tokens` (catch_up_share; none by default).
  double rate(std::int32_t base_rows, std::int32_t k, std::int64_t catch_up_tokens = 0,
              std::int64_t remaining_tokens = -1) const {
    const double t = expected_seconds(base_rows, k) + catch_up_share(k, catch_up_tokens, remaining_tokens);
    return t > 0.0 ? expected_tokens(k) / t : 0.0;
  }
  // Seconds a drafting step at k owes for catching the drafter up on
  // `catch_up_tokens` missed tokens, spread over the steps that would pay
  // it back (see the top): 0 for a step's usual re-feed (at most k + 1
  // tokens, priced in the per-draft seconds) and for k = 0.
  double catch_up_share(std::int32_t k, std::int64_t catch_up_tokens, std::int64_t remaining_tokens) const {
    if (k == 0 || catch_up_tokens <= std::int64_t(k) + 1) return 0.0;
    double steps = run_steps_ > 0.0 ? run_steps_ : double(c_.refresh_every);
    if (remaining_tokens >= 0) steps = std::min(steps, double(remaining_tokens) / expected_tokens(k));
    return catch_up_seconds(catch_up_tokens) / std::max(1.0, steps);
  }

 private:
  void validate(const DraftStepReport& r) const {
    FASTINFER_CHECK(r.k >= 0 && r.k <= max_k_, InvalidArgument, "adaptive draft length: reported k ", r.k,
                    " is outside [0, ", max_k_, "]");
    FASTINFER_CHECK(r.base_rows >= 1 && r.rows >= r.base_rows && r.rows <= c_.max_rows, InvalidArgument,
                    "adaptive draft length: a step of ", r.rows, " rows with ", r.base_rows,
                    " base rows (need 1 <= base_rows <= rows <= ", c_.max_rows, ")");
    FASTINFER_CHECK(r.accepted >= 0 && r.accepted <= std::min(r.k, r.depths), InvalidArgument,
                    "adaptive draft length: ", r.accepted, " drafts kept of ", r.depths, " depths offered at k ", r.k);
    FASTINFER_CHECK(r.depths >= 0 && r.depths <= r.k, InvalidArgument, "adaptive draft length: ", r.depths,
                    " draft depths offered, k was ", r.k);
    FASTINFER_CHECK(r.catch_up_tokens >= 0 && (r.k > 0 || r.catch_up_tokens == 0), InvalidArgument,
                    "adaptive draft length: ", r.catch_up_tokens, " tokens caught up at k ", r.k);
    FASTINFER_CHECK(std::isfinite(r.pass_seconds) && r.pass_seconds >= 0.0 && std::isfinite(r.draft_seconds) &&
                        r.draft_seconds >= 0.0,
                    InvalidArgument, "adaptive draft length: seconds must be finite and >= 0, got pass ",
                    r.pass_seconds, ", draft ", r.draft_seconds);
    if (r.nodes_at_depth)
      for (std::int32_t d = 0; d < r.depths; ++d)
        FASTINFER_CHECK(r.nodes_at_depth[d] >= 1, InvalidArgument, "adaptive draft length: depth ", d + 1,
                        " of an offered tree has ", r.nodes_at_depth[d], " nodes");
  }

  // Samples of one row count after which its own average is trusted.
  static constexpr int kTrusted = 4;

  void ewma(double& v, double x) const { v = v < 0.0 ? x : (1.0 - c_.cost_weight) * v + c_.cost_weight * x; }
  // As ewma, the sample first clipped to [v / 2, 2 v] (see the top).
  void robust_ewma(double& v, double x) const {
    if (v > 0.0) x = std::clamp(x, 0.5 * v, 2.0 * v);
    ewma(v, x);
  }

  void grow(std::int32_t rows) {
    if (pass_.size() <= std::size_t(rows)) {
      pass_.resize(std::size_t(rows) + 1, -1.0);
      samples_.resize(std::size_t(rows) + 1, 0);
    }
  }
  void add_pass(std::int32_t rows, double seconds) {
    grow(rows);
    robust_ewma(pass_[std::size_t(rows)], seconds);
    ++samples_[std::size_t(rows)];
  }
  double one_row() const { return pass_.size() > 1 ? pass_[1] : -1.0; }

  // A row count with kTrusted samples (or seeded) gives its own average;
  // any other, the plain price plus the pooled price per extra row (with no
  // drafting step measured yet: proportional to the plain price).
  double pass_at(std::int32_t n) const {
    if (std::size_t(n) < pass_.size() && samples_[std::size_t(n)] >= kTrusted) return pass_[std::size_t(n)];
    const double c1 = one_row();
    if (!(c1 > 0.0)) return 0.0;
    return per_row_ >= 0.0 ? c1 + per_row_ * double(n - 1) : c1 * double(n);
  }

  // The k in [from, to] of the highest rate, each drafting k charged its
  // share of the catch-up due (none by default).
  std::int32_t best_k(std::int32_t base_rows, std::int32_t from, std::int32_t to, std::int64_t catch_up_tokens = 0,
                      std::int64_t remaining_tokens = -1) const {
    std::int32_t best = from;
    double best_rate = rate(base_rows, from, catch_up_tokens, remaining_tokens);
    for (std::int32_t k = from + 1; k <= to; ++k) {
      const double r = rate(base_rows, k, catch_up_tokens, remaining_tokens);
      if (r > best_rate) {
        best_rate = r;
        best = k;
      }
    }
    return best;
  }

  AdaptiveDraftConfig c_;
  std::int32_t max_k_;
  DraftAcceptance accept_;
  std::vector<double> nodes_;          // per depth: EWMA draft nodes (-1: never asked)
  double draft_per_token_ = -1.0;      // EWMA propose seconds per drafted token (-1: never measured)
  double catch_up_per_token_ = -1.0;   // EWMA seconds per token a drafter caught up (-1: never measured)
  std::vector<double> pass_;           // per row count: EWMA pass seconds (-1: never measured)
  std::vector<int> samples_;           // per row count: samples in pass_ (kTrusted: seeded)
  double per_row_ = -1.0;              // EWMA seconds of one more row (-1: never measured)
  double extra_rows_ = -1.0;           // EWMA rows of a drafting step beyond pending and drafts
  double plain_seconds_since_probe_ = 0.0;
  std::int32_t spec_steps_since_plain_ = 0;
  bool probed_ = false;
  bool probing_ = false;            // the step choose() just gave is a probe
  bool refreshing_ = false;         // ... is a refresh (a plain step that does not end a drafting run)
  std::int32_t run_ = 0;            // drafting steps since the last plain step that was not a refresh
  double run_steps_ = -1.0;         // EWMA length of an ended drafting run (-1: none ended yet)
  double last_probe_extra_ = 0.0;   // seconds the last probe took beyond a plain step
  AdaptiveDraftStats stats_;
};

}  // namespace fastinfer::speculative
