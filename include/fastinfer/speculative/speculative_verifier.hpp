// Speculative verification: which drafted tokens the target model keeps.
//
// One target forward pass over [last accepted token, d1 .. dm] gives m + 1
// rows of logits: row i is the target's next-token distribution after d1..di.
// The verifier turns them into the tokens to emit: the accepted prefix of the
// drafts followed by exactly one token of the target's own (the correction at
// the first rejection, or the bonus token after the last draft).
//
//   greedy (temperature 0): accept while the draft equals the target's argmax
//     (first maximum, as the Sampler's argmax), then emit the argmax. The output
//     is plain greedy decoding's, token for token.
//   sampling: exact rejection sampling (Leviathan et al. 2023, Chen et al.
//     2023): accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the
//     first rejection draw from normalise(max(0, p_i - q_i)); when all m are
//     accepted draw the bonus from p_{m+1}. p and q are the filtered
//     distributions the Sampler gives (temperature, top-k,
//     top-p applied to both), so the output is distributed exactly as plain
//     sampling with the same parameters. A drafter without a distribution
//     (prompt lookup, lookahead) passes q = nullptr: q is then one-hot at the
//     drafted token, acceptance is p(d) and the residual is p without d. A
//     draft whose residual is empty (p == q up to rounding) is kept (its
//     acceptance probability is 1): core/rejection_sampling.hpp.
//   token trees: the same over a tree of candidates (parent links); greedy
//     follows the longest path the target agrees with; sampling uses
//     SpecInfer's multi-round ("recursive") rejection sampling: at a node, try
//     its children in order, accepting child j with min(1, p(c_j) / q_j(c_j))
//     and replacing p by normalise(max(0, p - q_j)) after each rejection; when
//     every child is rejected draw from what p has become. Exact when each
//     child was drawn independently from its q_j (i.i.d. from one draft
//     distribution, or deterministic candidates with q_j one-hot).
//   coupled ("sample-and-match", AcceptanceRule::Coupled): for i = 0..m draw
//     x_i = Sampler::sample_at_index(target row i, params, first_index + i), the
//     very token plain sampling emits at that request index; keep d_i while
//     x_i == d_i, else emit x_i and stop (all kept: x_m is the bonus). The
//     output IS plain sampling's output with the same seed, bit for bit, so it
//     is exact in distribution and does not depend on how many drafts a step
//     got (the engine's batch-independence rests on this). For a
//     deterministic drafter a draft is kept with probability p(d), as under
//     rejection sampling; a sampling drafter must draw with the same coin
//     (DraftModel does: common random numbers through the inverse CDF), so
//     that x and d coincide whenever q is close to p. Trees: follow the child
//     equal to x at each node.
//   typical acceptance (Medusa, Cai et al. 2024): TypicalAcceptanceLossy.
//     Accepts d_i when p_i(d_i) > min(threshold, alpha * exp(-H(p_i))). It
//     does NOT preserve the target distribution; the name says so.
//
// Coins (Exact, TypicalLossy): every random number is Philox(seed, RandomStream::Speculative,
// token_index * kCoinSlots + slot) where token_index is the index in the
// request of the token being decided, so a seeded run repeats exactly
// whatever the drafter's timing. Slots: 0 the residual / bonus draw, 1 the
// drafter's own sample, 2 + j the acceptance test of candidate j. Coupled
// uses plain sampling's coin, Philox(seed, RandomStream::Sampling, index).
//
// Backend-free: the rows' softmax / top-k / top-p, argmax and draws come from
// a Sampler the caller provides (a backend's, over its own rows), so this
// bookkeeping includes no backend. A Sampler has
//   std::int32_t argmax(const float* row, std::int64_t n);   // first maximum
//   std::int32_t sample_at_index(const float* row, std::int64_t n,
//                                const SamplingParams&, std::uint64_t index);
//   void distribution(const float* row, std::int64_t n, const SamplingParams&,
//                     float* probs_out);                     // filtered, sums to 1
//   std::int32_t sample_from_weights(const float* w, std::int64_t n, float coin);
// with plain sampling's semantics (backend/cpu/sampling.hpp). The default,
// cpu::HostSampler, is only named here: it is defined (and must be included)
// where a verifier is instantiated, as the generation loops do.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/rejection_sampling.hpp"
#include "fastinfer/core/sampling_params.hpp"

namespace fastinfer::cpu {
class HostSampler;  // backend/cpu/sampling.hpp
}  // namespace fastinfer::cpu

namespace fastinfer::speculative {

inline constexpr std::uint64_t kCoinSlots = 64;
inline constexpr int kResidualSlot = 0;
inline constexpr int kDraftSlot = 1;
inline constexpr int kMaxTreeChildren = int(kCoinSlots) - 2;

inline float spec_coin(std::uint64_t seed, std::uint64_t token_index, int slot) {
  return uniform_float(seed, RandomStream::Speculative, token_index * kCoinSlots + std::uint64_t(slot));
}
inline float accept_coin(std::uint64_t seed, std::uint64_t token_index, int candidate = 0) {
  return spec_coin(seed, token_index, 2 + candidate);
}

// The emitted tokens of one verification: `accepted` drafts, then one token
// of the target's (tokens.size() == accepted + 1). For trees, `path` lists the
// accepted nodes.
struct VerifyOutcome {
  int accepted = 0;
  std::vector<std::int32_t> tokens;
  std::vector<int> path;
};

// Medusa's typical acceptance. Lossy: the output is no longer distributed as
// the target's. Defaults are Medusa's (posterior_threshold 0.09, alpha 0.3).
struct TypicalAcceptanceLossy {
  float threshold = 0.09f;
  float alpha = 0.3f;
};

// A tree of candidate tokens. Node i holds tokens[i]; parent[i] is -1 for a
// child of the root (the last accepted token) or an earlier node (< i).
struct TokenTree {
  std::vector<std::int32_t> tokens;
  std::vector<int> parent;

  int size() const { return int(tokens.size()); }
  void validate(int vocab) const {
    FASTINFER_CHECK(parent.size() == tokens.size(), InvalidArgument, "token tree has ", tokens.size(),
                    " tokens but ", parent.size(), " parent links");
    for (int i = 0; i < size(); ++i) {
      FASTINFER_CHECK(parent[std::size_t(i)] >= -1 && parent[std::size_t(i)] < i, InvalidArgument, "tree node ", i,
                      " has parent ", parent[std::size_t(i)], " (must be -1 or an earlier node)");
      FASTINFER_CHECK(tokens[std::size_t(i)] >= 0 && tokens[std::size_t(i)] < vocab, InvalidArgument, "tree node ",
                      i, " holds token ", tokens[std::size_t(i)], " outside the vocabulary [0, ", vocab, ")");
    }
  }
  // Per logits row (row 0 after the root, row 1 + i after node i): the
  // tokens accepted before the token it decides, i.e. 0 for the root and
  // node i's depth (1 for a child of the root). Needs a valid tree.
  std::vector<int> row_depths() const {
    std::vector<int> depth(std::size_t(size()) + 1, 0);
    for (int i = 0; i < size(); ++i)
      depth[std::size_t(i) + 1] = depth[std::size_t(parent[std::size_t(i)] + 1)] + 1;
    return depth;
  }
  // Children of `node` (-1: the root) in node order.
  std::vector<int> children(int node) const {
    std::vector<int> out;
    for (int i = 0; i < size(); ++i)
      if (parent[std::size_t(i)] == node) out.push_back(i);
    return out;
  }
};

namespace detail {

inline void check_drafts(const std::int32_t* drafts, int m, int vocab) {
  FASTINFER_CHECK(vocab >= 1, InvalidArgument, "vocabulary size must be positive, got ", vocab);
  FASTINFER_CHECK(m >= 0, InvalidArgument, "draft count must not be negative, got ", m);
  for (int i = 0; i < m; ++i)
    FASTINFER_CHECK(drafts[i] >= 0 && drafts[i] < vocab, InvalidArgument, "draft token ", drafts[i], " at index ",
                    i, " is outside the vocabulary [0, ", vocab, ")");
}

// Keeps drafts d_0..d_{m-1} while the target's pick x_i = pick(i) equals
// d_i; emits the picks up to and including the first that differs (or
// x_m, the bonus). The picks after the first mismatch are never asked for.
template <class Pick>
VerifyOutcome match_chain(const std::int32_t* drafts, int m, Pick pick) {
  VerifyOutcome out;
  for (int i = 0; i <= m; ++i) {
    const std::int32_t x = pick(i);
    out.tokens.push_back(x);
    if (i == m || x != drafts[i]) break;
    ++out.accepted;
  }
  return out;
}

}  // namespace detail

// --- The math on given distributions (tests drive these directly) ---------

namespace detail {
// Walks a token tree from the root: at each node `pick(row, depth)` chooses
// the target's token from the node's row (row node + 1; depth: the tokens
// accepted before it); the walk follows the child holding that token and
// stops where none does. Greedy, coupled and from-samples tree verification
// differ only in `pick`.
template <typename Pick>
VerifyOutcome follow_tree(const TokenTree& tree, Pick pick) {
  VerifyOutcome out;
  int node = -1;
  while (true) {
    const std::int32_t x = pick(node + 1, out.accepted);
    out.tokens.push_back(x);
    int next = -1;
    for (int c : tree.children(node))
      if (tree.tokens[std::size_t(c)] == x) {
        next = c;
        break;
      }
    if (next < 0) break;
    out.path.push_back(next);
    ++out.accepted;
    node = next;
  }
  return out;
}
}  // namespace detail

// Greedy chain: logits rows [m + 1][vocab].
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_greedy(const float* target_logits, int vocab, const std::int32_t* drafts, int m,
                            Sampler&& sampler = Sampler()) {
  detail::check_drafts(drafts, m, vocab);
  return detail::match_chain(drafts, m, [&](int i) {
    return sampler.argmax(target_logits + std::size_t(i) * std::size_t(vocab), vocab);
  });
}

// Rejection-sampling chain on distributions: p [m + 1][vocab] (modified in
// place: a rejected row becomes its unnormalised residual), q [m][vocab] or
// nullptr (deterministic drafts). The token decided at row i has request
// index first_index + i.
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_rejection(float* p, const float* q, const std::int32_t* drafts, int m, int vocab,
                               std::uint64_t seed, std::uint64_t first_index, Sampler&& sampler = Sampler()) {
  detail::check_drafts(drafts, m, vocab);
  std::vector<float> scratch;
  // The pick of row i equals d_i exactly when d_i is kept (exact_pick).
  return detail::match_chain(drafts, m, [&](int i) {
    const std::uint64_t index = first_index + std::uint64_t(i);
    const float* qi = q && i < m ? q + std::size_t(i) * std::size_t(vocab) : nullptr;
    return rejection::exact_pick(p + std::size_t(i) * std::size_t(vocab), qi, i < m ? drafts[i] : -1, vocab,
                                 i < m ? accept_coin(seed, index) : 0.0f,
                                 spec_coin(seed, index, kResidualSlot), sampler, scratch);
  });
}

// Coupled chain ("sample-and-match") on logits rows [m + 1][vocab]: row i is
// sampled exactly as plain sampling samples request index first_index + i;
// drafts are kept while they equal those samples. Greedy params: the argmax
// chain (sample_at_index is the first maximum then).
template <class Sampler>
VerifyOutcome verify_coupled(const float* target_logits, int vocab, const std::int32_t* drafts, int m,
                             const SamplingParams& params, std::uint64_t first_index, Sampler& sampler) {
  detail::check_drafts(drafts, m, vocab);
  return detail::match_chain(drafts, m, [&](int i) {
    return sampler.sample_at_index(target_logits + std::size_t(i) * std::size_t(vocab), vocab, params,
                                   first_index + std::uint64_t(i));
  });
}

// A chain from the target's picks already made, so the rows never leave
// the backend: the drafts up to the first pick that differs, then that pick.
//   greedy / coupled: samples[i] = the token plain decoding picks from row i
//     at request index first_index + i (the first maximum at temperature 0),
//     i = 0..m, as a backend's sample_rows gives them: the outcome of
//     verify_greedy / verify_coupled over those rows;
//   exact, deterministic drafts: samples[i] = rejection::exact_pick of row i
//     with d_i (d_m = -1) and the coins verify_rejection uses, as a
//     backend's accept_rows gives them: the outcome of verify_rejection with
//     q = nullptr.
inline VerifyOutcome verify_from_samples(const std::int32_t* samples, const std::int32_t* drafts, int m,
                                         int vocab) {
  detail::check_drafts(drafts, m, vocab);
  return detail::match_chain(drafts, m, [&](int i) { return samples[i]; });
}

// Typical acceptance (lossy) on distributions p [m + 1][vocab]; the token
// after the accepted run is drawn from p (argmax when `greedy`).
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_typical_lossy(const float* p, const std::int32_t* drafts, int m, int vocab,
                                   const TypicalAcceptanceLossy& rule, bool greedy, std::uint64_t seed,
                                   std::uint64_t first_index, Sampler&& sampler = Sampler()) {
  detail::check_drafts(drafts, m, vocab);
  FASTINFER_CHECK(rule.threshold >= 0.0f && rule.alpha >= 0.0f, InvalidArgument,
                  "typical acceptance needs threshold >= 0 and alpha >= 0, got ", rule.threshold, " and ", rule.alpha);
  VerifyOutcome out;
  for (int i = 0; i <= m; ++i) {
    const float* pi = p + std::size_t(i) * std::size_t(vocab);
    if (i < m) {
      double entropy = 0;
      for (int x = 0; x < vocab; ++x)
        if (pi[x] > 0.0f) entropy -= double(pi[x]) * std::log(double(pi[x]));
      if (double(pi[drafts[i]]) > std::min(double(rule.threshold), double(rule.alpha) * std::exp(-entropy))) {
        out.tokens.push_back(drafts[i]);
        ++out.accepted;
        continue;
      }
    }
    out.tokens.push_back(greedy ? std::int32_t(std::max_element(pi, pi + vocab) - pi)
                                : sampler.sample_from_weights(pi, vocab,
                                                              spec_coin(seed, first_index + std::uint64_t(i),
                                                                        kResidualSlot)));
    break;
  }
  return out;
}

// Greedy tree: logits rows [tree.size() + 1][vocab], row 0 after the root,
// row 1 + i after node i. Follows the children that equal the target's argmax.
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_tree_greedy(const float* target_logits, int vocab, const TokenTree& tree,
                                 Sampler&& sampler = Sampler()) {
  tree.validate(vocab);
  return detail::follow_tree(tree, [&](int row, int) {
    return sampler.argmax(target_logits + std::size_t(row) * std::size_t(vocab), vocab);
  });
}

// Coupled tree: logits rows laid out as for verify_tree_greedy; at each node
// the plain sample of the next request index picks the child to follow.
template <class Sampler>
VerifyOutcome verify_tree_coupled(const float* target_logits, int vocab, const TokenTree& tree,
                                  const SamplingParams& params, std::uint64_t first_index, Sampler& sampler) {
  tree.validate(vocab);
  return detail::follow_tree(tree, [&](int row, int depth) {
    return sampler.sample_at_index(target_logits + std::size_t(row) * std::size_t(vocab), vocab, params,
                                   first_index + std::uint64_t(depth));
  });
}

// The greedy and coupled trees from the target's picks already made:
// samples[r] = the token plain decoding picks from row r (laid out as for
// verify_tree_greedy) at request index first_index + tree.row_depths()[r],
// as a backend's sample_rows gives them. The outcome of verify_tree_greedy /
// verify_tree_coupled over those rows.
inline VerifyOutcome verify_tree_from_samples(const std::int32_t* samples, const TokenTree& tree, int vocab) {
  tree.validate(vocab);
  return detail::follow_tree(tree, [&](int row, int) { return samples[row]; });
}

// Sampling tree (SpecInfer's multi-round rejection sampling): p rows
// [tree.size() + 1][vocab] laid out as for verify_tree_greedy (modified in
// place: after each rejected child a row becomes its normalised residual),
// q rows [tree.size()][vocab] with q row i the distribution node i was drawn
// from (nullptr: every node deterministic, one-hot q).
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_tree_rejection(float* p, const float* q, int vocab, const TokenTree& tree, std::uint64_t seed,
                                    std::uint64_t first_index, Sampler&& sampler = Sampler()) {
  tree.validate(vocab);
  VerifyOutcome out;
  std::vector<float> scratch;
  int node = -1;
  while (true) {
    float* pn = p + std::size_t(node + 1) * std::size_t(vocab);
    const std::uint64_t index = first_index + std::uint64_t(out.accepted);
    const std::vector<int> kids = tree.children(node);
    FASTINFER_CHECK(int(kids.size()) <= kMaxTreeChildren, InvalidArgument, "tree node ", node, " has ",
                    kids.size(), " children; at most ", kMaxTreeChildren, " are supported");
    int next = -1;
    for (std::size_t j = 0; j < kids.size(); ++j) {
      const int c = kids[j];
      const float* qc = q ? q + std::size_t(c) * std::size_t(vocab) : nullptr;
      const std::int32_t d = tree.tokens[std::size_t(c)];
      if (rejection::accept_test(pn, qc, d, accept_coin(seed, index, int(j)))) {
        next = c;
        break;
      }
      // The next sibling is tested against the NORMALISED residual: the
      // acceptance ratio of the next round is p'(x) / q(x) with p' a
      // distribution, not max(0, p - q) whose mass is below 1.
      if (rejection::subtract_residual(pn, qc, d, vocab, scratch)) rejection::normalise(pn, vocab);
    }
    if (next < 0) {
      out.tokens.push_back(sampler.sample_from_weights(pn, vocab, spec_coin(seed, index, kResidualSlot)));
      break;
    }
    out.tokens.push_back(tree.tokens[std::size_t(next)]);
    out.path.push_back(next);
    ++out.accepted;
    node = next;
  }
  return out;
}

// Medusa's typical acceptance over a tree (lossy). p rows [tree.size() + 1]
// [vocab] as verify_tree_greedy's (probabilities, not logits). Takes the
// longest path of accepted nodes (first in node order on a tie), then one
// token drawn from p at its end (argmax when `greedy`).
template <class Sampler = cpu::HostSampler>
VerifyOutcome verify_tree_typical_lossy(const float* p, int vocab, const TokenTree& tree,
                                        const TypicalAcceptanceLossy& rule, bool greedy, std::uint64_t seed,
                                        std::uint64_t first_index, Sampler&& sampler = Sampler()) {
  tree.validate(vocab);
  FASTINFER_CHECK(rule.threshold >= 0.0f && rule.alpha >= 0.0f, InvalidArgument,
                  "typical acceptance needs threshold >= 0 and alpha >= 0, got ", rule.threshold, " and ", rule.alpha);
  const int n = tree.size();
  std::vector<double> bar(std::size_t(n) + 1);  // acceptance bar of each row
  for (int r = 0; r <= n; ++r) {
    const float* pr = p + std::size_t(r) * std::size_t(vocab);
    double h = 0;
    for (int x = 0; x < vocab; ++x)
      if (pr[x] > 0.0f) h -= double(pr[x]) * std::log(double(pr[x]));
    bar[std::size_t(r)] = std::min(double(rule.threshold), double(rule.alpha) * std::exp(-h));
  }
  std::vector<int> len(std::size_t(n), 0);  // accepted path length ending at node, 0: not accepted
  int best = -1;
  for (int i = 0; i < n; ++i) {
    const int par = tree.parent[std::size_t(i)];
    if (par >= 0 && len[std::size_t(par)] == 0) continue;
    const float* pr = p + std::size_t(par + 1) * std::size_t(vocab);
    if (double(pr[tree.tokens[std::size_t(i)]]) > bar[std::size_t(par + 1)]) {
      len[std::size_t(i)] = (par >= 0 ? len[std::size_t(par)] : 0) + 1;
      if (best < 0 || len[std::size_t(i)] > len[std::size_t(best)]) best = i;
    }
  }
  VerifyOutcome out;
  for (int a = best; a >= 0; a = tree.parent[std::size_t(a)]) out.path.push_back(a);
  std::reverse(out.path.begin(), out.path.end());
  for (int a : out.path) out.tokens.push_back(tree.tokens[std::size_t(a)]);
  out.accepted = int(out.path.size());
  const float* pe = p + std::size_t(best + 1) * std::size_t(vocab);
  out.tokens.push_back(greedy ? std::int32_t(std::max_element(pe, pe + vocab) - pe)
                              : sampler.sample_from_weights(
                                    pe, vocab, spec_coin(seed, first_index + std::uint64_t(out.accepted), kResidualSlot)));
  return out;
}

// --- From logits: what the generation loop calls ------------------------------

// Exact: rejection sampling (Leviathan / SpecInfer); Coupled: sample-and-match,
// plain sampling's tokens whatever the drafts; TypicalLossy: Medusa's, lossy.
// At temperature 0 Exact and Coupled both give the argmax chain.
enum class AcceptanceRule { Exact, Coupled, TypicalLossy };

inline const char* acceptance_rule_name(AcceptanceRule r) {
  switch (r) {
    case AcceptanceRule::Exact: return "exact";
    case AcceptanceRule::Coupled: return "coupled";
    case AcceptanceRule::TypicalLossy: return "typical-lossy";
  }
  return "?";
}

// Holds the sampling parameters, the sampler and the scratch rows of one
// request.
template <class Sampler>
class BasicSpeculativeVerifier {
 public:
  BasicSpeculativeVerifier(int vocab, SamplingParams params, AcceptanceRule rule = AcceptanceRule::Exact,
                           TypicalAcceptanceLossy typical = {})
      : vocab_(vocab), params_(params), rule_(rule), typical_(typical), sampler_(vocab) {
    FASTINFER_CHECK(vocab >= 1, InvalidArgument, "vocabulary size must be positive, got ", vocab);
    validate(params);
  }

  int vocab() const { return vocab_; }
  const SamplingParams& params() const { return params_; }
  bool greedy() const { return params_.temperature == 0.0f; }
  AcceptanceRule rule() const { return rule_; }

  // target_logits [m + 1][vocab] from one forward over [last, d1..dm];
  // draft_probs [m][vocab] (the drafter's filtered distributions) or nullptr
  // for a deterministic drafter; first_index: request index of the first new
  // token.
  VerifyOutcome verify(const float* target_logits, const std::int32_t* drafts, int m, const float* draft_probs,
                       std::uint64_t first_index) {
    if (greedy() && rule_ != AcceptanceRule::TypicalLossy)
      return verify_greedy(target_logits, vocab_, drafts, m, sampler_);
    if (rule_ == AcceptanceRule::Coupled)
      return verify_coupled(target_logits, vocab_, drafts, m, params_, first_index, sampler_);
    detail::check_drafts(drafts, m, vocab_);
    distributions_(target_logits, m + 1);
    if (rule_ == AcceptanceRule::TypicalLossy)
      return verify_typical_lossy(probs_.data(), drafts, m, vocab_, typical_, greedy(), params_.seed, first_index,
                                  sampler_);
    return verify_rejection(probs_.data(), draft_probs, drafts, m, vocab_, params_.seed, first_index, sampler_);
  }

  // Whether verify() keeps drafts by matching the target's own picks
  // (greedy, or the Coupled rule): then verify_from_samples() over the
  // backend's picks of the same rows gives its outcome.
  bool verifies_from_samples() const {
    return rule_ == AcceptanceRule::Coupled || (greedy() && rule_ != AcceptanceRule::TypicalLossy);
  }
  VerifyOutcome verify_from_samples(const std::int32_t* samples, const std::int32_t* drafts, int m) const {
    FASTINFER_CHECK(verifies_from_samples(), UsageError, "verify_from_samples: the ",
                    acceptance_rule_name(rule_), " rule at temperature ", params_.temperature,
                    " needs the target's distributions");
    return speculative::verify_from_samples(samples, drafts, m, vocab_);
  }

  // Whether verify() over a deterministic drafter's chain (draft_probs
  // nullptr) is the exact rule's sampled walk: then verify_from_exact_picks()
  // over the backend's accept_rows of the same rows gives its outcome.
  bool verifies_from_exact_picks() const { return rule_ == AcceptanceRule::Exact && !greedy(); }
  // picks[i] = rejection::exact_pick of row i with drafts[i] (-1 for i = m)
  // and the coins exact_coins(first_index + i).
  VerifyOutcome verify_from_exact_picks(const std::int32_t* picks, const std::int32_t* drafts, int m) const {
    FASTINFER_CHECK(verifies_from_exact_picks(), UsageError, "verify_from_exact_picks: the ",
                    acceptance_rule_name(rule_), " rule at temperature ", params_.temperature,
                    " does not verify from exact picks");
    return speculative::verify_from_samples(picks, drafts, m, vocab_);
  }
  // The exact rule's coins for the token at request index `index`: the
  // acceptance test of its draft and the residual (or bonus) draw.
  std::pair<float, float> exact_coins(std::uint64_t index) const {
    return {accept_coin(params_.seed, index), spec_coin(params_.seed, index, kResidualSlot)};
  }

  // verify_tree() from the target's picks of every row of the tree
  // (samples[r] at request index first_index + tree.row_depths()[r]).
  VerifyOutcome verify_tree_from_samples(const std::int32_t* samples, const TokenTree& tree) const {
    FASTINFER_CHECK(verifies_from_samples(), UsageError, "verify_tree_from_samples: the ",
                    acceptance_rule_name(rule_), " rule at temperature ", params_.temperature,
                    " needs the target's distributions");
    return speculative::verify_tree_from_samples(samples, tree, vocab_);
  }

  // The tree form: target_logits [tree.size() + 1][vocab].
  VerifyOutcome verify_tree(const float* target_logits, const TokenTree& tree, const float* draft_probs,
                            std::uint64_t first_index) {
    if (greedy()) return verify_tree_greedy(target_logits, vocab_, tree, sampler_);
    if (rule_ == AcceptanceRule::Coupled)
      return verify_tree_coupled(target_logits, vocab_, tree, params_, first_index, sampler_);
    tree.validate(vocab_);
    distributions_(target_logits, tree.size() + 1);
    return verify_tree_rejection(probs_.data(), draft_probs, vocab_, tree, params_.seed, first_index, sampler_);
  }

 private:
  // probs_ rows [rows][vocab]: the filtered distributions of the logits rows.
  void distributions_(const float* target_logits, int rows) {
    probs_.resize(std::size_t(rows) * std::size_t(vocab_));
    for (int i = 0; i < rows; ++i)
      sampler_.distribution(target_logits + std::size_t(i) * std::size_t(vocab_), vocab_, params_,
                            probs_.data() + std::size_t(i) * std::size_t(vocab_));
  }

  int vocab_;
  SamplingParams params_;
  AcceptanceRule rule_;
  TypicalAcceptanceLossy typical_;
  Sampler sampler_;
  std::vector<float> probs_;
};

// The verifier over host rows, with the CPU backend's sampler (include
// backend/cpu/sampling.hpp where it is constructed).
using SpeculativeVerifier = BasicSpeculativeVerifier<cpu::HostSampler>;

}  // namespace fastinfer::speculative
