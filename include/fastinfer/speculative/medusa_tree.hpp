// Medusa candidate trees and the Medusa generation loop (batch 1).
//
// Each step the heads (medusa_heads.hpp) give, for depth d = 1..K, a ranked
// list of guesses for the token d places after the root (the last emitted
// token). A tree policy picks which combinations to verify, as paths of
// ranks ({0, 1}: head 1's best guess, then head 2's second best):
//
//   FixedChoicesTree  a fixed list of paths, as Medusa's medusa_choices.
//   DynamicTree       EAGLE-2-style: grow best-first by cumulative
//                     probability (product of the head probabilities along
//                     the path) until a node budget is spent. Every prefix
//                     of a chosen path is chosen first (its score is higher).
//
// build_candidate_tree turns the paths into a TokenTree whose nodes are in an
// order that makes KV rollback cheap: the top-1 chain ({0}, {0,0}, ...) comes
// first, then the rest by depth. One verification forward feeds
//   [pending tokens (causal) | tree nodes (each sees the pending tokens and
//    its own ancestors)]
// with the tree node at depth d placed at position len - 1 + d (siblings share
// a position) and KV slot len + node index. The rows from the root (the last
// pending token) onwards are SpeculativeVerifier::verify_tree's layout.
//
// KV compaction: the accepted path must end up at contiguous positions. A
// node's K/V depend only on its token, its position and what it attended to
// (the prefix and its ancestors), so a path node already in the right slot
// (path[j] == j: a prefix of the top-1 chain) is kept as is; from the first
// node that is not, the accepted tokens are RECOMPUTED as pending tokens at
// the front of the next step's forward (no extra pass: they ride along with
// the next tree). Moving entries instead would need a KV-cache verb that
// copies slots within a sequence for every cache layout and quantization;
// recomputation is exact, and cheap next to a verification pass.
//
// Exactness: greedy takes the longest path the target's argmax agrees with
// (verify_tree_greedy), so the output is plain greedy's for ANY heads. With
// temperature > 0, AcceptanceRule::Exact uses SpecInfer's multi-round
// rejection with one-hot q (siblings are distinct deterministic candidates:
// the verifier's verify_tree_rejection with q = nullptr): exact in
// distribution. AcceptanceRule::TypicalLossy uses Medusa's typical acceptance
// on the tree (the verifier's verify_tree_typical_lossy): the longest path whose
// every node passes p(x) > min(threshold, alpha * exp(-H(p))); lossy.
//
// Bit-identity with plain decoding holds while a step's forward is at most
// cpu::gemm_detail::kDotMaxTokens (32) rows (matmul then gives matvec's
// bits): the default trees keep pending + nodes <= 16.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <queue>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/model/forward_batch.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "fastinfer/speculative/tree_batch.hpp"

namespace fastinfer::speculative {

using TreePath = std::vector<int>;  // ranks per depth, root excluded

// Guesses of every head: tokens[d][r] is head d's r-th best token, probs its
// softmax probability.
struct HeadGuesses {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::vector<float>> probs;
  int depth() const { return int(tokens.size()); }
};

// --- policies -----------------------------------------------------------------

struct FixedChoicesTree {
  std::vector<TreePath> choices;
  // The default for K heads: the top-1 chain to depth K plus five
  // alternatives near the root (9 nodes for K = 4; with up to K + 1 pending
  // rows a step stays within kDotMaxTokens rows).
  static FixedChoicesTree default_for(int num_heads) {
    FixedChoicesTree t;
    for (int d = 1; d <= num_heads; ++d) t.choices.push_back(TreePath(std::size_t(d), 0));
    for (TreePath p : {TreePath{1}, TreePath{2}, TreePath{0, 1}, TreePath{1, 0}, TreePath{0, 0, 1}})
      if (int(p.size()) <= num_heads) t.choices.push_back(p);
    return t;
  }
};

struct DynamicTree {
  int budget = 10;    // nodes in the tree
  int top_k = 3;      // children considered per node
  int max_depth = 0;  // 0: as many as there are heads

  // The tree's shape (top_k, max_depth); InvalidArgument naming `what` and
  // the values otherwise. The budget is checked where it is used (the
  // Engine's is each request's k).
  void validate_shape(const char* what) const {
    FASTINFER_CHECK(top_k >= 1 && max_depth >= 0, InvalidArgument, what,
                    " needs top_k >= 1 and max_depth >= 0, got ", top_k, " and ", max_depth);
  }
};

template <typename Policy>
struct is_tree_policy : std::false_type {};
template <>
struct is_tree_policy<FixedChoicesTree> : std::true_type {};
template <>
struct is_tree_policy<DynamicTree> : std::true_type {};

using TreePolicy = std::variant<FixedChoicesTree, DynamicTree>;

// Ranks any policy needs per head.
inline int guesses_needed(const FixedChoicesTree& t) {
  int r = 1;
  for (const auto& p : t.choices)
    for (int x : p) r = std::max(r, x + 1);
  return r;
}
inline int guesses_needed(const DynamicTree& t) { return std::max(1, t.top_k); }

template <typename Policy>
std::vector<TreePath> select_paths(const Policy&, const HeadGuesses&) {
  static_assert(is_tree_policy<Policy>::value,
                "select_paths<Policy>: Policy must be FixedChoicesTree or DynamicTree (speculative/medusa_tree.hpp)");
  return {};
}

// The choices that fit the guesses at hand (depth and ranks), prefixes implied.
template <>
inline std::vector<TreePath> select_paths<FixedChoicesTree>(const FixedChoicesTree& t, const HeadGuesses& g) {
  std::vector<TreePath> out;
  for (const TreePath& p : t.choices) {
    FASTINFER_CHECK(!p.empty(), InvalidArgument, "a Medusa tree choice is empty");
    bool fits = int(p.size()) <= g.depth();
    for (std::size_t d = 0; fits && d < p.size(); ++d) {
      FASTINFER_CHECK(p[d] >= 0, InvalidArgument, "a Medusa tree choice holds rank ", p[d], " (must be >= 0)");
      fits = p[d] < int(g.tokens[d].size());
    }
    if (fits) out.push_back(p);
  }
  return out;
}

template <>
inline std::vector<TreePath> select_paths<DynamicTree>(const DynamicTree& t, const HeadGuesses& g) {
  t.validate_shape("a dynamic Medusa tree");
  FASTINFER_CHECK(t.budget >= 0, InvalidArgument, "a dynamic Medusa tree needs budget >= 0, got ", t.budget);
  const int depth = t.max_depth > 0 ? std::min(t.max_depth, g.depth()) : g.depth();
  struct Cand {
    double score;
    std::int64_t order;  // first pushed wins a tie: deterministic
    TreePath path;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : order > o.order; }
  };
  std::priority_queue<Cand> frontier;
  std::int64_t pushed = 0;
  auto push_children = [&](const TreePath& parent, double score) {
    const int d = int(parent.size());
    if (d >= depth) return;
    const int kids = std::min(t.top_k, int(g.tokens[std::size_t(d)].size()));
    for (int r = 0; r < kids; ++r) {
      TreePath p = parent;
      p.push_back(r);
      frontier.push(Cand{score * double(g.probs[std::size_t(d)][std::size_t(r)]), pushed++, std::move(p)});
    }
  };
  push_children({}, 1.0);
  std::vector<TreePath> out;
  while (int(out.size()) < t.budget && !frontier.empty()) {
    Cand c = frontier.top();
    frontier.pop();
    push_children(c.path, c.score);
    out.push_back(std::move(c.path));
  }
  return out;
}

inline std::vector<TreePath> select_paths(const TreePolicy& policy, const HeadGuesses& g) {
  return std::visit([&](const auto& p) { return select_paths(p, g); }, policy);
}
inline int guesses_needed(const TreePolicy& policy) {
  return std::visit([](const auto& p) { return guesses_needed(p); }, policy);
}

// --- tree ---------------------------------------------------------------------

struct CandidateTree {
  TokenTree tree;
  std::vector<int> depth;  // 1-based depth of each node
};

// Paths -> TokenTree (duplicates dropped, missing prefixes added), top-1
// chain first, then by depth, then lexicographically; parents before children.
inline CandidateTree build_candidate_tree(std::vector<TreePath> paths, const HeadGuesses& g, int max_depth) {
  std::vector<TreePath> all;
  for (const TreePath& p : paths)
    for (std::size_t n = 1; n <= p.size() && int(n) <= max_depth; ++n) all.emplace_back(p.begin(), p.begin() + long(n));
  auto chain = [](const TreePath& p) { return std::all_of(p.begin(), p.end(), [](int x) { return x == 0; }); };
  std::sort(all.begin(), all.end(), [&](const TreePath& a, const TreePath& b) {
    const bool ca = chain(a), cb = chain(b);
    if (ca != cb) return ca;
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  all.erase(std::unique(all.begin(), all.end()), all.end());
  CandidateTree out;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const TreePath& p = all[i];
    const std::size_t d = p.size();
    FASTINFER_CHECK(int(d) <= g.depth() && p[d - 1] < int(g.tokens[d - 1].size()), InvalidArgument,
                    "a Medusa tree path of depth ", d, " asks for rank ", p[d - 1], " beyond the heads' guesses");
    int parent = -1;
    if (d > 1) {
      const TreePath up(p.begin(), p.end() - 1);
      parent = int(std::find(all.begin(), all.begin() + long(i), up) - all.begin());
    }
    out.tree.tokens.push_back(g.tokens[d - 1][std::size_t(p[d - 1])]);
    out.tree.parent.push_back(parent);
    out.depth.push_back(int(d));
  }
  return out;
}

// Top-n guesses of the first depth[r] heads for each of `rows` hidden rows
// [rows][dim] (g[r]: row r's; n[r] guesses per head). Each head's products
// run once for all the rows (the Engine's Medusa requests of a step: the
// head's weights and the classifier stream once, not once per request);
// rows needing fewer heads ride along in the deeper heads' products.
template <class Backend>
void medusa_guesses_rows(Backend& backend, MedusaHeads& heads, const float* hidden, const MatrixView& shared,
                         int rows, const int* n, const int* depth, HeadGuesses* g,
                         std::vector<float>& scratch) {
  const int vocab = heads.vocab();
  int max_depth = 0;
  for (int r = 0; r < rows; ++r) {
    FASTINFER_CHECK(depth[r] >= 0 && depth[r] <= heads.num_heads() && n[r] >= 1, InvalidArgument,
                    "Medusa guesses: row ", r, " asks for ", n[r], " guesses of ", depth[r], " heads (",
                    heads.num_heads(), " heads)");
    max_depth = std::max(max_depth, depth[r]);
    g[r].tokens.resize(std::size_t(depth[r]));
    g[r].probs.resize(std::size_t(depth[r]));
  }
  if (rows <= 0 || max_depth == 0) return;
  scratch.resize(std::size_t(rows) * std::size_t(vocab));
  std::vector<std::int32_t> idx(static_cast<std::size_t>(vocab));
  for (int k = 0; k < max_depth; ++k) {
    heads.head_logits(backend, k, hidden, shared, scratch.data(), rows);
    for (int r = 0; r < rows; ++r) {
      if (k >= depth[r]) continue;
      float* logits = scratch.data() + std::size_t(r) * std::size_t(vocab);
      const int m = std::min(n[r], vocab);
      const float mx = *std::max_element(logits, logits + vocab);
      double total = 0;
      for (int t = 0; t < vocab; ++t) total += double(logits[t] = std::exp(logits[t] - mx));
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](std::int32_t a, std::int32_t b) {
        return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
      });
      g[r].tokens[std::size_t(k)].assign(idx.begin(), idx.begin() + m);
      g[r].probs[std::size_t(k)].resize(std::size_t(m));
      for (int j = 0; j < m; ++j)
        g[r].probs[std::size_t(k)][std::size_t(j)] = float(logits[idx[std::size_t(j)]] / total);
    }
  }
}

// Top-n guesses of every head for one hidden row.
template <class Backend>
void medusa_guesses(Backend& backend, MedusaHeads& heads, const float* hidden, const MatrixView& shared,
                    int n, int depth, HeadGuesses& g, std::vector<float>& scratch) {
  medusa_guesses_rows(backend, heads, hidden, shared, 1, &n, &depth, &g, scratch);
}

struct MedusaOptions {
  TreePolicy tree = DynamicTree{};
  int max_depth = 0;  // 0: every head
  AcceptanceRule rule = AcceptanceRule::Exact;
  TypicalAcceptanceLossy typical{};
  // Dynamic speculation (adaptive_draft_length.hpp): each step's tree depth
  // (0: a plain step) chosen from measured pass costs and per-depth
  // acceptance, at most max_depth; its max_k caps it too. Not owned; null:
  // the full depth every step.
  AdaptiveDraftLength* adaptive = nullptr;
};

// A tree written by tools/train_medusa.py (OUT.choices): one path of ranks
// per line ("0 0 1"), '#' starts a comment. Bad lines name the file and line;
// a missing or malformed file is a FormatError (a bad input file, as a
// missing heads file), not a usage error.
inline FixedChoicesTree read_choices_file(const std::string& path) {
  std::ifstream in(path);
  FASTINFER_CHECK(bool(in), FormatError, "cannot open Medusa tree file '", path, "'");
  FixedChoicesTree t;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    line = line.substr(0, line.find('#'));
    std::istringstream s(line);
    TreePath p;
    for (std::string w; s >> w;) {
      FASTINFER_CHECK(w.size() <= 6 && w.find_first_not_of("0123456789") == std::string::npos, FormatError,
                      path, ":", line_no, ": '", w, "' is not a rank (a small non-negative integer)");
      p.push_back(std::stoi(w));
    }
    if (!p.empty()) t.choices.push_back(std::move(p));
  }
  FASTINFER_CHECK(!t.choices.empty(), FormatError, "Medusa tree file '", path, "' holds no path");
  return t;
}

// Medusa generation on a LlamaModel (its solo sequence; needs forward with a
// custom mask and last_hidden()). Same stop rules and first token as
// generate(); stats as speculative_generate's (drafted = tree nodes offered).
template <typename Model, typename OnToken>
SpeculativeResult medusa_generate(Model& model, MedusaHeads& heads, const std::vector<std::int32_t>& prompt,
                                  const GenerationParams& params, const MedusaOptions& options, OnToken&& on_token) {
  const LlamaConfig& c = model.config();
  validate_generation(c, prompt, params);
  heads.check_compatible(c);
  FASTINFER_CHECK(options.max_depth >= 0, InvalidArgument, "Medusa max_depth must not be negative, got ",
                  options.max_depth);
  using Clock = std::chrono::steady_clock;
  constexpr SeqId seq_id = Model::kSoloSequence;

  SpeculativeResult out;
  GenerationResult& r = out.generation;
  SpeculativeStats& st = out.stats;
  r.prompt_tokens = int(prompt.size());
  const int vocab = c.vocab_size, dim = c.dim;
  const int head_depth = options.max_depth > 0 ? std::min(options.max_depth, heads.num_heads()) : heads.num_heads();
  const int n_guess = guesses_needed(options.tree);
  cpu::SamplerWorkspace workspace(vocab);
  const SamplingParams sp = sampling_params(params);
  SpeculativeVerifier verifier(vocab, sp, options.rule, options.typical);
  std::vector<float> hidden(static_cast<std::size_t>(dim)), scratch, probs;
  HeadGuesses guesses;
  ForwardBatch batch;
  std::vector<std::int32_t> depth_nodes;  // the tree's nodes per depth, for options.adaptive
  std::vector<std::int32_t> seq = prompt;

  model.reset();
  const auto t0 = Clock::now();
  const float* logits = model.forward_prefill(prompt, 0);
  std::copy(model.last_hidden(), model.last_hidden() + dim, hidden.begin());
  int valid = int(prompt.size());  // positions whose KV is right
  const auto t1 = Clock::now();
  r.prefill_seconds = seconds_between(t0, t1);

  // Emits `t` unless a stop rule fires first; false when generation is over.
  detail::SpecTokenEmitter<std::remove_reference_t<OnToken>> out_tokens{c, params, r, seq, on_token, t0, t1};

  bool going = out_tokens.room_left() && out_tokens.emit(pick_token(logits, vocab, params, 0, workspace));
  while (going && out_tokens.room_left()) {
    const int len = int(seq.size());
    const int remaining = std::min(params.max_new_tokens - int(r.tokens.size()), c.max_seq_len - len);
    // Depth d sits at position len - 1 + d < max_seq_len; deeper than
    // remaining - 1 can never be emitted.
    const int depth_cap = std::max(0, std::min({head_depth, remaining - 1, c.max_seq_len - len}));
    const int n_pending = len - valid;
    const int depth = options.adaptive ? options.adaptive->choose(std::max(n_pending, 1), depth_cap) : depth_cap;
    const auto d0 = Clock::now();
    CandidateTree ct;
    if (depth > 0) {
      medusa_guesses(model.backend(), heads, hidden.data(), model.weights().classifier, n_guess, depth, guesses,
                     scratch);
      ct = build_candidate_tree(select_paths(options.tree, guesses), guesses, depth);
    }
    const auto d1 = Clock::now();
    // The forward holds at most max_batch rows, and node i takes KV slot
    // len + i < max_seq_len: drop the tree's tail nodes (children come after
    // parents, so what stays is still a tree).
    const int room = std::min(model.max_batch() - n_pending, c.max_seq_len - len);
    if (ct.tree.size() > room) {
      ct.tree.tokens.resize(std::size_t(std::max(0, room)));
      ct.tree.parent.resize(std::size_t(std::max(0, room)));
      ct.depth.resize(std::size_t(std::max(0, room)));
    }
    build_tree_batch(batch, seq_id, seq.data() + valid, n_pending, valid, ct.tree);
    const float* rows = model.forward(batch) + std::size_t(n_pending - 1) * std::size_t(vocab);
    const std::uint64_t first_index = std::uint64_t(r.tokens.size());
    VerifyOutcome v;
    if ((options.rule == AcceptanceRule::Exact && verifier.greedy()) || options.rule == AcceptanceRule::Coupled) {
      // Coupled: each node's row sampled with plain sampling's coin picks the
      // child to follow, so the tokens are generate()'s for the same seed.
      v = verifier.verify_tree(rows, ct.tree, nullptr, first_index);
    } else {
      const int nr = ct.tree.size() + 1;
      probs.resize(std::size_t(nr) * std::size_t(vocab));
      for (int i = 0; i < nr; ++i)
        cpu::sampling_distribution(rows + std::size_t(i) * std::size_t(vocab), vocab, sp,
                                   probs.data() + std::size_t(i) * std::size_t(vocab), workspace);
      v = options.rule == AcceptanceRule::TypicalLossy
              ? verify_tree_typical_lossy(probs.data(), vocab, ct.tree, options.typical, verifier.greedy(), sp.seed,
                                          first_index)
              : verify_tree_rejection(probs.data(), nullptr, vocab, ct.tree, sp.seed, first_index);
    }
    const int last_row = n_pending - 1 + (v.path.empty() ? 0 : 1 + v.path.back());
    std::copy(model.last_hidden() + std::size_t(last_row) * std::size_t(dim),
              model.last_hidden() + std::size_t(last_row + 1) * std::size_t(dim), hidden.begin());
    valid = len + kept_in_place(v.path);
    detail::record_tree_step(st, options.adaptive, ct.tree, depth, n_pending, int(batch.rows()), v.accepted,
                             seconds_between(d0, d1), seconds_between(d1, Clock::now()), depth_nodes);
    going = out_tokens.emit_step(v.tokens, v.accepted, st);
  }
  if (!r.tokens.empty()) r.decode_seconds = seconds_between(out_tokens.first, Clock::now());
  return out;
}

template <typename Model>
SpeculativeResult medusa_generate(Model& model, MedusaHeads& heads, const std::vector<std::int32_t>& prompt,
                                  const GenerationParams& params, const MedusaOptions& options = {}) {
  return medusa_generate(model, heads, prompt, params, options, [](std::int32_t) {});
}

}  // namespace fastinfer::speculative
